"""Request/response model, counters and the error shape shared by every part of the loopback provider."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

#: Upper bound for ``/slow`` and ``set_hang`` so a typo cannot wedge a test run for hours.
MAX_WAIT_SECONDS: Final = 120.0

ERROR_TYPES: Final[Mapping[int, str]] = {
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


def error_body(status: int, message: str) -> dict[str, Any]:
    """Build an Anthropic-shaped error body; messages never contain credentials."""
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}



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
        return cls.json(status, error_body(status, message), headers)


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
    ``streams_started`` counts streamed answers begun, ``streams_finished`` those whose last
    chunk was written, ``streams_cut`` those whose client went away first (seen while the stream
    waited at the stream gate, or when a write failed).
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
    streams_started: int = 0
    streams_finished: int = 0
    streams_cut: int = 0
