"""``proxy_request`` as a plain async function: validate, send through the pool, shape the answer.

Kept free of MCP so it can be tested and reused directly; the tool in :mod:`server.app` is a
thin wrapper around :func:`run_proxy`.
"""

from __future__ import annotations

import json as jsonlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx2

from authpool import InvalidInput, NoAccounts, Pool, RequestFailed
from authpool.providers.provider import Provider
from authpool.rotation import RequestResult
from authpool.rotation.sse import assemble_text, parse_events

__all__ = ["ProxyCall", "ProxyOutcome", "run_proxy"]

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# Headers the transport owns: framing and routing are computed, credentials are the pool's.
_RESERVED = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer",
                       "keep-alive", "proxy-connection"})
_KEPT_HEADERS = ("content-type", "request-id", "x-request-id", "retry-after", "retry-after-ms", "openai-model",
                 "openai-processing-ms")
_KEPT_PREFIXES = ("anthropic-ratelimit-", "x-ratelimit-")
TRUNCATION_MARKER = "\n…[truncated by authpool: {shown} of {total} characters shown]"
# RFC 9110 field names are tokens; values are visible ASCII, spaces and tabs (httpx2 encodes
# header values as ASCII, and CR/LF would split the header).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")


@dataclass(frozen=True)
class ProxyCall:
    provider: str
    method: str
    path: str
    query: dict[str, str] | None = None
    headers: dict[str, str] | None = None
    json_body: Any = None
    body: str | None = None
    account: str | None = None
    namespace: str | None = None
    wait_s: float = 0.0
    max_body_chars: int = 100_000
    session: str | None = None
    stream: bool = False


@dataclass
class ProxyOutcome:
    status: int
    headers: dict[str, str]
    body: Any
    body_format: Literal["json", "text", "empty", "binary"]
    body_bytes: int
    truncated: bool
    result: RequestResult
    stream: StreamSummary | None = None


@dataclass
class StreamSummary:
    """An event stream, collected: how much arrived, the text it generated, an error after content."""

    events: int
    text: str
    error: dict[str, Any] | None


ProgressFn = Callable[[float, float | None, str], Awaitable[None]]


async def run_proxy(pool: Pool, call: ProxyCall, progress: ProgressFn | None = None) -> ProxyOutcome:
    """Send ``call`` through the pool and return the provider's answer, shaped for a tool result.

    Raises:
        PoolError: unknown provider or account, refused origin or header, all accounts cooling, …
    """
    method = call.method.strip().upper()
    if method not in METHODS:
        raise InvalidInput(f"unsupported method {call.method!r}; use one of {', '.join(sorted(METHODS))}")
    if call.json_body is not None and call.body is not None:
        raise InvalidInput("give either json or body, not both")
    provider = pool.provider(call.provider)
    url = provider.resolve_url(call.path)
    headers = dict(call.headers or {})
    _check_headers(headers, provider)
    content: bytes | None = None
    json_body = call.json_body
    if call.stream and isinstance(json_body, dict) and "stream" not in json_body:
        json_body = {**json_body, "stream": True}  # Anthropic and OpenAI-style APIs stream on this flag
    if json_body is not None:
        content = jsonlib.dumps(json_body).encode()
        headers.setdefault("content-type", "application/json")
    elif call.body is not None:
        content = call.body.encode()
    async with pool.client(call.provider, account=call.account, namespace=call.namespace,
                           wait_budget=call.wait_s, on_progress=progress, session=call.session) as client:
        request = client.build_request(method, url, params=call.query, headers=headers, content=content)
        # Streamed, then read here: the rotation engine only sees the send, so a body that
        # breaks off or cannot be decoded (bad gzip) used to escape `client.request` as an
        # unexpected exception (a bare "Error executing tool" and a traceback on stderr).
        try:
            response = await client.send(request, stream=True)
        except NoAccounts as e:
            raise e.in_home(pool.home.path) from None
        result: RequestResult = response.extensions["authpool"]
        try:
            raw = await _collect(response, progress)
        except httpx2.HTTPError as e:
            reason = str(e) if isinstance(e, httpx2.DecodingError) else type(e).__name__
            raise RequestFailed(
                f"{call.provider} answered HTTP {response.status_code} via {result.account}, but the response body "
                f"could not be read ({reason})",
                attempts=result.attempts,
            ) from None
        finally:
            await response.aclose()
    body, body_format, truncated = _shape_body(raw, response.headers.get("content-type", ""), call.max_body_chars)
    return ProxyOutcome(
        status=response.status_code,
        headers=_select_headers(response.headers),
        body=_scrub(body, pool, result.account_id),
        body_format=body_format,
        body_bytes=len(raw),
        truncated=truncated,
        result=result,
        stream=_summarize_stream(raw, response.headers.get("content-type", "")),
    )


def _check_headers(headers: dict[str, str], provider: Provider) -> None:
    """Refuse credential and transport-owned headers, and names or values HTTP cannot carry.

    Raises:
        InvalidInput: naming the header (never echoing its value).
    """
    provider.refuse_credential_headers(headers)
    for name, value in headers.items():
        low = name.strip().lower()
        if low in _RESERVED:
            raise InvalidInput(f"header {name!r} is set by authpool's HTTP client, not by callers")
        # Checked here because the HTTP client fails late and unhelpfully: a non-ASCII value
        # raised UnicodeEncodeError (a bare "Error executing tool" plus a traceback on stderr),
        # and a bad name or a CR/LF in a value failed at send time, where it looked like a
        # network error and was retried on every account before failing.
        if not _HEADER_NAME.fullmatch(name):
            raise InvalidInput(f"header name {name!r} is not a valid HTTP header name")
        if not _HEADER_VALUE.fullmatch(value):
            raise InvalidInput(
                f"the value of header {name!r} contains characters an HTTP header cannot carry "
                "(only printable ASCII, spaces and tabs)"
            )


async def _collect(response: httpx2.Response, progress: ProgressFn | None) -> bytes:
    """Read the whole body; for an event stream, report bytes and events as they arrive."""
    is_stream = response.headers.get("content-type", "").startswith("text/event-stream")
    chunks: list[bytes] = []
    size = events = 0
    last_report = time.monotonic()
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        events += chunk.count(b"\n\n")
        if is_stream and progress is not None and time.monotonic() - last_report >= 0.5:
            last_report = time.monotonic()
            await progress(float(size), None, f"streaming: {size} bytes, {events} events received")
    return b"".join(chunks)


def _summarize_stream(raw: bytes, content_type: str) -> StreamSummary | None:
    if not content_type.startswith("text/event-stream"):
        return None
    events = parse_events(raw + b"\n\n")[0]
    error: dict[str, Any] | None = None
    for event in events:
        doc = event.json()
        if event.event == "error" or (isinstance(doc, dict) and "error" in doc):
            inner = doc.get("error", doc) if isinstance(doc, dict) else {"message": event.data[:200]}
            error = inner if isinstance(inner, dict) else {"message": str(inner)}
            break
    return StreamSummary(events=len(events), text=assemble_text(events), error=error)


BodyFormat = Literal["json", "text", "empty", "binary"]


def _shape_body(raw: bytes, content_type: str, limit: int) -> tuple[Any, BodyFormat, bool]:
    if not raw:
        return None, "empty", False
    ctype = content_type.split(";", maxsplit=1)[0].strip().lower()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        if not ctype.startswith("text/") and "json" not in ctype:
            return f"<{len(raw)} bytes of {ctype or 'binary data'}; not shown>", "binary", False
        text = raw.decode("utf-8", errors="replace")
    if len(text) > limit:
        shown = text[:limit] + TRUNCATION_MARKER.format(shown=limit, total=len(text))
        return shown, "text", True
    if "json" in ctype or text.lstrip()[:1] in ("{", "["):
        try:
            return jsonlib.loads(text), "json", False
        except ValueError:
            pass
    return text, "text", False


def _select_headers(headers: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.items():
        low = name.lower()
        if low in _KEPT_HEADERS or low.startswith(_KEPT_PREFIXES):
            out[low] = value
    return out


def _scrub(body: Any, pool: Pool, account_id: str) -> Any:
    """Defence in depth: if a provider echoes the credential back, it does not reach the caller."""
    try:
        values = pool.secret_of(pool.get(account_id)).values()
    except Exception:  # noqa: BLE001 - scrubbing must never turn a good answer into an error
        return body
    if not values:
        return body
    text = jsonlib.dumps(body) if not isinstance(body, str) else body
    if not any(v in text for v in values):
        return body
    for v in values:
        text = text.replace(v, "<redacted>")
    return text if isinstance(body, str) else jsonlib.loads(text)
