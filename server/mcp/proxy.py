"""What ``proxy_request`` does, as a plain async function: front door, send, collect, shape.

Kept free of MCP so it can be read and tested on its own; the tool in
:mod:`authpool.server.mcp.tools` is a thin wrapper around :func:`run_proxy`. The checks before
sending are the front door's (:mod:`authpool.server.front`), shared with the CLI; what is
particular to a tool result is here: the body is read whole (with progress for an event stream),
parsed when it is JSON, cut at ``max_body_chars`` with a marker, an event stream is summarised
(its text, its events, an error after content), and a credential the provider echoed is scrubbed.
"""

from __future__ import annotations

import functools
import json as jsonlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx2

from authpool import Pool
from authpool.rotation import RequestResult, assemble_text, parse_events
from authpool.server.front import naming_the_home, prepare, unreadable_body

__all__ = ["TRUNCATION_MARKER", "BodyFormat", "ProgressFn", "ProxyCall", "ProxyOutcome", "StreamSummary", "run_proxy"]

_KEPT_HEADERS = ("content-type", "request-id", "x-request-id", "retry-after", "retry-after-ms", "openai-model",
                 "openai-processing-ms")
_KEPT_PREFIXES = ("anthropic-ratelimit-", "x-ratelimit-")
TRUNCATION_MARKER = "\n…[truncated by authpool: {shown} of {total} characters shown]"
#: Seconds between progress notifications while an event stream arrives.
STREAM_PROGRESS_EVERY = 0.5

BodyFormat = Literal["json", "text", "empty", "binary"]
ProgressFn = Callable[[float, float | None, str], Awaitable[None]]


@dataclass(frozen=True)
class ProxyCall:
    """One ``proxy_request``, as the tool received it."""

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
class StreamSummary:
    """An event stream, collected: how much arrived, the text it generated, an error after content."""

    events: int
    text: str
    error: dict[str, Any] | None


@dataclass
class ProxyOutcome:
    """The provider's answer, shaped for a tool result, and the pool's account of how it was served."""

    status: int
    headers: dict[str, str]
    body: Any
    body_format: BodyFormat
    body_bytes: int
    truncated: bool
    result: RequestResult
    stream: StreamSummary | None = None


async def run_proxy(pool: Pool, call: ProxyCall, progress: ProgressFn | None = None) -> ProxyOutcome:
    """Send ``call`` through the pool and return the provider's answer, shaped for a tool result.

    Raises:
        PoolError: unknown provider or account, refused origin or header, all accounts cooling, …
    """
    out = prepare(pool, call.provider, call.method, call.path, headers=call.headers, json_body=call.json_body,
                  body=call.body, stream=call.stream)
    # Straight to the pool's transport, as the gateway does: a client object per call cost more
    # than the rest of the tool's own work, and one shared client would carry cookies from one
    # account's answers into another account's requests.
    transport = pool.transport(out.provider.id, account=call.account, namespace=call.namespace,
                               wait_budget=call.wait_s, on_progress=progress, session=call.session)
    sent = httpx2.Headers(_default_headers())
    sent.update(out.headers)
    timeout = httpx2.Timeout(out.provider.timeout, connect=10.0)
    request = httpx2.Request(out.method, out.url, params=call.query, headers=sent, content=out.content,
                             extensions={"timeout": timeout.as_dict()})
    # Streamed, then read here, so a body that breaks off or cannot be decoded is one clear error.
    with naming_the_home(pool):
        response = await transport.handle_async_request(request)
    try:
        response.request = request
        result: RequestResult = response.extensions["authpool"]
        raw = await _collect(response, progress)
    except httpx2.HTTPError as e:
        raise unreadable_body(call.provider, response, e) from None
    finally:
        await response.aclose()
    content_type = response.headers.get("content-type", "")
    body, body_format, truncated = _shape_body(raw, content_type, call.max_body_chars)
    stream = _summarize_stream(raw, content_type)
    shown = _select_headers(response.headers)
    # Defence in depth: a credential the provider echoes back (in the body, a stream's text or
    # error, a header) does not reach the caller. The body and the stream's summary come from
    # `raw`: when `raw` cannot spell a credential they are left as they are, unsearched.
    secrets = _secret_values(pool, result.account_id)
    if _echoes(raw, secrets):
        body = _scrub(body, secrets)
        if stream is not None:
            stream = StreamSummary(stream.events, _scrub(stream.text, secrets), _scrub(stream.error, secrets))
    return ProxyOutcome(
        status=response.status_code,
        headers=_scrub(shown, secrets),
        body=body,
        body_format=body_format,
        body_bytes=len(raw),
        truncated=truncated,
        result=result,
        stream=stream,
    )


@functools.cache
def _default_headers() -> dict[str, str]:
    """What an httpx2 client sends by default (its answer is decoded from these encodings), naming
    authpool as the agent. Looked up on first use: reading the package's version costs start-up time."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        agent = f"authpool/{version('authpool')}"
    except PackageNotFoundError:
        agent = "authpool"
    return {"accept": "*/*", "accept-encoding": "gzip, deflate", "user-agent": agent}


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
        if is_stream and progress is not None and time.monotonic() - last_report >= STREAM_PROGRESS_EVERY:
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


def _select_headers(headers: httpx2.Headers) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.items():
        low = name.lower()
        if low in _KEPT_HEADERS or low.startswith(_KEPT_PREFIXES):
            out[low] = value
    return out


def _secret_values(pool: Pool, account_id: str) -> tuple[str, ...]:
    """The credential values of the account that answered (none if they cannot be read)."""
    try:
        return tuple(v for v in pool.secret_of(pool.get(account_id)).values() if v)
    except Exception:  # noqa: BLE001 - scrubbing must never turn a good answer into an error
        return ()


def _echoes(raw: bytes, secrets: tuple[str, ...]) -> bool:
    """Whether ``raw`` may spell one of ``secrets``, so that what was read from it must be searched.

    In JSON text a value appears as it is, or JSON-escaped (quotes, backslashes, control
    characters), unless the writer used one of the two optional escapes: ``\\/`` for a slash (at
    any slash, some and not others) and ``\\u`` for any character. Either escape in ``raw``
    sends the caller to the full search.
    """
    if not secrets:
        return False
    if b"\\u" in raw or b"\\/" in raw:
        return True
    return any(form in raw for v in secrets for form in (v.encode(), jsonlib.dumps(v)[1:-1].encode()))


def _scrub(value: Any, secrets: tuple[str, ...]) -> Any:
    """``value`` (a body, a header map, a stream's summary) with every secret in its strings redacted."""
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, "<redacted>")
        return value
    if isinstance(value, list):
        return [_scrub(v, secrets) for v in value]
    if isinstance(value, dict):
        return {_scrub(k, secrets): _scrub(v, secrets) for k, v in value.items()}
    return value
