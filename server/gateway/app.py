"""The gateway as an ASGI application: the routes, the guard in front of them, and what runs beside them.

One route does the work, ``/{provider}/{path}`` (:class:`~authpool.server.gateway.relay.Relay`);
the dashboard answers ``/``, ``/metrics`` and ``/_dashboard/...``
(:mod:`~authpool.server.gateway.dashboard`); ``/mcp`` serves MCP
(:mod:`~authpool.server.gateway.endpoint`); everything else is a 404 in JSON. The
:class:`~authpool.server.gateway.guard.Guard` middleware runs before routing, so no answer — not
even a 404 — goes to a caller without the gateway key (or, for the dashboard, its session) or to
a web page. Beside the routes, the lifespan re-reads the stored gateway key every few seconds,
so a rotated key takes effect without a restart, writes usage counters every second, so no
request waits for that write, and follows the event log for the dashboard.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from authpool import Pool, PoolError
from authpool.events import ActivityFeed
from authpool.server.gateway.dashboard import dashboard_routes
from authpool.server.gateway.endpoint import McpEndpoint
from authpool.server.gateway.errors import dialect_of, error_body
from authpool.server.gateway.guard import MCP_PATH, Guard, Site
from authpool.server.gateway.keys import RELOAD_EVERY, GatewayKey
from authpool.server.gateway.relay import MAX_BODY, Relay

__all__ = ["FLUSH_EVERY", "build_app", "build_mcp_app"]

log = logging.getLogger("authpool")

FLUSH_EVERY = 1.0  # seconds between background writes of usage counters


def build_app(pool: Pool, key: GatewayKey, site: Site, *, max_body: int = MAX_BODY,
              mcp: McpEndpoint | None = None) -> Starlette:
    """The gateway for ``pool``, answering at ``site`` to callers holding ``key``; ``mcp`` is served at ``/mcp``.

    Example:
        >>> app = build_app(Pool.open(), GatewayKey(pool), Site.of("127.0.0.1", 8787))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8787)  # doctest: +SKIP
    """

    # The dashboard's activity (requests, 429s, token calls per minute), read from the event log
    # by a thread while the gateway runs.
    feed = ActivityFeed(pool.home.events_file)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        feed.start()
        try:
            async with contextlib.AsyncExitStack() as stack:
                if mcp is not None:
                    await stack.enter_async_context(mcp.run())
                tg = await stack.enter_async_context(anyio.create_task_group())
                tg.start_soon(_reload_key, key)
                tg.start_soon(_flush_counters, pool)
                yield
                tg.cancel_scope.cancel()
        finally:
            await anyio.to_thread.run_sync(feed.stop)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        known = ", ".join(pool.providers.ids())
        message = (f"no such route: the gateway serves /PROVIDER/PATH (known providers: {known}), e.g. "
                   f"{site.origin}/anthropic/v1/messages")
        body = error_body(dialect_of(None, request.url.path), status, message, "not_found")
        return Response(body, status_code=status, media_type="application/json")

    routes = [Route(MCP_PATH, mcp)] if mcp is not None else []
    app = Starlette(
        routes=[*routes, *dashboard_routes(pool, key, feed.activity, site.port),
                Route("/{provider}/{path:path}", Relay(pool, max_body=max_body))],
        middleware=[Middleware(Guard, pool=pool, key=key, site=site)],
        exception_handlers={404: not_found, 405: not_found},
        lifespan=lifespan,
    )
    # "/acme" is no route: a redirect to "/acme/" would only make clients send their request twice.
    app.router.redirect_slashes = False
    return app


async def _flush_counters(pool: Pool) -> None:
    """Write batched usage counters in the background, so no request waits for that write.

    The transport flushes counters itself when they are due (every 2 s), inside the request that
    finds them due and before its answer goes back: a locked write with two fsyncs in front of
    a stream's first event. Flushed here every second, they are never due there.
    """
    while True:
        await anyio.sleep(FLUSH_EVERY)
        try:
            await anyio.to_thread.run_sync(pool.flush)
        except PoolError as e:
            log.warning("could not write usage counters: %s", e)


async def _reload_key(key: GatewayKey) -> None:
    if key.from_env is not None:
        return
    while True:
        await anyio.sleep(RELOAD_EVERY)
        await anyio.to_thread.run_sync(key.reload)


def build_mcp_app(mcp: McpEndpoint, site: Site) -> Starlette:
    """``authpool serve --http``: only ``mcp`` at ``/mcp`` (its own checks); a JSON-RPC 404 elsewhere."""

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        body = {"jsonrpc": "2.0", "id": None,
                "error": {"code": -32601, "message": f"this server serves MCP at {site.origin}{MCP_PATH} only"}}
        return JSONResponse(body, status_code=status)

    app = Starlette(routes=[Route(MCP_PATH, mcp)], exception_handlers={404: not_found, 405: not_found},
                    lifespan=lambda app: mcp.run())
    app.router.redirect_slashes = False
    return app
