"""The pool's MCP resources, read-only JSON that clients may subscribe to.

``authpool://accounts`` (every account), ``authpool://pool-status`` (per provider: how many
accounts can serve now), ``authpool://accounts/{id}`` (one account in full) and
``authpool://providers``. A static resource gets no request context in the SDK, so each is a
:class:`PoolResource` bound to the server's state when it is registered; the template gets the
state through its context. Content is rendered from the pool on every read, in a worker
thread. A read that fails with a ``PoolError`` (a corrupt pool, a bad ``config.toml``, an
unknown account) reaches the client as its one-line reason (see ``boundary.PoolServer``).
Subscriptions to any of them are served by :mod:`~authpool.server.mcp.subscriptions`, fed by
:mod:`~authpool.server.mcp.watcher`.
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
from authpool.server.mcp.schemas import account_detail, accounts_resource, pool_report, provider_list
from authpool.server.mcp.state import ServerState, ToolContext, state_of
from authpool.server.mcp.watcher import ACCOUNT_URI, ACCOUNTS_URI, POOL_STATUS_URI, PROVIDERS_URI

__all__ = ["RESOURCE_LIMIT", "PoolResource", "account_json", "accounts_json", "pool_status_json", "providers_json",
           "register_resources"]


RESOURCE_LIMIT = 100  # accounts in authpool://accounts: about 100 KB of JSON; list_accounts pages the rest


def accounts_json(state: ServerState) -> str:
    """The first accounts' public metadata and state (no secrets), as JSON, with a note when there are more."""
    now = time.time()
    page = page_accounts(state.pool.store.read(), limit=RESOURCE_LIMIT, now=now)
    return accounts_resource(page, now).model_dump_json(indent=2)


def pool_status_json(state: ServerState) -> str:
    """The pool's home and, per provider, how many accounts are in each state, as JSON."""
    return pool_report(state.pool, time.time()).model_dump_json(indent=2)


def providers_json(state: ServerState) -> str:
    """The known providers, their base URLs and allowed origins, as JSON."""
    return provider_list(state.pool).model_dump_json(indent=2)


def account_json(state: ServerState, account_id: str) -> str:
    """One account in full (no secrets), with the attempts this server made with it, as JSON."""
    found = state.pool.get(account_id)
    return account_detail(found, time.time(), state.recent(found.id)).model_dump_json(indent=2)


class PoolResource(Resource):
    """A resource rendered from a server's state on every read."""

    model_config = ConfigDict(validate_default=True, extra="forbid", arbitrary_types_allowed=True)

    state: ServerState = Field(exclude=True)
    render: Callable[[ServerState], str] = Field(exclude=True)

    async def read(self) -> str:
        """Render the resource (pool reads block: they run in a worker thread)."""
        return await anyio.to_thread.run_sync(self.render, self.state)


async def read_account(id: str, ctx: ToolContext) -> str:
    """One account in full: state, cooldowns, last error, the command that fixes a dead login (no secrets)."""
    return await anyio.to_thread.run_sync(account_json, state_of(ctx), id)


def register_resources(server: MCPServer[Any], state: ServerState) -> None:
    """Add the pool's resources, reading ``state``'s pool, to ``server``."""
    for uri, name, description, render in (
        (ACCOUNTS_URI, "accounts", f"The accounts' public metadata and state (no secrets): the first {RESOURCE_LIMIT}, "
                                   "with the total and a note when there are more (the list_accounts tool pages "
                                   "through them). Subscribe to hear of any change, from any process.", accounts_json),
        (POOL_STATUS_URI, "pool-status", "Per provider: accounts ready, cooling, needing a new login or disabled, "
                                         "and when the next frees up. Subscribe to hear of any change.",
         pool_status_json),
        (PROVIDERS_URI, "providers", "The known providers, their base URLs and allowed origins.", providers_json),
    ):
        server.add_resource(PoolResource(uri=uri, name=name, mime_type="application/json", description=description,
                                         state=state, render=render))
    server.resource(ACCOUNT_URI, name="account", mime_type="application/json",
                    description="One account in full, by its id (see authpool://accounts); no secrets. "
                                "Subscribe to hear when it changes.")(read_account)
