"""The MCP tools' output models (their output schemas) and their conversion from the library's views.

Times are ISO strings in UTC (clearer to an LLM than epoch floats). Nothing here ever holds a
token, refresh token or API key: every model is built from the library's public views.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from typing_extensions import TypeAliasType

from authpool import Pool
from authpool.accounts import (
    Account,
    AccountKind,
    AccountPage,
    AccountState,
    account_view,
    fix_command,
    pool_status,
)
from authpool.accounts.views import ATTENTION_LIMIT
from authpool.catalog import ModelList
from authpool.rotation import Attempt, Outcome

__all__ = [
    "AccountDetail",
    "AccountList",
    "AccountRef",
    "AccountView",
    "AccountsResource",
    "AttemptView",
    "AttentionView",
    "BodyValue",
    "CooldownView",
    "Counters",
    "JsonBody",
    "LoginFinished",
    "LoginOutcome",
    "LoginStarted",
    "ModelListView",
    "ModelView",
    "OptionalText",
    "PoolStatus",
    "ProviderList",
    "ProviderSummary",
    "ProviderView",
    "ProxyResponse",
    "account_detail",
    "account_list",
    "accounts_resource",
    "attempt_view",
    "iso",
    "model_list",
    "pool_report",
    "provider_list",
    "view",
]


def _null_to_empty(value: Any) -> Any:
    return "" if value is None else value


# An optional text argument. The SDK json-decodes every string argument whose annotation is
# not exactly ``str`` (a workaround for clients that send objects as JSON text), so with
# ``str | None`` a raw body '{"a": 1}' became a dict and was rejected, and the text 'null'
# became None: a body 'null' was silently dropped and a namespace named 'null' silently
# widened rotation to every namespace (and a label "123" became a number). Typed ``str``, the
# text arrives verbatim; an explicit JSON null still means "not given" (as does "", which the
# tools map to None).
OptionalText = Annotated[str, BeforeValidator(_null_to_empty)]

#: Any JSON value, spelled out (recursively) so that every schema a client sees says what it accepts.
JsonValue = TypeAliasType(
    "JsonValue", "dict[str, JsonValue] | list[JsonValue] | str | int | float | bool | None")
#: A JSON request body: an object or an array.
JsonBody = dict[str, JsonValue] | list[JsonValue]
#: A response body as a tool returns it: parsed JSON (any JSON value) or text; null when empty.
BodyValue = dict[str, JsonValue] | list[JsonValue] | str | int | float | bool | None


# -- models ----------------------------------------------------------------------------------


class AttemptView(BaseModel):
    """One try within a request."""

    account_id: str
    account: str = Field(description="provider/label of the account tried")
    status: int | None = Field(description="HTTP status the provider answered, null for a network error")
    outcome: Outcome = Field(description="ok | rate_limited | refreshed | needs_reauth | unauthorized (a 401 not yet "
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
    body: BodyValue = Field(description="the response body: parsed JSON when the response is JSON, else text; "
                                        "null when empty")
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


class WindowView(BaseModel):
    """A subscription usage window (Anthropic's 5h/7d, Codex's primary/secondary) as last reported."""

    used_percent: float = Field(description="share of the window used, in percent")
    resets_at: str | None = Field(description="ISO time the window resets")
    status: str | None = Field(description="the provider's word for it, e.g. allowed, allowed_warning, rejected")


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
    kind: AccountKind
    enabled: bool
    state: AccountState
    refresh_failing: str | None = Field(
        None, description="when renewing the token fails: since when, why, and when the next try is")
    cooling_until: str | None = Field(description="ISO time the whole account frees up, if cooling")
    cooldowns: dict[str, CooldownView] = Field(description="active cooldowns by scope ('*' = whole account)")
    windows: dict[str, WindowView] = Field(
        default_factory=dict, description="usage windows by length ('5h', '7d'), when the provider reports them")
    token_expires_at: str | None = Field(description="ISO expiry of the OAuth access token (renewed automatically)")
    linked_to: str | None = Field(
        None, description="the official tool whose credential file this login is kept in step with, and the file")
    last_used_at: str | None
    last_status: int | None
    last_error: str | None
    counters: Counters


class AccountList(BaseModel):
    """One page of accounts, in a stable order (provider, namespace, order, creation)."""

    model_config = ConfigDict(extra="forbid")

    accounts: list[AccountView]
    total: int = Field(description="how many accounts match the filters, on every page together")
    next_cursor: str | None = Field(
        description="pass as cursor (with the same filters) for the next page; null on the last page")


class AccountsResource(AccountList):
    """``authpool://accounts``: the first page only, so a large pool never makes a multi-megabyte read."""

    note: str | None = Field(description="says when the resource shows only part of the pool, and how to see the rest")


class AccountDetail(AccountView):
    """One account in full, with its recent attempts seen by this server."""

    cooldown_remaining_s: float | None = Field(description="seconds until the whole account frees up")
    reauth_command: str | None = Field(description="the command that fixes a needs-reauth account")
    recent_attempts: list[AttemptView]


class AttentionView(BaseModel):
    """An account that needs a person: a dead login, or a token endpoint that keeps failing."""

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str = Field(description="provider/label")
    state: Literal["needs-reauth", "refresh-failing"]
    detail: str | None = Field(description="what went wrong (never a secret)")
    fix: str | None = Field(description="the command that fixes a dead login; null while renewal retries by itself")


class ProviderSummary(BaseModel):
    """One provider's accounts counted by state: the same size whatever the pool's."""

    model_config = ConfigDict(extra="forbid")

    provider: str
    total: int = Field(description="the provider's accounts, in every state")
    ready: int
    cooling: int
    needs_reauth: int
    refresh_failing: int = Field(description="accounts whose token endpoint is failing (backing off)")
    disabled: int
    next_free_at: str | None = Field(description="ISO time the first cooling account frees up")
    attention: list[AttentionView] = Field(
        description=f"accounts that need a person, dead logins first (at most {ATTENTION_LIMIT}; list_accounts with "
                    "state='needs-reauth' or 'refresh-failing' pages through all)")
    attention_more: int = Field(description="accounts that need a person beyond those listed in attention")


class PoolStatus(BaseModel):
    """Per provider: how many accounts can serve requests now, and when the next frees up."""

    model_config = ConfigDict(extra="forbid")

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


class LoginOutcome(BaseModel):
    """What ``login`` did: logged in through the browser (the account), or started the device flow (the code)."""

    status: Literal["logged_in", "device_code"] = Field(
        description="logged_in: the account is in the pool; device_code: show the user device's page and code, "
                    "then call finish_login")
    account: LoginFinished | None = Field(default=None,
                                          description="the account the login added or renewed (logged_in)")
    device: LoginStarted | None = Field(default=None, description="the device flow's page and code (device_code)")
    next_step: str = Field(description="what to do next, in a sentence")


class ModelView(BaseModel):
    """One model as the provider lists it; ``id`` is what a request's ``model`` names."""

    id: str = Field(description="the model's id, as a request names it")
    display_name: str | None = Field(None, description="the provider's human name for it")
    created: str | None = Field(None, description="ISO time the provider says it was released")
    input_token_limit: int | None = Field(None, description="the most input tokens it takes, if the provider says")
    output_token_limit: int | None = Field(None, description="the most output tokens it gives, if the provider says")


class ModelListView(BaseModel):
    """A provider's models, fetched through the pool (or its cached copy)."""

    provider: str
    namespace: str | None = Field(None, description="the sub-pool whose accounts fetched it, if one was named")
    models: list[ModelView]
    fetched_at: str = Field(description="ISO time the list was fetched from the provider")
    expires_at: str = Field(description="ISO time until which the cached copy is used (refresh=true asks again)")
    cached: bool = Field(description="true if this is the cached copy, false if fetched just now")
    account: str | None = Field(None, description="provider/label of the account that fetched it just now")


# -- conversions -----------------------------------------------------------------------------


def iso(ts: float | None) -> str | None:
    """``ts`` (epoch seconds) as an ISO time in UTC with a ``Z``, or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def view(a: Account, now: float) -> AccountView:
    """An account's public view as of ``now``."""
    return AccountView(**_view_fields(a, now))


def account_list(page: AccountPage, now: float) -> AccountList:
    """A page of accounts' public views as of ``now``."""
    return AccountList(accounts=[view(a, now) for a in page.accounts], total=page.total,
                       next_cursor=page.next_cursor)


def accounts_resource(page: AccountPage, now: float) -> AccountsResource:
    """The first page of accounts, saying so when there are more."""
    note = None
    if page.next_cursor is not None:
        note = (f"showing the first {len(page.accounts)} of {page.total} accounts; the list_accounts tool pages "
                "through the rest (pass next_cursor as cursor) and filters by provider, namespace and state")
    return AccountsResource(**account_list(page, now).model_dump(), note=note)


def account_detail(a: Account, now: float, recent: Sequence[tuple[Attempt, float]]) -> AccountDetail:
    """One account in full as of ``now``, with the attempts a server made with it (and when)."""
    until = a.cooldown_until(now=now)
    return AccountDetail(
        **_view_fields(a, now),
        cooldown_remaining_s=round(until - now, 1) if until else None,
        reauth_command=fix_command(a),
        recent_attempts=[attempt_view(attempt, at) for attempt, at in recent],
    )


def attempt_view(a: Attempt, at: float | None = None) -> AttemptView:
    """One attempt; ``at`` is when it was made (shown in account_status's history)."""
    return AttemptView(
        account_id=a.account_id, account=a.account, status=a.status, outcome=a.outcome,
        elapsed_ms=round(a.elapsed_ms, 1), cooldown_until=iso(a.cooldown_until), detail=a.detail, at=iso(at),
    )


def pool_report(pool: Pool, now: float) -> PoolStatus:
    """The pool's home and, per provider, how many accounts are in each state (reads the pool)."""
    report = pool_status(pool.store.read().accounts, now)
    return PoolStatus(
        now=iso(now) or "",
        home=str(pool.home.path),
        providers=[
            ProviderSummary(**{**p, "next_free_at": iso(p["next_free_at"]),
                               "attention": [AttentionView(**a) for a in p["attention"]]})
            for p in report["providers"]
        ],
    )


def model_list(listing: ModelList) -> ModelListView:
    """A provider's model list as the ``list_models`` tool shows it."""
    return ModelListView(
        provider=listing.provider, namespace=listing.namespace, cached=listing.cached, account=listing.account,
        fetched_at=iso(listing.fetched_at) or "", expires_at=iso(listing.expires_at) or "",
        models=[ModelView(id=m.id, display_name=m.display_name, created=iso(m.created),
                          input_token_limit=m.input_token_limit, output_token_limit=m.output_token_limit)
                for m in listing.models],
    )


def provider_list(pool: Pool) -> ProviderList:
    """Every provider the pool knows, with its origins and account count (reads the pool)."""
    counts = collections.Counter(a.provider for a in pool.store.read().accounts)
    out = []
    for p in pool.providers:
        name, _, _ = p.credential_headers("api_key")
        out.append(ProviderView(
            id=p.id, name=p.display_name, base_url=p.base_url, origins=sorted(p.allowed_origins),
            api_key_header=name, oauth_configured=bool(p.oauth and p.oauth.client_id),
            strategy=p.strategy, accounts=counts.get(p.id, 0),
        ))
    return ProviderList(providers=out)


def _view_fields(a: Account, now: float) -> dict[str, Any]:
    """The library's public view with times as ISO strings."""
    fields = account_view(a, now)
    fields.update(
        cooling_until=iso(fields["cooling_until"]),
        cooldowns={
            scope: CooldownView(until=iso(cd["until"]) or "", remaining_s=round(cd["until"] - now, 1),
                                reason=cd["reason"])
            for scope, cd in fields["cooldowns"].items()
        },
        windows={name: WindowView(used_percent=w["used_percent"], resets_at=iso(w["resets_at"]), status=w["status"])
                 for name, w in fields["windows"].items()},
        token_expires_at=iso(fields["token_expires_at"]),
        last_used_at=iso(fields["last_used_at"]),
        counters=Counters(**fields["counters"]),
    )
    fields.pop("needs_reauth")  # shown as the state already; not part of the tool's schema
    return fields
