"""The pool: accounts (metadata in the store, secrets in the credential store) of one home.

:class:`Pool` is the library's front door. The CLI commands and MCP tools are thin shells over
its methods; everything here is usable without either.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from authpool.accounts import transitions
from authpool.accounts.model import (
    Account,
    AccountKind,
    LinkedFile,
    PoolFile,
    Rows,
    validate_label,
    validate_provider_id,
)
from authpool.accounts.secret import Secret, TokenSet, time_left
from authpool.auth.flight import guard_exit_signals
from authpool.auth.linked import digest, read_login
from authpool.errors import AccountNotFound, DuplicateLabel, InvalidInput, SecretError, SecretMissing, SharingRefused
from authpool.events import Event, EventKind, EventLog
from authpool.home import Home
from authpool.providers.config import Providers
from authpool.providers.provider import Provider
from authpool.rotation.roster import Rosters
from authpool.rotation.usage import UsageLog
from authpool.storage.lock import DEFAULT_TIMEOUT
from authpool.storage.protocols import HeldLock, MetadataStore, SecretBackend, TeamStore
from authpool.storage.secrets import SecretStore, canonical_backend
from authpool.storage.selection import open_store

if TYPE_CHECKING:
    import httpx2
    from keyring.backend import KeyringBackend

    from authpool.auth.refresh import Refresher
    from authpool.rotation.driver import PoolTransport

__all__ = ["POOL_SECRETS", "Pool"]

log = logging.getLogger("authpool")

#: Secrets of the pool itself rather than of an account, by name: ``gateway-key``, the key clients
#: of ``authpool gateway`` present. Each lives in the pool's credential store beside the accounts'
#: secrets, under an id no account can have (``pool:NAME``), and moves with them.
POOL_SECRETS = frozenset({"gateway-key"})


class Pool:
    """All accounts of one authpool home.

    Example:
        >>> pool = Pool.open()  # doctest: +SKIP
        >>> acc = pool.add_api_key("openai", "work", "sk-...")  # doctest: +SKIP
        >>> [a.name for a in pool.accounts()]  # doctest: +SKIP
        ['openai/work']
    """

    def __init__(self, home: Home, store: MetadataStore) -> None:
        self.home = home
        self.store = store
        # Each provider's accounts kept in order between requests; told what this process uses.
        self.rosters = Rosters()
        self.usage = UsageLog(store, on_change=self.rosters.touch)
        self._secrets: SecretBackend | None = None
        self._secrets_guard = threading.Lock()
        self._providers: tuple[tuple[int, int] | None, Providers] | None = None
        self._refresher: Refresher | None = None
        self._http: httpx2.HTTPTransport | None = None
        self._ahttp: weakref.WeakKeyDictionary[object, httpx2.AsyncHTTPTransport] = weakref.WeakKeyDictionary()
        self._lazy_guard = threading.Lock()
        self._owns_store = False  # opened by Pool.open(): closed with the pool (a team store's connections)
        self._events: EventLog | None = None

    @classmethod
    def open(cls, home: Path | None = None) -> Pool:
        """Open (creating if needed) the pool in ``home`` (default: ``AUTHPOOL_HOME`` or the user data dir).

        Its metadata lives in the store the home is configured for: a team's PostgreSQL when
        ``AUTHPOOL_STORE`` (or ``[store] url`` in ``config.toml``) names one, else the local pool file.
        """
        h = Home.open(home)
        pool = cls(h, open_store(h))
        pool._owns_store = True
        guard_exit_signals()  # SIGTERM or SIGHUP mid-refresh waits for the rotation to be stored
        return pool

    @property
    def team(self) -> bool:
        """Whether this pool is a team store shared by several machines (secrets sealed in the database)."""
        return isinstance(self.store, TeamStore)

    # -- secrets ---------------------------------------------------------------------------

    @property
    def secrets(self) -> SecretBackend:
        """The credential store recorded for this pool (chosen and recorded on first use); a team
        store's own (sealed rows in its database)."""
        if isinstance(self.store, TeamStore):
            with self._secrets_guard:
                if self._secrets is None:
                    self._secrets = self.store.team_secrets()
                return self._secrets
        with self._secrets_guard:
            recorded = self.store.read().secret_backend  # cached read: one fstat
            if self._secrets is None or (recorded is not None and self._secrets.name != canonical_backend(recorded)):
                # First use, or another process moved the secrets (`authpool secrets move`).
                self._secrets = SecretStore(self._backend())
            return self._secrets

    def _backend(self) -> KeyringBackend:
        from authpool.storage.keyrings import (  # keyring loads only when needed
            backend_name,
            choose_backend,
            load_backend,
        )

        recorded = self.store.read().secret_backend
        if recorded is not None:
            return load_backend(recorded)
        chosen, fallback = choose_backend()
        name = backend_name(chosen)

        def record(pool: PoolFile) -> str:
            if pool.secret_backend is None:
                pool.secret_backend = name
            return pool.secret_backend

        winner = self.store.update(record)
        if winner != name:  # another process created the pool first: use its choice
            return load_backend(winner)
        if fallback:
            log.warning(
                "no OS credential store is usable here; secrets are kept AES-256-GCM encrypted in %s "
                "(key: AUTHPOOL_VAULT_KEY or %s)",
                self.home.vault_file,
                self.home.vault_key_file,
            )
        else:
            log.info("secrets are kept in %s", name)
        return chosen

    def move_secrets(self, target: str) -> tuple[str, str, int]:
        """Move every account's secret, and the pool's own (:data:`POOL_SECRETS`), to another backend;
        returns ``(from, to, accounts moved)``.

        ``target`` is ``vault``, ``os`` or a keyring backend class name. Every account's secret
        lock is held for the move, so no refresh can run in between; the pool file records the
        new backend only after every secret is written there, and the old entries are deleted
        last. A crash leaves either the old backend recorded (with copies in the new one) or
        the new one recorded (with leftovers in the old one): never a missing secret.
        """
        from authpool.storage.keyrings import backend_name, resolve_target

        if self.team:
            raise InvalidInput("a team store keeps its secrets in its database, sealed under the team key; "
                               "`authpool store copy` moves a pool between stores")
        source = self.secrets
        destination = SecretStore(resolve_target(target))
        if destination.name == source.name:
            return source.name, destination.name, 0
        ids = sorted(a.id for a in self.accounts())
        names = sorted(POOL_SECRETS)
        locks = [self.secret_lock(i) for i in ids] + [self.pool_secret_lock(n) for n in names]
        held: list[HeldLock] = []
        try:
            for lock in locks:
                lock.acquire()
                held.append(lock)
            current = {a.id: a for a in self.store.read().accounts}
            for account_id in ids:
                if account_id in current:
                    destination.save(account_id, source.load_fresh(account_id), current[account_id].secret_generation)
            # The pool's own secrets go along: left behind, the gateway would mint a new key and
            # every client configured with the old one would be refused.
            entries = []
            for name in names:
                try:
                    destination.save(_pool_entry(name), source.load_fresh(_pool_entry(name)), 0)
                except SecretMissing:
                    continue
                entries.append(_pool_entry(name))

            def record(pool: PoolFile) -> None:
                if canonical_backend(pool.secret_backend or "") != source.name:
                    raise InvalidInput(f"the pool's backend changed to {pool.secret_backend} meanwhile; try again")
                pool.secret_backend = backend_name(destination.backend)

            self.store.update(record)
            with self._secrets_guard:
                self._secrets = destination
            for entry in [*ids, *entries]:
                try:
                    source.delete(entry)
                except SecretError:
                    log.warning("could not delete the old copy of secret %s from %s", entry, source.name)
        finally:
            for lock in reversed(held):
                lock.release()
        return source.name, destination.name, len(ids)

    def secret_lock(self, account_id: str) -> HeldLock:
        """The per-account lock under which its secret is refreshed or replaced."""
        return self.store.named_lock(f"account-{account_id}", DEFAULT_TIMEOUT)

    def pool_secret(self, name: str) -> str | None:
        """The pool's own secret ``name`` (one of :data:`POOL_SECRETS`), read fresh; None if never stored.

        Raises:
            InvalidInput: ``name`` is not one of the pool's secrets.
            SecretError: the credential store failed.
        """
        try:
            return self.secrets.load_fresh(_pool_entry(name)).credential
        except SecretMissing:
            return None

    def set_pool_secret(self, name: str, value: str) -> None:
        """Store the pool's own secret ``name``; take :meth:`pool_secret_lock` around a read-then-write.

        Raises:
            InvalidInput: an unknown name, or a value that is empty or contains whitespace.
            SecretError: the credential store failed.
        """
        self.secrets.save(_pool_entry(name), Secret.from_api_key(value), 0)

    def pool_secret_lock(self, name: str) -> HeldLock:
        """The lock under which the pool's own secret ``name`` is created or replaced (across processes)."""
        _pool_entry(name)
        return self.store.named_lock(f"pool-secret-{name}", DEFAULT_TIMEOUT)

    @property
    def events(self) -> EventLog:
        """This process's writer of the event log (``events.jsonl`` in the home, one per machine)."""
        with self._lazy_guard:
            if self._events is None:
                self._events = EventLog(self.home.events_file, lock_path=self.home.lock_file("events"))
            return self._events

    def _state_event(self, acc: Account, what: str, kind: EventKind = "state") -> Account:
        self.events.emit(Event(kind, acc.provider, acc.name, acc.id, what))
        return acc

    # -- providers and requests --------------------------------------------------------------

    @property
    def providers(self) -> Providers:
        """Built-in providers merged with ``config.toml`` (re-read when the file changes)."""
        path = self.home.config_file
        try:
            st = path.stat()
            sig: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            sig = None
        with self._lazy_guard:
            if self._providers is None or self._providers[0] != sig:
                self._providers = (sig, Providers.load(path if sig else None))
            return self._providers[1]

    def provider(self, provider_id: str) -> Provider:
        """The provider ``provider_id``.

        Raises:
            ProviderNotFound: unknown id.
        """
        return self.providers.get(provider_id)

    @property
    def refresher(self) -> Refresher:
        """This process's single-flight token refresher."""
        from authpool.auth.refresh import Refresher

        with self._lazy_guard:
            if self._refresher is None:
                self._refresher = Refresher(self)
            return self._refresher

    def http_transport(self) -> httpx2.HTTPTransport:
        """The shared connection pool for sync requests to providers."""
        import httpx2

        with self._lazy_guard:
            if self._http is None:
                self._http = httpx2.HTTPTransport()
            return self._http

    def async_http_transport(self) -> httpx2.AsyncHTTPTransport:
        """The shared connection pool for async requests (one per event loop)."""
        import asyncio

        import httpx2

        loop = asyncio.get_running_loop()
        with self._lazy_guard:
            transport = self._ahttp.get(loop)
            if transport is None:
                transport = self._ahttp[loop] = httpx2.AsyncHTTPTransport()
            return transport

    def transport(self, provider: str, **options: Any) -> PoolTransport:
        """An httpx2 transport (sync and async) that rotates over ``provider``'s accounts.

        Options: ``account`` (pin one account), ``namespace``, ``wait_budget`` (seconds to wait
        for a cooling pool), ``on_progress`` (called while waiting).
        """
        from authpool.rotation.driver import PoolTransport
        from authpool.rotation.result import RotationOptions

        return PoolTransport(self, self.provider(provider), self.refresher, options=RotationOptions(**options))

    def client(self, provider: str, **options: Any) -> httpx2.AsyncClient:
        """An ``httpx2.AsyncClient`` on the provider's base URL that rotates over its accounts."""
        import httpx2

        p = self.provider(provider)
        return httpx2.AsyncClient(transport=self.transport(provider, **options), base_url=p.base_url or "",
                                  timeout=httpx2.Timeout(p.timeout, connect=10.0))

    def sync_client(self, provider: str, **options: Any) -> httpx2.Client:
        """An ``httpx2.Client`` on the provider's base URL that rotates over its accounts."""
        import httpx2

        p = self.provider(provider)
        return httpx2.Client(transport=self.transport(provider, **options), base_url=p.base_url or "",
                             timeout=httpx2.Timeout(p.timeout, connect=10.0))

    def flush(self) -> None:
        """Write batched usage counters now (also done periodically and at exit)."""
        self.usage.flush()

    def close(self) -> None:
        """Flush counters and events and close connections."""
        self.usage.close()
        if self._events is not None:
            self._events.close()
        with self._lazy_guard:
            if self._http is not None:
                self._http.close()
                self._http = None
            if self._refresher is not None:
                self._refresher.close()
        from authpool.auth.flight import in_flight

        closer = getattr(self.store, "close", None)
        if self._owns_store and callable(closer) and not in_flight():  # a sent refresh still needs the store
            closer()

    # -- reading ---------------------------------------------------------------------------

    def accounts(self, provider: str | None = None) -> list[Account]:
        """Every account, or those of ``provider``, in pool order."""
        pool = self.store.read()
        accs = pool.for_provider(provider) if provider else list(pool.accounts)
        return sorted(accs, key=lambda a: (a.provider, a.namespace, a.order, a.created_at))

    def get(self, ref: str) -> Account:
        """The account with id or ``provider/label`` ``ref``.

        Raises:
            AccountNotFound: no such account.
        """
        return self.store.read().find(ref)

    def cached_secret(self, account: Account) -> Secret | None:
        """The account's secret if this process has it cached for its current generation."""
        store = self._secrets
        return store.cached(account.id, account.secret_generation) if store is not None else None

    def secret_of(self, account: Account) -> Secret:
        """The account's secret (cached by generation)."""
        return self.secrets.load(account.id, account.secret_generation)

    # -- adding ----------------------------------------------------------------------------

    def add_api_key(self, provider: str, label: str, key: str, *, namespace: str = "default") -> Account:
        """Add an API-key account.

        Raises:
            DuplicateLabel: ``provider/label`` exists.
            InvalidInput: bad provider id, label or key.
            ProviderNotFound: no built-in or configured provider has this id (nothing was added).
            SecretError: the credential store failed (nothing was added).
        """
        return self._add(provider, label, "api_key", Secret.from_api_key(key), namespace, None)

    def add_oauth(self, provider: str, label: str, tokens: TokenSet, *, namespace: str = "default") -> Account:
        """Add an OAuth account from a token set (as a login or an import produces)."""
        tokens = self._as_stored(provider, tokens)
        return self._add(provider, label, "oauth", tokens.to_secret(), namespace, tokens.expires_at,
                         tokens.issued_lifetime())

    def _add(
        self,
        provider: str,
        label: str,
        kind: AccountKind,
        secret: Secret,
        namespace: str,
        expires_at: float | None,
        lifetime: float | None = None,
    ) -> Account:
        provider = validate_provider_id(provider)
        # An account of an unknown provider could never serve a request.
        self.check_sharing(self.provider(provider), kind)
        label = validate_label(label)
        namespace = validate_label(namespace)
        self.store.read().check_label_free(provider, label)  # fail before touching the keyring
        account_id = self.store.read().new_id()
        # Secret first, metadata second: an account visible to other processes always has its
        # secret. If the metadata write fails, the orphan secret is removed again.
        self.secrets.save(account_id, secret, generation=1)

        def insert(rows: Rows) -> Account:
            # The store refuses a label or id taken meanwhile (checked above on a snapshot).
            return rows.add(Account(
                id=account_id,
                provider=provider,
                namespace=namespace,
                label=label,
                kind=kind,
                order=self.store.read().next_order(provider),
                access_expires_at=expires_at,
                access_lifetime=lifetime,
                secret_generation=1,
            ))

        try:
            added = self.store.update_accounts((), insert)
        except BaseException:
            self._delete_secret_quietly(account_id)
            raise
        return self._state_event(added, "added", "login" if kind == "oauth" else "state")

    def save_login(
        self, provider: str, label: str, tokens: TokenSet, *, namespace: str = "default"
    ) -> tuple[Account, bool]:
        """Store a fresh login: a new account, or new tokens for ``provider/label`` if it exists.

        Logging in again as an existing label replaces that account's tokens and clears its
        needs-reauth flag, keeping its id, order and history. Returns ``(account, created)``.
        """
        provider = validate_provider_id(provider)
        self.check_sharing(self.provider(provider), "oauth")
        label = validate_label(label)
        try:
            existing = self.get(f"{provider}/{label}")
        except AccountNotFound:
            return self.add_oauth(provider, label, tokens, namespace=namespace), True
        if existing.kind != "oauth":
            raise InvalidInput(f"{existing.name} is an API-key account; pick another label for the login")
        tokens = self._as_stored(provider, tokens)
        account = self.set_secret(existing.id, tokens.to_secret(), lifetime=tokens.issued_lifetime())
        return self._state_event(account, "logged-in", "login"), False

    def _as_stored(self, provider: str, tokens: TokenSet) -> TokenSet:
        """A login as the pool keeps it. Where the provider's API wants an exchanged token (GitHub
        Copilot), the login's token is the long-lived one the exchange is renewed with: it goes in
        the refresh slot, and the first request exchanges it. A token set that has a refresh slot
        already (opencode keeps the GitHub token there, the Copilot token as access) is kept."""
        if self.provider(provider).token_exchange is None or tokens.refresh_token:
            return tokens
        return TokenSet(access_token="", refresh_token=tokens.access_token, expires_at=0.0, extra=dict(tokens.extra))

    def find_by_secret(self, provider: str, match: Callable[[Secret], bool]) -> Account | None:
        """The first account of ``provider`` whose secret satisfies ``match`` (reads each secret)."""
        for acc in self.accounts(provider):
            try:
                if match(self.secret_of(acc)):
                    return acc
            except SecretError:
                continue
        return None

    def set_secret(self, ref: str, secret: Secret, *, lifetime: float | None = None) -> Account:
        """Replace an account's secret and bump its generation (under the account's lock).

        ``lifetime`` is the access token's issued lifetime, if known (else the time it has left).
        """
        account_id = self.get(ref).id
        if self.team:
            self.check_sharing(self.provider(self.get(account_id).provider), secret.kind)
        with self.secret_lock(account_id):
            current = self.get(account_id)
            generation = current.secret_generation + 1
            self.secrets.save(account_id, secret, generation)

            def bump(rows: Rows) -> Account:
                acc = rows.get(account_id)
                transitions.new_secret(acc, oauth=secret.kind == "oauth", expires_at=secret.expires_at,
                                       lifetime=lifetime if lifetime is not None else time_left(secret.expires_at))
                return acc

            return self.store.update_accounts((account_id,), bump)

    def check_sharing(self, provider: Provider, kind: AccountKind) -> None:
        """Refuse an OAuth login of a provider whose terms keep logins personal, if this is a team store.

        Raises:
            SharingRefused: ``provider.shared_logins`` is false (API keys are always allowed).
        """
        if kind == "oauth" and self.team and not provider.shared_logins:
            raise SharingRefused(provider.sharing_refusal())

    # -- linked logins ---------------------------------------------------------------------

    def link(self, ref: str, link: LinkedFile) -> Account:
        """Keep an OAuth account in step with an official tool's credential file (see ``auth.linked``).

        Whichever copy is newer now wins: the tool's (by a later expiry) is adopted at once;
        authpool's is written back into the file on its next renewal.

        Raises:
            InvalidInput: the account is not an OAuth login, the file holds no login authpool reads,
                or the store is a team's (a file lives on one machine; the others could not keep it).
        """
        if self.team:
            raise InvalidInput("a login is linked to a file on one machine, so a team store keeps no linked "
                               "logins; link it in a local store (AUTHPOOL_STORE unset)")
        account_id = self.get(ref).id
        with self.secret_lock(account_id):
            current = self.get(account_id)
            if current.kind != "oauth":
                raise InvalidInput(f"{current.name} is an API-key account; only OAuth logins are linked")
            login = read_login(link)
            secret = self.secrets.load_fresh(account_id)
            if login.refresh_token != secret.refresh_token and (login.expires_at or 0) > (secret.expires_at or 0):
                secret = secret.with_tokens(login.access_token, login.refresh_token, login.expires_at, login.extra)
            secret = secret.with_tokens(secret.access_token or "", None, secret.expires_at,
                                        {"link_seen": digest(login.refresh_token)})
            generation = current.secret_generation + 1
            self.secrets.save(account_id, secret, generation)

            def apply(rows: Rows) -> Account:
                acc = rows.get(account_id)
                transitions.new_secret(acc, oauth=True, expires_at=secret.expires_at,
                                       lifetime=time_left(secret.expires_at))
                transitions.linked(acc, link)
                return acc

            return self.store.update_accounts((account_id,), apply)

    def unlink(self, ref: str) -> Account:
        """Stop keeping the account in step with a tool's file; both keep the login they have."""
        return self._state_event(self._change(ref, lambda acc: transitions.linked(acc, None)), "unlinked")

    # -- changing --------------------------------------------------------------------------

    def remove(self, ref: str) -> Account:
        """Remove an account and its secret."""
        account_id = self.get(ref).id
        with self.secret_lock(account_id):

            removed = self.store.update_accounts((account_id,), lambda rows: rows.remove(account_id))
            # Metadata first: once gone, no process will start using the account, so deleting
            # the secret cannot pull it from under a request that just picked it.
            self.secrets.delete(account_id)
        return self._state_event(removed, "removed")

    def set_enabled(self, ref: str, enabled: bool) -> Account:
        """Enable or disable an account (disabled accounts are never picked)."""
        return self._state_event(self._change(ref, lambda acc: transitions.set_enabled(acc, enabled)),
                                 "enabled" if enabled else "disabled")

    def reset(self, ref: str) -> Account:
        """Clear cooldowns (and their probation), backoffs (of requests and of a failing token endpoint),
        needs-reauth and the last error."""
        return self._state_event(self._change(ref, transitions.reset), "reset")

    def _change(self, ref: str, change: Callable[[Account], None]) -> Account:
        account_id = self.get(ref).id

        def apply(rows: Rows) -> Account:
            acc = rows.get(account_id)
            change(acc)
            return acc

        return self.store.update_accounts((account_id,), apply)

    def _delete_secret_quietly(self, account_id: str) -> None:
        try:
            self.secrets.delete(account_id)
        except SecretError:
            log.warning("could not remove the secret of unfinished account %s", account_id)

    # -- adding many ----------------------------------------------------------------------

    def add_api_keys(self, provider: str, entries: Iterable[tuple[str, str]], *,
                     namespace: str = "default") -> list[Account]:
        """Add many API-key accounts at once: all of them, or none.

        ``entries`` are ``(label, key)`` pairs. Everything is checked before anything is stored;
        then every secret is saved at once (:meth:`SecretBackend.save_many`: the vault rewrites its
        file once, the team store commits one transaction), then one row-level metadata update
        inserts every account, in the order given (one transaction for the lot, whatever the
        pool's size). If that update fails, the saved secrets are removed again. An error about
        one entry names its position (:attr:`InvalidInput.entry`, from 1) and never repeats its
        label or key.

        Example:
            >>> pool.add_api_keys("openai", [("team-a", "sk-..."), ("team-b", "sk-...")])  # doctest: +SKIP

        Raises:
            DuplicateLabel: two entries share a label, or one is taken in the provider already.
            InvalidInput: a bad provider id or namespace, or an entry with a bad label or key.
            ProviderNotFound: no built-in or configured provider has this id.
            SecretError: the credential store failed (nothing was added).
        """
        from authpool.accounts.batch import KeyBatch

        provider = validate_provider_id(provider)
        self.check_sharing(self.provider(provider), "api_key")  # API keys are always allowed; kept for symmetry
        namespace = validate_label(namespace)
        batch = KeyBatch.check(entries)
        if not batch:
            return []
        snapshot = self.store.read()
        batch.refuse_taken(provider, snapshot)  # before touching the credential store
        ids = batch.new_ids(snapshot)
        # Secrets first, metadata second (as `_add`): an account visible to other processes always has its secret.
        self.secrets.save_many([(account_id, secret, 1) for account_id, secret in zip(ids, batch.secrets, strict=True)])

        def insert(rows: Rows) -> list[Account]:
            # The store refuses a label or id taken meanwhile (checked above on a snapshot). The
            # order follows the freshest snapshot to be had without a round trip.
            order = (self.store.peek() or snapshot).next_order(provider)
            return [rows.add(Account(id=account_id, provider=provider, namespace=namespace, label=label,
                                     kind="api_key", order=order + i, secret_generation=1))
                    for i, (account_id, label) in enumerate(zip(ids, batch.labels, strict=True))]

        try:
            added = self.store.update_accounts((), insert)
        except BaseException as e:
            try:
                self.secrets.delete_many(ids)
            except SecretError:
                log.warning("could not remove the secrets of %d unfinished accounts", len(ids))
            if isinstance(e, DuplicateLabel):
                # Another process took one of the labels meanwhile. The store's message names the
                # label; name the entry instead, as the check above does.
                try:
                    batch.refuse_taken(provider, self.store.read())
                except DuplicateLabel as named:
                    raise named from None
                raise DuplicateLabel("a label of the batch was taken meanwhile; nothing was added") from None
            raise
        for acc in added:
            self._state_event(acc, "added")
        return added


def _pool_entry(name: str) -> str:
    """The credential-store id of the pool's own secret ``name`` (account ids never contain ':')."""
    if name not in POOL_SECRETS:
        raise InvalidInput(f"unknown pool secret {name!r}; known: {', '.join(sorted(POOL_SECRETS))}")
    return f"pool:{name}"
