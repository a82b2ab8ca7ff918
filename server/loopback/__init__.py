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

Layout: ``models`` (request/response/stats), ``provider`` (``LoopbackProvider``: lifecycle,
accounts, knobs, stats), ``tokens`` (OAuth grants and token rotation), ``api`` (API
endpoints), ``ratelimit`` (429 styles and reset headers), ``streams`` (SSE and chunk
streams), ``helpers`` (test-helper endpoints), ``http`` (server and handler), ``cli``
(``python -m authpool.server.loopback``), ``clock`` (``ManualClock``, for tests that move time
instead of sleeping).  The package exports the provider's public surface; the modules' other
public names (``ratelimit.go_duration``, say) are imported from their module.
"""

from __future__ import annotations

from authpool.server.loopback.cli import main
from authpool.server.loopback.clock import Clock, ManualClock
from authpool.server.loopback.models import GrantHandler, LoopbackRequest, LoopbackResponse, LoopbackStats, RouteHandler
from authpool.server.loopback.provider import LoopbackProvider
from authpool.server.loopback.ratelimit import QUOTA_WINDOW_STYLES, RATE_LIMIT_STYLES
from authpool.server.loopback.streams import STREAM_ERROR_MODES
from authpool.server.loopback.subscriptions import account_id_of
from authpool.server.loopback.tokens import TOKEN_ENDPOINT_MODES

__all__ = [
    "QUOTA_WINDOW_STYLES",
    "RATE_LIMIT_STYLES",
    "STREAM_ERROR_MODES",
    "TOKEN_ENDPOINT_MODES",
    "Clock",
    "GrantHandler",
    "LoopbackProvider",
    "LoopbackRequest",
    "LoopbackResponse",
    "LoopbackStats",
    "ManualClock",
    "RouteHandler",
    "account_id_of",
    "main",
]
