"""MCP tools that add accounts by logging in: ``start_login`` and ``finish_login``.

An MCP server runs where no browser can reach it, so it logs in with the device flow
(RFC 8628): ``start_login`` asks the provider for a user code and returns what the user must
see; ``finish_login`` polls until the user approves, sending progress notifications, and stores
the account. A started login lives in this server's memory only (its device code never leaves
the process) until it finishes, fails or expires. Neither tool ever returns a token.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
import httpx2
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, BeforeValidator, Field

from authpool import Pool, PoolError
from authpool.accounts.model import validate_label
from authpool.auth.device import DeviceEvent, DeviceFlow
from authpool.auth.login import LoginExpired, LoginTimeout, LoginTokens, store_login
from authpool.auth.oauth import TOKEN_TIMEOUT
from authpool.server.mcp.server import iso, tool_errors

__all__ = ["LoginFinished", "LoginStarted", "register_login_tools"]

MAX_PENDING = 20  # started logins kept per server; the oldest is dropped beyond this


def _null_to_empty(value: Any) -> Any:
    return "" if value is None else value


# Typed exactly ``str`` so the SDK passes the label verbatim (it JSON-decodes other string
# annotations, turning a label "123" into a number); null still means "not given".
_OptionalLabel = Annotated[str, BeforeValidator(_null_to_empty)]


class LoginStarted(BaseModel):
    """A login waiting for the user: show them verification_uri and user_code, then call finish_login."""

    login_id: str = Field(description="pass this to finish_login")
    provider: str
    verification_uri: str = Field(description="the page where the user logs in and enters user_code")
    verification_uri_complete: str | None = Field(description="the same page with the code filled in, if offered")
    user_code: str = Field(description="the code the user enters at verification_uri")
    expires_at: str = Field(description="ISO time the code expires; finish the login before it")
    interval: float = Field(description="seconds between the provider's polls (finish_login handles this)")


class LoginFinished(BaseModel):
    """The account the login added, or whose tokens it replaced (the tokens are never shown)."""

    id: str = Field(description="the account's stable id")
    name: str = Field(description="provider/label")
    created: bool = Field(description="true for a new account, false if an existing one got new tokens")


@dataclass
class _Pending:
    provider: str
    label: str | None
    flow: DeviceFlow
    started: float = field(default_factory=time.monotonic)
    lock: anyio.Lock = field(default_factory=anyio.Lock)


def register_login_tools(server: MCPServer[Any], get_pool: Callable[[], Pool]) -> None:
    """Add ``start_login`` and ``finish_login`` to ``server``."""
    logins: dict[str, _Pending] = {}

    def forget_expired() -> None:
        for login_id, pending in list(logins.items()):
            if pending.flow.event().remaining <= 0:
                del logins[login_id]
        while len(logins) >= MAX_PENDING:
            del logins[next(iter(logins))]

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False,
                                             open_world_hint=True))
    async def start_login(
        provider: Annotated[str, Field(description="provider id, e.g. 'github-copilot' (see list_providers)")],
        label: Annotated[_OptionalLabel, Field(description="label for the account (default: the user's email or "
                                                           "id as the provider reports it, else account-N); an "
                                                           "existing label gets new tokens")] = "",
    ) -> LoginStarted:
        """Start adding an account by logging in with the provider's device flow. Show the user verification_uri (or verification_uri_complete) and user_code: they open it on any device, log in and enter the code. Then call finish_login with login_id; it waits for their approval and stores the account. authpool keeps the tokens; they are never returned."""  # noqa: E501
        with tool_errors():
            pool = get_pool()
            p = pool.provider(provider)
            if label:
                validate_label(label)
            flow = DeviceFlow(p)
            async with httpx2.AsyncClient(timeout=TOKEN_TIMEOUT, follow_redirects=False) as client:
                auth = await flow.astart(client)
        forget_expired()
        login_id = secrets.token_urlsafe(9)
        logins[login_id] = _Pending(provider=p.id, label=label or None, flow=flow)
        return LoginStarted(login_id=login_id, provider=p.id, verification_uri=auth.verification_uri,
                            verification_uri_complete=auth.verification_uri_complete, user_code=auth.user_code,
                            expires_at=iso(auth.expires_at) or "", interval=flow.interval)

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False,
                                             open_world_hint=True))
    async def finish_login(
        ctx: Context,
        login_id: Annotated[str, Field(description="the login_id start_login returned")],
        timeout_s: Annotated[float, Field(gt=0, le=3600, description="seconds to wait for the user's approval "
                                                                     "before returning an error (the login stays "
                                                                     "open: call again)")] = 120,
    ) -> LoginFinished:
        """Wait for the user to approve a login begun with start_login, sending progress notifications meanwhile, then store the account. Returns its id and name, with created=false when an existing account got new tokens. If the user has not approved within timeout_s, the error says so and finish_login can be called again until the code expires."""  # noqa: E501
        pending = logins.get(login_id)
        if pending is None or pending.flow.event().remaining <= 0:
            logins.pop(login_id, None)
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
                logins.pop(login_id, None)
                raise ToolError(str(e)) from None
            except LoginTimeout:
                raise ToolError(
                    f"login {login_id} is still waiting after {timeout_s:g}s: the user must open "
                    f"{auth.verification_uri} and enter {auth.user_code} before {iso(auth.expires_at)}; then call "
                    "finish_login again"
                ) from None
            except PoolError as e:
                logins.pop(login_id, None)
                raise ToolError(str(e)) from None
            logins.pop(login_id, None)
            with tool_errors():
                result = await anyio.to_thread.run_sync(
                    lambda: store_login(get_pool(), pending.provider, tokens, label=pending.label))
        return LoginFinished(**result.view())
