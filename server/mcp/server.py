"""The MCP server: the pool as tools and resources.

:func:`build_server` only assembles: the tools (:mod:`~authpool.server.mcp.tools`,
:mod:`~authpool.server.mcp.login`) and resources (:mod:`~authpool.server.mcp.resources`) are
module-level functions that reach the pool through the server's state, which the lifespan here
hands to the SDK. The MCP layer is thin: every tool is a few lines over the library. Expected
failures become tool errors with a message a person (or an LLM) can act on; nothing here ever
returns or logs a token, refresh token or API key.

stdout carries JSON-RPC only. The SDK points fd 1 at stderr while it serves, and the lifespan
redirects ``sys.stdout`` to stderr too, so a stray ``print`` can never corrupt the wire.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer

from authpool import Pool, PoolError
from authpool.auth import Flight, drain
from authpool.server.mcp.boundary import PoolServer
from authpool.server.mcp.catalog import register_catalog_tools
from authpool.server.mcp.login import register_login_tools
from authpool.server.mcp.resources import register_resources
from authpool.server.mcp.state import ServerState
from authpool.server.mcp.tools import register_tools

__all__ = ["INSTRUCTIONS", "build_server", "finish_refreshes", "lifespan"]

log = logging.getLogger("authpool")

INSTRUCTIONS = """\
authpool sends HTTP requests to LLM providers (Anthropic, OpenAI, Gemini, GitHub Copilot,
OpenAI-compatible and user-defined ones) through a pool of accounts. It picks an account,
attaches its credentials itself, and if the provider rate-limits (429) or rejects the token
(401/403) it cools that account down or refreshes its token and retries on another account
within the same call. Use `proxy_request` to call a provider API; use `pool_status` or
`list_accounts` to see which accounts are ready, cooling down or need a new login. You never
see or handle API keys or tokens."""

#: Seconds between checks for batched usage counters that are due to be written.
FLUSH_EVERY = 2.0


def build_server(pool: Pool | None = None) -> MCPServer[Any]:
    """The authpool MCP server over ``pool`` (default: the pool of ``AUTHPOOL_HOME``, opened on first use).

    Example:
        >>> async with mcp.Client(build_server(Pool.open(home))) as client:  # in memory, as tests do
        ...     await client.call_tool("pool_status", {})
    """
    state = ServerState(pool)
    server = PoolServer("authpool", version=_version(), instructions=INSTRUCTIONS,
                        lifespan=functools.partial(lifespan, state), log_level="WARNING",
                        subscriptions=state.subscriptions.bus)
    register_tools(server)
    register_login_tools(server)
    register_catalog_tools(server)
    register_resources(server, state)
    server.serve_subscriptions(state.subscriptions)
    server.middleware.append(_kick_watcher_after_tools)
    return server


async def _kick_watcher_after_tools(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """After a tool call (it may have changed the pool), let the watcher look at once instead of at its next poll."""
    try:
        return await call_next(ctx)
    finally:
        if ctx.method == "tools/call" and isinstance(ctx.lifespan_context, ServerState):
            ctx.lifespan_context.watcher.kick()


@contextlib.asynccontextmanager
async def lifespan(state: ServerState, server: MCPServer[Any]) -> AsyncIterator[ServerState]:
    """A server's run: it gets ``state`` (its tools' ``lifespan_context``); stdout goes to stderr and due
    usage counters are written meanwhile; at the end, sent refreshes are waited for and pending counters
    written."""
    del server  # one state per server, bound when the server is built
    # print() anywhere would otherwise be buffered and flushed onto the JSON-RPC wire at exit.
    with contextlib.redirect_stdout(sys.stderr):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_flush_periodically, state)
            await tg.start(state.watcher.run)
            try:
                yield state
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    # The server may not be the whole process (tests serve in memory): wait for
                    # sent refreshes without forbidding new ones.
                    await anyio.to_thread.run_sync(lambda: finish_refreshes(final=False))
                    await anyio.to_thread.run_sync(_flush_quietly, state.pool)


def finish_refreshes(*, final: bool = True) -> None:
    """Wait for this process's token refreshes that reached their endpoint (says so if it takes a while).

    Called before the server exits: a refresh that was sent may have rotated the login at the
    provider already, and leaving before its answer is stored would log the user out. ``final``
    (the process is exiting) also stops refreshes that have not sent yet.
    """
    drain(notify=_say_waiting, final=final)


async def _flush_periodically(state: ServerState) -> None:
    while True:
        await anyio.sleep(FLUSH_EVERY)
        pool = state.pool
        if pool.usage.due():
            await anyio.to_thread.run_sync(_flush_quietly, pool)


def _say_waiting(pending: list[Flight]) -> None:
    names = ", ".join(sorted({f.name for f in pending}))
    log.warning("finishing a token refresh (%s) before exiting: the provider may have rotated the login already",
                names)


def _flush_quietly(pool: Pool) -> None:
    try:
        pool.flush()
    except PoolError as e:
        log.warning("could not write usage counters: %s", e)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("authpool")
    except PackageNotFoundError:
        return "0"
