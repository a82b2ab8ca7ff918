"""A loopback HTTP server that behaves like a real LLM provider.

Why this exists: authpool's interesting behaviour (rotating accounts on 429, refreshing OAuth
tokens exactly once, never leaking credentials) only shows up against a server that answers
like Anthropic or OpenAI do.  Mocks at the HTTP-client level would let the product and the
tests agree on a fiction, so the test suite and ``authpool demo`` talk to this real socket
server instead.  It speaks HTTP/1.1 with keep-alive (so connection pooling is exercised),
rotates refresh tokens and revokes a whole token family on reuse (as real providers do), and
sends every flavour of rate-limit reset header that the product has to understand.

Only the standard library is used, so the server starts in milliseconds, runs anywhere the
product runs, and cannot drag a dependency into the product's runtime.  It binds 127.0.0.1
only and never writes to stdout/stderr while serving: the product's output discipline must
hold during ``authpool demo`` too.

Extension points: ``LoopbackProvider.grant_handlers`` maps an OAuth ``grant_type`` to a
handler and ``LoopbackProvider.routes`` maps ``(method, path)`` to a handler, so the
``authorization_code`` (+PKCE) and device-code grants and the ``/authorize`` and
``/oauth/device`` endpoints can be added without touching the HTTP plumbing.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import email.utils
import hashlib
import json
import math
import re
import secrets
import signal
import socket
import sys
import threading
import time
import types
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, cast

__all__ = [
    "QUOTA_WINDOW_STYLES",
    "RATE_LIMIT_STYLES",
    "STREAM_ERROR_MODES",
    "TOKEN_ENDPOINT_MODES",
    "GrantHandler",
    "LoopbackProvider",
    "LoopbackRequest",
    "LoopbackResponse",
    "LoopbackStats",
    "RouteHandler",
    "main",
]

ACCESS_PREFIX: Final = "lpat-"
REFRESH_PREFIX: Final = "lprt-"
API_KEY_PREFIX: Final = "lpk-"

RATE_LIMIT_STYLES: Final = frozenset(
    {"retry-after-seconds", "retry-after-date", "retry-after-ms", "anthropic", "openai", "none",
     # Deadlines carried elsewhere than Retry-After, each shape on its own (see _limit_body):
     "codex-resets-at", "codex-resets-in", "google-retry-info", "google-quota-reset", "anthropic-unified"}
)
TOKEN_ENDPOINT_MODES: Final = frozenset({"ok", "down", "garbage", "hang"})
STREAM_ERROR_MODES: Final = frozenset({"error-first", "error-after-content", "overloaded-first"})
#: Styles of the reset headers a subject's *successful* answers can carry (``set_quota_window``).
QUOTA_WINDOW_STYLES: Final = frozenset({"anthropic", "anthropic-unified", "openai"})
#: Gemini names the model in the path: ``POST /v1beta/models/<model>:generateContent``.
_GEMINI_PATH: Final = re.compile(r"^/v1beta/models/([^/:]+):generateContent$")

#: How long the token endpoint stalls in ``hang`` mode; long enough to trip any sane timeout.
TOKEN_HANG_SECONDS: Final = 30.0
#: Upper bound for ``/slow`` and ``set_hang`` so a typo cannot wedge a test run for hours.
MAX_WAIT_SECONDS: Final = 120.0
#: Request bodies above this are refused: the provider is for tests, not for bulk uploads.
MAX_BODY_BYTES: Final = 1 << 20
#: Upper bound for ``/big`` responses: large enough to exceed any truncation limit, small
#: enough that a typo cannot exhaust memory.
MAX_BIG_BYTES: Final = 16 << 20
#: Idle keep-alive connections are closed after this long, like a real front end would.
IDLE_CONNECTION_TIMEOUT: Final = 15.0
#: Who ``/authorize`` and ``approve_device`` log in unless a test says otherwise (``set_login``).
DEFAULT_LOGIN_SUBJECT: Final = "user@loopback.test"
DEVICE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"
#: Authorization codes live this long, as at real providers (RFC 6749 recommends <= 10 min).
AUTH_CODE_TTL: Final = 60.0
#: User codes avoid vowels (no accidental words) and look-alike characters, as RFC 8628 suggests.
_USER_CODE_ALPHABET: Final = "BCDFGHJKLMNPQRSTVWXZ"

_ERROR_TYPES: Final[Mapping[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _token(prefix: str) -> str:
    """Mint an opaque secret with a recognisable prefix, so tests can grep output for leaks."""
    return prefix + secrets.token_urlsafe(32)


def _error_body(status: int, message: str) -> dict[str, Any]:
    """Build an Anthropic-shaped error body; messages never contain credentials."""
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}}


def go_duration(seconds: float) -> str:
    """Format a duration the way OpenAI's ``x-ratelimit-reset-*`` headers do (Go style).

    Examples: ``20ms``, ``1s``, ``6m0s``, ``1h1m1.5s``.  Rounded *up* to the millisecond so
    a client that waits exactly this long never retries early.
    """
    ms = max(0, math.ceil(round(seconds * 1000, 3)))
    if ms < 1000:
        return f"{ms}ms"
    hours, rem = divmod(ms, 3_600_000)
    minutes, rem = divmod(rem, 60_000)
    secs = str(rem // 1000)
    if rem % 1000:
        secs += f".{rem % 1000:03d}".rstrip("0")
    out = ""
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return f"{out}{secs}s"


# --------------------------------------------------------------------------------------------
# Request / response model shared by routes and grant handlers


@dataclass(frozen=True)
class LoopbackRequest:
    """One parsed HTTP request, handed to route handlers.

    Header names are lower-cased so handlers need not care how a client spelled them.
    """

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """Decode the body as JSON (raises ``ValueError`` on malformed input)."""
        return json.loads(self.body.decode("utf-8")) if self.body else None

    def form(self) -> dict[str, str]:
        """Decode a form-urlencoded body or, for ``application/json``, a flat JSON object.

        Real token endpoints disagree about which one they accept; clients are free to send
        either, so the loopback provider accepts both.
        """
        content_type = self.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/json" or content_type.endswith("+json"):
            data = self.json()
            if not isinstance(data, dict):
                raise ValueError("JSON body must be an object")
            return {str(k): str(v) for k, v in data.items() if v is not None}
        parsed = urllib.parse.parse_qs(self.body.decode("utf-8"), keep_blank_values=True)
        return {k: v[-1] for k, v in parsed.items()}


@dataclass
class LoopbackResponse:
    """What a route handler wants sent back.

    ``stream`` set means the body is sent with chunked transfer encoding, one chunk per item
    and flushed per item, which is how SSE reaches the client incrementally without giving
    up HTTP/1.1 keep-alive.
    """

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stream: Iterable[bytes] | None = None

    @classmethod
    def json(cls, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> LoopbackResponse:
        """Build a JSON response with the right content type."""
        merged = {"Content-Type": "application/json"}
        merged.update(headers or {})
        return cls(status, json.dumps(payload).encode("utf-8"), merged)

    @classmethod
    def error(cls, status: int, message: str, headers: Mapping[str, str] | None = None) -> LoopbackResponse:
        """Build an Anthropic-shaped JSON error response."""
        return cls.json(status, _error_body(status, message), headers)


#: A route handler; returning ``None`` drops the connection without an answer (used when a
#: wait is interrupted by ``stop()``, which is what a dying server looks like to a client).
RouteHandler = Callable[[LoopbackRequest], "LoopbackResponse | None"]
#: A grant handler receives the decoded token-request parameters and returns
#: ``(status, json_body)``.  It is called without the provider lock held.
GrantHandler = Callable[[Mapping[str, str]], tuple[int, dict[str, Any]]]


# --------------------------------------------------------------------------------------------
# State


@dataclass
class LoopbackStats:
    """Counters tests assert on.  Mutated under the provider lock; read via ``snapshot()``.

    ``api_calls`` counts every request to an API endpoint (``/v1/...``), whatever the answer;
    ``api_calls_by_subject`` counts those that authenticated as that subject (including the
    ones then answered 429).  ``statuses`` counts every response the server sent, by status.
    ``invalid_grant_count`` includes the reuse-detected answers; ``reuse_detected_count``
    counts family revocations (presenting a token of an already revoked family again is
    plain invalid_grant, not a second detection).  ``connections`` counts TCP
    connections accepted, so tests can tell whether a client really reuses keep-alive
    connections.  ``handler_errors`` counts server-side bugs (kept off stderr); it should be 0.
    """

    token_calls: int = 0
    refresh_calls: int = 0
    api_calls: int = 0
    api_calls_by_subject: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    invalid_grant_count: int = 0
    reuse_detected_count: int = 0
    calls_by_path: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    handler_errors: int = 0


@dataclass
class _AccessToken:
    subject: str
    family: str
    expires_at: float
    revoked: bool = False


@dataclass
class _RefreshToken:
    subject: str
    family: str
    used: bool = False
    revoked: bool = False


@dataclass
class _RateLimit:
    """Per-subject limit: ``after`` successes, then 429 for ``retry_after`` seconds."""

    after: int | None
    style: str
    retry_after: float
    successes: int = 0
    limited_since: float | None = None


@dataclass
class _AuthCode:
    """An authorization code handed out by ``/authorize``: one use, bound to PKCE and redirect_uri."""

    subject: str
    identity: bool
    redirect_uri: str
    challenge: str
    expires_at: float
    used: bool = False
    family: str | None = None


@dataclass
class _DeviceGrant:
    """A device code and its user code (RFC 8628), with the answers each poll got."""

    user_code: str
    expires_at: float
    interval: float
    last_poll: float
    status: str = "pending"  # approved | denied | done
    subject: str = ""
    identity: bool = True
    answers: list[str] = field(default_factory=list)


def _check_style(style: str) -> None:
    if style not in RATE_LIMIT_STYLES:
        raise ValueError(f"unknown rate_limit_style {style!r}; expected one of {sorted(RATE_LIMIT_STYLES)}")


# --------------------------------------------------------------------------------------------
# HTTP plumbing


class _Server(ThreadingHTTPServer):
    """Threaded server that knows its provider and keeps failures off stderr."""

    daemon_threads = True
    allow_reuse_address = False
    # socketserver's default backlog of 5 drops SYNs when a test fires a burst of parallel
    # requests, and the kernel retries them only after a full second.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], provider: LoopbackProvider) -> None:
        self.provider = provider
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Count instead of printing a traceback: stderr belongs to the product under test."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return  # clients hanging up, or stop() shutting sockets: routine, not a bug
        self.provider._note_handler_error()


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
    def provider(self) -> LoopbackProvider:
        return cast(_Server, self.server).provider

    def setup(self) -> None:
        super().setup()
        self.provider._track_connection(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.provider._track_connection(self.connection, add=False)

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
        self.provider._count_path(split.path)
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
                response = self.provider._dispatch(request)
        if response is None:
            self.close_connection = True  # interrupted by stop(): vanish like a dying server
            return
        if body is None:
            # The rest of the body is still on the wire, so this connection cannot be reused.
            self.close_connection = True
            response.headers["Connection"] = "close"
        self.provider._count_status(response.status)
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
        for chunk in response.stream:
            if chunk:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


# --------------------------------------------------------------------------------------------
# The provider


class LoopbackProvider:
    """An in-process fake LLM provider with a real socket, real OAuth and real rate limits.

    Thread-safe: tests reconfigure it (expire tokens, set rate limits, inject failures) while
    client threads are hammering it.  Use as a context manager or call ``start``/``stop``.
    """

    client_id: str = "authpool-test"

    def __init__(
        self,
        *,
        access_ttl: float = 3600.0,
        rate_limit: int | None = None,
        rate_limit_style: str = "retry-after-seconds",
        retry_after: float = 30.0,
        port: int = 0,
        device_interval: float = 5.0,
        device_ttl: float = 600.0,
    ) -> None:
        """Configure; nothing listens until ``start()``.

        ``rate_limit``/``rate_limit_style``/``retry_after`` are the default limit for every
        subject without its own ``set_rate_limit``.  ``port`` 0 picks a free port, which is
        what tests want: parallel runs never collide.  ``device_interval`` and ``device_ttl``
        are the polling interval and lifetime of device codes (small values make tests fast).
        """
        _check_style(rate_limit_style)
        self.access_ttl = access_ttl
        self._port = port
        self._default_limit = (rate_limit, rate_limit_style, retry_after)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._access: dict[str, _AccessToken] = {}
        self._refresh: dict[str, _RefreshToken] = {}
        self._api_keys: dict[str, str] = {}
        self._limits: dict[str, _RateLimit] = {}
        self._stream_errors: dict[str, str] = {}
        self._stream_delay = 0.0
        self._model_limits: dict[tuple[str, str], _RateLimit] = {}
        self._always_failing: dict[str, int] = {}
        self._quota_windows: dict[str, tuple[str, float, float]] = {}  # subject -> (style, length, start)
        self._always_unauthorized: set[str] = set()
        self._failures: tuple[int, int] = (0, 500)
        self._hang = 0.0
        self._oauth_mode = "ok"
        self._request_seq = 0
        self.stats = LoopbackStats()
        #: OAuth grant types the token endpoint understands; add entries to extend.
        self.grant_handlers: dict[str, GrantHandler] = {"refresh_token": self._grant_refresh_token}
        #: ``(METHOD, path) -> handler``; add entries for new endpoints.
        self.routes: dict[tuple[str, str], RouteHandler] = {
            ("POST", "/oauth/token"): self._route_token,
            ("POST", "/v1/messages"): self._route_messages,
            ("POST", "/v1/chat/completions"): self._route_chat_completions,
            ("GET", "/v1/models"): self._route_models,
            ("GET", "/redirect"): self._route_redirect,
            ("POST", "/redirect"): self._route_redirect,
            ("GET", "/echo-auth-present"): self._route_echo_auth_present,
            ("POST", "/echo-auth-present"): self._route_echo_auth_present,
            ("GET", "/slow"): self._route_slow,
            ("GET", "/big"): self._route_big,
        }
        # Logins: authorization code + PKCE and the device flow (see "logins" below).
        self.device_interval = device_interval
        self.device_ttl = device_ttl
        #: Polls closer together than this (or the code's interval, if larger) get ``slow_down``.
        self.device_min_interval = 0.0
        #: How much ``slow_down`` adds to a device code's interval (RFC 8628 says 5 s).
        self.slow_down_step = 5.0
        self._login_subject, self._login_deny, self._login_identity = DEFAULT_LOGIN_SUBJECT, False, True
        self._auth_codes: dict[str, _AuthCode] = {}
        self._devices: dict[str, _DeviceGrant] = {}
        self._id_tokens: list[str] = []
        self.grant_handlers.update({
            "authorization_code": self._grant_authorization_code,
            DEVICE_GRANT: self._grant_device_code,
        })
        self.routes.update({
            ("GET", "/authorize"): self._route_authorize,
            ("POST", "/oauth/device"): self._route_device_authorization,
            ("GET", "/device"): self._route_device_page,
        })

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> LoopbackProvider:
        """Bind 127.0.0.1 on a free port and serve from a daemon thread."""
        if self._server is not None or self._stopping.is_set():
            raise RuntimeError("a LoopbackProvider can be started once; create a new one")
        self._server = _Server(("127.0.0.1", self._port), self)
        self._port = int(self._server.server_address[1])
        # A short poll interval is what makes stop() return quickly (shutdown() waits for the
        # serve loop to notice); 10 ms of idle select() wake-ups cost nothing measurable.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="authpool-loopback",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake every wait, and cut open keep-alive connections (< 1 s).

        Cutting pooled connections matters: otherwise a client could keep talking to a
        "stopped" provider over an old socket and a test of outage handling would lie.
        """
        self._stopping.set()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def __enter__(self) -> LoopbackProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port; still answers after ``stop()``, so tests can aim at a dead provider."""
        if not self._port:
            raise RuntimeError("LoopbackProvider has not been started")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        """The OAuth token endpoint."""
        return self.base_url + "/oauth/token"

    # ---- accounts and credentials ------------------------------------------------------------

    def add_oauth_account(self, subject: str) -> dict[str, Any]:
        """Register a user as if they had just logged in; return a fresh token set.

        Each call starts a new token family (a new "login"), independent of earlier ones.
        """
        with self._lock:
            return self._issue(subject, family=secrets.token_hex(8))

    def add_api_key(self, subject: str) -> str:
        """Create an API key for ``subject`` (a subject may have several, and OAuth too)."""
        key = _token(API_KEY_PREFIX)
        with self._lock:
            self._api_keys[key] = subject
        return key

    def expire_access_tokens(self, subject: str | None = None) -> None:
        """Make current access tokens of ``subject`` (or everyone) answer 401; refresh still works."""
        now = time.monotonic()
        with self._lock:
            for tok in self._access.values():
                if subject is None or tok.subject == subject:
                    tok.expires_at = min(tok.expires_at, now - 1.0)

    def revoke_refresh_tokens(self, subject: str | None = None) -> None:
        """Revoke refresh tokens of ``subject`` (or everyone): the next refresh is invalid_grant.

        This is what a user revoking the app, or a provider-side password reset, looks like.
        Access tokens keep working until they expire.
        """
        with self._lock:
            for tok in self._refresh.values():
                if subject is None or tok.subject == subject:
                    tok.revoked = True

    def _issue(self, subject: str, family: str) -> dict[str, Any]:
        """Mint an access+refresh pair in ``family``; caller holds the lock."""
        access, refresh = _token(ACCESS_PREFIX), _token(REFRESH_PREFIX)
        self._access[access] = _AccessToken(subject, family, time.monotonic() + self.access_ttl)
        self._refresh[refresh] = _RefreshToken(subject, family)
        ttl = self.access_ttl
        return {
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": int(ttl) if float(ttl).is_integer() else ttl,
            "token_type": "Bearer",
            "scope": "user:inference",
            "subject": subject,
        }

    def _revoke_family(self, family: str) -> None:
        """Theft response: kill every access and refresh token of the family; caller holds lock."""
        for tok in self._access.values():
            if tok.family == family:
                tok.revoked = True
        for rtok in self._refresh.values():
            if rtok.family == family:
                rtok.revoked = True

    # ---- fault injection ---------------------------------------------------------------------

    def set_rate_limit(
        self, subject: str, after: int | None, style: str = "retry-after-seconds", retry_after: float = 30.0,
        *, model: str | None = None,
    ) -> None:
        """After ``after`` successful API requests by ``subject``, answer 429 for ``retry_after`` s.

        When the window has passed the counter resets and the subject gets ``after`` more.
        ``after=None`` disables limiting for the subject (overriding the constructor default).

        ``model`` limits only requests for that model (the JSON body's ``model``, or the model in
        a Gemini path), as providers' per-model quotas do; the 429 body then names the model
        (OpenAI's "Rate limit reached for MODEL in organization …", or Google's
        ``quotaDimensions.model``). Other models of the subject are unaffected.
        """
        _check_style(style)
        with self._lock:
            if model is None:
                self._limits[subject] = _RateLimit(after, style, retry_after)
            else:
                self._model_limits[(subject, model)] = _RateLimit(after, style, retry_after)

    def clear_rate_limit(self, subject: str) -> None:
        """Lift any limit on ``subject`` (per-model ones and the constructor default too) and reset its count."""
        with self._lock:
            self._limits[subject] = _RateLimit(None, "none", 0.0)
            for key in [k for k in self._model_limits if k[0] == subject]:
                del self._model_limits[key]

    def set_failures(self, n: int, status: int = 500) -> None:
        """Fail the next ``n`` API requests (any subject, before authentication) with ``status``."""
        with self._lock:
            self._failures = (max(0, n), status)

    def set_hang(self, seconds: float) -> None:
        """Delay every API request by ``seconds`` (0 to turn off); ``stop()`` cuts the wait short."""
        with self._lock:
            self._hang = min(max(0.0, seconds), MAX_WAIT_SECONDS)

    def set_token_endpoint_mode(self, mode: str) -> None:
        """``ok``; ``down`` (500 JSON); ``garbage`` (200 HTML); ``hang`` (30 s stall, then normal)."""
        if mode not in TOKEN_ENDPOINT_MODES:
            raise ValueError(f"unknown token endpoint mode {mode!r}")
        with self._lock:
            self._oauth_mode = mode

    def set_stream_error(self, subject: str, mode: str | None) -> None:
        """Make streamed ``/v1/messages`` and ``/v1/chat/completions`` of ``subject`` carry an error event.

        ``error-first``: HTTP 200 whose first event is an error (the request may be retried on
        another account); ``error-after-content``: one content delta, then the error (it must
        not be retried blindly, text was already shown); ``overloaded-first``: HTTP 200 opening
        with an ``overloaded_error`` (capacity, not a limit of the account).  ``None`` turns it
        off.  Persistent until turned off.  Streamed ``/v1/chat/completions`` break the same
        way, with OpenAI's ``data: {"error": …}`` chunks.
        """
        if mode is not None and mode not in STREAM_ERROR_MODES:
            raise ValueError(f"unknown stream error mode {mode!r}")
        with self._lock:
            if mode is None:
                self._stream_errors.pop(subject, None)
            else:
                self._stream_errors[subject] = mode

    def set_always_unauthorized(self, subject: str, on: bool = True) -> None:
        """Answer 401 to every API request of ``subject``, even with a valid, fresh token.

        Models a login the provider refuses although refreshing it still works (a suspended
        subscription, a revoked scope): a client must not loop refreshing it forever.
        Requests are still counted in ``api_calls_by_subject``.
        """
        with self._lock:
            if on:
                self._always_unauthorized.add(subject)
            else:
                self._always_unauthorized.discard(subject)

    def set_always_failing(self, subject: str, status: int | None) -> None:
        """Answer every authenticated API request of ``subject`` with ``status`` (a 5xx, say).

        ``0`` closes the connection without an answer instead (a network error to the client);
        ``None`` turns it off.  Models one broken account (a region outage behind it, a bad
        proxy) while the others work.  Requests are still counted in ``api_calls_by_subject``.
        """
        with self._lock:
            if status is None:
                self._always_failing.pop(subject, None)
            else:
                self._always_failing[subject] = status

    def set_stream_delay(self, seconds: float) -> None:
        """Pause ``seconds`` before each event of a stream after the first (0 to turn off).

        Slow streams let tests see progress while a stream is still arriving; ``stop()`` cuts
        the pauses short.
        """
        with self._lock:
            self._stream_delay = min(max(0.0, seconds), MAX_WAIT_SECONDS)

    def set_quota_window(self, subject: str, seconds: float | None, style: str = "anthropic-unified") -> None:
        """Make ``subject``'s successful answers carry reset headers of a quota window.

        The window is ``seconds`` long and starts now; when it ends the next one begins, so the
        headers always name the current window's end, as providers report it on every answer
        (``anthropic`` and ``anthropic-unified``: timestamps / epoch seconds; ``openai``: a
        duration).  ``None`` turns it off.
        """
        if style not in QUOTA_WINDOW_STYLES:
            raise ValueError(f"unknown quota window style {style!r}; expected one of {sorted(QUOTA_WINDOW_STYLES)}")
        with self._lock:
            if seconds is None:
                self._quota_windows.pop(subject, None)
            else:
                self._quota_windows[subject] = (style, max(1.0, seconds), time.time())

    def issued_secrets(self) -> list[str]:
        """Every access token, refresh token and API key minted so far (for leak scans in tests)."""
        with self._lock:
            return [*self._access, *self._refresh, *self._api_keys]

    # ---- stats ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A JSON-serialisable deep copy of the counters (status codes become string keys)."""
        with self._lock:
            data = dataclasses.asdict(self.stats)
        data["statuses"] = {str(k): v for k, v in sorted(data["statuses"].items())}
        return data

    def reset_stats(self) -> None:
        """Zero all counters (e.g. after a test's setup phase)."""
        with self._lock:
            self.stats = LoopbackStats()

    def _count_status(self, status: int) -> None:
        with self._lock:
            self.stats.statuses[status] = self.stats.statuses.get(status, 0) + 1

    def _note_handler_error(self) -> None:
        with self._lock:
            self.stats.handler_errors += 1

    def _track_connection(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
                self.stats.connections += 1
            else:
                self._connections.discard(conn)

    def _wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; ``False`` if ``stop()`` interrupted the wait."""
        return not self._stopping.wait(max(0.0, min(seconds, MAX_WAIT_SECONDS)))

    # ---- dispatch -------------------------------------------------------------------------

    def _count_path(self, path: str) -> None:
        with self._lock:
            self.stats.calls_by_path[path] = self.stats.calls_by_path.get(path, 0) + 1

    def _dispatch(self, request: LoopbackRequest) -> LoopbackResponse | None:
        handler = self.routes.get((request.method, request.path))
        if handler is None and request.method == "POST" and _GEMINI_PATH.match(request.path):
            handler = self._route_generate_content  # the one route whose path embeds a parameter
        if handler is None:
            if any(path == request.path for _, path in self.routes):
                return LoopbackResponse.error(405, "method not allowed")
            return LoopbackResponse.error(404, "not found")
        try:
            return handler(request)
        except Exception:  # noqa: BLE001 - a handler bug must become a 500, not a traceback
            self._note_handler_error()
            return LoopbackResponse.error(500, "loopback handler failed")

    # ---- OAuth token endpoint --------------------------------------------------------------

    def _route_token(self, request: LoopbackRequest) -> LoopbackResponse | None:
        with self._lock:
            self.stats.token_calls += 1
            mode = self._oauth_mode
        if mode == "down":
            return LoopbackResponse.json(500, {"error": "server_error", "error_description": "token service down"})
        if mode == "garbage":
            return LoopbackResponse(200, b"<html>oops</html>", {"Content-Type": "text/html"})
        if mode == "hang" and not self._wait(TOKEN_HANG_SECONDS):
            return None
        return self._token_grant(request)

    def _token_grant(self, request: LoopbackRequest) -> LoopbackResponse:
        """Validate the client and hand the parameters to the grant type's handler."""
        try:
            params = request.form()
        except (ValueError, UnicodeDecodeError):
            return LoopbackResponse.json(400, {"error": "invalid_request", "error_description": "malformed body"})
        client_id = params.get("client_id")
        if client_id is not None and client_id != self.client_id:
            return LoopbackResponse.json(401, {"error": "invalid_client", "error_description": "unknown client"})
        grant = self.grant_handlers.get(params.get("grant_type", ""))
        if grant is None:
            return LoopbackResponse.json(
                400, {"error": "unsupported_grant_type", "error_description": "unsupported grant_type"}
            )
        status, payload = grant(params)
        headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        return LoopbackResponse.json(status, payload, headers)

    def _grant_refresh_token(self, params: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """Rotate: a refresh token is good exactly once; a second use revokes the family."""
        presented = params.get("refresh_token")
        with self._lock:
            self.stats.refresh_calls += 1
            if not presented:
                return 400, {"error": "invalid_request", "error_description": "refresh_token is required"}
            tok = self._refresh.get(presented)
            if tok is None or tok.revoked:
                self.stats.invalid_grant_count += 1
                return 400, {
                    "error": "invalid_grant",
                    "error_description": "refresh token is invalid or revoked",
                }
            if tok.used:
                self._revoke_family(tok.family)
                self.stats.invalid_grant_count += 1
                self.stats.reuse_detected_count += 1
                return 400, {"error": "invalid_grant", "error_description": "refresh token reuse detected"}
            tok.used = True
            return 200, self._issue(tok.subject, tok.family)

    # ---- logins: /authorize + authorization_code (PKCE), /oauth/device + device_code ---------

    def set_login(self, subject: str = DEFAULT_LOGIN_SUBJECT, *, deny: bool = False, identity: bool = True) -> None:
        """Decide what the "user" does at ``/authorize``, and whom ``approve_device`` logs in.

        ``/authorize`` approves at once as ``subject`` (redirecting back with a code), or with
        ``deny`` redirects back with ``error=access_denied``.  ``identity`` False leaves the user
        out of the token response (no ``id_token``, no ``subject``), as some providers do.
        """
        with self._lock:
            self._login_subject, self._login_deny, self._login_identity = subject, deny, identity

    def approve_device(self, user_code: str, subject: str | None = None) -> None:
        """The user enters ``user_code`` and approves: the next poll gets tokens for ``subject``.

        Raises ``KeyError`` if no pending device login has this user code.
        """
        with self._lock:
            grant = self._pending_device(user_code)
            grant.status, grant.subject = "approved", subject or self._login_subject
            grant.identity = self._login_identity

    def deny_device(self, user_code: str) -> None:
        """The user enters ``user_code`` and refuses: the next poll gets ``access_denied``."""
        with self._lock:
            self._pending_device(user_code).status = "denied"

    def pending_user_codes(self) -> list[str]:
        """User codes of device logins nobody has approved or denied yet."""
        with self._lock:
            return [g.user_code for g in self._devices.values() if g.status == "pending"]

    def device_answers(self, user_code: str) -> list[str]:
        """What each poll of this device login was answered (``authorization_pending``, ``slow_down``, ``tokens``…)."""
        with self._lock:
            for grant in self._devices.values():
                if grant.user_code == user_code:
                    return list(grant.answers)
        raise KeyError(user_code)

    def issued_login_secrets(self) -> list[str]:
        """Every authorization code, device code and id_token handed out (for leak scans)."""
        with self._lock:
            return [*self._auth_codes, *self._devices, *self._id_tokens]

    def _pending_device(self, user_code: str) -> _DeviceGrant:
        wanted = user_code.strip().upper().replace("-", "")
        for grant in self._devices.values():
            if grant.status == "pending" and grant.user_code.replace("-", "") == wanted:
                return grant
        raise KeyError(user_code)

    def _issue_login(self, subject: str, identity: bool) -> dict[str, Any]:
        """A new login's tokens (a new family), with an unsigned id_token naming the user; caller holds lock."""
        doc = self._issue(subject, family=secrets.token_hex(8))
        if not identity:
            doc.pop("subject", None)
            return doc
        claims: dict[str, Any] = {"iss": self.base_url, "aud": self.client_id, "sub": subject,
                                  "iat": int(time.time()), "exp": int(time.time() + self.access_ttl)}
        if "@" in subject:
            claims["email"], claims["email_verified"] = subject, True

        def part(obj: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

        doc["id_token"] = f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."
        self._id_tokens.append(doc["id_token"])
        return doc

    def _route_authorize(self, request: LoopbackRequest) -> LoopbackResponse | None:  # noqa: PLR0911 - one per check
        """The login page, minus the page: validate the request, then approve or deny at once."""
        q = request.query
        if q.get("client_id") != self.client_id:
            return LoopbackResponse.error(400, "unknown client_id")
        redirect_uri = q.get("redirect_uri", "")
        split = urllib.parse.urlsplit(redirect_uri)
        try:
            port = split.port
        except ValueError:
            port = None
        if split.scheme != "http" or split.hostname != "127.0.0.1" or port is None or split.fragment:
            # Never redirect to an unvalidated URI (RFC 6749 section 4.1.2.1): answer here instead.
            return LoopbackResponse.error(400, "redirect_uri must be http://127.0.0.1:PORT/PATH")

        def back(**params: str) -> LoopbackResponse:
            sep = "&" if split.query else "?"
            return LoopbackResponse(302, headers={"Location": redirect_uri + sep + urllib.parse.urlencode(params)})

        state = q.get("state", "")
        if not state:
            return back(error="invalid_request", error_description="state is required")
        if q.get("response_type") != "code":
            return back(error="unsupported_response_type", state=state)
        challenge = q.get("code_challenge", "")
        if q.get("code_challenge_method") != "S256" or not (43 <= len(challenge) <= 128):
            return back(error="invalid_request", error_description="PKCE with S256 is required", state=state)
        with self._lock:
            if self._login_deny:
                return back(error="access_denied", error_description="the user denied access", state=state)
            code = _token("lpac-")
            self._auth_codes[code] = _AuthCode(self._login_subject, self._login_identity, redirect_uri, challenge,
                                               time.monotonic() + AUTH_CODE_TTL)
        return back(code=code, state=state)

    def _grant_authorization_code(self, params: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """Redeem a code once, checking client, redirect_uri and the PKCE verifier."""
        def refuse(why: str) -> tuple[int, dict[str, Any]]:
            self.stats.invalid_grant_count += 1
            return 400, {"error": "invalid_grant", "error_description": why}

        if params.get("client_id") != self.client_id:
            return 401, {"error": "invalid_client", "error_description": "client_id is required"}
        with self._lock:
            entry = self._auth_codes.get(params.get("code", ""))
            if entry is None or entry.expires_at <= time.monotonic():
                return refuse("authorization code is invalid or expired")
            if entry.used:  # a replayed code: revoke what it issued (RFC 6749 section 4.1.2)
                if entry.family:
                    self._revoke_family(entry.family)
                return refuse("authorization code was already used")
            entry.used = True
            if params.get("redirect_uri") != entry.redirect_uri:
                return refuse("redirect_uri does not match the authorization request")
            verifier = params.get("code_verifier", "")
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if not verifier or not secrets.compare_digest(digest, entry.challenge):
                return refuse("PKCE verification failed")
            doc = self._issue_login(entry.subject, entry.identity)
            entry.family = self._refresh[doc["refresh_token"]].family
            return 200, doc

    def _route_device_authorization(self, request: LoopbackRequest) -> LoopbackResponse | None:
        """RFC 8628 section 3.2: a device code for the poller, a user code for the human."""
        try:
            params = request.form()
        except (ValueError, UnicodeDecodeError):
            return LoopbackResponse.json(400, {"error": "invalid_request", "error_description": "malformed body"})
        if params.get("client_id") != self.client_id:
            return LoopbackResponse.json(401, {"error": "invalid_client", "error_description": "unknown client"})
        device_code = _token("lpdc-")
        raw = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(8))
        user_code = f"{raw[:4]}-{raw[4:]}"
        now = time.monotonic()
        with self._lock:
            self._devices[device_code] = _DeviceGrant(user_code, now + self.device_ttl, self.device_interval, now)
        uri = self.base_url + "/device"
        return LoopbackResponse.json(200, {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": uri,
            "verification_uri_complete": f"{uri}?user_code={user_code}",
            "expires_in": self.device_ttl,
            "interval": self.device_interval,
        }, {"Cache-Control": "no-store"})

    def _route_device_page(self, request: LoopbackRequest) -> LoopbackResponse | None:
        """Where a person would enter the code; ``?user_code=…&action=approve|deny`` acts for them."""
        user_code, action = request.query.get("user_code", ""), request.query.get("action", "")
        try:
            if action == "approve":
                self.approve_device(user_code)
            elif action == "deny":
                self.deny_device(user_code)
        except KeyError:
            return LoopbackResponse(404, b"no pending login has this code\n", {"Content-Type": "text/plain"})
        text = f"{action}d {user_code}\n" if action in ("approve", "deny") else (
            "authpool loopback: add ?user_code=CODE&action=approve (or deny) to this URL\n")
        return LoopbackResponse(200, text.encode(), {"Content-Type": "text/plain"})

    def _grant_device_code(self, params: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """RFC 8628 section 3.5: pending, slow_down (polled too fast), expired, denied, or tokens once."""
        now = time.monotonic()
        with self._lock:
            grant = self._devices.get(params.get("device_code", ""))
            if grant is None or grant.status == "done":
                self.stats.invalid_grant_count += 1
                return 400, {"error": "invalid_grant", "error_description": "unknown or used device code"}

            def answer(error: str, **more: Any) -> tuple[int, dict[str, Any]]:
                grant.answers.append(error)
                return 400, {"error": error, **more}

            if now >= grant.expires_at:
                return answer("expired_token")
            # 10 ms of slack: a client that waits exactly the interval is never told off.
            too_fast = now - grant.last_poll < max(grant.interval, self.device_min_interval) - 0.01
            grant.last_poll = now
            if too_fast:
                grant.interval += self.slow_down_step
                return answer("slow_down", interval=grant.interval)
            if grant.status == "denied":
                return answer("access_denied")
            if grant.status == "pending":
                return answer("authorization_pending")
            grant.status = "done"
            grant.answers.append("tokens")
            return 200, self._issue_login(grant.subject, grant.identity)

    # ---- API endpoints ---------------------------------------------------------------------

    def _authenticate(self, request: LoopbackRequest, *, bearer_api_keys: bool) -> str | None:
        """Return the subject behind the request's credential, or ``None``.

        ``Authorization: Bearer`` wins over ``x-api-key`` when both are sent.  Bearer accepts
        OAuth access tokens, and API keys only where OpenAI-style endpoints allow it;
        ``x-api-key`` accepts only API keys (an access token there is a client bug).
        """
        auth = request.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        now = time.monotonic()
        with self._lock:
            if auth:
                if scheme.lower() != "bearer":
                    return None
                value = value.strip()
                tok = self._access.get(value)
                if tok is not None:
                    return tok.subject if not tok.revoked and tok.expires_at > now else None
                return self._api_keys.get(value) if bearer_api_keys else None
            return self._api_keys.get(request.headers.get("x-api-key", "").strip())

    def _rate_limit_response(self, subject: str, model: str | None = None) -> LoopbackResponse | None:
        """Apply the subject's limits (the requested model's, then its own); count a success or build the 429.

        Caller holds the lock.
        """
        scoped = self._model_limits.get((subject, model)) if model is not None else None
        if scoped is not None and (left := _spend(scoped)) is not None:
            return _limit_response(scoped.style, left, model)
        limit = self._limits.get(subject)
        if limit is None:
            after, style, retry_after = self._default_limit
            limit = self._limits[subject] = _RateLimit(after, style, retry_after)
        remaining = _spend(limit)
        return None if remaining is None else _limit_response(limit.style, remaining, None)

    def _api_preamble(
        self, request: LoopbackRequest, *, bearer_api_keys: bool
    ) -> tuple[str, int] | LoopbackResponse | None:
        """Shared front half of every API call: hang, injected failure, auth, rate limit.

        Returns ``(subject, request_number)``, or the response to send instead, or ``None``
        to drop the connection (stop() during a hang).
        """
        with self._lock:
            self.stats.api_calls += 1
            hang = self._hang
        if hang and not self._wait(hang):
            return None
        with self._lock:
            remaining, status = self._failures
            if remaining:
                self._failures = (remaining - 1, status)
        if remaining:
            return LoopbackResponse.error(status, "injected failure")
        subject = self._authenticate(request, bearer_api_keys=bearer_api_keys)
        if subject is None:
            return LoopbackResponse.error(401, "invalid x-api-key")
        with self._lock:
            by_subject = self.stats.api_calls_by_subject
            by_subject[subject] = by_subject.get(subject, 0) + 1
            refused = subject in self._always_unauthorized
            failing = self._always_failing.get(subject)
        if refused:
            return LoopbackResponse.error(401, "invalid x-api-key")
        if failing is not None:
            return LoopbackResponse.error(failing, "injected failure") if failing else None
        model = _requested_model(request)
        with self._lock:
            limited = self._rate_limit_response(subject, model)
            self._request_seq += 1
            seq = self._request_seq
        return limited if limited is not None else (subject, seq)

    def _api_call(
        self,
        request: LoopbackRequest,
        build: Callable[[str, int, dict[str, Any]], LoopbackResponse],
        *,
        bearer_api_keys: bool,
    ) -> LoopbackResponse | None:
        outcome = self._api_preamble(request, bearer_api_keys=bearer_api_keys)
        if not isinstance(outcome, tuple):
            return outcome
        subject, seq = outcome
        try:
            payload = request.json() if request.method == "POST" else {}
        except (ValueError, UnicodeDecodeError):
            return LoopbackResponse.error(400, "request body is not valid JSON")
        if not isinstance(payload, dict):
            payload = {}
        response = build(subject, seq, payload)
        response.headers.setdefault("request-id", f"req_loopback_{seq}")
        with self._lock:
            window = self._quota_windows.get(subject)
        if window is not None and response.status < 400:
            style, length, start = window
            response.headers.update(_window_headers(style, length - (time.time() - start) % length))
        return response

    def _route_messages(self, request: LoopbackRequest) -> LoopbackResponse | None:
        return self._api_call(request, self._build_message, bearer_api_keys=False)

    def _route_chat_completions(self, request: LoopbackRequest) -> LoopbackResponse | None:
        return self._api_call(request, self._build_chat, bearer_api_keys=True)

    def _route_generate_content(self, request: LoopbackRequest) -> LoopbackResponse | None:
        return self._api_call(request, _build_generate_content(request.path), bearer_api_keys=True)

    def _build_chat(self, subject: str, seq: int, payload: dict[str, Any]) -> LoopbackResponse:
        """OpenAI chat completions; ``"stream": true`` streams ``chat.completion.chunk`` events."""
        if payload.get("stream") is not True:
            return _build_chat_completion(subject, seq, payload)
        model = str(payload.get("model") or "loopback-model")
        with self._lock:
            mode = self._stream_errors.get(subject)
        headers = {"Content-Type": "text/event-stream; charset=utf-8"}
        return LoopbackResponse(200, headers=headers, stream=self._paced(_chat_chunks(subject, seq, model, mode)))

    def _paced(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """``chunks``, with the configured stream delay before each one after the first."""
        with self._lock:
            delay = self._stream_delay
        for i, chunk in enumerate(chunks):
            if i and delay and not self._wait(delay):
                return  # stop() during a pause: the stream breaks off, as a dying server's would
            yield chunk

    def _route_models(self, request: LoopbackRequest) -> LoopbackResponse | None:
        return self._api_call(request, _build_models, bearer_api_keys=True)

    def _build_message(self, subject: str, seq: int, payload: dict[str, Any]) -> LoopbackResponse:
        model = str(payload.get("model") or "loopback-model")
        if payload.get("stream") is True:
            with self._lock:
                mode = self._stream_errors.get(subject)
            headers = {"Content-Type": "text/event-stream; charset=utf-8"}
            return LoopbackResponse(200, headers=headers, stream=self._paced(_sse_events(subject, seq, model, mode)))
        return LoopbackResponse.json(
            200,
            {
                "id": f"msg_loopback_{seq}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": f"Hello from {subject}."}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 5, "output_tokens": 4},
                "subject": subject,
            },
        )

    # ---- test-helper endpoints -------------------------------------------------------------

    def _route_redirect(self, request: LoopbackRequest) -> LoopbackResponse | None:
        """Redirect to ``to``: lets tests check credentials are dropped across origins."""
        target = request.query.get("to")
        try:
            status = int(request.query.get("status", "307"))
        except ValueError:
            status = 0
        if not target or status not in (301, 302, 303, 307, 308):
            return LoopbackResponse.error(400, "need ?to=URL and a redirect status")
        return LoopbackResponse(status, headers={"Location": target})

    def _route_echo_auth_present(self, request: LoopbackRequest) -> LoopbackResponse | None:
        """Report which credential headers arrived (presence only, never their values)."""
        return LoopbackResponse.json(
            200,
            {
                "authorization": "authorization" in request.headers,
                "x_api_key": "x-api-key" in request.headers,
                "cookie": "cookie" in request.headers,
            },
        )

    def _route_slow(self, request: LoopbackRequest) -> LoopbackResponse | None:
        """Answer after ``seconds`` (bounded, cut short by stop()) to exercise client timeouts."""
        try:
            seconds = float(request.query.get("seconds", "1"))
        except ValueError:
            return LoopbackResponse.error(400, "seconds must be a number")
        if not math.isfinite(seconds):
            return LoopbackResponse.error(400, "seconds must be finite")
        if not self._wait(seconds):
            return None
        return LoopbackResponse.json(200, {"slept": min(max(0.0, seconds), MAX_WAIT_SECONDS)})

    def _route_big(self, request: LoopbackRequest) -> LoopbackResponse | None:
        """Answer exactly ``bytes`` bytes of ASCII text, to exercise response-size limits."""
        try:
            size = int(request.query.get("bytes", "1048576"))
        except ValueError:
            return LoopbackResponse.error(400, "bytes must be an integer")
        if not 0 <= size <= MAX_BIG_BYTES:
            return LoopbackResponse.error(400, f"bytes must be between 0 and {MAX_BIG_BYTES}")
        line = b"authpool loopback: one line of a large plain-text response body.\n"
        body = (line * (size // len(line) + 1))[:size]
        return LoopbackResponse(200, body, {"Content-Type": "text/plain; charset=utf-8"})


# --------------------------------------------------------------------------------------------
# Response builders (pure functions, no provider state)


def _reset_headers(style: str, remaining: float) -> dict[str, str]:  # noqa: PLR0911 - one per dialect
    """Rate-limit reset information in each dialect the product must parse.

    All values are rounded *up*, so a client honouring them never comes back too early
    (after shaving float noise: 90.00000000001 s must read as 90, not 91).
    """
    remaining = round(remaining, 6)
    wall = round(time.time() + remaining, 6)
    if style == "retry-after-seconds":
        return {"Retry-After": str(math.ceil(remaining))}
    if style == "retry-after-date":
        return {"Retry-After": email.utils.formatdate(math.ceil(wall), usegmt=True)}
    if style == "retry-after-ms":
        return {"retry-after-ms": str(math.ceil(remaining * 1000))}
    if style == "anthropic":
        stamp = datetime.fromtimestamp(math.ceil(wall), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": stamp,
            "anthropic-ratelimit-tokens-reset": stamp,
        }
    if style == "anthropic-unified":
        # A Claude subscription's unified limit: the weekly window is exhausted (it decides),
        # the five-hour one still has room and resets sooner. Epoch seconds, as Anthropic sends.
        return {
            "anthropic-ratelimit-unified-status": "rejected",
            "anthropic-ratelimit-unified-5h-status": "allowed",
            "anthropic-ratelimit-unified-5h-reset": str(math.ceil(time.time() + remaining / 4)),
            "anthropic-ratelimit-unified-7d-status": "rejected",
            "anthropic-ratelimit-unified-7d-reset": str(math.ceil(wall)),
            "anthropic-ratelimit-unified-representative-claim": "seven_day",
        }
    if style == "openai":
        duration = go_duration(remaining)
        return {
            "x-ratelimit-limit-requests": "50",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": duration,
            "x-ratelimit-reset-tokens": duration,
        }
    return {}


def _spend(limit: _RateLimit) -> float | None:
    """Count one request against ``limit``: None if allowed, else the seconds until it resets."""
    if limit.after is None:
        return None
    now = time.monotonic()
    if limit.limited_since is not None and now - limit.limited_since >= limit.retry_after:
        limit.successes, limit.limited_since = 0, None
    if limit.successes < limit.after:
        limit.successes += 1
        return None
    if limit.limited_since is None:
        limit.limited_since = now
    return max(0.0, limit.limited_since + limit.retry_after - now)


def _requested_model(request: LoopbackRequest) -> str | None:
    """The model a request asks for: Gemini's path, else the JSON body's ``model``."""
    m = _GEMINI_PATH.match(request.path)
    if m:
        return m.group(1)
    try:
        doc = request.json()
    except (ValueError, UnicodeDecodeError):
        return None
    model = doc.get("model") if isinstance(doc, dict) else None
    return model if isinstance(model, str) else None


def _limit_response(style: str, remaining: float, model: str | None) -> LoopbackResponse:
    return LoopbackResponse.json(429, _limit_body(style, remaining, model), _reset_headers(style, remaining))


def _limit_body(style: str, remaining: float, model: str | None) -> dict[str, Any]:
    """A 429 body as each provider writes it.

    ``codex-*``: ChatGPT/Codex usage limits (``usage_limit_reached`` with ``resets_at`` epoch
    seconds, or ``resets_in_seconds``); ``google-*``: a ``RESOURCE_EXHAUSTED`` status whose
    details carry ``RetryInfo.retryDelay`` (Gemini API) or ``ErrorInfo.metadata.quotaResetDelay``
    (Code Assist), and a ``QuotaFailure`` naming the model; otherwise Anthropic's shape, or
    OpenAI's "Rate limit reached for MODEL in organization …" when the limit is per model.
    """
    remaining = round(remaining, 6)
    if style in ("codex-resets-at", "codex-resets-in"):
        error: dict[str, Any] = {"type": "usage_limit_reached", "message": "The usage limit has been reached",
                                 "plan_type": "plus"}
        if style == "codex-resets-at":
            error["resets_at"] = math.ceil(time.time() + remaining)
        else:
            error["resets_in_seconds"] = math.ceil(remaining)
        return {"error": error}
    if style in ("google-retry-info", "google-quota-reset"):
        dims = {"location": "global", **({"model": model} if model else {})}
        details: list[dict[str, Any]] = [{
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel", "quotaDimensions": dims,
                            "quotaValue": "15"}],
        }]
        if style == "google-retry-info":
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": f"{math.ceil(remaining)}s"})
        else:
            stamp = datetime.fromtimestamp(time.time() + remaining, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            details.append({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "QUOTA_EXHAUSTED",
                            "domain": "cloudcode-pa.googleapis.com",
                            "metadata": {"uiMessage": "true", **({"model": model} if model else {}),
                                         "quotaResetDelay": go_duration(remaining),
                                         "quotaResetTimeStamp": stamp}})
        return {"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
                          "status": "RESOURCE_EXHAUSTED", "details": details}}
    if model is not None:
        return {"error": {"message": f"Rate limit reached for {model} in organization org-loopback on requests "
                                     "per min (RPM): Limit 3, Used 3, Requested 1.",
                          "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
    return _error_body(429, "rate limit exceeded")


def _window_headers(style: str, remaining: float) -> dict[str, str]:
    """Reset headers a successful answer carries: when the current quota window ends."""
    wall = math.ceil(time.time() + remaining)
    if style == "anthropic-unified":
        return {"anthropic-ratelimit-unified-status": "allowed", "anthropic-ratelimit-unified-5h-status": "allowed",
                "anthropic-ratelimit-unified-5h-reset": str(wall)}
    if style == "anthropic":
        stamp = datetime.fromtimestamp(wall, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "49",
                "anthropic-ratelimit-requests-reset": stamp}
    return {"x-ratelimit-limit-requests": "50", "x-ratelimit-remaining-requests": "49",
            "x-ratelimit-reset-requests": go_duration(remaining)}


def _sse(event: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _sse_events(subject: str, seq: int, model: str, mode: str | None) -> Iterator[bytes]:
    """Anthropic's streaming event sequence, optionally broken by an ``error`` event."""
    error = _sse("error", _error_body(429, "rate limit exceeded"))
    if mode == "error-first":
        yield error
        return
    if mode == "overloaded-first":
        yield _sse("error", _error_body(529, "Overloaded"))
        return
    yield _sse(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": f"msg_loopback_{seq}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "usage": {"input_tokens": 5, "output_tokens": 0},
                "subject": subject,
            },
        },
    )
    yield _sse(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    for i, piece in enumerate(("Hello", " from ", f"{subject}.")):
        yield _sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
        )
        if mode == "error-after-content" and i == 0:
            yield error
            return
    yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
    yield _sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 4},
        },
    )
    yield _sse("message_stop", {"type": "message_stop"})


def _build_chat_completion(subject: str, seq: int, payload: dict[str, Any]) -> LoopbackResponse:
    model = str(payload.get("model") or "loopback-model")
    return LoopbackResponse.json(
        200,
        {
            "id": f"chatcmpl-loopback-{seq}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"Hello from {subject}."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
            "subject": subject,
        },
    )


def _chat_chunks(subject: str, seq: int, model: str, mode: str | None) -> Iterator[bytes]:
    """OpenAI's chat-completions stream (``data:`` chunks, then ``[DONE]``), optionally broken.

    OpenAI-compatible servers report an error inside a stream as a bare ``data: {"error": …}``
    chunk: a rate limit as ``type`` "tokens" with ``code`` "rate_limit_exceeded", naming the model.
    """
    if mode == "overloaded-first":
        yield _data({"error": {"message": "The server is overloaded. Please try again later.",
                               "type": "server_error", "param": None, "code": None}})
        return
    error = _data({"error": {"message": f"Rate limit reached for {model} in organization org-loopback on tokens "
                                        "per min (TPM): Limit 30000, Used 30000, Requested 120.",
                             "type": "tokens", "param": None, "code": "rate_limit_exceeded"}})
    if mode == "error-first":
        yield error
        return
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _data({"id": f"chatcmpl-loopback-{seq}", "object": "chat.completion.chunk", "created": created,
                      "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    yield chunk({"role": "assistant", "content": ""})
    for i, piece in enumerate(("Hello", " from ", f"{subject}.")):
        yield chunk({"content": piece})
        if mode == "error-after-content" and i == 0:
            yield error
            return
    yield chunk({}, "stop")
    yield b"data: [DONE]\n\n"


def _data(doc: Mapping[str, Any]) -> bytes:
    return f"data: {json.dumps(doc)}\n\n".encode()


def _build_generate_content(path: str) -> Callable[[str, int, dict[str, Any]], LoopbackResponse]:
    """Gemini's ``generateContent`` answer for the model named in ``path``."""
    m = _GEMINI_PATH.match(path)
    model = m.group(1) if m else "loopback-model"

    def build(subject: str, seq: int, payload: dict[str, Any]) -> LoopbackResponse:
        del payload
        return LoopbackResponse.json(200, {
            "candidates": [{"content": {"role": "model", "parts": [{"text": f"Hello from {subject}."}]},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 4, "totalTokenCount": 9},
            "modelVersion": model,
            "responseId": f"loopback-{seq}",
            "subject": subject,
        })

    return build


def _build_models(subject: str, seq: int, payload: dict[str, Any]) -> LoopbackResponse:
    del seq, payload
    models = [
        {"id": name, "type": "model", "object": "model", "display_name": name, "owned_by": "loopback"}
        for name in ("loopback-small", "loopback-large")
    ]
    return LoopbackResponse.json(200, {"object": "list", "data": models, "has_more": False, "subject": subject})


# --------------------------------------------------------------------------------------------
# CLI (manual testing only)


def main(argv: list[str] | None = None) -> int:
    """``python -m server.loopback``: print connection details as JSON, serve until signalled."""
    parser = argparse.ArgumentParser(
        prog="python -m server.loopback", description="Serve a fake LLM provider on 127.0.0.1."
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--accounts", type=int, default=0, help="create N OAuth accounts and print their tokens")
    parser.add_argument("--access-ttl", type=float, default=3600.0)
    parser.add_argument("--rate-limit", type=int, default=None)
    parser.add_argument("--rate-limit-style", choices=sorted(RATE_LIMIT_STYLES), default="retry-after-seconds")
    parser.add_argument("--retry-after", type=float, default=30.0)
    args = parser.parse_args(argv)

    done = threading.Event()

    def _on_signal(signum: int, frame: types.FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    provider = LoopbackProvider(
        access_ttl=args.access_ttl,
        rate_limit=args.rate_limit,
        rate_limit_style=args.rate_limit_style,
        retry_after=args.retry_after,
        port=args.port,
    ).start()
    try:
        accounts = [provider.add_oauth_account(f"user{i}@loopback.test") for i in range(1, max(0, args.accounts) + 1)]
        info = {
            "base_url": provider.base_url,
            "token_url": provider.token_url,
            "client_id": provider.client_id,
            "accounts": accounts,
        }
        print(json.dumps(info), flush=True)
        while not done.wait(0.5):
            pass
    finally:
        provider.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
