"""The loopback redirect receiver of an authorization-code login (RFC 8252 section 7.3).

A tiny HTTP server on ``127.0.0.1`` that waits for the browser to be sent back with
``?code=…&state=…``. It answers only the expected path and only requests addressed to the
loopback host (a page elsewhere cannot reach it through a DNS-rebound name), hands the query to
the login to judge, shows the user a short "you can close this window" page, and stops after
the first redirect that carries a code or an error.
"""

from __future__ import annotations

import html
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar, cast

__all__ = ["RedirectListener"]

T = TypeVar("T")

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>authpool</title></head>
<body style="font-family:sans-serif;max-width:36em;margin:4em auto"><h2>{title}</h2><p>{text}</p></body></html>
"""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False  # never share the port with another listener
    listener: RedirectListener[Any]


class _Handler(BaseHTTPRequestHandler):
    # A browser may open speculative connections that never send a request: don't keep them forever.
    timeout = 10.0
    server_version = "authpool"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the query string holds the authorization code."""

    def do_GET(self) -> None:
        listener = cast(_Server, self.server).listener
        status, title, text = listener._handle(self.headers.get("Host", ""), self.path)
        body = _PAGE.format(title=html.escape(title), text=html.escape(text)).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True
        listener._page_sent()


class RedirectListener(Generic[T]):
    """Receive one OAuth redirect on ``http://127.0.0.1:PORT/PATH``.

    Usage::

        with RedirectListener(port=0, path="/callback") as listener:
            login = ...(redirect_uri=listener.redirect_uri)
            listener.serve(login.accept_redirect)   # returns the code, or raises
            code = listener.wait(timeout=300)       # None on timeout; re-raises accept's error

    ``accept`` gets the redirect's query parameters. What it returns is the result; an exception
    it raises ends the wait too and is re-raised by :meth:`wait` (its message is shown on the
    page, so it must hold no secret).
    """

    def __init__(self, *, port: int = 0, path: str = "/callback") -> None:
        self.path = path if path.startswith("/") else "/" + path
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._accept: Callable[[Mapping[str, str]], T] | None = None
        self._guard = threading.Lock()
        self._done = threading.Event()
        self._outcome: tuple[T | None, BaseException | None] | None = None

    def bind(self) -> RedirectListener[T]:
        """Bind ``127.0.0.1:port`` (0: any free port).

        Raises:
            OSError: the port is taken or cannot be bound.
        """
        server = _Server(("127.0.0.1", self._port), _Handler, bind_and_activate=True)
        server.listener = self
        self._server = server
        self._port = int(server.server_address[1])
        return self

    @property
    def redirect_uri(self) -> str:
        """``http://127.0.0.1:PORT/PATH`` (the listener must be bound)."""
        if self._server is None:
            raise RuntimeError("the listener is not bound")
        return f"http://127.0.0.1:{self._port}{self.path}"

    def serve(self, accept: Callable[[Mapping[str, str]], T]) -> None:
        """Start answering requests in a background thread; ``accept`` judges the redirect."""
        server = self._server or self.bind()._server
        if server is None:
            raise RuntimeError("the listener could not be bound")
        self._accept = accept
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="authpool-redirect", daemon=True)
        self._thread.start()

    def wait(self, timeout: float) -> T | None:
        """The accepted result, or ``None`` if no redirect came within ``timeout`` seconds.

        Raises:
            Exception: whatever ``accept`` raised for the redirect that came.
        """
        if not self._done.wait(timeout) or self._outcome is None:
            return None
        result, error = self._outcome
        if error is not None:
            raise error
        return result

    def close(self) -> None:
        """Stop serving and release the port."""
        server, self._server = self._server, None
        if server is None:
            return
        if self._thread is not None:
            server.shutdown()
            self._thread.join(timeout=2.0)
        server.server_close()

    def __enter__(self) -> RedirectListener[T]:
        if self._server is None:
            self.bind()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- called from handler threads -----------------------------------------------------------

    def _handle(self, host: str, target: str) -> tuple[int, str, str]:  # noqa: PLR0911 - one page per case
        split = urllib.parse.urlsplit(target)
        if host.lower() not in (f"127.0.0.1:{self._port}", f"localhost:{self._port}"):
            return 400, "Wrong address", "This page only answers on the loopback address."
        if split.path != self.path:
            return 404, "Not found", "Nothing here."
        params = {k: v[-1] for k, v in urllib.parse.parse_qs(split.query, keep_blank_values=True).items()}
        if "code" not in params and "error" not in params:
            return 400, "Not a login redirect", "This address only receives the redirect of an authpool login."
        with self._guard:
            if self._outcome is not None:
                return 410, "Login already finished", "This login has already finished; you can close this window."
            accept = self._accept
            if accept is None:
                return 503, "Not ready", "The login is not ready yet; try again."
            try:
                self._outcome = (accept(params), None)
            except Exception as e:  # noqa: BLE001 - handed to the waiting thread, which re-raises it
                self._outcome = (None, e)
                return 400, "Login failed", f"{e}. You can close this window and return to the terminal."
        return 200, "Login complete", "authpool received the login. You can close this window."

    def _page_sent(self) -> None:
        # Wake the waiter only once the page is out, so closing the server cannot cut it off.
        if self._outcome is not None:
            self._done.set()
