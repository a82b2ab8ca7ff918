"""The pool's MCP resources: ``authpool://accounts`` and ``authpool://providers``, read-only JSON.

A static resource gets no request context in the SDK, so each is a :class:`PoolResource` bound
to the server's state when it is registered; its content is rendered from the pool on every
read, in a worker thread. A read that fails with a ``PoolError`` (a corrupt pool file, a bad
``config.toml``) reaches the client as its one-line reason (see ``boundary.PoolServer``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.resources import Resource
from pydantic import ConfigDict, Field

from authpool.accounts import page_accounts
from authpool.server.mcp.schemas import accounts_resource, provider_list
from authpool.server.mcp.state import ServerState

__all__ = ["RESOURCE_LIMIT", "PoolResource", "accounts_json", "providers_json", "register_resources"]


RESOURCE_LIMIT = 100  # accounts in authpool://accounts: about 100 KB of JSON; list_accounts pages the rest


def accounts_json(state: ServerState) -> str:
    """The first accounts' public metadata and state (no secrets), as JSON, with a note when there are more."""
    now = time.time()
    page = page_accounts(state.pool.store.read(), limit=RESOURCE_LIMIT, now=now)
    return accounts_resource(page, now).model_dump_json(indent=2)


def providers_json(state: ServerState) -> str:
    """The known providers, their base URLs and allowed origins, as JSON."""
    return provider_list(state.pool).model_dump_json(indent=2)


class PoolResource(Resource):
    """A resource rendered from a server's state on every read."""

    model_config = ConfigDict(validate_default=True, extra="forbid", arbitrary_types_allowed=True)

    state: ServerState = Field(exclude=True)
    render: Callable[[ServerState], str] = Field(exclude=True)

    async def read(self) -> str:
        """Render the resource (pool reads block: they run in a worker thread)."""
        return await anyio.to_thread.run_sync(self.render, self.state)


def register_resources(server: MCPServer[Any], state: ServerState) -> None:
    """Add ``authpool://accounts`` and ``authpool://providers``, reading ``state``'s pool, to ``server``."""
    server.add_resource(PoolResource(
        uri="authpool://accounts", name="accounts", mime_type="application/json",
        description=f"The accounts' public metadata and state (no secrets): the first {RESOURCE_LIMIT}, with the total "
                    "and a note when there are more (the list_accounts tool pages through them).",
        state=state, render=accounts_json))
    server.add_resource(PoolResource(
        uri="authpool://providers", name="providers", mime_type="application/json",
        description="The known providers, their base URLs and allowed origins.", state=state, render=providers_json))
