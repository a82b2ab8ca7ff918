"""Refreshing OAuth tokens without ever clobbering another process's rotation, or losing our own.

Providers rotate refresh tokens: each refresh returns a new one and the old one dies, and a
reused old one is treated as theft (the whole login is revoked). Two processes refreshing the
same account at once, one writing back a token set it read before another's refresh, or one
that sent a refresh and then dropped the answer, log the user out. So, per account:

1. callers of one process share one flight (:mod:`authpool.auth.flight`): a refresh running in
   a thread of its own, which nothing but the process's death can interrupt; threads and other
   processes queue on the account's lock in the metadata store;
2. holding it, re-read the metadata: if ``secret_generation`` moved since the caller saw it,
   someone else refreshed — use their token, no network call;
3. if the journal (:mod:`authpool.auth.journal`) holds a refresh whose request may still reach
   the provider (its owner was killed mid-call, or got no answer), wait until it cannot: sent
   first, it would revoke the login behind ours (renewal backs off until then);
4. record in the journal that this process is sending a refresh from generation G, call the
   token endpoint, store the new secret (new refresh token included) in the secret backend,
   then bump the generation and clear the journal entry in one update;
5. on ``invalid_grant`` re-read the stored refresh token: if it changed (a writer outside the
   lock), retry once with it; only if it did not, mark the account needs-reauth, saying why if
   the journal shows an earlier refresh was interrupted.

A failing token endpoint (5xx, network error, timeout) puts the account's renewal on a short,
growing, jittered backoff recorded in the store and honoured by every process: no token call
before it ends. A success clears it; a failure changes no stored token and never marks a login
needs-reauth. The protocol is model-checked: ``docs/model``.
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
from typing import Protocol, TypeVar

import anyio
import httpx2

from authpool.accounts import transitions
from authpool.accounts.model import Account, RefreshJournal, Rows
from authpool.accounts.secret import Secret, TokenSet, time_left
from authpool.accounts.views import relogin_command
from authpool.auth.flight import Flight, RefreshMode, Renewal, drain, exiting, in_flight, launch, mark_sending
from authpool.auth.journal import describe_interrupted, new_record
from authpool.auth.linked import FileLogin, changed_since, digest, read_login, spending, write_login
from authpool.auth.oauth import (
    call_timeouts,
    describe_transport_error,
    exchange_request,
    parse_exchange_response,
    parse_token_response,
    refresh_request,
)
from authpool.errors import (
    InvalidGrant,
    LockTimeout,
    PoolError,
    ReauthRequired,
    RefreshBackoff,
    RefreshError,
    RefreshPending,
    RefreshUnanswered,
)
from authpool.events.event import Event
from authpool.providers.provider import Provider
from authpool.storage.lock import DEFAULT_TIMEOUT
from authpool.storage.protocols import HeldLock, MetadataStore, SecretBackend

__all__ = ["Flight", "Keeper", "Refresher", "drain", "in_flight", "refresh_backoff"]

log = logging.getLogger("authpool")
_T = TypeVar("_T")

_BACKOFF_FIRST = 1.0  # seconds before the first retry of a failing token endpoint
_BACKOFF_CAP = 60.0
_LOCK_SLICE = 0.1  # a flight waiting for another process's refresh looks this often whether to give up
# A rotated refresh token's store is retried this long (as the team store retries a lost database):
# the provider has already spent the old one, so dropping the new one on a full disk or a busy vault
# would log the user out at the next refresh.
_LAND_FOR = 300.0
_LAND_RETRY_CAP = 2.0  # seconds between two tries, at most


class Keeper(Protocol):
    """What the refresher needs of a pool: where its metadata and its secrets are."""

    @property
    def store(self) -> MetadataStore: ...

    @property
    def secrets(self) -> SecretBackend: ...


def refresh_backoff(failures: int) -> float:
    """Seconds before the next token call after ``failures`` failed ones in a row: 1, 2, 4 … 60, jittered."""
    base = min(_BACKOFF_CAP, _BACKOFF_FIRST * 2 ** min(max(failures, 1) - 1, 10))
    return float(base * (0.75 + random.random() / 2))  # noqa: S311 - jitter, not a secret


class Refresher:
    """Single-flight token refresh for the accounts of one pool."""

    def __init__(self, keeper: Keeper, transport: httpx2.BaseTransport | None = None) -> None:
        self.keeper = keeper
        self._transport = transport
        self._client: httpx2.Client | None = None
        self._guard = threading.Lock()
        self._flights: dict[tuple[str, int], Flight] = {}
        self._closing = False
        self.calls = 0  # token endpoint calls made by this process (for diagnostics and tests)

    # -- callers -----------------------------------------------------------------------------

    def renew(self, provider: Provider, account_id: str, seen_generation: int, mode: RefreshMode, *,
              wait: float | None = None) -> Renewal | None:
        """Return a fresh secret for the account (refreshing only if nobody else just did).

        Args:
            provider: the account's provider.
            account_id: the account.
            seen_generation: the ``secret_generation`` the caller's token came from.
            mode: ``force`` (after a 401) or ``mandatory`` (token about to expire) wait for the
                refresh; ``advisory`` (expiry approaching) gives up at once if it is taken.
            wait: seconds to wait for the result (None: until it is there). The refresh itself
                goes on after the caller stops waiting.

        Returns:
            The renewal, or None in advisory mode when another thread or process is renewing
            the account already (keep using the current token).

        Raises:
            ReauthRequired: the login is dead (the account is marked needs-reauth).
            RefreshPending: ``wait`` passed first; the refresh goes on and will be stored.
            RefreshBackoff: renewing this account keeps failing; no call before its next try.
            RefreshError: the token endpoint failed, or another process held the account's
                refresh lock past the lock timeout; stored tokens are unchanged.
        """
        flight = self._flight(provider, account_id, seen_generation, mode)
        if flight is None:
            return None
        try:
            return flight.future.result(timeout=wait)
        except concurrent.futures.TimeoutError:
            if flight.future.done():
                # Its own outcome (a LockTimeout is a TimeoutError too), or one that came just as the wait ran out.
                return flight.future.result()
            raise _pending(provider, flight, wait) from None

    async def arenew(self, provider: Provider, account_id: str, seen_generation: int, mode: RefreshMode, *,
                     wait: float | None = None) -> Renewal | None:
        """:meth:`renew` for async callers: the event loop waits, the refresh runs in its own thread.

        Cancelling the caller only stops the waiting: the refresh goes on and is stored.
        """
        flight = self._flight(provider, account_id, seen_generation, mode)
        if flight is None:
            return None
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
            raise _pending(provider, flight, wait)
        return future.result()

    def _flight(self, provider: Provider, account_id: str, seen_generation: int, mode: RefreshMode) -> Flight | None:
        """This process's flight for the account and generation: joined if running, else launched."""
        key = (account_id, seen_generation)
        try:
            # peek: no waiting on a server here (async callers are on the event loop).
            cached = self.keeper.store.peek()
            name = cached.find(account_id).name if cached is not None else account_id
        except PoolError:
            name = account_id
        with self._guard:
            current = self._flights.get(key)
            if current is not None and not current.future.done():
                # Advisory: this process is renewing it already; the current token still works.
                return None if mode == "advisory" else current
            flight = self._flights[key] = Flight(account_id, name, seen_generation, mode)

        def done() -> None:
            with self._guard:
                if self._flights.get(key) is flight:
                    del self._flights[key]
                last = self._closing and not self._flights
            if last:
                self._close_client()

        launch(flight, lambda: self._renew_now(provider, flight), done)
        return flight

    # -- the procedure -----------------------------------------------------------------------

    def _renew_now(self, provider: Provider, flight: Flight) -> Renewal | None:
        lock = self._lock(flight.account_id, flight.mode)
        if lock is None:
            return None
        try:
            return self._refresh_locked(provider, flight.account_id, flight.seen_generation, flight.mode, flight)
        finally:
            lock.release()

    def _lock(self, account_id: str, mode: RefreshMode) -> HeldLock | None:
        """The account's refresh lock (None: advisory, and someone else holds it)."""
        name = f"account-{account_id}"
        store = self.keeper.store
        if mode == "advisory":
            lock = store.named_lock(name, 0.0)
            try:
                lock.acquire()
            except LockTimeout:
                return None
            return lock
        # Taken in slices, so a process asked to exit stops waiting for another's refresh.
        deadline = time.monotonic() + DEFAULT_TIMEOUT
        while True:
            lock = store.named_lock(name, DEFAULT_TIMEOUT)
            try:
                lock.acquire(timeout=min(_LOCK_SLICE, max(0.0, deadline - time.monotonic())))
                return lock
            except LockTimeout as e:
                if exiting():
                    raise RefreshError(f"account {account_id} was not renewed: this process is exiting") from None
                if time.monotonic() < deadline:
                    continue
                # Another process held this account's refresh for longer than the lock timeout (a
                # slow token endpoint holds it up to token_call_limit). For this request that is
                # a failed refresh of one account, so rotation moves on, not a pool-wide failure.
                held = LockTimeout(e.lock_file, DEFAULT_TIMEOUT, e.holder)
                raise RefreshError(f"gave up waiting for another process to renew account {account_id}: {held}",
                                   reason="another process is renewing it") from e

    def _refresh_locked(self, provider: Provider, account_id: str, seen_generation: int, mode: RefreshMode,
                        flight: Flight | None = None) -> Renewal:
        store, secrets = self.keeper.store, self.keeper.secrets
        acc = store.read().find(account_id)
        if acc.secret_generation != seen_generation:
            log.debug("account %s was refreshed by another process; using its token", acc.name)
            return Renewal(secrets.load(acc.id, acc.secret_generation), performed=False)
        if acc.needs_reauth:
            raise ReauthRequired(_reauth_message(acc))
        if not acc.enabled:
            # Disabled while this flight waited for the lock: `store copy` disables a login it copied
            # so that one pool alone rotates it, and a rotation here would spend the copy's token.
            raise RefreshError(f"account {acc.name} is disabled, so it was not renewed", reason="disabled")
        secret = secrets.load_fresh(acc.id)
        seen: FileLogin | None = None  # the linked tool's file as read now, for the write-back
        if acc.link is not None and provider.token_exchange is None:
            adoption, seen = self._from_linked(acc, secret)
            if adoption is not None:
                acc, secret = adoption
                if mode == "force" or not _expiring(provider, acc, secret):
                    return Renewal(secret, performed=False)  # the tool renewed it: no token call
        # The caller saw an expiring token; if the stored one is fresh, someone renewed it.
        expires_at = secret.expires_at
        advisory, _ = provider.refresh_windows(acc.access_lifetime, linked=acc.link is not None)
        now = store.now()
        if mode != "force" and expires_at is not None and expires_at - now > advisory:
            return Renewal(secret, performed=False)
        failing = acc.failing_refresh()
        if failing is not None and failing.next_try_at > now:
            if mode == "force" and not failing.token_refused:
                self._update(account_id, transitions.token_refused_while_failing)
            raise RefreshBackoff(f"renewing account {acc.name} is failing, so no token call now: "
                                 f"{failing.describe()}", reason=failing.reason)
        if not secret.refresh_token:
            self._update(account_id, lambda a: transitions.mark_needs_reauth(a, "no refresh token stored"))
            raise ReauthRequired(_reauth_message(acc, "no refresh token is stored"))
        if provider.token_exchange is not None:
            return self._exchange(provider, acc, secret, mode, flight)
        return self._rotate(provider, acc, secret, mode, flight, seen)

    def _rotate(self, provider: Provider, acc: Account, secret: Secret, mode: RefreshMode, flight: Flight | None,
                seen: FileLogin | None) -> Renewal:
        """The refresh-token grant itself: journal, token call, store, then the linked file."""
        account_id, secrets = acc.id, self.keeper.secrets
        # A record left by a refresh whose answer never landed: the stored refresh token may be
        # dead already. Nothing better exists than trying it, but not while that refresh's
        # request may still reach the provider: it would revoke the login behind our rotation.
        interrupted = acc.pending_refresh()
        now = self.keeper.store.now()
        if interrupted is not None and interrupted.settles_at() > now:
            self._wait_for_interrupted(acc, interrupted, mode, now)
        mark_sending(flight, f"account {acc.name}")
        self._journal(acc, provider, interrupted)
        started = time.monotonic()
        try:
            try:
                tokens = self._call(provider, secret.refresh_token or "")
            except InvalidGrant:
                current = secrets.load_fresh(acc.id)
                if not current.refresh_token or current.refresh_token == secret.refresh_token:
                    raise
                # Written by a process outside our lock discipline: the new token may still be good.
                secret = current
                tokens = self._call(provider, current.refresh_token)
        except InvalidGrant:
            why = describe_interrupted(interrupted) if interrupted is not None else None
            mark = f"{why}; the provider then revoked the login" if why else "refresh token rejected (invalid_grant)"
            self._update(account_id, lambda a: transitions.mark_needs_reauth(a, mark))
            self._event(acc, "invalid_grant", started, mark)
            raise ReauthRequired(_reauth_message(acc, interrupted=why)) from None
        except RefreshError as e:
            self._failed(acc.id, e, token_refused=mode == "force", journal=interrupted)
            self._event(acc, "failed", started, e.reason)
            raise
        # Nothing between the answer and storing it: the old refresh token is dead at the provider.
        new = secret.with_tokens(tokens.access_token, tokens.refresh_token, tokens.expires_at,
                                 {"link_seen": _file_holds(secret, seen), "link_spent": spending(secret)}
                                 if acc.link is not None else None)
        renewal = self._store(acc, secret, new, tokens.issued_lifetime(), "refreshed the token of %s", landing=True)
        self._event(acc, "renewed" if renewal.performed else "adopted", started, None)
        if acc.link is not None and renewal.performed:
            newer = self._to_linked(acc, new, seen)
            if newer is not None:
                return Renewal(newer, performed=False)
        return renewal

    def _store(self, acc: Account, old: Secret, new: Secret, lifetime: float | None, done: str, *,
               landing: bool = False) -> Renewal:
        """Store a renewed secret before anyone can use the old one, and move the generation.

        A compare-and-swap: a secret someone else stored meanwhile (a lease that expired under us,
        a re-login) is kept and used instead of ours. ``landing``: the old secret is spent at the
        provider (a rotation), so a failed store is tried again (:meth:`_until_landed`).
        """
        generation = acc.secret_generation + 1
        if landing:
            stored = self._until_landed(acc, "the renewed token could not be stored", "the renewed token was stored",
                                        lambda: self.keeper.secrets.swap(acc.id, old, new, generation))
        else:
            stored = self.keeper.secrets.swap(acc.id, old, new, generation)
        # By value: a try that landed but reported a failure (a keyring's D-Bus call timing out after
        # the write) finds ours stored on the next try and reads back an equal copy.
        if stored != new:
            log.warning("account %s: another process stored a newer secret while this renewal ran; using theirs",
                        acc.name)
            self._update(acc.id, lambda a: transitions.adopted(a, generation=generation,
                                                               expires_at=stored.expires_at))
            return Renewal(stored, performed=False)

        def renewed(a: Account) -> None:
            transitions.renewed(a, generation=generation, expires_at=new.expires_at, lifetime=lifetime)

        if not landing:
            self._update(acc.id, renewed)
        else:
            try:
                self._until_landed(acc, "the renewal could not be recorded", "the renewal was recorded",
                                   lambda: self._update(acc.id, renewed))
            except Exception as e:  # noqa: BLE001 - the token is stored: the record only lags behind it
                # The journal record stays: the next refresh waits it out, then renews from the stored token.
                log.warning("account %s: the renewed token is stored, but its new generation is not recorded (%s)",
                            acc.name, e)
        log.info(done, acc.name)
        return Renewal(new, performed=True)

    def _until_landed(self, acc: Account, failed: str, landed: str, attempt: Callable[[], _T]) -> _T:
        """``attempt`` (a store write after a rotation), tried again until it lands or ``_LAND_FOR`` passes.

        The provider has spent the old refresh token: the new one is the only way back into the
        login, so a store that fails for a while (a full disk, another process holding the vault's
        lock past the lock timeout, a keyring that is busy) is waited out rather than dropping it.
        The account's refresh lock is held meanwhile, so no other process or thread of a local
        store presents the spent token (a team store's lock is a lease: see docs/design.md); a
        process asked to exit waits for this flight like any sent one (a second signal leaves, and
        the journal then says what happened).

        Raises:
            Exception: the store's last error, once ``_LAND_FOR`` has passed.
        """
        deadline = time.monotonic() + _LAND_FOR
        delay = 0.05
        failures = 0
        while True:
            try:
                result = attempt()
            except Exception as e:
                failures += 1
                if time.monotonic() + delay > deadline:
                    log.error("account %s: %s for %.0fs (%s); the provider has spent the old token, so the "  # noqa: TRY400 - one line
                              "login may need a new sign-in", acc.name, failed, _LAND_FOR, e)
                    raise
                if failures == 1:
                    log.warning("account %s: %s (%s); trying again for up to %.0fs, holding the account's refresh "
                                "lock meanwhile", acc.name, failed, e, _LAND_FOR)
                time.sleep(delay)
                delay = min(delay * 2, _LAND_RETRY_CAP)
                continue
            if failures:
                log.warning("account %s: %s after %d failed tries", acc.name, landed, failures)
            return result

    # -- a login linked to a tool's file ----------------------------------------------------

    def _from_linked(self, acc: Account, secret: Secret) -> tuple[tuple[Account, Secret] | None, FileLogin | None]:
        """Adopt the linked file's login if the tool renewed it since authpool last saw it.

        Returns ``((account, secret) adopted, or None; the file as read, or None if unreadable)``.
        A file that cannot be read never stops a refresh: it is logged, and the pool's own login
        is renewed as if unlinked.
        """
        link = acc.link
        assert link is not None  # noqa: S101 - callers check
        try:
            seen = read_login(link)
            newer = changed_since(link, secret)
        except PoolError as e:
            log.warning("account %s: %s", acc.name, e)
            return None, None
        if newer is None:
            return None, seen
        return self._adopt(acc, secret, newer), seen

    def _adopt(self, acc: Account, secret: Secret, login: FileLogin) -> tuple[Account, Secret]:
        adopted = secret.with_tokens(login.access_token, login.refresh_token, login.expires_at,
                                     {**login.extra, "link_seen": digest(login.refresh_token),
                                      "link_spent": spending(secret)})
        generation = acc.secret_generation + 1
        self.keeper.secrets.save(acc.id, adopted, generation)
        lifetime = time_left(login.expires_at)

        def adopt(rows: Rows) -> Account:
            a = rows.get(acc.id)
            transitions.adopted(a, generation=generation, expires_at=login.expires_at, lifetime=lifetime,
                                 signed_in=True)
            return a

        log.info("account %s: adopted the login %s renewed in %s", acc.name, acc.link.source if acc.link else "",
                 acc.link.path if acc.link else "")
        return self.keeper.store.update_accounts((acc.id,), adopt), adopted

    def _to_linked(self, acc: Account, new: Secret, seen: FileLogin | None) -> Secret | None:
        """Write the renewed login back into the tool's file; the tool's newer login if it wrote one meanwhile."""
        assert acc.link is not None  # noqa: S101 - callers check
        try:
            newer = write_login(acc.link, new, seen)
        except PoolError as e:
            log.warning("account %s: the renewed login could not be written back to %s (%s); until it is, "
                        "the tool there holds a spent refresh token", acc.name, acc.link.path, e)
            return None
        if newer is None:
            return None
        current = self.keeper.store.read().find(acc.id)
        return self._adopt(current, new, newer)[1]

    def _exchange(self, provider: Provider, acc: Account, secret: Secret, mode: RefreshMode,
                  flight: Flight | None) -> Renewal:
        """Renew the short-lived API token by presenting the login's token (it does not rotate).

        Nothing is journaled: the login's token stays as it is, so no answer can be lost that a
        later call could not get again.
        """
        mark_sending(flight, f"account {acc.name}")
        request = exchange_request(provider, secret.refresh_token or "")
        try:
            status, ctype, body = self._send(provider, request)
            tokens = parse_exchange_response(provider, status, ctype, body)
        except InvalidGrant as refused:
            why = str(refused)
            self._update(acc.id, lambda a: transitions.mark_needs_reauth(a, why))
            raise ReauthRequired(_reauth_message(acc, "the token exchange refused its login")) from None
        except RefreshError as e:
            self._failed(acc.id, e, token_refused=mode == "force", journal=None)
            raise
        new = secret.with_tokens(tokens.access_token, None, tokens.expires_at, tokens.extra)
        return self._store(acc, secret, new, tokens.issued_lifetime(), "exchanged the login of %s for a new API token")

    def _event(self, acc: Account, outcome: str, started: float, detail: str | None) -> None:
        """Tell the pool's event log about a token call (a keeper without one keeps no log)."""
        events = getattr(self.keeper, "events", None)
        if events is not None:
            events.emit(Event("refresh", acc.provider, acc.name, acc.id, outcome,
                              latency_ms=(time.monotonic() - started) * 1e3, detail=detail))

    def _failed(self, account_id: str, error: RefreshError, *, token_refused: bool,
                journal: RefreshJournal | None) -> None:
        def note(a: Account) -> None:
            transitions.refresh_failed(a, now=self.keeper.store.now(), backoff=refresh_backoff, reason=error.reason,
                                       error=str(error), token_refused=token_refused,
                                       unanswered=isinstance(error, RefreshUnanswered), journal=journal)

        self._update(account_id, note)

    def _journal(self, acc: Account, provider: Provider, interrupted: RefreshJournal | None) -> None:
        limit = provider.token_call_limit
        if getattr(self.keeper, "team", False):
            # A team store's refresh lock is a lease: another machine may take it while this one, cut
            # off from the database, still tries to store the rotation (_until_landed). The record
            # keeps the others off the stored (spent) token for as long.
            limit += _LAND_FOR
        record = new_record(acc.secret_generation, limit=limit, earlier=interrupted, now=self.keeper.store.now())
        self._update(acc.id, lambda a: transitions.begin_refresh(a, record))

    def _wait_for_interrupted(self, acc: Account, interrupted: RefreshJournal, mode: RefreshMode,
                              now: float) -> None:
        until = interrupted.settles_at()
        reason = "an interrupted refresh may still reach the provider"
        self._update(acc.id, lambda a: transitions.refresh_waits(
            a, until=until, reason=reason, token_refused=mode == "force", now=now))
        raise RefreshBackoff(
            f"renewing account {acc.name} waits until {time.strftime('%H:%M:%S', time.localtime(until))}: "
            f"{describe_interrupted(interrupted)}, and its request may still reach the provider", reason=reason)

    def _call(self, provider: Provider, refresh_token: str) -> TokenSet:
        """One token call, read for up to the provider's ``token_call_limit`` in all."""
        status, ctype, body = self._send(provider, refresh_request(provider, refresh_token))
        return parse_token_response(provider, status, ctype, body)

    def _send(self, provider: Provider, request: httpx2.Request) -> tuple[int, str, bytes]:
        """Send a token request; its status, content type and body, read within the call's time limit."""
        limit = provider.token_call_limit
        request.extensions = {**request.extensions, "timeout": call_timeouts(limit)}
        deadline = time.monotonic() + limit
        self.calls += 1
        try:
            response = self._http().send(request, stream=True)
            try:
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if time.monotonic() > deadline:  # an answer trickling in forever is no answer
                        raise httpx2.ReadTimeout("the token call's time limit passed", request=request)
            finally:
                response.close()
        except httpx2.TransportError as e:
            raise describe_transport_error(provider, e) from None
        return response.status_code, response.headers.get("content-type", ""), body

    def _http(self) -> httpx2.Client:
        with self._guard:
            if self._client is None:
                self._client = httpx2.Client(transport=self._transport, follow_redirects=False)
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

    def _update(self, account_id: str, change: Callable[[Account], None]) -> None:
        def apply(rows: Rows) -> None:
            change(rows.get(account_id))

        self.keeper.store.update_accounts((account_id,), apply)


def _file_holds(spent: Secret, seen: FileLogin | None) -> str:
    """What a linked file holds for a renewal about to spend ``spent``: the digest of its refresh
    token as read before the token call (``link_seen``), so that :func:`changed_since` never takes it
    for a renewal by the tool.

    Not the new token's: until the write-back lands (and it may never: a full disk, a file mounted
    into a container that cannot be replaced), the file holds the spent token, which adopted would
    be presented again and revoke the login. Once the write-back lands, the file holds the pool's own
    token, which is never taken for a renewal either; and a tool that later writes the spent token
    back from its memory is ignored for the same reason.
    """
    if seen is not None and seen.refresh_token:
        return digest(seen.refresh_token)
    return spent.extra.get("link_seen") or digest(spent.refresh_token)


def _expiring(provider: Provider, acc: Account, secret: Secret) -> bool:
    """Whether a token is inside its provider's mandatory refresh window."""
    if secret.expires_at is None:
        return False
    _, mandatory = provider.refresh_windows(acc.access_lifetime, linked=acc.link is not None)
    return secret.expires_at - time.time() <= mandatory


def _pending(provider: Provider, flight: Flight, wait: float | None) -> RefreshPending:
    return RefreshPending(
        f"the token endpoint of {provider.id} has not answered within {wait or 0:.1f}s; the refresh of "
        f"{flight.name} goes on in the background and its result will be stored",
        reason="slow token endpoint",
    )


def _reauth_message(acc: Account, why: str = "its refresh token was rejected", *,
                    interrupted: str | None = None) -> str:
    if interrupted is not None:
        why = f"{interrupted}, and the provider then revoked the login (the rotated refresh token was lost)"
    return f"account {acc.name} ({acc.id}) needs a new login: {why}; run `{relogin_command(acc)}`"

