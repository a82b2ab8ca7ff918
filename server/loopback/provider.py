"""``LoopbackProvider``: lifecycle, accounts, fault-injection knobs, stats and dispatch.

The token endpoint and logins (``tokens``), the API endpoints (``api``) and the test-helper
endpoints (``helpers``) are mixins this class inherits; the HTTP plumbing is in ``http``, which
sees the provider only as a :class:`~authpool.server.loopback.http.Site`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import socket
import threading
import time
import types
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from authpool.server.loopback.api import GEMINI_PATH, ApiRoutes
from authpool.server.loopback.clock import Clock
from authpool.server.loopback.helpers import HelperRoutes
from authpool.server.loopback.http import LoopbackServer
from authpool.server.loopback.models import (
    MAX_WAIT_SECONDS,
    GrantHandler,
    LoopbackRequest,
    LoopbackResponse,
    LoopbackStats,
    RouteHandler,
)
from authpool.server.loopback.ratelimit import QUOTA_WINDOW_STYLES, USAGE_WINDOW_STYLES, RateLimit, check_style
from authpool.server.loopback.streams import STREAM_ERROR_MODES
from authpool.server.loopback.subscriptions import CODEX_PATH, EXCHANGE_PATH, ExchangeStats, SubscriptionRoutes
from authpool.server.loopback.tokens import (
    API_KEY_PREFIX,
    DEFAULT_LOGIN_SUBJECT,
    DEVICE_GRANT,
    TOKEN_ENDPOINT_MODES,
    AccessToken,
    AuthCode,
    DeviceGrant,
    RefreshToken,
    TokenRoutes,
    mint_token,
)

__all__ = ["LoopbackProvider"]


class LoopbackProvider(TokenRoutes, ApiRoutes, SubscriptionRoutes, HelperRoutes):
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
        clock: Clock = time.time,
    ) -> None:
        """Configure; nothing listens until ``start()``.

        ``rate_limit``/``rate_limit_style``/``retry_after`` are the default limit for every
        subject without its own ``set_rate_limit``.  ``port`` 0 picks a free port, which is
        what tests want: parallel runs never collide.  ``device_interval`` and ``device_ttl``
        are the polling interval and lifetime of device codes (small values make tests fast).
        ``clock`` is what the provider takes for "now" (seconds since the epoch): give it a
        :class:`~authpool.server.loopback.clock.ManualClock` to expire tokens, end rate-limit
        windows or age device codes by moving time instead of sleeping.
        """
        check_style(rate_limit_style)
        #: The provider's "now"; see ``authpool.server.loopback.clock``.
        self.clock: Callable[[], float] = clock
        self.access_ttl = access_ttl
        self._port = port
        self._default_limit = (rate_limit, rate_limit_style, retry_after)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: LoopbackServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._access: dict[str, AccessToken] = {}
        self._refresh: dict[str, RefreshToken] = {}
        self._api_keys: dict[str, str] = {}
        self._limits: dict[str, RateLimit] = {}
        self._stream_errors: dict[str, str] = {}
        self._stream_delay, self._stream_length = 0.0, None  # pauses between events; deltas per stream
        self._model_names = ["loopback-small", "loopback-large"]  # every model list answers with these
        self._model_limits: dict[tuple[str, str], RateLimit] = {}
        self._always_failing: dict[str, int] = {}
        self._quota_windows: dict[str, tuple[str, float, float]] = {}  # subject -> (style, length, start)
        # subject -> (style, {window: (used share, seconds to reset)})
        self._usage_windows: dict[str, tuple[str, dict[str, tuple[float, float]]]] = {}
        self._always_unauthorized: set[str] = set()
        self._failures: tuple[int, int] = (0, 500)
        self._hang = 0.0
        self._oauth_mode = "ok"
        self._token_delay = 0.0
        self._token_calls_changed = threading.Condition(self._lock)
        # API requests held at the gate (hold_api_requests): each takes a ticket and goes on
        # once `_released` reaches it, or when holding stops.
        self._api_calls_changed = threading.Condition(self._lock)
        self._holding, self._held, self._tickets, self._released = False, 0, 0, 0
        self._request_seq = 0
        # Streams held between events (hold_streams): each waiter is released in arrival order.
        self._holding_streams, self._stream_waiters = False, deque[threading.Event]()
        self.stats = LoopbackStats()
        self.exchange_stats = ExchangeStats()
        self.copilot_ttl = 1800.0
        self.copilot_api: str | None = None
        self._copilot: dict[str, str] = {}
        #: OAuth grant types the token endpoint understands; add entries to extend.
        self.grant_handlers: dict[str, GrantHandler] = {"refresh_token": self._grant_refresh_token}
        #: ``(METHOD, path) -> handler``; add entries for new endpoints.
        self.routes: dict[tuple[str, str], RouteHandler] = {
            ("POST", "/oauth/token"): self._route_token,
            ("POST", "/v1/messages"): self._route_messages,
            ("POST", "/v1/chat/completions"): self._route_chat_completions,
            ("GET", "/v1/models"): self._route_models,
            ("GET", "/v1beta/models"): self._route_gemini_models,
            ("GET", "/redirect"): self._route_redirect,
            ("POST", "/redirect"): self._route_redirect,
            ("GET", "/echo-auth-present"): self._route_echo_auth_present,
            ("POST", "/echo-auth-present"): self._route_echo_auth_present,
            **{(method, "/echo-request"): self._route_echo_request for method in ("GET", "POST", "PUT", "DELETE")},
            ("GET", "/slow"): self._route_slow,
            ("GET", "/big"): self._route_big,
            ("GET", EXCHANGE_PATH): self._route_copilot_exchange,
            ("POST", CODEX_PATH): self._route_codex,
        }
        # Logins: authorization code + PKCE and the device flow (see "logins" below).
        self.device_interval = device_interval
        self.device_ttl = device_ttl
        #: Polls closer together than this (or the code's interval, if larger) get ``slow_down``.
        self.device_min_interval = 0.0
        #: How much ``slow_down`` adds to a device code's interval (RFC 8628 says 5 s).
        self.slow_down_step = 5.0
        self._login_subject, self._login_deny, self._login_identity = DEFAULT_LOGIN_SUBJECT, False, True
        self._auth_codes: dict[str, AuthCode] = {}
        self._devices: dict[str, DeviceGrant] = {}
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
        self._server = LoopbackServer(("127.0.0.1", self._port), self)
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
        with self._api_calls_changed:
            self._api_calls_changed.notify_all()  # held API requests give up
            for waiter in self._stream_waiters:  # and so do held streams
                waiter.set()
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
        key = mint_token(API_KEY_PREFIX)
        with self._lock:
            self._api_keys[key] = subject
        return key

    def expire_access_tokens(self, subject: str | None = None) -> None:
        """Make current access tokens of ``subject`` (or everyone) answer 401; refresh still works."""
        now = self.clock()
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
        check_style(style)
        with self._lock:
            if model is None:
                self._limits[subject] = RateLimit(after, style, retry_after)
            else:
                self._model_limits[(subject, model)] = RateLimit(after, style, retry_after)

    def clear_rate_limit(self, subject: str) -> None:
        """Lift any limit on ``subject`` (per-model ones and the constructor default too) and reset its count."""
        with self._lock:
            self._limits[subject] = RateLimit(None, "none", 0.0)
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

    def set_stream_length(self, deltas: int | None) -> None:
        """Make streamed answers carry ``deltas`` text deltas ("t0 ", "t1 ", ...) instead of the usual three.

        Long streams are for benchmarks (time to the first and the last event); ``None`` restores
        "Hello", " from ", "SUBJECT.".
        """
        if deltas is not None and not 1 <= deltas <= 100_000:
            raise ValueError("a stream carries 1 to 100000 deltas")
        with self._lock:
            self._stream_length = deltas

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
                self._quota_windows[subject] = (style, max(1.0, seconds), self.clock())

    def set_usage_windows(self, subject: str, windows: dict[str, tuple[float, float]] | None,
                          style: str = "anthropic-unified") -> None:
        """Make every answer to ``subject`` (successes and 429s) report subscription usage windows.

        ``windows`` maps ``5h`` / ``7d`` to ``(used share 0..1, seconds until it resets)``, as
        Anthropic's unified headers (``anthropic-unified``) or the Codex backend's ``x-codex-*``
        headers (``codex``) report them. ``None`` turns it off.
        """
        if style not in USAGE_WINDOW_STYLES:
            raise ValueError(f"unknown usage window style {style!r}; expected one of {sorted(USAGE_WINDOW_STYLES)}")
        with self._lock:
            if windows is None:
                self._usage_windows.pop(subject, None)
            else:
                self._usage_windows[subject] = (style, dict(windows))

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

    # ---- what the HTTP plumbing reports (the ``http.Site`` protocol) ----------------------

    def status_sent(self, status: int) -> None:
        """Count a response by its status."""
        with self._lock:
            self.stats.statuses[status] = self.stats.statuses.get(status, 0) + 1

    def handler_failed(self) -> None:
        """Count a server-side bug (kept off stderr)."""
        with self._lock:
            self.stats.handler_errors += 1

    def connection_opened(self, conn: socket.socket) -> None:
        """Count a new connection and remember it, so ``stop()`` can cut it."""
        with self._lock:
            self._connections.add(conn)
            self.stats.connections += 1

    def connection_closed(self, conn: socket.socket) -> None:
        """Forget a connection that ended."""
        with self._lock:
            self._connections.discard(conn)

    def stream_event(self, gone: Callable[[], bool]) -> bool:
        """Before a stream's next event: wait at the stream gate (``hold_streams``) while it is held."""
        return self._stream_gate(gone)

    def stream_ended(self, how: Literal["started", "finished", "cut"]) -> None:
        """Count a stream begun, finished or cut short by its client."""
        with self._api_calls_changed:
            if how == "started":
                self.stats.streams_started += 1
            elif how == "finished":
                self.stats.streams_finished += 1
            else:
                self.stats.streams_cut += 1
            self._api_calls_changed.notify_all()

    def path_requested(self, path: str) -> None:
        """Count a request by its path, before it is handled."""
        with self._lock:
            self.stats.calls_by_path[path] = self.stats.calls_by_path.get(path, 0) + 1

    def _wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; ``False`` if ``stop()`` interrupted the wait."""
        return not self._stopping.wait(max(0.0, min(seconds, MAX_WAIT_SECONDS)))

    # ---- dispatch -------------------------------------------------------------------------

    def dispatch(self, request: LoopbackRequest) -> LoopbackResponse | None:
        """Route ``request`` to its handler; ``None`` drops the connection without an answer."""
        handler = self.routes.get((request.method, request.path))
        if handler is None and request.method == "POST" and GEMINI_PATH.match(request.path):
            handler = self._route_generate_content  # the one route whose path embeds a parameter
        if handler is None:
            if any(path == request.path for _, path in self.routes):
                return LoopbackResponse.error(405, "method not allowed")
            return LoopbackResponse.error(404, "not found")
        try:
            return handler(request)
        except Exception:  # noqa: BLE001 - a handler bug must become a 500, not a traceback
            self.handler_failed()
            return LoopbackResponse.error(500, "loopback handler failed")
