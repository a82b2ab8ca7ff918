"""HTTP plumbing: the threaded server and the handler that turns raw HTTP into ``LoopbackRequest``s.

The plumbing knows nothing of providers: it hands each request to a :class:`Site` (what
``LoopbackProvider`` is, as far as HTTP goes) and reports connections, paths, statuses and
handler failures back to it.
"""

from __future__ import annotations

import select
import socket
import sys
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Literal, Protocol, cast

from authpool.server.loopback.models import LoopbackRequest, LoopbackResponse

__all__ = ["IDLE_CONNECTION_TIMEOUT", "MAX_BODY_BYTES", "LoopbackServer", "Site"]

#: Request bodies above this are refused: the provider is for tests, not for bulk uploads.
MAX_BODY_BYTES: Final = 1 << 20
#: Idle keep-alive connections are closed after this long, like a real front end would.
IDLE_CONNECTION_TIMEOUT: Final = 15.0


class Site(Protocol):
    """What the HTTP plumbing needs from the provider behind it."""

    def dispatch(self, request: LoopbackRequest) -> LoopbackResponse | None:
        """The answer to ``request``; ``None`` drops the connection without one."""

    def connection_opened(self, conn: socket.socket) -> None:
        """A client connected (counted, and cut by ``stop()``)."""

    def connection_closed(self, conn: socket.socket) -> None:
        """A client's connection ended."""

    def path_requested(self, path: str) -> None:
        """A request for ``path`` arrived (counted before it is handled)."""

    def status_sent(self, status: int) -> None:
        """A response with ``status`` is being sent."""

    def handler_failed(self) -> None:
        """Handling a request raised (counted instead of printed: stderr belongs to the product)."""

    def stream_event(self, gone: Callable[[], bool]) -> bool:
        """A stream is about to write its next event (after its first): wait at the stream gate while
        it is held; ``False`` abandons the stream (``gone()`` said its client went away meanwhile, which
        the site counts as a cut stream, or the site is stopping)."""

    def stream_ended(self, how: Literal["started", "finished", "cut"]) -> None:
        """A streamed answer began, wrote its last chunk, or lost its client first."""


class LoopbackServer(ThreadingHTTPServer):
    """Threaded server that knows its site and keeps failures off stderr."""

    daemon_threads = True
    allow_reuse_address = False
    # socketserver's default backlog of 5 drops SYNs when a test fires a burst of parallel
    # requests, and the kernel retries them only after a full second.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], site: Site) -> None:
        self.site = site
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Count instead of printing a traceback: stderr belongs to the product under test."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return  # clients hanging up, or stop() shutting sockets: routine, not a bug
        self.site.handler_failed()


class _Handler(BaseHTTPRequestHandler):
    """Translate raw HTTP into ``LoopbackRequest`` and ``LoopbackResponse`` back to bytes."""

    protocol_version = "HTTP/1.1"
    server_version = "authpool-loopback/1"
    sys_version = ""
    timeout = IDLE_CONNECTION_TIMEOUT
    # Buffer writes so status line, headers and body leave in one segment, and disable Nagle:
    # otherwise every small response waits ~40 ms for the client's delayed ACK.
    wbufsize = -1
    disable_nagle_algorithm = True

    @property
    def site(self) -> Site:
        return cast(LoopbackServer, self.server).site

    def setup(self) -> None:
        super().setup()
        self.site.connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.site.connection_closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default per-request stderr line: the product owns stdout and stderr."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_OPTIONS(self) -> None:
        self._handle()

    def _read_body(self) -> bytes | None:
        """Read a Content-Length or chunked body; ``None`` if it is too large to accept.

        Raises ``ValueError`` on malformed framing.
        """
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                total += size
                if total > MAX_BODY_BYTES:
                    return None
                parts.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        split = urllib.parse.urlsplit(self.path)
        self.site.path_requested(split.path)
        response: LoopbackResponse | None
        try:
            body = self._read_body()
        except ValueError:
            body = None
            response = LoopbackResponse.error(400, "malformed request framing")
        else:
            if body is None:
                response = LoopbackResponse.error(413, "request body too large")
            else:
                request = LoopbackRequest(
                    method=self.command,
                    path=split.path,
                    query={k: v[-1] for k, v in urllib.parse.parse_qs(split.query).items()},
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                response = self.site.dispatch(request)
        if response is None:
            self.close_connection = True  # interrupted by stop(): vanish like a dying server
            return
        if body is None:
            # The rest of the body is still on the wire, so this connection cannot be reused.
            self.close_connection = True
            response.headers["Connection"] = "close"
        self.site.status_sent(response.status)
        self._send(response)

    def _send(self, response: LoopbackResponse) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.stream is None:
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.site.stream_ended("started")
        try:
            for i, chunk in enumerate(response.stream):
                if not chunk:
                    continue
                if i and not self.site.stream_event(lambda: _peer_gone(self.connection)):
                    self.close_connection = True  # the client left (counted by the site), or stop()
                    return
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.site.stream_ended("cut")
            raise
        self.site.stream_ended("finished")


def _peer_gone(conn: socket.socket) -> bool:
    """Whether the client closed its end: readable with nothing to read (or the socket failed)."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True
