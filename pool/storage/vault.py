"""An encrypted-file keyring backend, for machines with no usable OS credential store.

Headless Linux, containers and CI have no Secret Service, and keyring then falls back to its
``fail`` backend. The alternatives on PyPI (keyrings.alt's ``EncryptedKeyring``, keyrings.cryptfile)
ask for a password with ``getpass`` — on stdin, which for an MCP stdio server is the JSON-RPC
transport. This backend never prompts.

Each entry is sealed with AES-256-GCM under a 32-byte key, with ``service`` and ``username`` as
associated data (a ciphertext moved to another entry fails to open). The key comes from
``AUTHPOOL_VAULT_KEY`` (base64 of 32 bytes, or any passphrase, stretched with scrypt), or from a
generated ``vault.key`` file (0600) beside the vault. A check value in the vault detects a wrong
key with a clear error instead of garbage.

The entries are rows of ``vault.db``, an SQLite database (0600, write-ahead log, flushed to the
disk before a write returns), written under the vault's lock in one transaction each: a secret
added to a vault of 10,000 costs what it costs in a vault of 10. (Until 0.2 the vault was
``vault.json``, rewritten whole on every change: 40 ms at 10,000 entries, growing with them. Such a
file is read until the first write, which builds ``vault.db`` from it, puts it in place, and only
then copies the file to ``vault.json.moved`` and leaves a marker in ``vault.json`` that an older
authpool still running refuses with "upgrade authpool": a reader never finds a secret missing.)

The security of the key-file mode is that of the file's permissions, like an SSH key without a
passphrase: it protects against other users and against secrets ending up in backups of the
pool file, not against code running as the same user.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError

from authpool.errors import InvalidInput, SecretBackendLocked, SecretError
from authpool.home import Home, resolve_home
from authpool.storage.atomicfile import write_atomic
from authpool.storage.lock import Lock
from authpool.storage.sealing import decode_key, encode_key, fingerprint
from authpool.storage.sqlite import create_aside, open_existing

__all__ = ["VaultKeyring"]

_VERSION = 1
_CHECK = b"authpool-vault-check"
_SCRYPT = {"n": 2**15, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024}


class VaultKeyring(KeyringBackend):
    """AES-256-GCM encrypted entries in ``<home>/vault.db``."""

    # Viable everywhere (it is just a file), but below 1 so keyring never "recommends" it over a
    # real OS store; authpool selects it explicitly (see pool.backend).
    priority = 0.5

    def __init__(self, home: Path | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._home = Home.open(home or resolve_home())
        self.path = self._home.vault_file
        self.legacy_path = self._home.legacy_vault_file
        self._lock = Lock(self._home.lock_file("vault"))
        self._conn: sqlite3.Connection | None = None
        self._kept_header: dict[str, Any] | None = None
        self._legacy_cache: tuple[tuple[int, int, int], dict[str, Any] | None] | None = None
        self._key: bytes | None = None
        self._guard = threading.RLock()
        self._pending = threading.local()  # this thread's batch: its open transaction

    # -- keyring API -----------------------------------------------------------------------

    def get_password(self, service: str, username: str) -> str | None:
        entry = _entry(service, username)
        batch = self._batch()
        if batch is not None:
            return self._open_sealed(batch.header, batch.lookup(entry), service, username)
        with self._guard:
            conn, legacy = self._source()
            if conn is not None:
                sealed = self._select(conn, entry)
                header = self._header(conn)
            else:
                sealed, header = legacy["entries"].get(entry), legacy
        return self._open_sealed(header, sealed, service, username)

    def set_password(self, service: str, username: str, password: str) -> None:
        def change(batch: _Batch) -> None:
            batch.put(_entry(service, username), self._seal(batch.header, password, service, username))

        self._update(change)

    def delete_password(self, service: str, username: str) -> None:
        def change(batch: _Batch) -> None:
            if not batch.delete(_entry(service, username)):
                raise PasswordDeleteError("no such entry")

        self._update(change)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Write every change this thread makes inside the block at once, when it ends: all, or none.

        The vault's lock is held meanwhile and the changes go into one transaction, so 1,000 new
        secrets cost one commit instead of 1,000. If the block raises, nothing is written. Other
        threads and processes see none of the changes until the block ends.
        """
        if self._batch() is not None:  # nested: the outer batch writes
            yield
            return
        with self._lock:
            conn = self._open_connection(create=True)  # its own: other threads must not see the batch
            assert conn is not None  # noqa: S101 - create=True
            try:
                batch = self._begin(conn)
                self._pending.batch = batch
                try:
                    yield
                finally:
                    self._pending.batch = None
                batch.commit()
            finally:
                conn.close()

    def _batch(self) -> _Batch | None:
        batch: _Batch | None = getattr(self._pending, "batch", None)
        return batch

    # -- the key, for `authpool vault key init | export | import` ------------------------------

    def init_key(self) -> tuple[str, bool]:
        """Make sure a key exists (the key file, unless AUTHPOOL_VAULT_KEY gives it); ``(fingerprint, created)``."""
        if os.environ.get("AUTHPOOL_VAULT_KEY"):
            return fingerprint(self._key_for(self._read())), False
        created = not self._key_file.exists()
        return fingerprint(self._load_or_create_key_file()), created

    def key_fingerprint(self) -> str:
        """The fingerprint of the key this process uses for the vault."""
        return fingerprint(self._key_for(self._read()))

    def export_key(self) -> str:
        """The vault key as base64 text (for a password manager; it unlocks every secret in the vault).

        Raises:
            InvalidInput: the key is a passphrase in AUTHPOOL_VAULT_KEY: that value is the key to keep.
        """
        if _passphrase_env() is not None:
            raise InvalidInput("the vault's key is the passphrase in AUTHPOOL_VAULT_KEY: keep that value")
        key = self._key_for(self._read())
        self._verify_key(self._read())
        return encode_key(key)

    def import_key(self, text: str) -> str:
        """Make ``text`` (base64 of 32 bytes) this home's vault key file; returns its fingerprint.

        Raises:
            InvalidInput: not a key.
            SecretBackendLocked: the vault exists and this key does not open it (nothing changed).
        """
        key = decode_key(text)
        if key is None:
            raise InvalidInput("a vault key is base64 of 32 bytes (as `authpool vault key export` prints it)")
        doc = self._read()
        previous = self._key
        self._key = key
        try:
            self._verify_key(doc, tried="the imported key")
        finally:
            self._key = previous
        write_atomic(self._key_file, encode_key(key).encode() + b"\n")
        self._key = None if not os.environ.get("AUTHPOOL_VAULT_KEY") else self._key
        return fingerprint(key)

    # -- the database ---------------------------------------------------------------------

    def _source(self) -> tuple[sqlite3.Connection | None, dict[str, Any]]:
        """Where the entries are: ``vault.db``, else an older authpool's ``vault.json`` (read until
        the first write moves it in), else nowhere yet (an empty vault). Call under the guard."""
        conn = self._connection(create=False)
        if conn is not None:
            return conn, {}
        legacy = self._legacy()
        if legacy is not None:
            return None, legacy
        # vault.json was moved in just now: vault.db is in place before vault.json leaves.
        conn = self._connection(create=False)
        return conn, {"version": _VERSION, "entries": {}}

    def _read(self) -> dict[str, Any]:
        """The vault's key material (salt, check): what ``_key_for`` and ``_verify_key`` read."""
        with self._guard:
            conn, legacy = self._source()
            return self._header(conn) if conn is not None else legacy

    def _connection(self, *, create: bool) -> sqlite3.Connection | None:
        """This process's connection (under the guard); None if there is no ``vault.db`` yet."""
        if self._conn is None:
            self._conn = self._open_connection(create=create)
        return self._conn

    def _open_connection(self, *, create: bool) -> sqlite3.Connection | None:
        if self.path.is_symlink():
            raise SecretError(f"the vault {self.path} is a symbolic link; authpool refuses to follow it")
        if not self.path.exists():
            if not create:
                return None
            self._create()
        try:
            conn = open_existing(self.path, self._lock.timeout)
        except sqlite3.Error as e:
            raise SecretError(f"cannot open the vault {self.path}: {e}") from None
        try:
            conn.execute("PRAGMA synchronous=FULL")  # a secret is on disk when set_password returns
            layout = self._meta(conn, "layout")
        except sqlite3.DatabaseError:
            layout = None
        except BaseException:
            conn.close()
            raise
        if layout is None or not layout.isdigit():
            conn.close()
            raise SecretError(f"the vault {self.path} is damaged and cannot be read")
        if int(layout) > _LAYOUT:
            conn.close()
            raise SecretError(f"the vault {self.path} was written by a newer authpool; upgrade authpool")
        return conn

    def _create(self) -> None:
        """Make ``vault.db`` (under the vault lock) from ``vault.json`` if there is one: built aside,
        renamed into place whole; only then is ``vault.json`` copied to ``vault.json.moved`` and
        replaced by a marker (see :data:`_MOVED`)."""
        try:
            raw: bytes | None = self.legacy_path.read_bytes()  # afresh, under the lock: not the cached read
        except FileNotFoundError:
            raw = None
        legacy = self._parse(raw) if raw is not None else None

        def fill(conn: sqlite3.Connection) -> None:
            header = legacy or {}
            meta = {"layout": str(_LAYOUT), "changes": "0"}
            meta.update({k: str(header[k]) for k in ("salt", "check") if isinstance(header.get(k), str)})
            conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
            conn.executemany("INSERT INTO entries VALUES (?, ?)",
                             [(k, v) for k, v in (legacy or {"entries": {}})["entries"].items()
                              if isinstance(k, str) and isinstance(v, str)])

        try:
            create_aside(self.path, _TABLES, fill)
        except sqlite3.Error as e:
            raise SecretError(f"cannot create the vault {self.path}: {e}") from None
        if legacy is not None and raw is not None:
            write_atomic(self.legacy_path.with_name(self.legacy_path.name + ".moved"), raw)
            write_atomic(self.legacy_path, _MOVED)

    def _legacy(self) -> dict[str, Any] | None:
        """An older authpool's ``vault.json``, parsed (cached by the file's identity); None if absent."""
        try:
            st = os.stat(self.legacy_path)
            sig = (st.st_ino, st.st_mtime_ns, st.st_size)
            if self._legacy_cache is not None and self._legacy_cache[0] == sig:
                return self._legacy_cache[1]
            data = self.legacy_path.read_bytes()
        except FileNotFoundError:
            return None
        doc = self._parse(data)
        self._legacy_cache = (sig, doc)
        return doc

    def _parse(self, data: bytes) -> dict[str, Any] | None:
        """``vault.json`` parsed; None for the marker a move into ``vault.db`` leaves."""
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and doc.get("moved_to") == "vault.db":
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("entries"), dict):
            raise SecretError(f"the vault {self.legacy_path} is damaged and cannot be read")
        if doc.get("version", 0) > _VERSION:
            raise SecretError(f"the vault {self.legacy_path} was written by a newer authpool; upgrade authpool")
        return doc

    def _header(self, conn: sqlite3.Connection) -> dict[str, Any]:
        """The key material (salt, check). Written once, with the vault's first secret, and never
        changed after: kept once it has its check."""
        if self._kept_header is not None:
            return dict(self._kept_header)
        try:
            header = {str(k): str(v) for k, v in
                      conn.execute("SELECT key, value FROM meta WHERE key IN ('salt', 'check')")}
        except sqlite3.DatabaseError as e:
            raise SecretError(f"cannot read the vault {self.path}: {e}") from None
        if "check" in header and not conn.in_transaction:
            self._kept_header = dict(header)
        return header

    @staticmethod
    def _meta(conn: sqlite3.Connection, key: str) -> str | None:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError:
            return None
        return str(row[0]) if row else None

    def _select(self, conn: sqlite3.Connection, entry: str) -> str | None:
        try:
            row = conn.execute("SELECT sealed FROM entries WHERE entry = ?", (entry,)).fetchone()
        except sqlite3.DatabaseError as e:
            raise SecretError(f"cannot read the vault {self.path}: {e}") from None
        return str(row[0]) if row else None

    def _update(self, change: Callable[[_Batch], None]) -> None:
        batch = self._batch()
        if batch is not None:  # inside batch(): written when the batch ends
            change(batch)
            return
        with self._lock, self._guard:
            conn = self._connection(create=True)
            assert conn is not None  # noqa: S101 - create=True
            batch = self._begin(conn)
            try:
                change(batch)
            except BaseException:
                batch.rollback()  # never leave the shared connection inside a transaction (it holds the write lock)
                raise
            batch.commit()

    def _begin(self, conn: sqlite3.Connection) -> _Batch:
        """A transaction on a fresh read, with the key check made or verified (under the lock)."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise SecretError(f"cannot write the vault {self.path}: {e}; nothing was changed") from None
        batch = _Batch(self, conn, self._header(conn))
        try:
            if "check" not in batch.header:
                if "salt" not in batch.header and _passphrase_env() is not None:
                    batch.header["salt"] = base64.b64encode(os.urandom(16)).decode()
                batch.header["check"] = self._new_check(batch.header)
                batch.meta.update({k: batch.header[k] for k in ("salt", "check") if k in batch.header})
            else:
                self._verify_key(batch.header)
        except BaseException:
            batch.rollback()
            raise
        return batch

    # -- crypto ----------------------------------------------------------------------------

    def _aead(self, doc: dict[str, Any]) -> Any:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        return AESGCM(self._key_for(doc))

    def _seal(self, doc: dict[str, Any], text: str, service: str, username: str) -> str:
        nonce = os.urandom(12)
        ct = self._aead(doc).encrypt(nonce, text.encode(), _entry(service, username).encode())
        return base64.b64encode(nonce + ct).decode()

    def _open_sealed(self, doc: dict[str, Any], sealed: str | None, service: str, username: str) -> str | None:
        from cryptography.exceptions import InvalidTag

        if sealed is None:
            return None
        self._verify_key(doc)
        try:
            raw = base64.b64decode(sealed)
            plain = self._aead(doc).decrypt(raw[:12], raw[12:], _entry(service, username).encode())
        except (InvalidTag, ValueError, binascii.Error):
            raise SecretError(f"an entry of the vault {self.path} is damaged and cannot be decrypted") from None
        return str(plain.decode())

    def _new_check(self, header: dict[str, Any]) -> str:
        nonce = os.urandom(12)
        return base64.b64encode(nonce + self._aead(header).encrypt(nonce, _CHECK, b"check")).decode()

    def _verify_key(self, doc: dict[str, Any], *, tried: str | None = None) -> None:
        from cryptography.exceptions import InvalidTag

        check = doc.get("check")
        if check is None:
            return
        raw = base64.b64decode(check)
        try:
            self._aead(doc).decrypt(raw[:12], raw[12:], b"check")
        except InvalidTag:
            source = tried or ("AUTHPOOL_VAULT_KEY" if os.environ.get("AUTHPOOL_VAULT_KEY") else str(self._key_file))
            raise SecretBackendLocked(
                f"the vault {self.path} cannot be opened with the key from {source} (fingerprint "
                f"{fingerprint(self._key_for(doc))}): it was created with a different key; set AUTHPOOL_VAULT_KEY "
                "to the original key, or `authpool vault key import` it"
            ) from None

    @property
    def key_file(self) -> Path:
        """The generated key file (used unless AUTHPOOL_VAULT_KEY is set)."""
        return self._home.vault_key_file

    @property
    def _key_file(self) -> Path:
        return self._home.vault_key_file

    def _key_for(self, doc: dict[str, Any]) -> bytes:
        if self._key is not None:
            return self._key
        env = os.environ.get("AUTHPOOL_VAULT_KEY")
        if env:
            raw = _decode_key(env)
            if raw is None:
                salt = base64.b64decode(doc["salt"]) if "salt" in doc else b"authpool-vault"
                raw = hashlib.scrypt(env.encode(), salt=salt, dklen=32, **_SCRYPT)
            self._key = raw
        else:
            self._key = self._load_or_create_key_file()
        return self._key

    def _load_or_create_key_file(self) -> bytes:
        path = self._key_file
        if not path.exists():
            # Write the key to a temp file, then link it into place: link() fails if the file
            # exists, so exactly one process creates the key and nobody reads a half-written one.
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            write_atomic(tmp, base64.b64encode(os.urandom(32)) + b"\n")
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        key = _decode_key(path.read_text().strip())
        if key is None:
            raise SecretError(f"the vault key file {path} is damaged (expected base64 of 32 bytes)")
        return key


def _entry(service: str, username: str) -> str:
    return f"{service}\n{username}"


def _passphrase_env() -> str | None:
    env = os.environ.get("AUTHPOOL_VAULT_KEY")
    if env and _decode_key(env) is None:
        return env
    return None


def _decode_key(text: str) -> bytes | None:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        try:
            raw = base64.urlsafe_b64decode(text.strip())
        except (binascii.Error, ValueError):
            return None
    return raw if len(raw) == 32 else None


_LAYOUT = 1  # of vault.db; a newer one is refused with "upgrade authpool"
# What vault.json holds once its entries moved into vault.db. An authpool from before the move, still
# running (a server started before the upgrade), refuses a vault of a newer version: it fails with
# "upgrade authpool" instead of reading every secret as missing (and writing the next rotated
# refresh token into a vault.json nobody reads any more, which would log its user out).
_MOVED = (json.dumps({"version": 2, "entries": {}, "moved_to": "vault.db",
                      "note": "the secrets are in vault.db; this authpool is too old to read it: upgrade authpool"},
                     indent=1) + "\n").encode()
_TABLES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE entries (entry TEXT PRIMARY KEY, sealed TEXT NOT NULL) WITHOUT ROWID;
"""


class _Batch:
    """One write transaction of the vault: entries put or deleted, the key check if new."""

    def __init__(self, vault: VaultKeyring, conn: sqlite3.Connection, header: dict[str, Any]) -> None:
        self.vault = vault
        self.conn = conn
        self.header = header  # salt and check, as the transaction began (or made by it)
        self.meta: dict[str, str] = {}  # key material to write (a new vault's check)
        self.written = False

    def lookup(self, entry: str) -> str | None:
        return self.vault._select(self.conn, entry)

    def put(self, entry: str, sealed: str) -> None:
        self._run("INSERT OR REPLACE INTO entries VALUES (?, ?)", (entry, sealed))

    def delete(self, entry: str) -> bool:
        """Delete ``entry``; False if there was none."""
        return self._run("DELETE FROM entries WHERE entry = ?", (entry,)) > 0

    def _run(self, sql: str, args: tuple[str, ...]) -> int:
        try:
            count = self.conn.execute(sql, args).rowcount
        except sqlite3.Error as e:
            raise SecretError(f"cannot write the vault {self.vault.path}: {e}; nothing was changed") from None
        self.written = True
        return count

    def commit(self) -> None:
        """Commit (a batch that changed nothing writes nothing, unless the vault's check is new)."""
        try:
            if self.written or self.meta:
                self.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", self.meta.items())
                self.conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'changes'")
                self.conn.execute("COMMIT")
            else:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error as e:
            self.rollback()
            raise SecretError(f"cannot write the vault {self.vault.path}: {e}; nothing was changed") from None

    def rollback(self) -> None:
        if self.conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
