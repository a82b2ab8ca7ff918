"""``authpool gateway``: the pool behind a local base URL, for agents and SDKs that take one.

Claude Code, Codex, opencode and any OpenAI / Anthropic / Gemini SDK take a base URL and an API
key. Pointed at ``http://127.0.0.1:8787/PROVIDER`` with the gateway key, their requests go
through the same front door (:mod:`authpool.server.front`) and rotation engine as
``authpool request`` and MCP's ``proxy_request``.

Modules, one noun each:

- :mod:`~authpool.server.gateway.app` — the Starlette application: the route, the guard, the lifespan;
- :mod:`~authpool.server.gateway.guard` — who may use it: ``Host``, ``Origin`` and the gateway key;
- :mod:`~authpool.server.gateway.keys` — the gateway key: from the environment or the pool's credential store;
- :mod:`~authpool.server.gateway.relay` — one request forwarded, its answer relayed as it arrives;
- :mod:`~authpool.server.gateway.errors` — the gateway's own answers, in the shape the client's SDK reads;
- :mod:`~authpool.server.gateway.command` — ``authpool gateway``: bind, serve with uvicorn, stop cleanly.

The web stack loads only with :mod:`~authpool.server.gateway.app` and the modules that use it;
``authpool gateway key`` needs only :mod:`~authpool.server.gateway.keys`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from authpool.lazy import lazy_names
from authpool.server.gateway.errors import GatewayError
from authpool.server.gateway.keys import ENV_KEY, GatewayKey

if TYPE_CHECKING:  # the lazy names below, as type checkers must see them
    from authpool.server.gateway.app import build_app
    from authpool.server.gateway.command import run_gateway
    from authpool.server.gateway.guard import Site

__all__ = ["ENV_KEY", "GatewayError", "GatewayKey", "Site", "build_app", "run_gateway"]

_LAZY = {
    "build_app": "authpool.server.gateway.app",
    "run_gateway": "authpool.server.gateway.command",
    "Site": "authpool.server.gateway.guard",
}


__getattr__ = lazy_names(__name__, _LAZY)
