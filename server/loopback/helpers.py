"""Test-helper endpoints: redirects, credential-presence and request echoes, slow and big answers."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

from authpool.server.loopback.models import MAX_WAIT_SECONDS, LoopbackRequest, LoopbackResponse

#: Upper bound for ``/big`` responses: large enough to exceed any truncation limit, small
#: enough that a typo cannot exhaust memory.
MAX_BIG_BYTES: Final = 16 << 20


class HelperRoutes:
    """Endpoints that exist only to exercise clients; ``LoopbackProvider`` inherits them."""

    if TYPE_CHECKING:

        def _wait(self, seconds: float) -> bool: ...

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

    def _route_echo_request(self, request: LoopbackRequest) -> LoopbackResponse | None:
        """Report what arrived — method, path, the names of query parameters and headers, the body's
        size — never a value, so a test can see what a proxy forwarded without any credential showing.
        The one value shown is ``anthropic-beta`` (a list of feature flags, never a credential)."""
        return LoopbackResponse.json(200, {
            "method": request.method,
            "path": request.path,
            "query": sorted(request.query),
            "headers": sorted(request.headers),
            "body_bytes": len(request.body),
            "anthropic_beta": request.headers.get("anthropic-beta"),
        })

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
