"""Refreshing OAuth tokens without ever clobbering another process's rotation, or losing our own.

Providers rotate refresh tokens: each refresh returns a new one and the old one dies, and a
reused old one is treated as theft (the whole login is revoked). Two processes refreshing the
same account at once, one writing back a token set it read before another's refresh, or one
that sent a refresh and then dropped the answer, log the user out. So, per account:

1. callers of one process share one *flight*: a refresh running in a thread of its own, which
   nothing but the process's death can interrupt; threads and other processes queue on the
   account's file lock;
2. holding it, re-read the metadata: if ``secret_generation`` moved since the caller saw it,
   someone else refreshed — use their token, no network call;
3. otherwise record in the journal (:mod:`pool.journal`) that this process is sending a refresh
   from generation G, call the token endpoint, store the new secret (new refresh token
   included) in the credential store, then bump the generation and clear the journal entry in
   one update;
4. on ``invalid_grant`` re-read the stored refresh token: if it changed, retry once with it;
   only if it did not, mark the account needs-reauth, saying why if the journal shows an
   earlier refresh was interrupted.

Once a token request is sent, the flight runs to completion and stores its result, whatever
happens to the request that started it: its task is cancelled, its deadline passes (the caller
stops waiting after the provider's ``token_timeout``; the call itself may take up to
:data:`~pool.oauth.TOKEN_CALL_LIMIT`), or its process is asked to exit (``drain`` waits for
flights that have sent). Only SIGKILL or power loss can lose a rotation, and the journal then
says what happened.

A failing token endpoint (5xx, network error, timeout) puts the account's refresh on a short,
growing, jittered backoff recorded in the store and honoured by every process: no token call
before it ends. A success clears it; a failure changes no stored token and never marks a login
needs-reauth.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import anyio
import httpx2

from authpool.accounts.model import Account, PoolFile, RefreshFailing, RefreshJournal
from authpool.accounts.secret import Secret, TokenSet
from authpool.accounts.views import relogin_command
from authpool.auth.journal import describe_interrupted, new_record
from authpool.auth.oauth import (
    TOKEN_CALL_LIMIT,
    InvalidGrant,
    describe_transport_error,
    parse_token_response,
    refresh_request,
)
from authpool.errors import (
    LockTimeout,
    PoolError,
    ReauthRequired,
    RefreshBackoff,
    RefreshError,
    RefreshPending,
    RefreshUnanswered,
)
from authpool.pool import Pool
from authpool.providers.provider import Provider
from authpool.storage.lock import DEFAULT_TIMEOUT, Lock

__all__ = ["Contended", "Flight", "RefreshMode", "Refresher", "Renewal", "drain", "in_flight", "refresh_backoff"]

log = logging.getLogger("authpool")

RefreshMode = Literal["force", "mandatory", "advisory"]

_BACKOFF_FIRST = 1.0  # seconds before the first retry of a failing token endpoint
_BACKOFF_CAP = 60.0
_LOCK_SLICE = 0.1  # a flight waiting for another process's refresh looks this often whether to give up


class Contended(Exception):
    """An advisory refresh found the account's refresh taken; keep using the current token."""


@dataclass(frozen=True)
class Renewal:
    """A secret fresh enough to use, and whether this call renewed it at the token endpoint.

    ``performed`` is False when another process (or an earlier caller) had already renewed it:
    a 401 with a token someone else minted proves nothing about the login, while a 401 with the
    token this call just minted means the login itself is refused.
    """

    secret: Secret
    performed: bool


@dataclass(eq=False)
class Flight:
    """One refresh of one account, running in its own thread; callers wait on ``future``."""

    account_id: str
    name: str  # provider/label, for messages
    seen_generation: int
    mode: RefreshMode
    started: float = field(default_factory=time.monotonic)
    future: concurrent.futures.Future[Renewal] = field(default_factory=concurrent.futures.Future)
    sent: bool = False  # the token request may have left: the flight must land before the process exits


# Every flight of this process, whatever pool started it: what `drain` waits for at exit.
_registry_guard = threading.Lock()
_flights: set[Flight] = set()
_exiting = threading.Event()


def in_flight() -> list[Flight]:
    """This process's refreshes that have not finished."""
    with _registry_guard:
        return [f for f in _flights if not f.future.done()]


def drain(timeout: float | None = None, *, notify: Callable[[list[Flight]], None] | None = None,
          notify_after: float = 1.0, final: bool = True) -> bool:
    """Wait for this process's refreshes that have sent their token request; True if all landed.

    Called before a process exits: a refresh that reached the token endpoint may already have
    rotated the login there, so leaving before its answer is stored would log the user out.
    ``final`` (the default) also stops flights that have not sent yet from sending at all.
    ``notify`` is called once, with the flights still running, if they take ``notify_after``
    seconds or more.
    """
    if final:
        _exiting.set()
    deadline = None if timeout is None else time.monotonic() + timeout
    notify_at = time.monotonic() + notify_after if notify is not None else None
    while True:
        with _registry_guard:
            pending = [f for f in _flights if f.sent and not f.future.done()]
        if not pending:
            return True
        now = time.monotonic()
        if notify is not None and notify_at is not None and now >= notify_at:
            notify_at = None
            notify(pending)
        # Short slices: the flight set changes, and a second Ctrl-C must be seen promptly.
        slice_ = 0.1 if deadline is None else min(0.1, deadline - now)
        if slice_ <= 0:
            return False
        concurrent.futures.wait([f.future for f in pending], timeout=slice_)


def refresh_backoff(failures: int) -> float:
    """Seconds before the next token call after ``failures`` failed ones in a row: 1, 2, 4 … 60, jittered."""
    base = min(_BACKOFF_CAP, _BACKOFF_FIRST * 2 ** min(max(failures, 1) - 1, 10))
    return float(base * (0.75 + random.random() / 2))  # noqa: S311 - jitter, not a secret


class Refresher:
    """Single-flight token refresh for the accounts of one pool."""

    def __init__(self, pool: Pool, transport: httpx2.BaseTransport | None = None) -> None:
        self.pool = pool
        self._transport = transport
        self._client: httpx2.Client | None = None
        self._guard = threading.Lock()
        self._flights: dict[tuple[str, int], Flight] = {}
        self._closing = False
        self.calls = 0  # token endpoint calls made by this process (for diagnostics and tests)

    # -- callers -----------------------------------------------------------------------------

    def renew(self, provider: Provider, account_id: str, seen_generation: int, mode: RefreshMode, *,
              wait: float | None = None) -> Renewal:
        """Return a fresh secret for the account (refreshing only if nobody else just did).

        Args:
            provider: the account's provider.
            account_id: the account.
            seen_generation: the ``secret_generation`` the caller's token came from.
            mode: ``force`` (after a 401) or ``mandatory`` (token about to expire) wait for the
                refresh; ``advisory`` (expiry approaching) gives up at once if it is taken.
            wait: seconds to wait for the result (None: until it is there). The refresh itself
                goes on after the caller stops waiting.

        Raises:
            Contended: advisory mode and another thread or process is refreshing.
            ReauthRequired: the login is dead (the account is marked needs-reauth).
            RefreshPending: ``wait`` passed first; the refresh goes on and will be stored.
            RefreshBackoff: renewing this account keeps failing; no call before its next try.
            RefreshError: the token endpoint failed, or another process held the account's
                refresh lock past the lock timeout; stored tokens are unchanged.
        """
        flight = self._flight(provider, account_id, seen_generation, mode)
        try:
            return flight.future.result(timeout=wait)
        except concurrent.futures.TimeoutError:
            raise self._pending(provider, flight, wait) from None

    async def arenew(self, provider: Provider, account_id: str, seen_generation: int, mode: RefreshMode, *,
                     wait: float | None = None) -> Renewal:
        """:meth:`renew` for async callers: the event loop waits, the refresh runs in its own thread.

        Cancelling the caller only stops the waiting: the refresh goes on and is stored.
        """
        flight = self._flight(provider, account_id, seen_generation, mode)
        future = flight.future
        if not future.done():
            loop = asyncio.get_running_loop()
            done = anyio.Event()

            def wake(_: object) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                    loop.call_soon_threadsafe(done.set)

            future.add_done_callback(wake)
            with anyio.move_on_after(wait):
                await done.wait()
        if not future.done():
            raise self._pending(provider, flight, wait)
        return future.result()

    def _flight(self, provider: Provider, account_id: str, seen_generation: int, mode: RefreshMode) -> Flight:
        key = (account_id, seen_generation)
        try:
            name = self.pool.get(account_id).name
        except PoolError:
            name = account_id
        with self._guard:
            current = self._flights.get(key)
            if current is not None and not current.future.done():
                if mode == "advisory":
                    raise Contended  # this process is renewing it already; the current token still works
                return current
            flight = Flight(account_id, name, seen_generation, mode)
            flight.future.set_running_or_notify_cancel()  # a running flight cannot be cancelled
            self._flights[key] = flight
        with _registry_guard:
            _flights.add(flight)
        # Not a daemon: an interpreter that exits (a script's last line, Ctrl-C) waits for it.
        thread = threading.Thread(target=self._fly, args=(flight, provider),
                                  name=f"authpool-refresh-{account_id}", daemon=False)
        thread.start()
        return flight

    def _pending(self, provider: Provider, flight: Flight, wait: float | None) -> RefreshPending:
        return RefreshPending(
            f"the token endpoint of {provider.id} has not answered within {wait or 0:.1f}s; the refresh of "
            f"{flight.name} goes on in the background and its result will be stored",
            reason="slow token endpoint",
        )

    def _fly(self, flight: Flight, provider: Provider) -> None:
        try:
            result = self._renew_now(provider, flight.account_id, flight.seen_generation, flight.mode, flight)
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits, in their thread
            if not isinstance(e, PoolError | Contended):
                log.warning("the refresh of account %s failed unexpectedly (%s)", flight.account_id,
                            type(e).__name__)
            flight.future.set_exception(e)
        else:
            flight.future.set_result(result)
        finally:
            with _registry_guard:
                _flights.discard(flight)
            with self._guard:
                key = (flight.account_id, flight.seen_generation)
                if self._flights.get(key) is flight:
                    del self._flights[key]
                last = self._closing and not self._flights
            if last:
                self._close_client()

    # -- the procedure -----------------------------------------------------------------------

    def _renew_now(self, provider: Provider, account_id: str, seen_generation: int, mode: RefreshMode,
                   flight: Flight | None) -> Renewal:
        lock = self._lock(account_id, mode)
        try:
            return self._refresh_locked(provider, account_id, seen_generation, mode, flight)
        finally:
            lock.release()

    def _lock(self, account_id: str, mode: RefreshMode) -> Lock:
        path = self.pool.secret_lock(account_id).path
        if mode == "advisory":
            try:
                return _acquired(Lock(path, timeout=0.0))
            except LockTimeout:
                raise Contended from None
        # Taken in slices, so a process asked to exit stops waiting for another's refresh.
        deadline = time.monotonic() + DEFAULT_TIMEOUT
        while True:
            try:
                return _acquired(Lock(path, timeout=min(_LOCK_SLICE, max(0.0, deadline - time.monotonic()))))
            except LockTimeout as e:
                if _exiting.is_set():
                    raise RefreshError(f"account {account_id} was not renewed: this process is exiting") from None
                if time.monotonic() < deadline:
                    continue
                # Another process held this account's refresh for longer than the lock timeout (a
                # slow token endpoint holds it up to TOKEN_CALL_LIMIT). For this request that is a
                # failed refresh of one account, so rotation moves on, not a pool-wide failure.
                held = LockTimeout(path, DEFAULT_TIMEOUT, e.holder)
                raise RefreshError(f"gave up waiting for another process to renew account {account_id}: {held}",
                                   reason="another process is renewing it") from e

    def _refresh_locked(self, provider: Provider, account_id: str, seen_generation: int, mode: RefreshMode,
                        flight: Flight | None = None) -> Renewal:
        acc = self.pool.get(account_id)
        secrets = self.pool.secrets
        if acc.secret_generation != seen_generation:
            log.debug("account %s was refreshed by another process; using its token", acc.name)
            return Renewal(secrets.load(acc.id, acc.secret_generation), performed=False)
        if acc.needs_reauth:
            raise ReauthRequired(_reauth_message(acc))
        secret = secrets.load_fresh(acc.id)
        # The caller saw an expiring token; if the stored one is fresh, someone renewed it.
        expires_at = secret.expires_at
        advisory, _ = provider.refresh_windows(acc.access_lifetime)
        if mode != "force" and expires_at is not None and expires_at - time.time() > advisory:
            return Renewal(secret, performed=False)
        failing = acc.failing_refresh()
        if failing is not None and failing.next_try_at > time.time():
            if mode == "force" and not failing.token_refused:
                self._update(account_id, _refused_meanwhile)
            raise RefreshBackoff(f"renewing account {acc.name} is failing, so no token call now: "
                                 f"{failing.describe()}", reason=failing.reason)
        if not secret.refresh_token:
            self._mark_reauth(acc.id, "no refresh token stored", None)
            raise ReauthRequired(_reauth_message(acc, "no refresh token is stored"))
        # A record left by a refresh whose answer never landed: the stored refresh token may be
        # dead already. Nothing better exists than trying it; if it was, the record says why.
        interrupted = acc.pending_refresh()
        self._journal_begin(acc, flight)
        try:
            try:
                tokens = self._call(provider, secret.refresh_token)
            except InvalidGrant:
                current = secrets.load_fresh(acc.id)
                if not current.refresh_token or current.refresh_token == secret.refresh_token:
                    raise
                # Written by a process outside our lock discipline: the new token may still be good.
                secret = current
                tokens = self._call(provider, current.refresh_token)
        except InvalidGrant:
            why = describe_interrupted(interrupted) if interrupted is not None else None
            self._mark_reauth(acc.id, "refresh token rejected (invalid_grant)", why)
            raise ReauthRequired(_reauth_message(acc, interrupted=why)) from None
        except RefreshError as e:
            self._record_failure(acc.id, e, mode, interrupted)
            raise
        # Nothing between the answer and storing it: the old refresh token is dead at the provider.
        new = secret.with_tokens(tokens.access_token, tokens.refresh_token, tokens.expires_at)
        generation = acc.secret_generation + 1
        secrets.save(acc.id, new, generation)  # the new refresh token is stored before anyone can use the old
        self._update(account_id, _stored(generation, new, tokens))
        log.info("refreshed the token of %s", acc.name)
        return Renewal(new, performed=True)

    def _journal_begin(self, acc: Account, flight: Flight | None) -> None:
        with _registry_guard:
            if _exiting.is_set():
                raise RefreshError(f"account {acc.name} was not renewed: this process is exiting")
            if flight is not None:
                flight.sent = True
        record = new_record(acc.secret_generation)

        def begin(a: Account) -> None:
            a.refresh_journal = record

        self._update(acc.id, begin)

    def _call(self, provider: Provider, refresh_token: str) -> TokenSet:
        request = refresh_request(provider, refresh_token)
        self.calls += 1
        try:
            response = self._http().send(request)
        except httpx2.TransportError as e:
            raise describe_transport_error(provider, e) from None
        return parse_token_response(provider, response.status_code, response.headers.get("content-type", ""),
                                    response.content)

    def _http(self) -> httpx2.Client:
        with self._guard:
            if self._client is None:
                self._client = httpx2.Client(transport=self._transport, timeout=TOKEN_CALL_LIMIT,
                                             follow_redirects=False)
            return self._client

    def close(self) -> None:
        """Close the token endpoint's connections once no refresh of this pool is running."""
        with self._guard:
            self._closing = True
            busy = bool(self._flights)
        if not busy:
            self._close_client()

    def _close_client(self) -> None:
        with self._guard:
            client, self._client = self._client, None
            self._closing = False
        if client is not None:
            client.close()

    # -- recording outcomes ------------------------------------------------------------------

    def _update(self, account_id: str, change: Callable[[Account], None]) -> None:
        def apply(pool: PoolFile) -> None:
            change(pool.find(account_id))

        self.pool.store.update(apply)

    def _mark_reauth(self, account_id: str, why: str, interrupted: str | None) -> None:
        def mark(a: Account) -> None:
            a.needs_reauth = True
            a.last_error = f"{interrupted}; the provider then revoked the login" if interrupted else why
            a.counters.failures += 1
            a.refresh_journal = None
            a.refresh_failing = None

        self._update(account_id, mark)

    def _record_failure(self, account_id: str, error: RefreshError, mode: RefreshMode,
                        interrupted: RefreshJournal | None) -> None:
        now = time.time()

        def note(a: Account) -> None:
            previous = a.failing_refresh()
            failures = previous.failures + 1 if previous is not None else 1
            a.refresh_failing = RefreshFailing(
                since=previous.since if previous is not None else now,
                next_try_at=now + refresh_backoff(failures),
                failures=failures,
                reason=error.reason,
                generation=a.secret_generation,
                token_refused=mode == "force" or (previous is not None and previous.token_refused),
            )
            a.last_error = str(error)
            a.counters.failures += 1
            record = a.refresh_journal
            if isinstance(error, RefreshUnanswered) and record is not None:
                record.outcome_unknown = True  # sent, no answer: the provider may have rotated
            else:
                a.refresh_journal = interrupted  # a clear refusal rotated nothing: as before the call

        self._update(account_id, note)


def _acquired(lock: Lock) -> Lock:
    lock.acquire()
    return lock


def _refused_meanwhile(a: Account) -> None:
    if a.refresh_failing is not None:
        a.refresh_failing.token_refused = True  # a 401 while renewing fails: keep it out until renewed


def _stored(generation: int, new: Secret, tokens: TokenSet) -> Callable[[Account], None]:
    def bump(a: Account) -> None:
        a.secret_generation = max(a.secret_generation + 1, generation)
        a.access_expires_at = new.expires_at
        a.access_lifetime = tokens.issued_lifetime()
        a.needs_reauth = False
        a.last_error = None
        a.refresh_journal = None
        a.refresh_failing = None
        a.counters.refreshes += 1

    return bump


def _reauth_message(acc: Account, why: str = "its refresh token was rejected", *,
                    interrupted: str | None = None) -> str:
    if interrupted is not None:
        why = f"{interrupted}, and the provider then revoked the login (the rotated refresh token was lost)"
    return f"account {acc.name} ({acc.id}) needs a new login: {why}; run `{relogin_command(acc)}`"
