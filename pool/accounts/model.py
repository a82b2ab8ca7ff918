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
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from authpool.errors import AccountNotFound, DuplicateLabel, InvalidInput

__all__ = [
    "SCHEMA_VERSION",
    "WHOLE_ACCOUNT",
    "Account",
    "AccountKind",
    "AccountState",
    "ChangeLog",
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
    """The part of the pool one update touches: the accounts it named (those that still exist),
    the accounts it adds or removes, and the session bindings.

    A store locks and rewrites only these (``MetadataStore.update_accounts``); an update that
    needs the whole pool (renumbering, recording the secret backend) uses ``MetadataStore.update``.
    """

    accounts: dict[str, Account]
    sessions: dict[str, SessionBinding]
    added: dict[str, Account] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)

    def get(self, account_id: str) -> Account:
        """The account ``account_id``.

        Raises:
            AccountNotFound: it was removed meanwhile.
        """
        try:
            return self.accounts[account_id]
        except KeyError:
            raise AccountNotFound(account_id) from None

    def add(self, account: Account) -> Account:
        """Insert a new account (the store refuses a taken id or ``provider/label``)."""
        self.accounts[account.id] = account
        self.added[account.id] = account
        self.removed.discard(account.id)
        return account

    def remove(self, account_id: str) -> Account:
        """Delete the account ``account_id`` (named in the update).

        Raises:
            AccountNotFound: it was removed meanwhile.
        """
        acc = self.get(account_id)
        del self.accounts[account_id]
        if self.added.pop(account_id, None) is None:
            self.removed.add(account_id)
        return acc


class PoolFile(_Model):
    """The pool's metadata: schema version, which secret backend holds the secrets, accounts, sessions.

    A store hands out *snapshots*: frozen (:meth:`freeze`), never changed afterwards, and indexed
    on first use (by id, by ``provider/label``, by provider), so lookups cost the same in a pool
    of ten accounts or ten thousand. A snapshot a store derived from the previous one says which
    accounts changed in between (:meth:`changed_since`), so whoever keeps its own index of a
    snapshot (the rotation's roster) updates it instead of rebuilding it. An unfrozen PoolFile
    (the copy ``MetadataStore.update`` gives a change function) is searched, not indexed.
    """

    schema_version: int = SCHEMA_VERSION
    secret_backend: str | None = None
    accounts: list[Account] = Field(default_factory=list)
    # "provider/session key" -> binding; shared by every process, pruned when expired.
    sessions: dict[str, SessionBinding] = Field(default_factory=dict)

    _index: _Index | None = PrivateAttr(default=None)
    _frozen: bool = PrivateAttr(default=False)
    _revision: int = PrivateAttr(default=0)
    _history: ChangeLog | None = PrivateAttr(default=None)

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

    # -- snapshots ---------------------------------------------------------------------------

    def freeze(self, revision: int = 0, history: ChangeLog | None = None) -> PoolFile:
        """Mark this pool a snapshot (read-only from now on) at ``revision`` of ``history``."""
        self._frozen, self._revision, self._history = True, revision, history
        return self

    @property
    def revision(self) -> int:
        """The store's change number this snapshot shows (0 for one nobody numbered)."""
        private = self.__pydantic_private__  # a slot read, not pydantic's __getattr__ (see _indexed)
        return private["_revision"] if private is not None else 0

    def changed_since(self, other: PoolFile) -> frozenset[str] | None:
        """The ids of the accounts added, changed or removed between ``other`` and this snapshot,
        or None if that is not known (not snapshots of one store's history, or too far apart)."""
        if self._history is None or other._history is not self._history:
            return None
        return self._history.since(other._revision, self._revision)

    def _indexed(self) -> _Index | None:
        # One slot read instead of pydantic's __getattr__ for each private attribute (1-2 µs a
        # time): every lookup on the request path comes through here.
        private = self.__pydantic_private__
        if private is None or not private["_frozen"]:
            return None
        index: _Index | None = private["_index"]
        if index is None:
            index = private["_index"] = _Index(self.accounts)
        return index

    # -- lookups -----------------------------------------------------------------------------

    def find(self, ref: str) -> Account:
        """The account whose id is ``ref``, or whose ``provider/label`` is ``ref``.

        Raises:
            AccountNotFound: nothing matches.
        """
        ref = ref.strip()
        provider, sep, label = ref.partition("/")
        index = self._indexed()
        if index is not None:
            found = index.by_id.get(ref) or (index.by_name.get((provider, label.strip().casefold())) if sep else None)
            if found is None:
                raise AccountNotFound(ref)
            return found
        for acc in self.accounts:
            if acc.id == ref:
                return acc
        if sep:
            folded = label.strip().casefold()
            for acc in self.accounts:
                if acc.provider == provider and acc.label.casefold() == folded:
                    return acc
        raise AccountNotFound(ref)

    def get(self, account_id: str) -> Account | None:
        """The account with id ``account_id``, or None."""
        index = self._indexed()
        if index is not None:
            return index.by_id.get(account_id)
        return next((a for a in self.accounts if a.id == account_id), None)

    def for_provider(self, provider: str) -> list[Account]:
        """The provider's accounts in pool order (a snapshot's list is shared: do not change it)."""
        index = self._indexed()
        if index is not None:
            return index.by_provider.get(provider, [])
        return [a for a in self.accounts if a.provider == provider]

    def next_order(self, provider: str) -> int:
        """The ``order`` a new account of ``provider`` gets: after every existing one."""
        index = self._indexed()
        if index is not None:
            return index.next_order.get(provider, 0)
        return max((a.order for a in self.accounts if a.provider == provider), default=-1) + 1

    def check_label_free(self, provider: str, label: str, *, except_id: str | None = None) -> None:
        """Raise :class:`DuplicateLabel` if another account of ``provider`` has ``label``."""
        folded = label.casefold()
        index = self._indexed()
        if index is not None:
            taken = index.by_name.get((provider, folded))
            holders = [taken] if taken is not None else []
        else:
            holders = [a for a in self.accounts if a.provider == provider and a.label.casefold() == folded]
        for acc in holders:
            if acc.id != except_id:
                raise DuplicateLabel(f"{provider}/{label} already exists (account {acc.id})")

    def new_id(self) -> str:
        taken = self._indexed()
        ids = taken.by_id if taken is not None else {a.id for a in self.accounts}
        while True:
            candidate = new_account_id()
            if candidate not in ids:
                return candidate

    def derive(self, revision: int, history: ChangeLog, changed: dict[str, Account], gone: Collection[str],
               bindings: dict[str, SessionBinding], ended: Collection[str],
               fields: dict[str, Any] | None = None) -> PoolFile:
        """The snapshot at ``revision``: this one with ``changed`` accounts replaced (or appended) and
        ``gone`` ones dropped, session bindings set or ``ended``, and the pool's own ``fields`` if
        they changed. Unchanged accounts are the very objects this snapshot holds, and the index
        is derived, not rebuilt, so the cost follows the change, not the pool (removing accounts
        rebuilds it). The step is recorded in ``history``."""
        index = self._indexed() or _Index(self.accounts)
        removed = {i for i in gone if i in index.by_id and i not in changed}
        accounts = [a for a in self.accounts if a.id not in removed] if removed else list(self.accounts)
        new_index = _Index(_replaced(accounts, changed)) if removed else index.evolved(accounts, changed)
        sessions = self.sessions
        if bindings or ended:
            sessions = {k: v for k, v in sessions.items() if k not in ended} if ended else dict(sessions)
            sessions.update(bindings)
        own = fields if fields is not None else self.model_dump(exclude={"accounts", "sessions"})
        pool = PoolFile.model_construct(**own, accounts=accounts, sessions=sessions)
        pool._index = new_index
        history.record(self._revision, revision, frozenset(changed) | frozenset(gone))
        return pool.freeze(revision, history)


class _Index:
    """A snapshot's lookups, built once per snapshot (a snapshot never changes), or derived from
    the previous snapshot's by copying its tables (C speed) and applying only what changed."""

    def __init__(self, accounts: list[Account] | None = None) -> None:
        self.by_id: dict[str, Account] = {}
        self.position: dict[str, int] = {}  # index in the snapshot's account list
        self.by_name: dict[tuple[str, str], Account] = {}
        self.by_provider: dict[str, list[Account]] = {}
        self.in_provider: dict[str, int] = {}  # index in its provider's list
        self.next_order: dict[str, int] = {}
        for n, a in enumerate(accounts or ()):
            self.by_id[a.id] = a
            self.position[a.id] = n
            self.by_name[(a.provider, a.label.casefold())] = a
            same = self.by_provider.setdefault(a.provider, [])
            self.in_provider[a.id] = len(same)
            same.append(a)
            self.next_order[a.provider] = max(self.next_order.get(a.provider, 0), a.order + 1)

    def evolved(self, accounts: list[Account], changed: dict[str, Account]) -> _Index:
        """The index of ``accounts`` (this index's list, copied) once ``changed`` are replaced in it
        or appended to it; ``accounts`` is updated in place. No account is removed here."""
        new = _Index()
        new.by_id, new.by_name, new.next_order = dict(self.by_id), dict(self.by_name), dict(self.next_order)
        new.by_provider = dict(self.by_provider)
        new.position, new.in_provider = self.position, self.in_provider
        copied: set[str] = set()
        appended = False
        for account_id, acc in changed.items():
            old = self.by_id.get(account_id)
            if old is not None and old.provider != acc.provider:
                return _Index(_replaced(accounts, changed))  # an account changing provider: rebuild
            if acc.provider not in copied:
                new.by_provider[acc.provider] = list(new.by_provider.get(acc.provider, ()))
                copied.add(acc.provider)
            same = new.by_provider[acc.provider]
            if old is None:
                if not appended:
                    new.position, new.in_provider, appended = dict(self.position), dict(self.in_provider), True
                new.position[account_id] = len(accounts)
                new.in_provider[account_id] = len(same)
                accounts.append(acc)
                same.append(acc)
            else:
                accounts[new.position[account_id]] = acc
                same[new.in_provider[account_id]] = acc
                new.by_name.pop((old.provider, old.label.casefold()), None)
            new.by_id[account_id] = acc
            new.by_name[(acc.provider, acc.label.casefold())] = acc
            new.next_order[acc.provider] = max(new.next_order.get(acc.provider, 0), acc.order + 1)
        return new


def _replaced(accounts: list[Account], changed: dict[str, Account]) -> list[Account]:
    seen = {a.id for a in accounts}
    accounts[:] = [changed.get(a.id, a) for a in accounts] + [a for i, a in changed.items() if i not in seen]
    return accounts


class ChangeLog:
    """Which accounts each recent step of a store's history touched (bounded).

    A step goes from one change number to a later one (several commits of another process
    read at once make one step). Shared by the snapshots a store hands out; pure bookkeeping,
    no I/O; one writer (the store, under its own guard), any number of readers.
    """

    def __init__(self, keep: int = 256) -> None:
        self._keep = keep
        self._steps: dict[int, tuple[int, frozenset[str]]] = {}  # from -> (to, ids)

    def record(self, start: int, end: int, ids: frozenset[str]) -> None:
        """The step from change ``start`` to ``end`` touched ``ids``; the oldest steps are forgotten."""
        self._steps[start] = (end, ids)
        while len(self._steps) > self._keep:
            del self._steps[next(iter(self._steps))]

    def since(self, start: int, end: int) -> frozenset[str] | None:
        """Every id touched from change ``start`` to ``end``; None if that history is not all kept."""
        steps = self._steps.copy()  # a consistent view: the writer may add meanwhile
        out: set[str] = set()
        at = start
        while at != end:
            step = steps.get(at)
            if step is None or step[0] > end:
                return None
            at = step[0]
            out |= step[1]
        return frozenset(out)


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))
