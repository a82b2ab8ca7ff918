"""The pool's MCP tools: module-level functions, each a few lines over the library.

Each tool reaches the served pool and the server's memory through its context
(:func:`~authpool.server.mcp.state.state_of`); :func:`register_tools` adds them to a server.
Expected failures become tool errors carrying the library's message; blocking pool reads and
writes run in a worker thread so one slow call never holds up another. No tool ever returns a
token, refresh token or API key.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from authpool import PoolError
from authpool.accounts import page_accounts
from authpool.accounts.listing import DEFAULT_LIMIT, MAX_LIMIT, STATES
from authpool.server.mcp.boundary import tool_errors
from authpool.server.mcp.proxy import ProxyCall, run_proxy
from authpool.server.mcp.schemas import (
    AccountDetail,
    AccountList,
    AccountRef,
    AccountView,
    JsonBody,
    OptionalText,
    PoolStatus,
    ProviderList,
    ProxyResponse,
    account_detail,
    account_list,
    attempt_view,
    pool_report,
    provider_list,
    view,
)
from authpool.server.mcp.state import ToolContext, state_of

__all__ = [
    "account_status",
    "list_accounts",
    "list_providers",
    "pool_status",
    "proxy_request",
    "register_tools",
    "reset_cooldown",
    "set_account_enabled",
]

PROXY_REQUEST_DESCRIPTION = (
    "Send an HTTP request to an LLM provider's API through the account pool. authpool picks an account, "
    "attaches its credentials (never set Authorization or API-key headers yourself: they are refused), "
    "and on a rate limit (429) or rejected token (401/403) cools that account down or refreshes its "
    "token and retries on another account within this same call. Returns the provider's status, "
    "body (parsed JSON when possible), which account served it and every attempt made. "
    "Example: provider='anthropic', method='POST', path='/v1/messages', "
    "json={'model': 'claude-sonnet-4-5', 'max_tokens': 256, 'messages': [...]}."
)
AccountArg = Annotated[str, Field(description="account id or provider/label")]


async def proxy_request(
    ctx: ToolContext,
    provider: Annotated[str, Field(description="provider id, e.g. 'anthropic', 'openai' (see list_providers)")],
    method: Annotated[str, Field(description="HTTP method: GET, POST, PUT, PATCH, DELETE")],
    path: Annotated[str, Field(description="path relative to the provider's base URL, e.g. '/v1/messages'; "
                                           "an absolute URL is accepted only on one of the provider's origins")],
    query: Annotated[dict[str, str] | None, Field(description="query parameters")] = None,
    headers: Annotated[dict[str, str] | None, Field(description="extra request headers (not credentials)")] = None,
    json: Annotated[JsonBody | None, Field(description="a JSON request body (object or array)")] = None,
    body: Annotated[OptionalText, Field(description="a raw text request body, instead of json")] = "",
    account: Annotated[OptionalText, Field(description="use only this account (id or provider/label)")] = "",
    namespace: Annotated[OptionalText, Field(description="rotate only within this sub-pool")] = "",
    wait_s: Annotated[float, Field(ge=0, le=3600, description="if every account is cooling, wait up to this "
                                                              "many seconds for one to free up (default 0)")] = 0,
    stream: Annotated[bool, Field(description="ask for a streamed answer (adds \"stream\": true to a JSON "
                                              "body); the stream is collected, with progress notifications, "
                                              "and a stream that opens with a rate-limit error rotates")] = False,
    session: Annotated[OptionalText, Field(description="a key of your choice: calls with the same session "
                                                       "stay on one account while it is healthy (keeps "
                                                       "provider prompt caches warm)")] = "",
    max_body_chars: Annotated[int, Field(ge=1000, le=2_000_000,
                                         description="truncate the returned body beyond this many characters")
                              ] = 100_000,
) -> ProxyResponse:
    """Send one request through the pool (the description the client sees is PROXY_REQUEST_DESCRIPTION)."""
    state = state_of(ctx)

    async def progress(waited: float, total: float | None, message: str) -> None:
        await ctx.report_progress(waited, total, message)

    call = ProxyCall(provider=provider, method=method, path=path, query=query, headers=headers, json_body=json,
                     body=body or None, account=account or None, namespace=namespace or None, wait_s=wait_s,
                     max_body_chars=max_body_chars, session=session or None, stream=stream)
    try:
        outcome = await run_proxy(state.pool, call, progress)  # opening the pool may fail too: a PoolError
    except PoolError as e:
        state.remember(getattr(e, "attempts", []) or [])
        raise ToolError(str(e)) from None
    result = outcome.result
    state.remember(result.attempts)
    return ProxyResponse(
        status=outcome.status,
        headers=outcome.headers,
        body=outcome.body,
        body_format=outcome.body_format,
        body_bytes=outcome.body_bytes,
        truncated=outcome.truncated,
        account=AccountRef(id=result.account_id, label=result.account.split("/", 1)[1], name=result.account),
        attempts=[attempt_view(a) for a in result.attempts],
        stream_events=outcome.stream.events if outcome.stream else None,
        stream_text=outcome.stream.text if outcome.stream else None,
        stream_error=outcome.stream.error if outcome.stream else None,
    )


async def list_accounts(
    ctx: ToolContext,
    provider: Annotated[OptionalText, Field(description="only this provider's accounts")] = "",
    namespace: Annotated[OptionalText, Field(description="only accounts in this sub-pool")] = "",
    state: Annotated[OptionalText, Field(description="only accounts in this state: " + ", ".join(STATES))] = "",
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT, description="at most this many accounts "
                                                                f"(default {DEFAULT_LIMIT})")] = DEFAULT_LIMIT,
    cursor: Annotated[OptionalText, Field(description="next_cursor of the previous page (same filters)")] = "",
) -> AccountList:
    """List the pool's accounts with their state (ready, cooling until T, needs-reauth, refresh-failing, disabled), token expiry, last use and counters, a page at a time: total counts every match, and next_cursor (null on the last page) fetches the next page. Never shows secrets."""  # noqa: E501
    now = time.time()
    with tool_errors():
        pool = state_of(ctx).pool
        if provider:
            pool.provider(provider)
        # A team store may go to the database for its snapshot: in a worker thread, with the page.
        page = await anyio.to_thread.run_sync(lambda: page_accounts(
            pool.store.read(), provider=provider or None, namespace=namespace or None, state=state or None,
            limit=limit, cursor=cursor or None, now=now))
    return account_list(page, now)


async def account_status(ctx: ToolContext, account: AccountArg) -> AccountDetail:
    """One account in full: state, each cooldown and its remaining time, last error, the command to fix a dead login, and the attempts this server made with it recently. Never shows secrets."""  # noqa: E501
    state = state_of(ctx)
    with tool_errors():
        found = await anyio.to_thread.run_sync(state.pool.get, account)
    return account_detail(found, time.time(), state.recent(found.id))


async def pool_status(ctx: ToolContext) -> PoolStatus:
    """Summary per provider: how many accounts are ready, cooling, need re-login or are disabled, and when the next cooling account frees up. Call this before a batch of work or after an 'all accounts cooling' error."""  # noqa: E501
    with tool_errors():
        pool = state_of(ctx).pool
        return await anyio.to_thread.run_sync(lambda: pool_report(pool, time.time()))


async def set_account_enabled(
    ctx: ToolContext,
    account: AccountArg,
    enabled: Annotated[bool, Field(description="true to let rotation use it, false to keep it out")],
) -> AccountView:
    """Enable or disable an account. A disabled account is kept (with its login) but never used for requests."""
    with tool_errors():
        found = await anyio.to_thread.run_sync(state_of(ctx).pool.set_enabled, account, enabled)
    return view(found, time.time())


async def reset_cooldown(ctx: ToolContext, account: AccountArg) -> AccountView:
    """Clear an account's cooldowns, backoff and needs-reauth flag so rotation tries it again now. Use it after fixing a problem, not to get around a provider's rate limit (the provider will just refuse again)."""  # noqa: E501
    with tool_errors():
        found = await anyio.to_thread.run_sync(state_of(ctx).pool.reset, account)
    return view(found, time.time())


async def list_providers(ctx: ToolContext) -> ProviderList:
    """List the providers authpool knows (built-in and from config.toml): id, base URL, the origins credentials may go to, and how many accounts each has."""  # noqa: E501
    with tool_errors():
        return await anyio.to_thread.run_sync(provider_list, state_of(ctx).pool)


def register_tools(server: MCPServer[Any]) -> None:
    """Add the seven pool tools to ``server`` (whose lifespan yields a ``ServerState``)."""
    # Every hint stated, and true: reads change nothing; enabling and resetting change the pool only,
    # the same way however often; proxy_request sends whatever the caller asks (a DELETE included)
    # to a provider, so it is neither read-only nor safe to repeat.
    reads = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
    changes = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True,
                              open_world_hint=False)
    sends = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=True)
    server.tool(annotations=sends, description=PROXY_REQUEST_DESCRIPTION)(proxy_request)
    server.tool(annotations=reads)(list_accounts)
    server.tool(annotations=reads)(account_status)
    server.tool(annotations=reads)(pool_status)
    server.tool(annotations=changes)(set_account_enabled)
    server.tool(annotations=changes)(reset_cooldown)
    server.tool(annotations=reads)(list_providers)
