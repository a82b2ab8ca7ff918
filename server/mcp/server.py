"""The MCP server: the pool as tools and resources, over stdio.

The MCP layer is thin: every tool is a few lines over :mod:`pool`. Expected failures become
tool errors with a message a person (or an LLM) can act on; nothing here ever returns or logs a
token, refresh token or API key.

stdout carries JSON-RPC only. The SDK points fd 1 at stderr while it serves, and the lifespan
redirects ``sys.stdout`` to stderr too, so a stray ``print`` can never corrupt the wire.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, BeforeValidator, Field

from authpool import Pool, PoolError
from authpool.accounts.model import Account
from authpool.accounts.views import account_view, fix_command, pool_status
from authpool.auth.refresh import Flight, drain
from authpool.rotation import Attempt, RequestResult
from authpool.server.front import ProxyCall, ProxyOutcome, run_proxy
from authpool.server.mcp.boundary import PoolServer

__all__ = ["build_server", "finish_refreshes"]

log = logging.getLogger("authpool")

INSTRUCTIONS = """\
authpool sends HTTP requests to LLM providers (Anthropic, OpenAI, Gemini, GitHub Copilot,
OpenAI-compatible and user-defined ones) through a pool of accounts. It picks an account,
attaches its credentials itself, and if the provider rate-limits (429) or rejects the token
(401/403) it cools that account down or refreshes its token and retries on another account
within the same call. Use `proxy_request` to call a provider API; use `pool_status` or
`list_accounts` to see which accounts are ready, cooling down or need a new login. You never
see or handle API keys or tokens."""

_HISTORY = 20  # attempts remembered per account, for account_status


def _null_to_empty(value: Any) -> Any:
    return "" if value is None else value


# An optional text argument. The SDK json-decodes every string argument whose annotation is
# not exactly ``str`` (a workaround for clients that send objects as JSON text), so with
# ``str | None`` a raw body '{"a": 1}' became a dict and was rejected, and the text 'null'
# became None: a body 'null' was silently dropped and a namespace named 'null' silently
# widened rotation to every namespace. Typed ``str``, the text arrives verbatim; an explicit
# JSON null still means "not given" (as does "", which the tool maps to None).
OptionalText = Annotated[str, BeforeValidator(_null_to_empty)]


# -- output models -------------------------------------------------------------------------


class AttemptView(BaseModel):
    """One try within a request."""

    account_id: str
    account: str = Field(description="provider/label of the account tried")
    status: int | None = Field(description="HTTP status the provider answered, null for a network error")
    outcome: str = Field(description="ok | rate_limited | refreshed | needs_reauth | unauthorized (a 401 not yet "
                                     "confirmed: the provider accepted no other account's credentials in this "
                                     "call) | forbidden | server_error | "
                                     "network_error | refresh_failed | refresh_pending (the token endpoint is slow; "
                                     "the refresh goes on and will be stored) | secret_error | stream_rate_limited "
                                     "(a 200 stream opened with a rate-limit error) | stream_overloaded")
    elapsed_ms: float
    cooldown_until: str | None = Field(None, description="ISO time the account cools down until, after a 429")
    detail: str | None = None
    at: str | None = Field(None, description="ISO time of the attempt (account_status history only)")


class AccountRef(BaseModel):
    id: str
    label: str
    name: str = Field(description="provider/label")


class ProxyResponse(BaseModel):
    """The provider's answer, and which account served it."""

    status: int = Field(description="the provider's HTTP status")
    headers: dict[str, str] = Field(description="selected response headers (content type, request id, rate limits)")
    body: Any = Field(description="the response body: parsed JSON when the response is JSON, else text")
    body_format: Literal["json", "text", "empty", "binary"]
    body_bytes: int = Field(description="full size of the response body in bytes")
    truncated: bool = Field(description="true if body was cut to max_body_chars; the text then ends with a marker")
    account: AccountRef = Field(description="the account that served the request")
    attempts: list[AttemptView] = Field(description="every try in order, including rotated-away accounts")
    stream_events: int | None = Field(None, description="for an event-stream answer: how many events arrived")
    stream_text: str | None = Field(None, description="for an event-stream answer: the generated text, assembled")
    stream_error: dict[str, Any] | None = Field(
        None, description="an error event the stream ended with after content had started (not retried)")


class CooldownView(BaseModel):
    until: str
    remaining_s: float
    reason: str


class Counters(BaseModel):
    requests: int
    rate_limited: int
    unauthorized: int
    refreshes: int
    failures: int


class AccountView(BaseModel):
    """An account's public metadata (never a secret)."""

    id: str = Field(description="stable short id; tools accept it or provider/label")
    provider: str
    namespace: str
    label: str
    name: str = Field(description="provider/label")
    kind: Literal["oauth", "api_key"]
    enabled: bool
    state: Literal["ready", "cooling", "needs-reauth", "refresh-failing", "disabled"]
    refresh_failing: str | None = Field(
        None, description="when renewing the token fails: since when, why, and when the next try is")
    cooling_until: str | None = Field(description="ISO time the whole account frees up, if cooling")
    cooldowns: dict[str, CooldownView] = Field(description="active cooldowns by scope ('*' = whole account)")
    token_expires_at: str | None = Field(description="ISO expiry of the OAuth access token (renewed automatically)")
    last_used_at: str | None
    last_status: int | None
    last_error: str | None
    counters: Counters


class AccountList(BaseModel):
    accounts: list[AccountView]


class AccountDetail(AccountView):
    """One account in full, with its recent attempts seen by this server."""

    cooldown_remaining_s: float | None = Field(description="seconds until the whole account frees up")
    reauth_command: str | None = Field(description="the command that fixes a needs-reauth account")
    recent_attempts: list[AttemptView]


class ProviderSummary(BaseModel):
    provider: str
    ready: int
    cooling: int
    needs_reauth: int
    refresh_failing: int = Field(0, description="accounts whose token endpoint is failing (backing off)")
    disabled: int
    next_free_at: str | None = Field(description="ISO time the first cooling account frees up")
    accounts: list[AccountView]


class PoolStatus(BaseModel):
    """Per provider: how many accounts can serve requests now, and when the next frees up."""

    now: str
    home: str = Field(description="the pool's home directory (AUTHPOOL_HOME, else the user data dir)")
    providers: list[ProviderSummary]


class ProviderView(BaseModel):
    id: str
    name: str
    base_url: str | None
    origins: list[str] = Field(description="the only origins this provider's credentials are ever sent to")
    api_key_header: str = Field(description="header that carries an API key")
    oauth_configured: bool = Field(description="true if a token URL and client id are configured (login/refresh)")
    strategy: str
    accounts: int


class ProviderList(BaseModel):
    providers: list[ProviderView]


# -- helpers -------------------------------------------------------------------------------


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def view(a: Account, now: float) -> AccountView:
    return AccountView(**_view_fields(a, now))


def _view_fields(a: Account, now: float) -> dict[str, Any]:
    """pool.report's public view with times as ISO strings (clearer to an LLM than epoch floats)."""
    fields = account_view(a, now)
    fields.update(
        cooling_until=iso(fields["cooling_until"]),
        cooldowns={
            scope: CooldownView(until=iso(cd["until"]) or "", remaining_s=round(cd["until"] - now, 1),
                                reason=cd["reason"])
            for scope, cd in fields["cooldowns"].items()
        },
        token_expires_at=iso(fields["token_expires_at"]),
        last_used_at=iso(fields["last_used_at"]),
        counters=Counters(**fields["counters"]),
    )
    fields.pop("needs_reauth")  # shown as the state already; not part of the tool's schema
    return fields


def attempt_view(a: Attempt, at: float | None = None) -> AttemptView:
    return AttemptView(
        account_id=a.account_id, account=a.account, status=a.status, outcome=a.outcome,
        elapsed_ms=round(a.elapsed_ms, 1), cooldown_until=iso(a.cooldown_until), detail=a.detail, at=iso(at),
    )


@contextlib.contextmanager
def tool_errors() -> Any:
    """Turn the library's expected errors into tool errors with their message."""
    try:
        yield
    except PoolError as e:
        raise ToolError(str(e)) from None


# -- the server ----------------------------------------------------------------------------


def build_server(pool: Pool | None = None) -> MCPServer[Any]:  # noqa: PLR0915 - the tool definitions
    """The authpool MCP server over ``pool`` (default: the pool of ``AUTHPOOL_HOME``)."""
    state: dict[str, Pool] = {}
    history: dict[str, collections.deque[AttemptView]] = {}

    def get_pool() -> Pool:
        if "pool" not in state:
            state["pool"] = pool or Pool.open()
        return state["pool"]

    @contextlib.asynccontextmanager
    async def lifespan(_: MCPServer[Any]) -> AsyncIterator[None]:
        # print() anywhere would otherwise be buffered and flushed onto the JSON-RPC wire at exit.
        with contextlib.redirect_stdout(sys.stderr):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_flush_periodically, get_pool)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
                    with anyio.CancelScope(shield=True):
                        # The server may not be the whole process (tests serve in memory): wait for
                        # sent refreshes without forbidding new ones.
                        await anyio.to_thread.run_sync(lambda: finish_refreshes(final=False))
                        await anyio.to_thread.run_sync(_flush_quietly, get_pool())

    server: MCPServer[Any] = PoolServer(
        "authpool",
        version=_version(),
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        log_level="WARNING",
    )

    def remember(result: list[Attempt]) -> None:
        now = time.time()
        for a in result:
            history.setdefault(a.account_id, collections.deque(maxlen=_HISTORY)).append(attempt_view(a, now))

    @server.tool(
        annotations=ToolAnnotations(read_only_hint=False, open_world_hint=True),
        description=(
            "Send an HTTP request to an LLM provider's API through the account pool. authpool picks an account, "
            "attaches its credentials (never set Authorization or API-key headers yourself: they are refused), "
            "and on a rate limit (429) or rejected token (401/403) cools that account down or refreshes its "
            "token and retries on another account within this same call. Returns the provider's status, "
            "body (parsed JSON when possible), which account served it and every attempt made. "
            "Example: provider='anthropic', method='POST', path='/v1/messages', "
            "json={'model': 'claude-sonnet-4-5', 'max_tokens': 256, 'messages': [...]}."
        ),
    )
    async def proxy_request(
        ctx: Context,
        provider: Annotated[str, Field(description="provider id, e.g. 'anthropic', 'openai' (see list_providers)")],
        method: Annotated[str, Field(description="HTTP method: GET, POST, PUT, PATCH, DELETE")],
        path: Annotated[str, Field(description="path relative to the provider's base URL, e.g. '/v1/messages'; "
                                               "an absolute URL is accepted only on one of the provider's origins")],
        query: Annotated[dict[str, str] | None, Field(description="query parameters")] = None,
        headers: Annotated[dict[str, str] | None, Field(description="extra request headers (not credentials)")] = None,
        json: Annotated[Any, Field(description="a JSON request body (object or array)")] = None,
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
        async def progress(waited: float, total: float | None, message: str) -> None:
            await ctx.report_progress(waited, total, message)

        call = ProxyCall(provider=provider, method=method, path=path, query=query, headers=headers, json_body=json,
                         body=body or None, account=account or None, namespace=namespace or None, wait_s=wait_s,
                         max_body_chars=max_body_chars, session=session or None, stream=stream)
        try:
            outcome: ProxyOutcome = await run_proxy(get_pool(), call, progress)
        except PoolError as e:
            remember(getattr(e, "attempts", []) or [])
            raise ToolError(str(e)) from None
        result: RequestResult = outcome.result
        remember(result.attempts)
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

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def list_accounts(
        provider: Annotated[OptionalText, Field(description="only this provider's accounts")] = "",
    ) -> AccountList:
        """List the pool's accounts with their state (ready, cooling until T, needs-reauth, disabled), token expiry, last use and counters. Never shows secrets."""  # noqa: E501
        with tool_errors():
            p = get_pool()
            if provider:
                p.provider(provider)
            accounts = await anyio.to_thread.run_sync(lambda: p.accounts(provider or None))
        now = time.time()
        return AccountList(accounts=[view(a, now) for a in accounts])

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def account_status(
        account: Annotated[str, Field(description="account id or provider/label")],
    ) -> AccountDetail:
        """One account in full: state, each cooldown and its remaining time, last error, the command to fix a dead login, and the attempts this server made with it recently. Never shows secrets."""  # noqa: E501
        with tool_errors():
            a = await anyio.to_thread.run_sync(get_pool().get, account)
        now = time.time()
        until = a.cooldown_until(now=now)
        return AccountDetail(
            **_view_fields(a, now),
            cooldown_remaining_s=round(until - now, 1) if until else None,
            reauth_command=fix_command(a),
            recent_attempts=list(history.get(a.id, [])),
        )

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def pool_status() -> PoolStatus:
        """Summary per provider: how many accounts are ready, cooling, need re-login or are disabled, and when the next cooling account frees up. Call this before a batch of work or after an 'all accounts cooling' error."""  # noqa: E501
        with tool_errors():
            report = await anyio.to_thread.run_sync(_pool_report, get_pool())
        return report

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True,
                                             open_world_hint=False))
    async def set_account_enabled(
        account: Annotated[str, Field(description="account id or provider/label")],
        enabled: Annotated[bool, Field(description="true to let rotation use it, false to keep it out")],
    ) -> AccountView:
        """Enable or disable an account. A disabled account is kept (with its login) but never used for requests."""
        with tool_errors():
            a = await anyio.to_thread.run_sync(get_pool().set_enabled, account, enabled)
        return view(a, time.time())

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True,
                                             open_world_hint=False))
    async def reset_cooldown(
        account: Annotated[str, Field(description="account id or provider/label")],
    ) -> AccountView:
        """Clear an account's cooldowns, backoff and needs-reauth flag so rotation tries it again now. Use it after fixing a problem, not to get around a provider's rate limit (the provider will just refuse again)."""  # noqa: E501
        with tool_errors():
            a = await anyio.to_thread.run_sync(get_pool().reset, account)
        return view(a, time.time())

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def list_providers() -> ProviderList:
        """List the providers authpool knows (built-in and from config.toml): id, base URL, the origins credentials may go to, and how many accounts each has."""  # noqa: E501
        with tool_errors():
            return await anyio.to_thread.run_sync(_provider_list, get_pool())

    @server.resource("authpool://accounts", name="accounts", mime_type="application/json",
                     description="Every account's public metadata and state (no secrets).")
    def accounts_resource() -> str:
        now = time.time()
        return AccountList(accounts=[view(a, now) for a in get_pool().accounts()]).model_dump_json(indent=2)

    @server.resource("authpool://providers", name="providers", mime_type="application/json",
                     description="The known providers, their base URLs and allowed origins.")
    def providers_resource() -> str:
        return _provider_list(get_pool()).model_dump_json(indent=2)

    from authpool.server.mcp.login import register_login_tools  # start_login / finish_login live with the login code

    register_login_tools(server, get_pool)
    return server


def _pool_report(pool: Pool) -> PoolStatus:
    now = time.time()
    report = pool_status(pool.accounts(), now)
    accounts = {a.id: a for a in pool.accounts()}
    return PoolStatus(
        now=iso(now) or "",
        home=str(pool.home.path),
        providers=[
            ProviderSummary(
                provider=p["provider"], ready=p["ready"], cooling=p["cooling"], needs_reauth=p["needs_reauth"],
                refresh_failing=p["refresh_failing"],
                disabled=p["disabled"], next_free_at=iso(p["next_free_at"]),
                accounts=[view(accounts[a["id"]], now) for a in p["accounts"] if a["id"] in accounts],
            )
            for p in report["providers"]
        ],
    )


def _provider_list(pool: Pool) -> ProviderList:
    counts = collections.Counter(a.provider for a in pool.accounts())
    out = []
    for p in pool.providers:
        name, _, _ = p.credential_headers("api_key")
        out.append(ProviderView(
            id=p.id, name=p.display_name, base_url=p.base_url, origins=sorted(p.allowed_origins),
            api_key_header=name, oauth_configured=bool(p.oauth and p.oauth.client_id),
            strategy=p.strategy, accounts=counts.get(p.id, 0),
        ))
    return ProviderList(providers=out)


async def _flush_periodically(get_pool: Any) -> None:
    while True:
        await anyio.sleep(2.0)
        pool = get_pool()
        if pool.usage.due():
            await anyio.to_thread.run_sync(_flush_quietly, pool)


def finish_refreshes(*, final: bool = True) -> None:
    """Wait for this process's token refreshes that reached their endpoint (says so if it takes a while).

    Called before the server exits: a refresh that was sent may have rotated the login at the
    provider already, and leaving before its answer is stored would log the user out. ``final``
    (the process is exiting) also stops refreshes that have not sent yet.
    """
    drain(notify=_say_waiting, final=final)


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
