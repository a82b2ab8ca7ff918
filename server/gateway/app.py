"""The gateway as an ASGI application: the routes, the guard in front of them, and what runs beside them.

One route does the work, ``/{provider}/{path}`` (:class:`~authpool.server.gateway.relay.Relay`);
everything else is a 404 in JSON. The :class:`~authpool.server.gateway.guard.Guard` middleware
runs before routing, so no answer — not even a 404 — goes to a caller without the gateway key or
to a web page. Beside the routes, the lifespan re-reads the stored gateway key every few seconds,
so a rotated key takes effect without a restart.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from authpool import Pool
from authpool.server.gateway.errors import dialect_of, error_body
from authpool.server.gateway.guard import Guard, Site
from authpool.server.gateway.keys import RELOAD_EVERY, GatewayKey
from authpool.server.gateway.relay import MAX_BODY, Relay

__all__ = ["build_app"]


def build_app(pool: Pool, key: GatewayKey, site: Site, *, max_body: int = MAX_BODY) -> Starlette:
    """The gateway for ``pool``, answering at ``site`` to callers holding ``key``.

    Example:
        >>> app = build_app(Pool.open(), GatewayKey(pool), Site.of("127.0.0.1", 8787))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8787)  # doctest: +SKIP
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_reload_key, key)
            yield
            tg.cancel_scope.cancel()

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        known = ", ".join(pool.providers.ids())
        message = (f"no such route: the gateway serves /PROVIDER/PATH (known providers: {known}), e.g. "
                   f"{site.origin}/anthropic/v1/messages")
        body = error_body(dialect_of(None, request.url.path), status, message, "not_found")
        return Response(body, status_code=status, media_type="application/json")

    app = Starlette(
        routes=[Route("/{provider}/{path:path}", Relay(pool, max_body=max_body))],
        middleware=[Middleware(Guard, pool=pool, key=key, site=site)],
        exception_handlers={404: not_found, 405: not_found},
        lifespan=lifespan,
    )
    # "/acme" is no route: a redirect to "/acme/" would only make clients send their request twice.
    app.router.redirect_slashes = False
    return app


async def _reload_key(key: GatewayKey) -> None:
    if key.from_env is not None:
        return
    while True:
        await anyio.sleep(RELOAD_EVERY)
        await anyio.to_thread.run_sync(key.reload)
