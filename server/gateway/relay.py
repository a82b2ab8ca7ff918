"""Forwarding one request: through the front door and the rotation engine, the answer relayed as it arrives.

``/{provider}/{path}`` becomes a request to that provider's base URL + ``path`` (query kept, the
gateway key taken out), checked by the same front door as ``authpool request`` and MCP's
``proxy_request`` (:func:`authpool.server.front.prepare`) and sent through the pool's transport,
so rotation, refresh, cooldowns, sessions and namespaces behave exactly as in the library.

- **The path never leaves its provider.** Before the front door's own checks, the raw path is
  refused if it holds ``..`` or ``.`` segments (also percent-encoded), an encoded slash or
  backslash, an empty segment (``//``), a control character, or another URL (``http:``,
  ``://``). Unknown provider: 404.
- **Headers.** The client's headers go on, except credentials (the gateway key among them: the
  pool attaches the account's own), hop-by-hop and transport-owned headers, ``Origin``/``Referer``,
  forwarding headers and ``x-authpool-*``, which are the gateway's options:
  ``x-authpool-account``, ``-namespace``, ``-session``, ``-wait`` (seconds to wait when every
  account is cooling). The answer carries ``x-authpool-account`` (``provider/label``,
  percent-encoded where not ASCII) and ``x-authpool-attempts`` (how many tries it took).
- **Bodies.** A request body over :data:`MAX_BODY` bytes is refused with 413, by its
  ``Content-Length`` before anything is read, else as it arrives. The answer is relayed chunk by
  chunk as the provider sends it (``aiter_raw``: compressed bytes stay compressed), never
  collected; the first event of a stream leaves as soon as it arrives.
- **A client that leaves** (closes its connection) cancels the request at once, waiting or
  streaming: the upstream connection is closed, so the provider stops generating.
- **All accounts cooling**: the pool answers 429 with ``Retry-After`` (``cooling_response``),
  relayed as one JSON error in the provider's shape.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import urllib.parse
from typing import Any

import anyio
import httpx2
from starlette.types import Message, Receive, Scope, Send

from authpool import InvalidInput, OriginRefused, Pool, PoolError
from authpool.providers import Provider
from authpool.rotation import RequestResult
from authpool.server.front import RESERVED_HEADERS, naming_the_home, prepare
from authpool.server.gateway.errors import Dialect, Refusal, dialect_of, refusal_of
from authpool.server.gateway.guard import send_refusal

__all__ = ["MAX_BODY", "MAX_WAIT", "OPTION_HEADERS", "Relay", "forwarded_path", "forwarded_query"]

log = logging.getLogger("authpool")

MAX_BODY = 32 * 1024 * 1024  # bytes: requests beyond this get 413
MAX_WAIT = 3600.0  # seconds x-authpool-wait may ask for
OPTION_HEADERS = ("x-authpool-account", "x-authpool-namespace", "x-authpool-session", "x-authpool-wait")
# Never forwarded: framing and routing are the HTTP client's, browsers' and proxies' headers say
# nothing the provider needs (and would tell it about the client), x-authpool-* are ours.
_DROPPED = RESERVED_HEADERS | {"origin", "referer", "forwarded", "via", "x-forwarded-for", "x-forwarded-host",
                               "x-forwarded-proto", "x-real-ip", "expect", "sec-fetch-site", "sec-fetch-mode",
                               "sec-fetch-dest", "sec-fetch-user"}
# Hop-by-hop headers of the provider's answer (uvicorn frames the relayed body itself), and its
# cookies: they belong to the account's session with the provider, not to the gateway's clients.
_DROPPED_ANSWER = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
                             b"proxy-connection", b"proxy-authenticate", b"set-cookie", b"set-cookie2"})
_SCHEME_SEGMENT = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class _ClientLeft(Exception):
    """The client closed its connection before its request body arrived."""


class Relay:
    """The ASGI endpoint of ``/{provider}/{path}``: one request through the pool, the answer relayed."""

    def __init__(self, pool: Pool, *, max_body: int = MAX_BODY) -> None:
        self.pool = pool
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        provider_id: str = scope["path_params"]["provider"]
        dialect: Dialect = dialect_of(None, scope["path"])
        try:
            provider = self.pool.provider(provider_id)
            path = forwarded_path(scope, provider_id)
            dialect = dialect_of(provider, path)
            headers, options = _forwarded_headers(scope, provider)
            query = forwarded_query(scope.get("query_string", b""))
            body = await _read_body(receive, scope, self.max_body)
            outgoing = prepare(self.pool, provider_id, scope["method"], path + (f"?{query}" if query else ""),
                               headers=headers, body=body or None)
        except _ClientLeft:
            return
        except _TooLarge:
            await send_refusal(send, Refusal(413, f"the request body is larger than the gateway accepts "
                                                  f"({self.max_body // (1024 * 1024)} MiB)", "request_too_large"),
                               dialect)
            return
        except PoolError as e:
            await send_refusal(send, refusal_of(e), dialect)
            return
        call = _Call(self.pool, provider, dialect, scope, send)
        cancel = anyio.CancelScope()
        # A plain task rather than a task group: this runs for every request, and the watcher
        # only ever cancels the scope; it is cancelled itself when the answer is done.
        watcher = asyncio.get_running_loop().create_task(call.watch(receive, cancel))
        try:
            with cancel:
                await call.run(outgoing.method, outgoing.url, outgoing.headers, outgoing.content, options)
        finally:
            watcher.cancel()


class _Call:
    """One forwarded request while it is served: sending, relaying, and noticing the client leave."""

    def __init__(self, pool: Pool, provider: Provider, dialect: Dialect, scope: Scope, send: Send) -> None:
        self.pool = pool
        self.provider = provider
        self.dialect = dialect
        self.scope = scope
        self.send = send
        self.done = False  # the whole answer was handed to the server
        self.left = False  # the client closed its connection first

    async def watch(self, receive: Receive, scope: anyio.CancelScope) -> None:
        """Wait for the client to leave; then cancel the request (and with it the upstream connection)."""
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                break
        if not self.done:
            self.left = True
            scope.cancel()

    async def run(self, method: str, url: str, headers: dict[str, str], content: bytes | None,
                  options: dict[str, Any]) -> None:
        started = time.perf_counter()
        timeout = httpx2.Timeout(self.provider.timeout, connect=10.0)
        request = httpx2.Request(method, url, headers=headers, content=content,
                                 extensions={"timeout": timeout.as_dict()})
        response: httpx2.Response | None = None
        try:
            try:
                transport = self.pool.transport(self.provider.id, cooling_response=True, **options)
                with naming_the_home(self.pool):
                    response = await transport.handle_async_request(request)
            except PoolError as e:
                await send_refusal(self.send, refusal_of(e), self.dialect)
                self._log(method, refusal_of(e).status, None, started)
                return
            result: RequestResult | None = response.extensions.get("authpool")
            if result is None:  # every account is cooling: the pool's own 429 with Retry-After
                await self._cooling(response)
                self._log(method, 429, None, started)
                return
            await self._relay(response, result, method, started)
        finally:
            if self.left:
                log.info("%s %s: the client left; the upstream request was closed", method, self._where())
            if response is not None:
                with anyio.CancelScope(shield=True):
                    await response.aclose()

    async def _cooling(self, response: httpx2.Response) -> None:
        try:
            message = str(response.json()["error"]["message"])
        except (ValueError, KeyError, TypeError):
            message = f"all {self.provider.id} accounts are cooling down"
        retry = {"retry-after": response.headers.get("retry-after", "1")}
        await send_refusal(self.send, Refusal(429, message, "all_cooling", retry), self.dialect)

    async def _relay(self, response: httpx2.Response, result: RequestResult, method: str, started: float) -> None:
        headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _DROPPED_ANSWER]
        headers += [(b"x-authpool-account", _header_value(result.account)),
                    (b"x-authpool-attempts", str(len(result.attempts)).encode())]
        await self.send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        self._log(method, response.status_code, result, started)
        sent = 0
        # With a Content-Length, the chunk that completes the body is sent as the last one (one
        # message less per answer); a stream's chunks are each sent the moment they arrive.
        length = response.headers.get("content-length")
        expected = int(length) if length is not None and length.isdigit() else -1
        try:
            async for chunk in response.aiter_raw():  # read to its end, so the connection can be reused
                if chunk:
                    sent += len(chunk)
                    self.done = sent == expected
                    await self.send({"type": "http.response.body", "body": chunk, "more_body": not self.done})
        except httpx2.HTTPError as e:
            # The status line is out: the client learns of the break by the connection closing
            # before the body's end (the ASGI server does that when the app returns unfinished).
            log.warning("%s %s via %s: the provider's answer broke off after %d bytes (%s)", method, self._where(),
                        result.account, sent, type(e).__name__)
            return
        if not self.done:
            self.done = True
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    def _where(self) -> str:
        return str(self.scope["path"])  # no query string: it may carry a key

    def _log(self, method: str, status: int, result: RequestResult | None, started: float) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        via = f" via {result.account} ({len(result.attempts)} attempt{'s' * (len(result.attempts) != 1)})" \
            if result is not None else ""
        log.info("%s %s -> %d%s, headers after %.1f ms", method, self._where(), status, via,
                 (time.perf_counter() - started) * 1000)


class _TooLarge(Exception):
    """The request body is over the limit."""


def forwarded_path(scope: Scope, provider_id: str) -> str:
    """The path to send to the provider, as the client wrote it (percent-encoding kept), after ``/{provider}``.

    Raises:
        OriginRefused: a path that could leave the provider's base path or name another URL.
        InvalidInput: a path that is not ASCII.
    """
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidInput("the request path must be ASCII (percent-encode other characters)") from None
    prefix = f"/{provider_id}/"
    if not text.startswith(prefix):
        raise InvalidInput(f"write the provider plainly as the first path segment: /{provider_id}/...")
    rest = text[len(prefix) - 1 :]
    lowered = rest.lower()
    if "%2f" in lowered or "%5c" in lowered or "\\" in rest:
        raise OriginRefused(f"refusing the path {rest!r}: an encoded slash or a backslash could leave the "
                            f"provider's base path")
    segments = rest.split("/")[1:]
    if "" in segments[:-1]:
        raise OriginRefused(f"refusing the path {rest!r}: an empty segment ('//') could name another host")
    decoded = [_unquoted(seg) for seg in segments]
    if any(seg in (".", "..") for seg in decoded):
        raise OriginRefused(f"refusing the path {rest!r}: '.' and '..' segments could leave the provider's base path")
    whole = "/".join(decoded)
    if "://" in whole or (decoded and _SCHEME_SEGMENT.match(decoded[0])):
        raise OriginRefused(f"refusing the path {rest!r}: it names another URL; the gateway only forwards paths "
                            f"under the provider's base URL")
    if _CONTROL.search(whole):
        raise OriginRefused(f"refusing the path {rest!r}: it holds a control character")
    return rest


def forwarded_query(query: bytes) -> str:
    """The query string without ``key`` parameters (a gateway key sent as ``?key=``), otherwise as sent.

    Raises:
        InvalidInput: a query that is not ASCII.
    """
    if not query:
        return ""
    try:
        text = query.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidInput("the query string must be ASCII (percent-encode other characters)") from None
    if "key" not in text:
        return text
    kept = [part for part in text.split("&") if urllib.parse.unquote_plus(part.partition("=")[0]) != "key"]
    return "&".join(kept)


def _forwarded_headers(scope: Scope, provider: Provider) -> tuple[dict[str, str], dict[str, Any]]:
    """The headers to forward, and the rotation options from ``x-authpool-*``.

    Raises:
        InvalidInput: an unknown ``x-authpool-*`` header or a malformed option.
    """
    credentials = provider.all_credential_header_names()
    forwarded: dict[str, str] = {}
    given: dict[str, str] = {}
    connection_named: set[str] = set()
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name.startswith("x-authpool-"):
            if name not in OPTION_HEADERS:
                raise InvalidInput(f"unknown header {name!r}; the gateway's options are {', '.join(OPTION_HEADERS)}")
            given[name] = value.strip()
            continue
        if name == "connection":
            connection_named |= {t.strip().lower() for t in value.split(",")}
        if name in _DROPPED or name in credentials:
            continue
        forwarded[name] = f"{forwarded[name]}, {value}" if name in forwarded else value
    for name in connection_named:
        forwarded.pop(name, None)  # headers the client marked hop-by-hop
    return forwarded, _options(given)


def _options(given: dict[str, str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if account := given.get("x-authpool-account"):
        options["account"] = urllib.parse.unquote(account)
    if namespace := given.get("x-authpool-namespace"):
        options["namespace"] = urllib.parse.unquote(namespace)
    if session := given.get("x-authpool-session"):
        if len(session) > 256:
            raise InvalidInput("x-authpool-session is longer than 256 characters")
        options["session"] = session
    if (wait := given.get("x-authpool-wait")) is not None:
        try:
            seconds = float(wait)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or not 0 <= seconds <= MAX_WAIT:
            raise InvalidInput(f"x-authpool-wait must be a number of seconds from 0 to {MAX_WAIT:g}")
        options["wait_budget"] = seconds
    return options


async def _read_body(receive: Receive, scope: Scope, limit: int) -> bytes:
    declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientLeft
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _unquoted(segment: str) -> str:
    for _ in range(3):  # %252e%252e, decoded twice by layered servers, is still ".."
        decoded = urllib.parse.unquote(segment)
        if decoded == segment:
            break
        segment = decoded
    return segment


def _header_value(text: str) -> bytes:
    """``text`` as a header value: ASCII as is, anything else percent-encoded (labels may be any script)."""
    if text.isascii() and text.isprintable():
        return text.encode()
    return urllib.parse.quote(text, safe="/@:.-_~+ ").encode()
