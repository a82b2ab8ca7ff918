"""MCP tools that add accounts by logging in: ``login``, and ``start_login`` / ``finish_login``.

``login`` logs in with the browser when the client can open a page for the user (URL-mode
elicitation): authorization code + PKCE, the redirect coming back to this server's own loopback
listener, and the new account returned once it arrives. How the page is opened depends on the
protocol era the client speaks:

- up to 2025-11-25, the server asks the client mid-call (``elicitation/create`` in URL mode,
  :meth:`Context.elicit_url`), waits for the redirect, and tells the client the elicitation is
  complete (``notifications/elicitation/complete``);
- from 2026-07-28 the server may not send requests; the call answers ``input_required`` with the
  URL elicitation embedded and the login's id as (sealed) ``request_state``; the client opens the
  page and calls again with the user's answer, and that second round waits for the redirect.

A client without URL elicitation gets the device flow (RFC 8628) instead, as ``start_login``
does: the code and the page to enter it at, then ``finish_login``. ``finish_login`` polls until
the user approves, sending progress notifications, and stores the account. A started login lives
in this server's memory only (its PKCE verifier, its device code); no tool ever returns a token.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any, Literal

import anyio
import httpx2
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ElicitRequest, ElicitRequestURLParams, InputRequiredResult, ToolAnnotations
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import Field

from authpool import ConfigError, LoginExpired, LoginTimeout, PoolError
from authpool.accounts import validate_label
from authpool.auth import TOKEN_TIMEOUT, DeviceEvent, DeviceFlow, LoginTokens, store_login
from authpool.auth.login import AuthorizationCodeLogin, LoginResult, exchange_code, require_oauth, token_client
from authpool.auth.redirect import RedirectListener
from authpool.server.mcp.boundary import tool_errors
from authpool.server.mcp.schemas import LoginFinished, LoginOutcome, LoginStarted, OptionalText, iso
from authpool.server.mcp.state import BrowserLogin, PendingLogin, ServerState, ToolContext, state_of

__all__ = ["finish_login", "login", "register_login_tools", "start_login"]

_PAGE = "login_page"  # the key of the URL elicitation in an input_required answer
_WAIT_STEP = 1.0  # seconds between progress notifications while the redirect is awaited


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


async def login(
    ctx: ToolContext,
    provider: Annotated[str, Field(description="provider id, e.g. 'anthropic' (see list_providers)")],
    label: Annotated[OptionalText, Field(description="label for the account (default: the user's email or id as "
                                                     "the provider reports it, else account-N); an existing label "
                                                     "gets new tokens")] = "",
    timeout_s: Annotated[float, Field(gt=0, le=3600, description="seconds to wait for the user to finish logging in "
                                                                 "in the browser")] = 300,
) -> LoginOutcome | InputRequiredResult:
    """Add an account by logging in. If your client can open a page for the user, authpool asks it to open the provider's login page and returns the new account once the user has logged in. Otherwise the result has status "device_code": show the user device.verification_uri and device.user_code, then call finish_login with device.login_id. authpool keeps the tokens; they are never returned."""  # noqa: E501
    state = state_of(ctx)
    with tool_errors():
        p = state.pool.provider(provider)
        if label:
            validate_label(label)
    how = _url_elicitation(ctx)
    browser_error: ConfigError | None = None
    if how is not None:
        try:
            require_oauth(p, "authorize_url")
        except ConfigError as e:
            browser_error = e
    if how == "input_required" and browser_error is None:
        return await _login_in_rounds(ctx, p.id, label or None, timeout_s)
    if how == "request" and browser_error is None:
        return await _login_asking_mid_call(ctx, p.id, label or None, timeout_s)
    if p.oauth is None or not p.oauth.device_authorization_url:
        if browser_error is not None:
            raise ToolError(str(browser_error))
        raise ToolError(f"{p.id} logs in through a browser only, and this client cannot open a page for authpool "
                        f"(it offers no URL elicitation): run `authpool login {p.id}` in a terminal instead")
    started = await start_login(ctx, provider, label)
    return LoginOutcome(status="device_code", device=started,
                        next_step=f"show the user {started.verification_uri_complete or started.verification_uri} "
                                  f"and the code {started.user_code}, then call finish_login with login_id "
                                  f"{started.login_id}")


def _url_elicitation(ctx: ToolContext) -> Literal["request", "input_required"] | None:
    """How this client can be asked to open a page: mid-call, in rounds (2026-07-28), or not at all."""
    caps = ctx.client_capabilities
    if caps is None or caps.elicitation is None or caps.elicitation.url is None:
        return None
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return "input_required"
    return "request" if ctx.session.can_send_request else None


def _open_browser_login(state: ServerState, provider: str, label: str | None, timeout_s: float) -> BrowserLogin:
    """Bind this server's loopback redirect and prepare the login (blocking: run in a worker thread)."""
    with tool_errors():
        p = state.pool.provider(provider)
        oauth = require_oauth(p, "authorize_url")
        listener: RedirectListener[str] = RedirectListener(port=oauth.redirect_port or 0, path=oauth.redirect_path)
        try:
            listener.bind()
        except OSError as e:
            raise ConfigError(f"cannot listen on 127.0.0.1:{oauth.redirect_port} for the login redirect "
                              f"([providers.{p.id}.oauth] redirect_port): {e.strerror or e}") from None
        code_login = AuthorizationCodeLogin(p, listener.redirect_uri)
        listener.serve(code_login.accept_redirect)
    return BrowserLogin(provider=p.id, label=label, login=code_login, listener=listener,
                        deadline=time.monotonic() + timeout_s)


def _page_message(provider: str) -> str:
    return (f"Log in to {provider} to add the account to authpool's pool. The login comes back to authpool on "
            "this machine; authpool keeps the tokens.")


async def _login_asking_mid_call(ctx: ToolContext, provider: str, label: str | None,
                                 timeout_s: float) -> LoginOutcome:
    """2025 era: ask the client to open the page now, wait for the redirect, say the elicitation is complete."""
    state = state_of(ctx)
    pending = await anyio.to_thread.run_sync(_open_browser_login, state, provider, label, timeout_s)
    elicitation_id = secrets.token_urlsafe(9)
    try:
        answer = await ctx.elicit_url(_page_message(provider), pending.login.authorize_url, elicitation_id)
        if answer.action != "accept":
            raise ToolError(f"the user did not open the login page ({answer.action}); nothing was stored")
        result = await _finish_browser_login(ctx, pending)
    finally:
        pending.close()
    await ctx.session.send_elicit_complete(elicitation_id, related_request_id=ctx.request_context.request_id)
    return LoginOutcome(status="logged_in", account=LoginFinished(**result.view()),
                        next_step="the account is in the pool and serves requests now")


async def _login_in_rounds(ctx: ToolContext, provider: str, label: str | None,
                           timeout_s: float) -> LoginOutcome | InputRequiredResult:
    """2026-07-28: round one answers input_required with the page to open; round two waits for the redirect."""
    state = state_of(ctx)
    login_id = ctx.request_state
    if login_id is None:
        pending = await anyio.to_thread.run_sync(_open_browser_login, state, provider, label, timeout_s)
        login_id = secrets.token_urlsafe(12)
        state.add_browser_login(login_id, pending)
        page = ElicitRequest(params=ElicitRequestURLParams(message=_page_message(provider),
                                                           url=pending.login.authorize_url))
        return InputRequiredResult(input_requests={_PAGE: page}, request_state=login_id)
    waiting = state.browser_logins.pop(login_id, None)
    if waiting is None:
        raise ToolError("this login is no longer waiting (it finished, expired, or another server process started "
                        "it); call login again")
    try:
        answer = (ctx.input_responses or {}).get(_PAGE)
        action = getattr(answer, "action", None)
        if action != "accept":
            raise ToolError(f"the user did not open the login page ({action or 'no answer'}); nothing was stored")
        result = await _finish_browser_login(ctx, waiting)
    finally:
        waiting.close()
    return LoginOutcome(status="logged_in", account=LoginFinished(**result.view()),
                        next_step="the account is in the pool and serves requests now")


async def _finish_browser_login(ctx: ToolContext, pending: BrowserLogin) -> LoginResult:
    """Wait for the redirect (progress meanwhile), redeem the code, store the account."""
    state = state_of(ctx)
    started = time.monotonic()
    total = max(pending.deadline - started, 0.0)
    code: str | None = None
    with tool_errors():
        while code is None:
            left = pending.deadline - time.monotonic()
            if left <= 0:
                raise LoginTimeout(f"no login came back to {pending.login.redirect_uri} in time; nothing was stored "
                                   "(call login again, with a larger timeout_s)")
            code = await anyio.to_thread.run_sync(pending.listener.wait, min(_WAIT_STEP, left),
                                                  abandon_on_cancel=True)
            if code is None:
                await ctx.report_progress(round(time.monotonic() - started, 1), round(total, 1),
                                          f"waiting for the login at {pending.provider} to come back "
                                          f"({max(left - _WAIT_STEP, 0):.0f}s left)")

        def redeem() -> LoginResult:
            with token_client() as client:
                tokens = exchange_code(pending.login, code, client)
            return store_login(state.pool, pending.provider, tokens, label=pending.label)

        return await anyio.to_thread.run_sync(redeem)


def register_login_tools(server: MCPServer[Any]) -> None:
    """Add ``login``, ``start_login`` and ``finish_login`` to ``server`` (whose lifespan yields a ``ServerState``)."""
    opens = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False,
                            open_world_hint=True)
    server.tool(annotations=opens)(login)
    server.tool(annotations=opens)(start_login)
    server.tool(annotations=opens)(finish_login)
