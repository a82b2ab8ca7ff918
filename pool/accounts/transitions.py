"""Every change of an account's state, each a named function: the one place state moves.

Rotation, refresh, usage counting and the pool's own commands change accounts only through
these functions, applied inside ``MetadataStore.update`` (a fresh read under the lock). None
does I/O; each takes the facts it needs (times included) as arguments, so the same change reads
the same whoever makes it and is tested by itself.

The states an account can be in (:data:`AccountState`) follow from its fields:
``disabled`` (not enabled), ``needs-reauth`` (its login or key is dead), ``refresh-failing``
(its token endpoint is failing: renewal backs off), ``cooling`` (rate-limited until a
deadline, per scope), else ``ready``. Probation — one request at a time after a cooldown — is
marked by the ended cooldown entries and ends with a success in their scope.
"""

from __future__ import annotations

from collections.abc import Callable

from authpool.accounts.model import (
    Account,
    Cooldown,
    LinkedFile,
    QuotaWindow,
    RefreshFailing,
    RefreshJournal,
    Rows,
    SessionBinding,
)

__all__ = [
    "adopted",
    "begin_refresh",
    "bind_session",
    "confirm_refusal",
    "confirm_success",
    "cool",
    "linked",
    "mark_needs_reauth",
    "new_secret",
    "record_usage",
    "refresh_failed",
    "refresh_waits",
    "refused",
    "renewed",
    "reset",
    "set_enabled",
    "token_refused_while_failing",
]

REFUSED = "credentials rejected (401)"
DEAD = "credentials rejected (401); the account needs a new login or key"
FORBIDDEN = "forbidden (403)"


# -- rate limits ---------------------------------------------------------------------------


def cool(a: Account, *, scope: str, until: float, reason: str, now: float, exponential: bool, status: int | None,
         error: str, windows: dict[str, QuotaWindow] | None = None) -> None:
    """A rate limit: the scope (a model, or ``*``) rests until ``until``; probation follows it.

    ``windows``: usage windows the answer reported (kept with the cooldown they explain).
    """
    a.cooldowns = {k: v for k, v in a.cooldowns.items() if v.until > now}  # ended ones go
    a.cooldowns[scope] = Cooldown(until=until, reason=reason, set_at=now)
    # Only limits without reset information grow the exponential default; any other resets it.
    a.backoff_level = a.backoff_level + 1 if exponential else 0
    a.probation = True
    a.counters.rate_limited += 1
    a.last_status = status
    a.last_error = error
    if windows:
        a.windows = {**a.windows, **windows}


def confirm_success(a: Account, scopes: tuple[str, ...], now: float) -> None:
    """A success in ``scopes`` (``*`` and the model): the exponential default restarts, their cooldowns go.

    A cooldown still running in a scope that just served is stale (the quota reset early, or
    another process recorded it before a reset): it goes at once. Probation lasts while another
    scope still has a cooldown (running, or ended unconfirmed).
    """
    a.backoff_level = 0
    a.cooldowns = {k: v for k, v in a.cooldowns.items() if k not in scopes}
    a.probation = a.probation and bool(a.cooldowns)


def bind_session(rows: Rows, key: str, binding: SessionBinding, now: float) -> None:
    """Keep session ``key`` on an account; expired bindings of every session are pruned."""
    rows.sessions = {k: v for k, v in rows.sessions.items() if v.expires_at > now}
    rows.sessions[key] = binding


# -- refusals ------------------------------------------------------------------------------


def refused(a: Account, status: int, *, dead: bool) -> None:
    """A 401 no renewal cures (``dead``: confirmed by a second opinion), or a 403."""
    a.last_status = status
    a.last_error = FORBIDDEN if status == 403 else DEAD if dead else REFUSED
    a.counters.unauthorized += 1
    a.needs_reauth = a.needs_reauth or dead


def confirm_refusal(a: Account) -> None:
    """An earlier 401 of this request is confirmed: the provider accepted another account's credentials."""
    a.needs_reauth = True
    a.last_error = DEAD


def mark_needs_reauth(a: Account, why: str) -> None:
    """The login is dead (a refresh token rejected, or none stored): only a new login helps."""
    a.needs_reauth = True
    a.last_error = why
    a.counters.failures += 1
    a.refresh_journal = None
    a.refresh_failing = None


# -- renewal -------------------------------------------------------------------------------


def begin_refresh(a: Account, record: RefreshJournal) -> None:
    """A token call is about to leave: journal it (the record replaces any interrupted one it carries)."""
    a.refresh_journal = record


def renewed(a: Account, *, generation: int, expires_at: float | None, lifetime: float | None) -> None:
    """A rotation is stored: the new generation, its expiry; the journal entry and any failure go."""
    a.secret_generation = max(a.secret_generation + 1, generation)
    a.access_expires_at = expires_at
    a.access_lifetime = lifetime
    a.needs_reauth = False
    a.last_error = None
    a.refresh_journal = None
    a.refresh_failing = None
    a.counters.refreshes += 1


def adopted(a: Account, *, generation: int, expires_at: float | None, lifetime: float | None = None,
            signed_in: bool = False) -> None:
    """A newer secret someone else made is used: another holder's refresh, found when storing
    ours, or (``signed_in``) the linked tool's renewal, which also shows the login works.

    The generation moves so every process drops its cached copy; the journal record goes (the
    secret it was about is no longer current).
    """
    a.secret_generation = max(a.secret_generation + 1, generation)
    a.access_expires_at = expires_at
    if lifetime is not None:
        a.access_lifetime = lifetime
    if signed_in:
        a.needs_reauth = False
    a.refresh_journal = None
    a.refresh_failing = None


def linked(a: Account, link: LinkedFile | None) -> None:
    """Link the account to an official tool's credential file, or (None) unlink it."""
    a.link = link


def refresh_failed(a: Account, *, now: float, backoff: Callable[[int], float], reason: str, error: str,
                   token_refused: bool, unanswered: bool, journal: RefreshJournal | None) -> None:
    """The token endpoint failed: no token call before ``now + backoff(failures in a row)``.

    Nothing stored changes.
    ``unanswered``: the request may have reached the endpoint (no answer came back), so the
    journal entry stays, marked so. Otherwise the endpoint clearly did nothing, and the journal
    goes back to what it was before the call (``journal``).
    """
    previous = a.failing_refresh()
    failures = previous.failures + 1 if previous is not None else 1
    a.refresh_failing = RefreshFailing(
        since=previous.since if previous is not None else now,
        next_try_at=now + backoff(failures),
        failures=failures,
        reason=reason,
        generation=a.secret_generation,
        token_refused=token_refused or (previous is not None and previous.token_refused),
    )
    a.last_error = error
    a.counters.failures += 1
    if unanswered and a.refresh_journal is not None:
        a.refresh_journal.outcome_unknown = True
    else:
        a.refresh_journal = journal


def refresh_waits(a: Account, *, until: float, reason: str, token_refused: bool, now: float) -> None:
    """No token call before ``until`` (an interrupted refresh may still reach the endpoint)."""
    previous = a.failing_refresh()
    a.refresh_failing = RefreshFailing(
        since=previous.since if previous is not None else now,
        next_try_at=until,
        failures=previous.failures if previous is not None else 0,
        reason=reason,
        generation=a.secret_generation,
        token_refused=token_refused or (previous is not None and previous.token_refused),
    )


def token_refused_while_failing(a: Account) -> None:
    """A 401 while renewal backs off: keep the account out until it is renewed."""
    if a.refresh_failing is not None:
        a.refresh_failing.token_refused = True


def new_secret(a: Account, *, oauth: bool, expires_at: float | None, lifetime: float | None) -> int:
    """A new login or key replaced the secret; returns the new generation.

    A failing or interrupted renewal of the old secret no longer matters.
    """
    a.secret_generation += 1
    if oauth:
        a.access_expires_at = expires_at
        a.access_lifetime = lifetime
        a.needs_reauth = False
    a.refresh_failing = None
    a.refresh_journal = None
    return a.secret_generation


# -- the user's commands -------------------------------------------------------------------


def reset(a: Account) -> None:
    """``accounts reset``: cooldowns (and their probation), backoffs, needs-reauth and the last error go."""
    a.cooldowns.clear()
    a.probation = False
    a.backoff_level = 0
    a.needs_reauth = False
    a.refresh_failing = None
    a.last_error = None


def set_enabled(a: Account, enabled: bool) -> None:
    """A disabled account keeps its login but is never picked."""
    a.enabled = enabled


# -- usage -----------------------------------------------------------------------------------


def record_usage(a: Account, *, requests: int, last_used_at: float, last_status: int | None,
                 quota_resets_at: float | None, windows: dict[str, QuotaWindow] | None = None) -> None:
    """Requests served by one process since its last flush (counted in memory, written in batches).

    Usage windows replace older readings of the same window only (another process may have seen
    a newer one).
    """
    a.counters.requests += requests
    a.last_used_at = max(a.last_used_at or 0.0, last_used_at)
    a.last_status = last_status
    if quota_resets_at is not None:
        a.quota_resets_at = quota_resets_at
    for name, window in (windows or {}).items():
        known = a.windows.get(name)
        if known is None or known.seen_at <= window.seen_at:
            a.windows[name] = window

