"""The pool file's data model: accounts and their non-secret metadata.

Nothing in these models is secret. Tokens and keys live in the credential store; an account
only records ``secret_generation``, which moves every time its secret changes, so other
processes can tell their cached copy is stale without asking the keyring.

Times are Unix epoch seconds (floats): cheap to compare on the hot path and unambiguous
across time zones.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from authpool.errors import AccountNotFound, DuplicateLabel, InvalidInput

__all__ = [
    "SCHEMA_VERSION",
    "WHOLE_ACCOUNT",
    "Account",
    "AccountKind",
    "AccountState",
    "Cooldown",
    "Counters",
    "LinkedFile",
    "PoolFile",
    "QuotaWindow",
    "RefreshFailing",
    "RefreshJournal",
    "Rows",
    "SessionBinding",
    "new_account_id",
    "validate_label",
    "validate_provider_id",
]

SCHEMA_VERSION = 2
WHOLE_ACCOUNT = "*"  # cooldown scope meaning "every model of the account"

AccountKind = Literal["oauth", "api_key"]
# What an account can do now, as every view shows it (see accounts.transitions for how it moves).
AccountState = Literal["ready", "cooling", "needs-reauth", "refresh-failing", "disabled"]
Count = Annotated[int, Field(ge=0)]  # counters and generations only grow from zero

_PROVIDER_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # no 0/o/1/l: ids are read aloud and retyped


def new_account_id() -> str:
    """A short random id, stable for the account's life (8 chars, ~40 bits)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def validate_provider_id(value: str) -> str:
    """Return ``value`` if it is a valid provider id, else raise :class:`InvalidInput`."""
    if not _PROVIDER_RE.match(value):
        raise InvalidInput(
            f"invalid provider id {value!r}: use lowercase letters, digits, '-', '_' or '.' (max 64)"
        )
    return value


def validate_label(value: str) -> str:
    """Return the stripped label if valid, else raise :class:`InvalidInput`."""
    label = value.strip()
    if not label or len(label) > 100 or "/" in label or not label.isprintable():
        raise InvalidInput(
            f"invalid label {value!r}: 1-100 printable characters, no '/' (labels are shown as provider/label)"
        )
    return label


class _Model(BaseModel):
    # extra="allow": fields written by a newer authpool of the same schema version survive our
    # read-modify-write instead of being silently dropped. allow_inf_nan=False: a time of NaN or
    # Infinity (JSON accepts both) would make every comparison lie; such a file is corrupt.
    model_config = ConfigDict(extra="allow", validate_assignment=False, allow_inf_nan=False)


class Counters(_Model):
    """Lifetime counters of one account."""

    requests: Count = 0
    rate_limited: Count = 0
    unauthorized: Count = 0
    refreshes: Count = 0
    failures: Count = 0


class Cooldown(_Model):
    """An account (or one model scope of it) may not be used before ``until``."""

    until: float
    reason: str
    set_at: float = Field(default_factory=time.time)


class LinkedFile(_Model):
    """An official tool's credential file this account stays in step with (see ``auth.linked``)."""

    source: Literal["claude-code", "codex", "gemini", "opencode"]
    path: str
    entry: str | None = None  # opencode: the provider's key in its auth.json


class QuotaWindow(_Model):
    """One of a subscription's usage windows as the provider last reported it (5 hours, 7 days …)."""

    used: float = Field(ge=0)  # the share used, 0..1 (a provider may report a little over 1)
    resets_at: float | None = None
    window_seconds: float | None = None
    status: str | None = None  # the provider's word for it (Anthropic: allowed, allowed_warning, rejected)
    seen_at: float


class RefreshJournal(_Model):
    """A token call this account's refresh has made (or is making) and not yet stored.

    Written before the refresh token leaves for the token endpoint and removed in the same
    update that records the new generation. Found later, under the account's refresh lock, it
    means the rotation may be lost: its owner was killed mid-call (SIGKILL, power loss), or the
    call got no answer (``outcome_unknown``). The record holds no secret.
    """

    pid: int
    host: str
    command: str = ""
    started_at: float
    from_generation: int
    process_start: str | None = None  # tells a reused pid apart from the owner (Linux: start ticks)
    outcome_unknown: bool = False  # sent, but no answer came back (timed out, connection lost)
    # After this the request cannot reach the provider any more (the call's own time limit). A
    # refresh presenting the same token earlier could be overtaken by it: the login revoked.
    deadline: float | None = None
    # An interrupted refresh this one found and superseded: the likelier cause of a lost rotation.
    earlier: RefreshJournal | None = None

    def settles_at(self) -> float:
        """When the recorded request can no longer reach the provider (records without one: 3 minutes on)."""
        return self.deadline if self.deadline is not None else self.started_at + 180.0


class RefreshFailing(_Model):
    """The token endpoint failed (5xx, network, timeout): no token call for this account before ``next_try_at``.

    Shared by every process through the store, so an outage costs a handful of token calls, not
    one per request. A success clears it; an outage never marks a login needs-reauth.
    """

    since: float
    next_try_at: float
    failures: int = 1
    reason: str
    generation: int  # the secret generation that failed to renew; a newer one makes this stale
    # The current access token was refused (a 401): the account cannot serve until renewed.
    token_refused: bool = False

    def describe(self) -> str:
        """``refresh failing since T (HTTP 503), next try at T2``: the state in words."""
        return (f"refresh failing since {_clock(self.since)} ({self.reason}), "
                f"next try at {_clock(self.next_try_at)}")


class Account(_Model):
    """One account of one provider: everything about it except the secret."""

    id: str
    provider: str
    namespace: str = "default"
    label: str
    kind: AccountKind
    enabled: bool = True
    order: int = 0
    created_at: float = Field(default_factory=time.time)
    last_used_at: float | None = None
    cooldowns: dict[str, Cooldown] = Field(default_factory=dict)
    backoff_level: Count = 0
    last_status: int | None = None
    last_error: str | None = None
    needs_reauth: bool = False
    access_expires_at: float | None = None
    counters: Counters = Field(default_factory=Counters)
    secret_generation: Count = 0
    # After a cooldown ends, one request at a time probes the scopes that cooled (the whole account
    # or a model); a success in a scope removes its ended cooldown, and probation ends with the last.
    probation: bool = False
    # When the provider's current rate-limit window resets (from the last answer's reset headers).
    quota_resets_at: float | None = None
    # The official tool's credential file this login is linked to (import --link), if any.
    link: LinkedFile | None = None
    # Usage windows of a subscription (Anthropic's 5h/7d, Codex's primary/secondary), as last reported.
    windows: dict[str, QuotaWindow] = Field(default_factory=dict)
    # How long the current access token was issued for (proactive refresh windows shrink with it).
    access_lifetime: float | None = None
    refresh_journal: RefreshJournal | None = None
    refresh_failing: RefreshFailing | None = None

    @field_validator("provider")
    @classmethod
    def _provider_ok(cls, v: str) -> str:
        return validate_provider_id(v)

    @field_validator("label")
    @classmethod
    def _label_ok(cls, v: str) -> str:
        return validate_label(v)

    @property
    def name(self) -> str:
        """The human name, ``provider/label``."""
        return f"{self.provider}/{self.label}"

    def cooldown_until(self, scope: str = WHOLE_ACCOUNT, now: float | None = None) -> float | None:
        """When the account frees up for ``scope`` (a model), or None if it is usable now."""
        now = time.time() if now is None else now
        latest: float | None = None
        for key in (WHOLE_ACCOUNT, scope):
            cd = self.cooldowns.get(key)
            if cd is not None and cd.until > now and (latest is None or cd.until > latest):
                latest = cd.until
        return latest

    def state(self, now: float | None = None) -> AccountState:
        """``disabled`` | ``needs-reauth`` | ``refresh-failing`` | ``cooling`` | ``ready`` (whole-account view)."""
        if not self.enabled:
            return "disabled"
        if self.needs_reauth:
            return "needs-reauth"
        if self.failing_refresh() is not None:
            return "refresh-failing"
        if self.cooldown_until(WHOLE_ACCOUNT, now) is not None:
            return "cooling"
        return "ready"

    def busiest_window(self, now: float) -> QuotaWindow | None:
        """The usage window closest to its limit, among those that have not reset since reported."""
        current = [w for w in self.windows.values() if w.resets_at is None or w.resets_at > now]
        return max(current, key=lambda w: w.used) if current else None

    def failing_refresh(self) -> RefreshFailing | None:
        """The token endpoint's failure for the current secret, if renewing it is failing."""
        f = self.refresh_failing
        return f if f is not None and f.generation == self.secret_generation else None

    def pending_refresh(self) -> RefreshJournal | None:
        """The journal record of a token call for the current secret that has not been stored."""
        j = self.refresh_journal
        return j if j is not None and j.from_generation == self.secret_generation else None


class SessionBinding(_Model):
    """A caller's session kept on one account (warm prompt caches) until ``expires_at``."""

    account_id: str
    expires_at: float


@dataclass
class Rows:
    """The part of the pool one update touches: the accounts it named (those that still exist) and
    the session bindings.

    A store locks and rewrites only these (``MetadataStore.update_accounts``); an update that
    needs the whole pool (adding or removing accounts) uses ``MetadataStore.update``.
    """

    accounts: dict[str, Account]
    sessions: dict[str, SessionBinding]

    def get(self, account_id: str) -> Account:
        """The account ``account_id``.

        Raises:
            AccountNotFound: it was removed meanwhile.
        """
        try:
            return self.accounts[account_id]
        except KeyError:
            raise AccountNotFound(account_id) from None


class PoolFile(_Model):
    """The whole pool file: schema version, which secret backend holds the secrets, accounts."""

    schema_version: int = SCHEMA_VERSION
    secret_backend: str | None = None
    accounts: list[Account] = Field(default_factory=list)
    # "provider/session key" -> binding; shared by every process, pruned when expired.
    sessions: dict[str, SessionBinding] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique(self) -> PoolFile:
        seen_ids: set[str] = set()
        seen_names: set[tuple[str, str]] = set()
        for acc in self.accounts:
            if acc.id in seen_ids:
                raise ValueError(f"duplicate account id {acc.id!r}")
            key = (acc.provider, acc.label.casefold())
            if key in seen_names:
                raise ValueError(f"duplicate label {acc.name!r}")
            seen_ids.add(acc.id)
            seen_names.add(key)
        return self

    def find(self, ref: str) -> Account:
        """The account whose id is ``ref``, or whose ``provider/label`` is ``ref``.

        Raises:
            AccountNotFound: nothing matches.
        """
        ref = ref.strip()
        for acc in self.accounts:
            if acc.id == ref:
                return acc
        provider, sep, label = ref.partition("/")
        if sep:
            folded = label.strip().casefold()
            for acc in self.accounts:
                if acc.provider == provider and acc.label.casefold() == folded:
                    return acc
        raise AccountNotFound(ref)

    def for_provider(self, provider: str) -> list[Account]:
        return [a for a in self.accounts if a.provider == provider]

    def check_label_free(self, provider: str, label: str, *, except_id: str | None = None) -> None:
        """Raise :class:`DuplicateLabel` if another account of ``provider`` has ``label``."""
        folded = label.casefold()
        for acc in self.accounts:
            if acc.provider == provider and acc.label.casefold() == folded and acc.id != except_id:
                raise DuplicateLabel(f"{provider}/{label} already exists (account {acc.id})")

    def new_id(self) -> str:
        taken = {a.id for a in self.accounts}
        while True:
            candidate = new_account_id()
            if candidate not in taken:
                return candidate


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))
