"""The MCP endpoint at ``/mcp``: the SDK's Streamable HTTP transport behind the gateway's checks.

``authpool serve --http`` serves only this; ``authpool gateway`` mounts it beside the provider
routes, so one process on a team's host serves both (with one pool, one key, one watcher).
Other users of a machine can reach its loopback too, so the endpoint needs the gateway key
(:class:`~authpool.server.gateway.keys.GatewayKey`) unless ``serve --http --no-auth`` on a
loopback address. Every request passes, in this order:

1. ``Host`` names this server, else ``421``, and a browser ``Origin`` is the server's own, else
   ``403`` (DNS rebinding, as the MCP specification requires): the SDK's own check
   (:class:`~mcp.server.transport_security.TransportSecurityMiddleware` with the names of the
   gateway's :class:`~authpool.server.gateway.guard.Site`), which the transport repeats inside;
2. ``Sec-Fetch-Site`` is not another site, else ``403`` (a browser's no-cors request carries no ``Origin``);
3. the key, sent as ``Authorization: Bearer KEY``, else ``401`` with ``WWW-Authenticate: Bearer``
   (compared in constant time: :func:`~authpool.server.gateway.guard.key_refusal`, the gateway's own).

Refusals are one JSON-RPC error each (id null), never naming the key.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from authpool.server.gateway.guard import Site, key_refusal
from authpool.server.gateway.keys import GatewayKey

__all__ = ["McpEndpoint", "security_settings"]

_BROWSER_SITES = frozenset({"same-origin", "none"})
_UNAUTHORIZED = -32001  # JSON-RPC's server-error range: the SDKs show the message as it is


def security_settings(site: Site) -> TransportSecuritySettings:
    """The SDK's Host/Origin settings for ``site``: each of its names on its port, over http."""
    hosts = sorted(f"{name}:{site.port}" for name in site.hosts)
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                     allowed_origins=[f"http://{host}" for host in hosts])


class McpEndpoint:
    """ASGI app for ``/mcp``: the checks above, then the SDK's Streamable HTTP transport for ``server``.

    :meth:`run` is the transport's lifespan (its session manager); whoever serves the endpoint
    enters it once.

    Example:
        >>> endpoint = McpEndpoint(build_server(pool), GatewayKey(pool), Site.of("127.0.0.1", 8788))  # doctest: +SKIP
        >>> app = Starlette(routes=[Route("/mcp", endpoint)], lifespan=lambda app: endpoint.run())  # doctest: +SKIP
    """

    def __init__(self, server: MCPServer[Any], key: GatewayKey | None, site: Site) -> None:
        """Serve ``server``; ``key`` None means no key is asked for (``serve --http --no-auth``)."""
        self.key = key
        self.site = site
        settings = security_settings(site)
        self._security = TransportSecurityMiddleware(settings)
        # The SDK builds its session manager (and its own Starlette app, unused here) on the server.
        server.streamable_http_app(streamable_http_path="/mcp", transport_security=settings)
        self._manager = server.session_manager
        self._transport = StreamableHTTPASGIApp(self._manager)

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """The transport's sessions (and the server's lifespan: its watcher, counters) while serving."""
        async with self._manager.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        refused = await self._security.validate_request(Request(scope), is_post=False)
        if refused is not None:  # 421 for the Host, 403 for the Origin
            reason = bytes(refused.body).decode("latin-1", "replace")
            await _refuse(send, refused.status_code, f"{reason}: this MCP endpoint answers only to "
                                                     f"{self.site.origin}/mcp (DNS rebinding protection)")
            return
        fetch_site = Request(scope).headers.get("sec-fetch-site")
        if fetch_site is not None and fetch_site.strip().lower() not in _BROWSER_SITES:
            await _refuse(send, 403, "requests from web pages are refused (Sec-Fetch-Site)")
            return
        if self.key is not None:
            refusal = await key_refusal(self.key, scope, send_it="as Authorization: Bearer")
            if refusal is not None:
                await _refuse(send, 401, refusal.message, {"www-authenticate": 'Bearer realm="authpool"'})
                return
        await self._transport(scope, receive, send)


async def _refuse(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": _UNAUTHORIZED, "message": message}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})
