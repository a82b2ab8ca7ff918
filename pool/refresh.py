"""Refreshing OAuth tokens without ever clobbering another process's rotation.

Providers rotate refresh tokens: each refresh returns a new one and the old one dies, and a
reused old one is treated as theft (the whole login is revoked). Two processes refreshing the
same account at once, or one writing back a token set it read before another's refresh, log the
user out. So, per account:

1. coroutines of one process queue on an in-process lock (async callers), threads and other
   processes on the account's file lock;
2. holding it, re-read the metadata: if ``secret_generation`` moved since the caller saw it,
   someone else refreshed — use their token, no network call;
3. otherwise call the token endpoint, store the new secret (new refresh token included) in the
   credential store, then bump the generation in the pool file, then release;
4. on ``invalid_grant`` re-read the stored refresh token: if it changed, retry once with it;
   only if it did not, mark the account needs-reauth.

A failed refresh (endpoint down, garbage answer, timeout) changes no stored token.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Literal

import anyio
import httpx2

from .errors import LockTimeout, ReauthRequired, RefreshError
from .lock import Lock
from .models import PoolFile
from .oauth import TOKEN_TIMEOUT, InvalidGrant, describe_transport_error, parse_token_response, refresh_request
from .pool import Pool
from .providers import Provider
from .secret import Secret, TokenSet

__all__ = ["Contended", "RefreshMode", "Refresher", "Renewal"]

log = logging.getLogger("authpool")

RefreshMode = Literal["force", "mandatory", "advisory"]


class Contended(Exception):
    """An advisory refresh found the account's lock taken; keep using the current token."""


@dataclass(frozen=True)
class Renewal:
    """A secret fresh enough to use, and whether this call renewed it at the token endpoint.

    ``performed`` is False when another process (or an earlier caller) had already renewed it:
    a 401 with a token someone else minted proves nothing about the login, while a 401 with the
    token this call just minted means the login itself is refused.
    """

    secret: Secret
    performed: bool


class Refresher:
    """Single-flight token refresh for the accounts of one pool."""

    def __init__(self, pool: Pool, transport: httpx2.BaseTransport | None = None) -> None:
        self.pool = pool
        self._transport = transport
        self._client: httpx2.Client | None = None
        self._client_guard = threading.Lock()
        # One anyio.Lock per account per event loop: coroutines wait here, not in worker threads.
        self._async_locks: weakref.WeakKeyDictionary[object, dict[str, anyio.Lock]] = weakref.WeakKeyDictionary()
        self.calls = 0  # token endpoint calls made by this process (for diagnostics and tests)

    def renew(self, provider: Provider, account_id: str, seen_generation: int, mode: RefreshMode) -> Renewal:
        """Return a fresh secret for the account (refreshing only if nobody else just did).

        Args:
            provider: the account's provider.
            account_id: the account.
            seen_generation: the ``secret_generation`` the caller's token came from.
            mode: ``force`` (after a 401) or ``mandatory`` (token about to expire) wait for the
                lock; ``advisory`` (expiry approaching) gives up at once if it is taken.

        Raises:
            Contended: advisory mode and another thread or process is refreshing.
            ReauthRequired: the login is dead (the account is marked needs-reauth).
            RefreshError: the token endpoint failed, or another process held the account's
                refresh lock past the lock timeout; stored tokens are unchanged.
        """
        lock = self.pool.secret_lock(account_id)
        if mode == "advisory":
            lock = Lock(lock.path, timeout=0.0)
        try:
            lock.acquire()
        except LockTimeout as e:
            if mode == "advisory":
                raise Contended from None
            # Another process held this account's refresh for longer than the lock timeout (a
            # token endpoint that hangs holds it up to TOKEN_TIMEOUT). For this request that is a
            # failed refresh of one account, so rotation moves on, not a pool-wide failure.
            raise RefreshError(f"gave up waiting for another process to renew account {account_id}: {e}") from e
        try:
            return self._refresh_locked(provider, account_id, seen_generation, mode)
        finally:
            lock.release()

    async def arenew(self, provider: Provider, account_id: str, seen_generation: int, mode: RefreshMode) -> Renewal:
        """:meth:`renew` for async callers: coroutines queue in memory, the work runs in a thread."""
        async with self._async_lock(account_id):
            return await anyio.to_thread.run_sync(self.renew, provider, account_id, seen_generation, mode)

    def _async_lock(self, account_id: str) -> anyio.Lock:
        import asyncio

        loop = asyncio.get_running_loop()
        locks = self._async_locks.setdefault(loop, {})
        lock = locks.get(account_id)
        if lock is None:
            lock = locks[account_id] = anyio.Lock()
        return lock

    def _refresh_locked(self, provider: Provider, account_id: str, seen_generation: int, mode: RefreshMode) -> Renewal:
        acc = self.pool.get(account_id)
        secrets = self.pool.secrets
        if acc.secret_generation != seen_generation:
            log.debug("account %s was refreshed by another process; using its token", acc.name)
            return Renewal(secrets.load(acc.id, acc.secret_generation), performed=False)
        if acc.needs_reauth:
            raise ReauthRequired(_reauth_message(acc.name, acc.id))
        secret = secrets.load_fresh(acc.id)
        # The caller saw an expiring token; if the stored one is fresh, someone renewed it.
        expires_at = secret.expires_at
        if mode != "force" and expires_at is not None and expires_at - time.time() > provider.refresh_advisory:
            return Renewal(secret, performed=False)
        if not secret.refresh_token:
            self._mark_reauth(acc.id, "no refresh token stored")
            raise ReauthRequired(_reauth_message(acc.name, acc.id, "no refresh token is stored"))
        try:
            tokens = self._call(provider, secret.refresh_token)
        except InvalidGrant:
            current = secrets.load_fresh(acc.id)
            if current.refresh_token and current.refresh_token != secret.refresh_token:
                # Written by a process outside our lock discipline: the new token may still be good.
                secret = current
                try:
                    tokens = self._call(provider, current.refresh_token)
                except InvalidGrant:
                    self._mark_reauth(acc.id, "refresh token rejected (invalid_grant)")
                    raise ReauthRequired(_reauth_message(acc.name, acc.id)) from None
            else:
                self._mark_reauth(acc.id, "refresh token rejected (invalid_grant)")
                raise ReauthRequired(_reauth_message(acc.name, acc.id)) from None
        except RefreshError as e:
            self._record_failure(acc.id, str(e))
            raise
        new = secret.with_tokens(tokens.access_token, tokens.refresh_token, tokens.expires_at)
        generation = acc.secret_generation + 1
        secrets.save(acc.id, new, generation)  # the new refresh token is stored before anyone can use the old

        def bump(pool: PoolFile) -> None:
            a = pool.find(account_id)
            a.secret_generation = max(a.secret_generation + 1, generation)
            a.access_expires_at = new.expires_at
            a.needs_reauth = False
            a.last_error = None
            a.counters.refreshes += 1

        self.pool.store.update(bump)
        log.info("refreshed the token of %s", acc.name)
        return Renewal(new, performed=True)

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
        with self._client_guard:
            if self._client is None:
                self._client = httpx2.Client(transport=self._transport, timeout=TOKEN_TIMEOUT,
                                             follow_redirects=False)
            return self._client

    def close(self) -> None:
        with self._client_guard:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _mark_reauth(self, account_id: str, why: str) -> None:
        def mark(pool: PoolFile) -> None:
            a = pool.find(account_id)
            a.needs_reauth = True
            a.last_error = why
            a.counters.failures += 1

        self.pool.store.update(mark)

    def _record_failure(self, account_id: str, why: str) -> None:
        def note(pool: PoolFile) -> None:
            a = pool.find(account_id)
            a.last_error = why
            a.counters.failures += 1

        self.pool.store.update(note)


def _reauth_message(name: str, account_id: str, why: str = "its refresh token was rejected") -> str:
    provider = name.split("/", 1)[0]
    label = name.split("/", 1)[1] if "/" in name else name
    return (f"account {name} ({account_id}) needs a new login: {why}; run "
            f"`authpool login {provider} --label {label}`")
