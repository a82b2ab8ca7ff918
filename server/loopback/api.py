"""The API endpoints: authentication, injected faults, rate limits, and the answers themselves.

``/v1/messages`` (Anthropic), ``/v1/chat/completions`` and ``/v1/models`` (OpenAI) and
``/v1beta/models/<model>:generateContent`` (Gemini) live on ``_ApiMixin``, which
``LoopbackProvider`` inherits.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

from authpool.server.loopback.models import LoopbackRequest, LoopbackResponse, LoopbackStats
from authpool.server.loopback.ratelimit import _limit_response, _RateLimit, _spend, _window_headers
from authpool.server.loopback.streams import _chat_chunks, _sse_events
from authpool.server.loopback.tokens import _AccessToken

#: Gemini names the model in the path: ``POST /v1beta/models/<model>:generateContent``.
_GEMINI_PATH: Final = re.compile(r"^/v1beta/models/([^/:]+):generateContent$")


class _ApiMixin:
    """API routes; state lives in ``LoopbackProvider.__init__``."""

    stats: LoopbackStats
    _lock: threading.Lock
    _access: dict[str, _AccessToken]
    _api_keys: dict[str, str]
    _limits: dict[str, _RateLimit]
    _model_limits: dict[tuple[str, str], _RateLimit]
    _default_limit: tuple[int | None, str, float]
    _stream_errors: dict[str, str]
    _stream_delay: float
    _always_failing: dict[str, int]
    _quota_windows: dict[str, tuple[str, float, float]]
    _always_unauthorized: set[str]
    _failures: tuple[int, int]
    _hang: float
    _request_seq: int

    if TYPE_CHECKING:

        def _wait(self, seconds: float) -> bool: ...

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
