"""The team store's secrets: one sealed row per account, in the same database as the metadata.

Every secret is sealed with AES-256-GCM under the team key, with the account id as associated
data (a sealed value moved to another account's row does not open). The database holds the
sealed bytes, the key's fingerprint and a check value that only the right key opens: a member
with the wrong key gets an error naming both fingerprints, never garbage, and ``pg_dump`` holds no
secret in plain text.

A refresh stores its result with :meth:`TeamSecrets.swap`: a compare-and-swap in one transaction
(the row locked, the stored secret compared with the one the refresh started from, and the row
updated only at the generation it was read at). A failed swap means someone else stored a newer
secret meanwhile; the refresh then uses theirs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

from psycopg.types.json import Jsonb

from authpool.accounts.model import Account
from authpool.accounts.secret import Secret
from authpool.errors import DuplicateLabel, SecretMissing, TeamKeyError
from authpool.storage.postgres.access import Cursor, StoreAccess
from authpool.storage.postgres.schema import CHANNEL, TEAM_BACKEND
from authpool.storage.sealing import Sealer, key_from_text
from authpool.storage.teamkey import TEAM_KEY_ENV, member_key

__all__ = ["SWAP_TIMEOUT", "TeamSecrets", "copy_in", "team_sealer"]

# A refreshed token must land: its store waits this long for a database that is down.
SWAP_TIMEOUT = 300.0


def team_sealer(store: StoreAccess, key_text: str | None = None, *, source: str | None = None,
                register: bool = True) -> Sealer:
    """The sealer for ``store``'s team key: ``key_text``, else ``AUTHPOOL_TEAM_KEY``, else the member's copy.

    The first key used with a store is registered (its check value and fingerprint); any other
    key is refused.

    Raises:
        TeamKeyError: no key, or not the store's key (both fingerprints named).
    """
    row = store.run(lambda cur: cur.execute(
        "SELECT salt, key_check, key_fingerprint FROM authpool_team WHERE id = 1").fetchone())
    if row is None:
        raise TeamKeyError(f"the team store {store.location} is not set up (no key table row)")
    salt, check, expected = bytes(row[0]), row[1], row[2]
    if key_text is None:
        key_text, source = os.environ.get(TEAM_KEY_ENV) or None, TEAM_KEY_ENV
        if key_text is None:
            key_text, source = member_key(store.location), "your credential store"
    if key_text is None:
        raise TeamKeyError(
            f"no team key for the team store {store.location}: set {TEAM_KEY_ENV}, or run `authpool team key import` "
            "with the key a member exports (`authpool team key export`); the first member creates it with "
            "`authpool team key create`")
    sealer = Sealer(key_from_text(key_text, salt))
    if check is None:
        if not register:
            return sealer
        store.run(lambda cur: cur.execute(
            "UPDATE authpool_team SET key_check = %s, key_fingerprint = %s WHERE id = 1 AND key_check IS NULL",
            (sealer.check_value(), sealer.fingerprint)))
        return team_sealer(store, key_text, source=source, register=False)
    if not sealer.opens(bytes(check)):
        raise TeamKeyError(
            f"the team key from {source} (fingerprint {sealer.fingerprint}) is not the key of the team store "
            f"{store.location} (fingerprint {expected}); get the team's key from a member "
            "(`authpool team key export`) and `authpool team key import` it")
    return sealer


class TeamSecrets:
    """A :class:`~authpool.storage.protocols.SecretBackend` of sealed rows in the team store."""

    def __init__(self, store: StoreAccess) -> None:
        self.store = store
        self.name = TEAM_BACKEND
        self._cache: dict[str, tuple[int, Secret]] = {}
        self._sealer: Sealer | None = None
        self._guard = threading.Lock()

    def sealer(self) -> Sealer:
        """The team key's sealer (found and checked once)."""
        with self._guard:
            if self._sealer is None:
                self._sealer = team_sealer(self.store)
            return self._sealer

    def load(self, account_id: str, generation: int) -> Secret:
        """The secret at ``generation`` (cached per generation; a newer generation is read fresh)."""
        cached = self.cached(account_id, generation)
        if cached is not None:
            return cached
        secret = self.load_fresh(account_id)
        self._cache[account_id] = (generation, secret)
        return secret

    def cached(self, account_id: str, generation: int) -> Secret | None:
        """The cached secret of ``generation`` (None on a miss); no round trip."""
        cached = self._cache.get(account_id)
        return cached[1] if cached is not None and cached[0] == generation else None

    def load_fresh(self, account_id: str) -> Secret:
        """Read and open the account's sealed secret.

        Raises:
            SecretMissing: no row.
            TeamKeyError: no key, or the wrong one.
        """
        sealer = self.sealer()
        row = self.store.run(lambda cur: cur.execute(
            "SELECT sealed FROM authpool_secrets WHERE account_id = %s", (account_id,)).fetchone())
        if row is None:
            raise _missing(account_id, self.store.location)
        return Secret.from_json(sealer.open(bytes(row[0]), account_id.encode()).decode())

    def save(self, account_id: str, secret: Secret, generation: int) -> None:
        """Seal and write ``secret`` (a new login or key: unconditional)."""
        sealer = self.sealer()
        sealed = sealer.seal(secret.to_json().encode(), account_id.encode())
        self.store.run(lambda cur: cur.execute(
            "INSERT INTO authpool_secrets (account_id, generation, sealed, key_fingerprint) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (account_id) DO UPDATE SET generation = excluded.generation, sealed = excluded.sealed, "
            "key_fingerprint = excluded.key_fingerprint", (account_id, generation, sealed, sealer.fingerprint)))
        self._cache[account_id] = (generation, secret)

    def save_many(self, items: Sequence[tuple[str, Secret, int]]) -> None:
        """Seal and write the secrets of new accounts in one transaction: all, or none."""
        items = list(items)
        if not items:
            return
        sealer = self.sealer()
        rows = [(account_id, generation, sealer.seal(secret.to_json().encode(), account_id.encode()),
                 sealer.fingerprint) for account_id, secret, generation in items]

        def body(cur: Cursor) -> None:
            cur.executemany(
                "INSERT INTO authpool_secrets (account_id, generation, sealed, key_fingerprint) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (account_id) DO UPDATE SET generation = excluded.generation, "
                "sealed = excluded.sealed, key_fingerprint = excluded.key_fingerprint", rows)

        self.store.transact(body)
        for account_id, secret, generation in items:
            self._cache[account_id] = (generation, secret)

    def swap(self, account_id: str, old: Secret, new: Secret, generation: int) -> Secret:
        """Store ``new`` only if the stored secret is still ``old``; returns what is stored now.

        A connection lost meanwhile is retried (and a COMMIT in doubt settled) for up to
        :data:`SWAP_TIMEOUT`: a refreshed token must land.
        """
        sealer = self.sealer()
        aad = account_id.encode()
        sealed = sealer.seal(new.to_json().encode(), aad)

        def body(cur: Cursor) -> Secret:
            row = cur.execute("SELECT generation, sealed FROM authpool_secrets WHERE account_id = %s FOR UPDATE",
                              (account_id,)).fetchone()
            if row is None:
                raise _missing(account_id, self.store.location)
            current = Secret.from_json(sealer.open(bytes(row[1]), aad).decode())
            if current.to_json() != old.to_json():
                return current
            cur.execute("UPDATE authpool_secrets SET sealed = %s, generation = %s, key_fingerprint = %s "
                        "WHERE account_id = %s AND generation = %s",
                        (sealed, max(int(row[0]) + 1, generation), sealer.fingerprint, account_id, row[0]))
            return new

        stored = self.store.transact(body, timeout=SWAP_TIMEOUT)
        self._cache[account_id] = (generation, stored)
        return stored

    def delete(self, account_id: str) -> None:
        """Remove the row (a missing one is not an error)."""
        self._cache.pop(account_id, None)
        self.store.run(lambda cur: cur.execute("DELETE FROM authpool_secrets WHERE account_id = %s", (account_id,)))

    def delete_many(self, account_ids: Sequence[str]) -> None:
        """Remove several rows in one statement (missing ones are not an error)."""
        ids = list(account_ids)
        if not ids:
            return
        for account_id in ids:
            self._cache.pop(account_id, None)
        self.store.run(lambda cur: cur.execute("DELETE FROM authpool_secrets WHERE account_id = ANY(%s)", (ids,)))

    def forget(self, account_id: str) -> None:
        """Drop the cached copy."""
        self._cache.pop(account_id, None)

    def fingerprint(self) -> str | None:
        """The fingerprint of the key the store's secrets are sealed with (None before the first)."""
        row = self.store.run(lambda cur: cur.execute(
            "SELECT key_fingerprint FROM authpool_team WHERE id = 1").fetchone())
        return str(row[0]) if row and row[0] else None


def _missing(account_id: str, where: str) -> SecretMissing:
    return SecretMissing(f"the secret of account {account_id} is missing from the team store {where}; log in again "
                         f"or re-add it (`authpool accounts remove {account_id}` then add it)")



def copy_in(secrets: TeamSecrets, accounts: list[Account], values: dict[str, Secret]) -> None:
    """Insert ``accounts`` and their sealed secrets into the team store in one transaction: all or nothing.

    Raises:
        DuplicateLabel: an account id or ``provider/label`` exists in the team store already (nothing written).
    """
    store = secrets.store
    sealer = secrets.sealer()
    sealed = {a.id: sealer.seal(values[a.id].to_json().encode(), a.id.encode()) for a in accounts}

    def body(cur: Cursor) -> None:
        cur.execute("SELECT 1 FROM authpool_pool WHERE id = 1 FOR UPDATE")
        taken = {(str(p), str(k)): str(i) for i, p, k in
                 cur.execute("SELECT id, provider, label_key FROM authpool_accounts")}
        clash = [a.name for a in accounts
                 if (a.provider, a.label.casefold()) in taken or a.id in taken.values()]
        if clash:
            raise DuplicateLabel(f"the team store {store.location} has these accounts already: {', '.join(clash)}; "
                                 "nothing was copied")
        for acc in accounts:
            cur.execute(
                "INSERT INTO authpool_accounts (id, provider, label_key, position, doc, changed) "
                "VALUES (%s, %s, %s, nextval('authpool_changes'), %s, nextval('authpool_changes'))",
                (acc.id, acc.provider, acc.label.casefold(), Jsonb(acc.model_dump(mode="json"))))
            cur.execute(
                "INSERT INTO authpool_secrets (account_id, generation, sealed, key_fingerprint) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (account_id) DO UPDATE SET generation = excluded.generation, "
                "sealed = excluded.sealed, key_fingerprint = excluded.key_fingerprint",
                (acc.id, acc.secret_generation, sealed[acc.id], sealer.fingerprint))
        cur.execute("UPDATE authpool_pool SET changed = nextval('authpool_changes') WHERE id = 1")
        cur.execute("SELECT pg_notify(%s, 'pool')", (CHANNEL,))

    store.transact(body)
