"""The API endpoints: authentication, injected faults, rate limits, and the answers themselves.

``/v1/messages`` (Anthropic), ``/v1/chat/completions`` and ``/v1/models`` (OpenAI) and
``/v1beta/models/<model>:generateContent`` (Gemini) live on ``ApiRoutes``, which
``LoopbackProvider`` inherits.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from authpool.server.loopback.clock import Clock
from authpool.server.loopback.models import MAX_WAIT_SECONDS, LoopbackRequest, LoopbackResponse, LoopbackStats
from authpool.server.loopback.ratelimit import (
    RateLimit,
    limit_response,
    spend,
    usage_window_headers,
    window_headers,
)
from authpool.server.loopback.streams import chat_chunks, sse_events
from authpool.server.loopback.tokens import AccessToken

#: Gemini names the model in the path: ``POST /v1beta/models/<model>:generateContent``.
GEMINI_PATH: Final = re.compile(r"^/v1beta/models/([^/:]+):generateContent$")
#: The most models one page of a paged model list holds (real APIs cap pages too), so paging is exercised.
PAGE_CAP: Final = 2
#: Seconds between looks at a held stream's socket: how soon a client's hang-up is noticed.
_GATE_POLL: Final = 0.02


class ApiRoutes:
    """API routes; state lives in ``LoopbackProvider.__init__``."""

    clock: Clock
    stats: LoopbackStats
    _lock: threading.Lock
    _access: dict[str, AccessToken]
    _api_keys: dict[str, str]
    _limits: dict[str, RateLimit]
    _model_limits: dict[tuple[str, str], RateLimit]
    _default_limit: tuple[int | None, str, float]
    _stream_errors: dict[str, str]
    _stream_delay: float
    _stream_length: int | None
    _model_names: list[str]
    _always_failing: dict[str, int]
    _quota_windows: dict[str, tuple[str, float, float]]
    _usage_windows: dict[str, tuple[str, dict[str, tuple[float, float]]]]
    _always_unauthorized: set[str]
    _failures: tuple[int, int]
    _hang: float
    _request_seq: int
    _api_calls_changed: threading.Condition
    _stopping: threading.Event
    _holding: bool
    _held: int
    _tickets: int
    _released: int
    _holding_streams: bool
    _stream_waiters: deque[threading.Event]

    if TYPE_CHECKING:

        def _wait(self, seconds: float) -> bool: ...

    # ---- the gate: hold API requests where a test can see them -----------------------------

    def hold_api_requests(self) -> None:
        """From now on, hold every API request as it arrives (counted in ``api_calls``) until released.

        Tests use it to have requests "in flight" at the provider for exactly as long as they
        need, instead of slowing every answer down and hoping the timing works out: hold, start
        the requests, ``wait_for_held_requests(n)``, act, then ``release_api_requests()``.
        ``stop()`` lets held requests go (their connections are cut).
        """
        with self._api_calls_changed:
            self._holding = True

    def release_api_requests(self, count: int | None = None) -> None:
        """Let the ``count`` longest-held requests go on (still holding later ones), or, by default,
        every held request, and stop holding."""
        with self._api_calls_changed:
            if count is None:
                self._holding = False
                self._released = self._tickets
            else:
                self._released += count
            self._api_calls_changed.notify_all()

    def held_requests(self) -> int:
        """How many API requests are waiting at the gate right now."""
        with self._lock:
            return self._held

    def wait_for_held_requests(self, count: int, timeout: float = 30.0) -> bool:
        """Block until ``count`` API requests wait at the gate together (True), or ``timeout`` passes."""
        with self._api_calls_changed:
            return self._api_calls_changed.wait_for(lambda: self._held >= count, timeout)

    def wait_for_api_calls(self, count: int, timeout: float = 30.0) -> bool:
        """Block until ``count`` API requests have arrived in all (True), or ``timeout`` passes."""
        with self._api_calls_changed:
            return self._api_calls_changed.wait_for(lambda: self.stats.api_calls >= count, timeout)

    # ---- the stream gate: hold streams between events -------------------------------------

    def hold_streams(self) -> None:
        """From now on, every streamed answer waits before each event after its first until released.

        Tests use it to see a stream "in the middle" for exactly as long as they need: the first
        event has left the provider and the rest has not, with no timing involved. While a stream
        waits, a client that hangs up is noticed at once (``streams_cut`` in the stats).
        ``stop()`` lets waiting streams go (their connections are cut).
        """
        with self._api_calls_changed:
            self._holding_streams = True

    def release_streams(self, count: int | None = None) -> None:
        """Let the ``count`` longest-waiting stream events go (still holding later ones), or, by
        default, every waiting event, and stop holding."""
        with self._api_calls_changed:
            if count is None:
                self._holding_streams = False
                count = len(self._stream_waiters)
            for _ in range(min(count, len(self._stream_waiters))):
                self._stream_waiters.popleft().set()
            self._api_calls_changed.notify_all()

    def held_streams(self) -> int:
        """How many streams wait at the stream gate right now."""
        with self._lock:
            return len(self._stream_waiters)

    def wait_for_held_streams(self, count: int, timeout: float = 30.0) -> bool:
        """Block until ``count`` streams wait at the stream gate together (True), or ``timeout`` passes."""
        with self._api_calls_changed:
            return self._api_calls_changed.wait_for(lambda: len(self._stream_waiters) >= count, timeout)

    def wait_for_streams(self, *, started: int = 0, finished: int = 0, cut: int = 0, timeout: float = 30.0) -> bool:
        """Block until at least ``started`` streams began, ``finished`` ended and ``cut`` lost their
        client (True), or ``timeout`` passes."""
        with self._api_calls_changed:
            return self._api_calls_changed.wait_for(
                lambda: (self.stats.streams_started >= started and self.stats.streams_finished >= finished
                         and self.stats.streams_cut >= cut), timeout)

    def _stream_gate(self, gone: Callable[[], bool]) -> bool:
        """Wait while streams are held; False if the client went away (or stop() came) meanwhile."""
        with self._api_calls_changed:
            if not self._holding_streams:
                return True
            released = threading.Event()
            self._stream_waiters.append(released)
            self._api_calls_changed.notify_all()
        # Polled, because a hang-up is only visible on the socket; bounded like every other wait here.
        left = False
        for _ in range(int(MAX_WAIT_SECONDS / _GATE_POLL)):
            if released.wait(_GATE_POLL) or self._stopping.is_set():
                break
            if gone():
                left = True
                break
        with self._api_calls_changed:
            if released in self._stream_waiters:
                self._stream_waiters.remove(released)
            self._api_calls_changed.notify_all()
            if self._stopping.is_set():
                return False
            if left and not released.is_set():
                self.stats.streams_cut += 1
                return False
        return True

    def _pass_gate(self) -> bool:
        """Count an arriving API request and hold it while the gate says so; False if stop() came first."""
        with self._api_calls_changed:
            self.stats.api_calls += 1
            if self._holding:
                self._tickets += 1
                ticket = self._tickets
                self._held += 1
                self._api_calls_changed.notify_all()
                # Bounded like every other wait here, so a forgotten release cannot wedge a run.
                self._api_calls_changed.wait_for(
                    lambda: not self._holding or self._released >= ticket or self._stopping.is_set(),
                    MAX_WAIT_SECONDS)
                self._held -= 1
            else:
                self._api_calls_changed.notify_all()
            return not self._stopping.is_set()

    def _authenticate(self, request: LoopbackRequest, *, bearer_api_keys: bool) -> str | None:
        """Return the subject behind the request's credential, or ``None``.

        ``Authorization: Bearer`` wins over ``x-api-key`` when both are sent.  Bearer accepts
        OAuth access tokens, and API keys only where OpenAI-style endpoints allow it;
        ``x-api-key`` accepts only API keys (an access token there is a client bug).
        """
        auth = request.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        now = self.clock()
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
        now = self.clock()
        scoped = self._model_limits.get((subject, model)) if model is not None else None
        if scoped is not None and (left := spend(scoped, now)) is not None:
            return limit_response(scoped.style, left, model, now)
        limit = self._limits.get(subject)
        if limit is None:
            after, style, retry_after = self._default_limit
            limit = self._limits[subject] = RateLimit(after, style, retry_after)
        remaining = spend(limit, now)
        return None if remaining is None else limit_response(limit.style, remaining, None, now)

    def _api_preamble(
        self, request: LoopbackRequest, *, bearer_api_keys: bool
    ) -> tuple[str, int] | LoopbackResponse | None:
        """Shared front half of every API call: the gate, hang, injected failure, auth, rate limit.

        Returns ``(subject, request_number)``, or the response to send instead, or ``None``
        to drop the connection (stop() during a hang or while held at the gate).
        """
        passed = self._pass_gate()
        with self._lock:
            hang = self._hang
        if not passed or (hang and not self._wait(hang)):
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
        return self._with_usage(subject, limited) if limited is not None else (subject, seq)

    def _with_usage(self, subject: str, response: LoopbackResponse) -> LoopbackResponse:
        """Add the subject's usage-window headers (``set_usage_windows``), which every answer carries."""
        with self._lock:
            usage = self._usage_windows.get(subject)
        if usage is not None:
            response.headers.update(usage_window_headers(usage[0], usage[1], self.clock()))
        return response

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
            now = self.clock()
            response.headers.update(window_headers(style, length - (now - start) % length, now))
        return self._with_usage(subject, response)

    def _route_messages(self, request: LoopbackRequest) -> LoopbackResponse | None:
        return self._api_call(request, self._build_message, bearer_api_keys=False)

    def _route_chat_completions(self, request: LoopbackRequest) -> LoopbackResponse | None:
        return self._api_call(request, self._build_chat, bearer_api_keys=True)

    def _route_generate_content(self, request: LoopbackRequest) -> LoopbackResponse | None:
        return self._api_call(request, _build_generate_content(request.path), bearer_api_keys=True)

    def _build_chat(self, subject: str, seq: int, payload: dict[str, Any]) -> LoopbackResponse:
        """OpenAI chat completions; ``"stream": true`` streams ``chat.completion.chunk`` events."""
        if payload.get("stream") is not True:
            return _build_chat_completion(subject, seq, payload, int(self.clock()))
        model = str(payload.get("model") or "loopback-model")
        with self._lock:
            mode, length = self._stream_errors.get(subject), self._stream_length
        headers = {"Content-Type": "text/event-stream; charset=utf-8"}
        chunks = chat_chunks(subject, seq, model, mode, int(self.clock()), length)
        return LoopbackResponse(200, headers=headers, stream=self._paced(chunks))

    def _paced(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """``chunks``, with the configured stream delay before each one after the first."""
        with self._lock:
            delay = self._stream_delay
        for i, chunk in enumerate(chunks):
            if i and delay and not self._wait(delay):
                return  # stop() during a pause: the stream breaks off, as a dying server's would
            yield chunk

    def set_models(self, *names: str) -> None:
        """The models every list answers with (default ``loopback-small``, ``loopback-large``)."""
        with self._lock:
            self._model_names = list(names)

    def _route_models(self, request: LoopbackRequest) -> LoopbackResponse | None:
        """``GET /v1/models``: OpenAI's list, which is Anthropic's too (``?limit=&after_id=`` pages it)."""
        with self._lock:
            names = list(self._model_names)
        return self._api_call(request, _build_models(names, request.query), bearer_api_keys=True)

    def _route_gemini_models(self, request: LoopbackRequest) -> LoopbackResponse | None:
        """``GET /v1beta/models``: Google's list (``?pageSize=&pageToken=`` pages it)."""
        with self._lock:
            names = list(self._model_names)
        return self._api_call(request, _build_gemini_models(names, request.query), bearer_api_keys=True)

    def _build_message(self, subject: str, seq: int, payload: dict[str, Any]) -> LoopbackResponse:
        model = str(payload.get("model") or "loopback-model")
        if payload.get("stream") is True:
            with self._lock:
                mode, length = self._stream_errors.get(subject), self._stream_length
            headers = {"Content-Type": "text/event-stream; charset=utf-8"}
            events = sse_events(subject, seq, model, mode, length)
            return LoopbackResponse(200, headers=headers, stream=self._paced(events))
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


def _requested_model(request: LoopbackRequest) -> str | None:
    """The model a request asks for: Gemini's path, else the JSON body's ``model``."""
    m = GEMINI_PATH.match(request.path)
    if m:
        return m.group(1)
    try:
        doc = request.json()
    except (ValueError, UnicodeDecodeError):
        return None
    model = doc.get("model") if isinstance(doc, dict) else None
    return model if isinstance(model, str) else None



def _build_chat_completion(subject: str, seq: int, payload: dict[str, Any], created: int) -> LoopbackResponse:
    model = str(payload.get("model") or "loopback-model")
    return LoopbackResponse.json(
        200,
        {
            "id": f"chatcmpl-loopback-{seq}",
            "object": "chat.completion",
            "created": created,
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


def _build_generate_content(path: str) -> Callable[[str, int, dict[str, Any]], LoopbackResponse]:
    """Gemini's ``generateContent`` answer for the model named in ``path``."""
    m = GEMINI_PATH.match(path)
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


def _build_models(names: list[str], query: Mapping[str, str]) -> Callable[[str, int, dict[str, Any]], LoopbackResponse]:
    """OpenAI's model list, with Anthropic's fields and paging (``limit``, ``after_id``) too."""

    def build(subject: str, seq: int, payload: dict[str, Any]) -> LoopbackResponse:
        del seq, payload
        start = names.index(query["after_id"]) + 1 if query.get("after_id") in names else 0
        # OpenAI's list has no pages; Anthropic's pages when asked to (``limit``).
        limit = min(max(int(query["limit"]), 1), PAGE_CAP) if query.get("limit", "").isdigit() else len(names)
        page = names[start:start + limit]
        models = [{"id": name, "type": "model", "object": "model", "display_name": name, "owned_by": "loopback",
                   "created": 1_700_000_000 + i, "created_at": "2025-01-01T00:00:00Z"} for i, name in enumerate(page)]
        return LoopbackResponse.json(200, {
            "object": "list", "data": models, "has_more": start + len(page) < len(names),
            "first_id": page[0] if page else None, "last_id": page[-1] if page else None, "subject": subject})

    return build


def _build_gemini_models(names: list[str],
                         query: Mapping[str, str]) -> Callable[[str, int, dict[str, Any]], LoopbackResponse]:
    """Google's model list: ``models/NAME`` entries, ``nextPageToken`` while more remain."""

    def build(subject: str, seq: int, payload: dict[str, Any]) -> LoopbackResponse:
        del seq, payload
        start = int(query["pageToken"]) if query.get("pageToken", "").isdigit() else 0
        size = int(query["pageSize"]) if query.get("pageSize", "").isdigit() else 50
        page = names[start:start + min(max(size, 1), PAGE_CAP)]
        doc: dict[str, Any] = {"models": [
            {"name": f"models/{name}", "displayName": name.replace("-", " ").title(), "inputTokenLimit": 1_048_576,
             "outputTokenLimit": 8192, "supportedGenerationMethods": ["generateContent"]} for name in page],
            "subject": subject}
        if start + len(page) < len(names):
            doc["nextPageToken"] = str(start + len(page))
        return LoopbackResponse.json(200, doc)

    return build
