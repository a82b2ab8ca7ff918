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
(``python -m authpool.server.loopback``).  Everything is re-exported here, so ``authpool.server.loopback``
offers the same names it did as a single module (the ``X as X`` imports re-export
names outside ``__all__`` that tests and callers may use).
"""

from __future__ import annotations

from authpool.server.loopback.api import _GEMINI_PATH as _GEMINI_PATH
from authpool.server.loopback.api import _build_chat_completion as _build_chat_completion
from authpool.server.loopback.api import _build_generate_content as _build_generate_content
from authpool.server.loopback.api import _build_models as _build_models
from authpool.server.loopback.api import _requested_model as _requested_model
from authpool.server.loopback.cli import main
from authpool.server.loopback.helpers import MAX_BIG_BYTES as MAX_BIG_BYTES
from authpool.server.loopback.http import IDLE_CONNECTION_TIMEOUT as IDLE_CONNECTION_TIMEOUT
from authpool.server.loopback.http import MAX_BODY_BYTES as MAX_BODY_BYTES
from authpool.server.loopback.http import _Handler as _Handler
from authpool.server.loopback.http import _Server as _Server
from authpool.server.loopback.models import _ERROR_TYPES as _ERROR_TYPES
from authpool.server.loopback.models import MAX_WAIT_SECONDS as MAX_WAIT_SECONDS
from authpool.server.loopback.models import GrantHandler, LoopbackRequest, LoopbackResponse, LoopbackStats, RouteHandler
from authpool.server.loopback.models import _error_body as _error_body
from authpool.server.loopback.provider import LoopbackProvider
from authpool.server.loopback.ratelimit import QUOTA_WINDOW_STYLES, RATE_LIMIT_STYLES
from authpool.server.loopback.ratelimit import _check_style as _check_style
from authpool.server.loopback.ratelimit import _limit_body as _limit_body
from authpool.server.loopback.ratelimit import _limit_response as _limit_response
from authpool.server.loopback.ratelimit import _RateLimit as _RateLimit
from authpool.server.loopback.ratelimit import _reset_headers as _reset_headers
from authpool.server.loopback.ratelimit import _spend as _spend
from authpool.server.loopback.ratelimit import _window_headers as _window_headers
from authpool.server.loopback.ratelimit import go_duration as go_duration
from authpool.server.loopback.streams import STREAM_ERROR_MODES
from authpool.server.loopback.streams import _chat_chunks as _chat_chunks
from authpool.server.loopback.streams import _data as _data
from authpool.server.loopback.streams import _sse as _sse
from authpool.server.loopback.streams import _sse_events as _sse_events
from authpool.server.loopback.tokens import _USER_CODE_ALPHABET as _USER_CODE_ALPHABET
from authpool.server.loopback.tokens import ACCESS_PREFIX as ACCESS_PREFIX
from authpool.server.loopback.tokens import API_KEY_PREFIX as API_KEY_PREFIX
from authpool.server.loopback.tokens import AUTH_CODE_TTL as AUTH_CODE_TTL
from authpool.server.loopback.tokens import DEFAULT_LOGIN_SUBJECT as DEFAULT_LOGIN_SUBJECT
from authpool.server.loopback.tokens import DEVICE_GRANT as DEVICE_GRANT
from authpool.server.loopback.tokens import REFRESH_PREFIX as REFRESH_PREFIX
from authpool.server.loopback.tokens import TOKEN_ENDPOINT_MODES
from authpool.server.loopback.tokens import TOKEN_HANG_SECONDS as TOKEN_HANG_SECONDS
from authpool.server.loopback.tokens import _AccessToken as _AccessToken
from authpool.server.loopback.tokens import _AuthCode as _AuthCode
from authpool.server.loopback.tokens import _DeviceGrant as _DeviceGrant
from authpool.server.loopback.tokens import _RefreshToken as _RefreshToken
from authpool.server.loopback.tokens import _token as _token

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
