"""MCP tools that add accounts by logging in: ``start_login`` and ``finish_login``.

An MCP server runs where no browser can reach it, so it logs in with the device flow
(RFC 8628): ``start_login`` asks the provider for a user code and returns what the user must
see; ``finish_login`` polls until the user approves, sending progress notifications, and stores
the account. A started login lives in this server's memory only (``ServerState.logins``; its
device code never leaves the process) until it finishes, fails or expires. Neither tool ever
returns a token.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any

import anyio
import httpx2
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from authpool import LoginExpired, LoginTimeout, PoolError
from authpool.accounts import validate_label
from authpool.auth import TOKEN_TIMEOUT, DeviceEvent, DeviceFlow, LoginTokens, store_login
from authpool.server.mcp.boundary import tool_errors
from authpool.server.mcp.schemas import LoginFinished, LoginStarted, OptionalText, iso
from authpool.server.mcp.state import PendingLogin, ToolContext, state_of

__all__ = ["finish_login", "register_login_tools", "start_login"]


async def start_login(
    ctx: ToolContext,
    provider: Annotated[str, Field(description="provider id, e.g. 'github-copilot' (see list_providers)")],
    label: Annotated[OptionalText, Field(description="label for the account (default: the user's email or "
                                                     "id as the provider reports it, else account-N); an "
                                                     "existing label gets new tokens")] = "",
) -> LoginStarted:
    """Start adding an account by logging in with the provider's device flow. Show the user verification_uri (or verification_uri_complete) and user_code: they open it on any device, log in and enter the code. Then call finish_login with login_id; it waits for their approval and stores the account. authpool keeps the tokens; they are never returned."""  # noqa: E501
    state = state_of(ctx)
    with tool_errors():
        p = state.pool.provider(provider)
        if label:
            validate_label(label)
        flow = DeviceFlow(p)
        async with httpx2.AsyncClient(timeout=TOKEN_TIMEOUT, follow_redirects=False) as client:
            auth = await flow.astart(client)
    login_id = secrets.token_urlsafe(9)
    state.add_login(login_id, PendingLogin(provider=p.id, label=label or None, flow=flow))
    return LoginStarted(login_id=login_id, provider=p.id, verification_uri=auth.verification_uri,
                        verification_uri_complete=auth.verification_uri_complete, user_code=auth.user_code,
                        expires_at=iso(auth.expires_at) or "", interval=flow.interval)


async def finish_login(
    ctx: ToolContext,
    login_id: Annotated[str, Field(description="the login_id start_login returned")],
    timeout_s: Annotated[float, Field(gt=0, le=3600, description="seconds to wait for the user's approval "
                                                                 "before returning an error (the login stays "
                                                                 "open: call again)")] = 120,
) -> LoginFinished:
    """Wait for the user to approve a login begun with start_login, sending progress notifications meanwhile, then store the account. Returns its id and name, with created=false when an existing account got new tokens. If the user has not approved within timeout_s, the error says so and finish_login can be called again until the code expires."""  # noqa: E501
    state = state_of(ctx)
    pending = state.logins.get(login_id)
    if pending is None or pending.expired():
        state.logins.pop(login_id, None)
        raise ToolError(f"unknown login_id {login_id!r}: it finished, expired or was started by another server "
                        "process; call start_login again")
    if pending.lock.locked():
        raise ToolError(f"login {login_id} is already being finished by another finish_login call")
    async with pending.lock:
        auth = pending.flow.authorization
        total = pending.flow.event().remaining + (time.monotonic() - pending.started)

        async def progress(event: DeviceEvent) -> None:
            where = auth.verification_uri_complete or auth.verification_uri
            await ctx.report_progress(round(time.monotonic() - pending.started, 1), round(total, 1),
                                      f"waiting for the user to open {where} and enter {auth.user_code} "
                                      f"({event.remaining:.0f}s left)")

        await progress(pending.flow.event())
        try:
            async with httpx2.AsyncClient(timeout=TOKEN_TIMEOUT, follow_redirects=False) as client:
                tokens: LoginTokens = await pending.flow.apoll(client, max_wait=timeout_s, on_event=progress)
        except LoginExpired as e:
            state.logins.pop(login_id, None)
            raise ToolError(str(e)) from None
        except LoginTimeout:
            raise ToolError(
                f"login {login_id} is still waiting after {timeout_s:g}s: the user must open "
                f"{auth.verification_uri} and enter {auth.user_code} before {iso(auth.expires_at)}; then call "
                "finish_login again"
            ) from None
        except PoolError as e:
            state.logins.pop(login_id, None)
            raise ToolError(str(e)) from None
        state.logins.pop(login_id, None)
        with tool_errors():
            result = await anyio.to_thread.run_sync(
                lambda: store_login(state.pool, pending.provider, tokens, label=pending.label))
    return LoginFinished(**result.view())


def register_login_tools(server: MCPServer[Any]) -> None:
    """Add ``start_login`` and ``finish_login`` to ``server`` (whose lifespan yields a ``ServerState``)."""
    opens = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False,
                            open_world_hint=True)
    server.tool(annotations=opens)(start_login)
    server.tool(annotations=opens)(finish_login)
