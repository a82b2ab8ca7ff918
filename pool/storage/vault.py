"""An encrypted-file keyring backend, for machines with no usable OS credential store.

Headless Linux, containers and CI have no Secret Service, and keyring then falls back to its
``fail`` backend. The alternatives on PyPI (keyrings.alt's ``EncryptedKeyring``, keyrings.cryptfile)
ask for a password with ``getpass`` — on stdin, which for an MCP stdio server is the JSON-RPC
transport. This backend never prompts.

Each entry is sealed with AES-256-GCM under a 32-byte key, with ``service`` and ``username`` as
associated data (a ciphertext moved to another entry fails to open). The key comes from
``AUTHPOOL_VAULT_KEY`` (base64 of 32 bytes, or any passphrase, stretched with scrypt), or from a
generated ``vault.key`` file (0600) beside the vault. A check value in the vault detects a wrong
key with a clear error instead of garbage. Writes use the same discipline as the pool file: a
file lock, a fresh read, an atomic replace.

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
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError

from authpool.errors import InvalidInput, SecretBackendLocked, SecretError
from authpool.home import Home, resolve_home
from authpool.storage.atomicfile import write_atomic
from authpool.storage.lock import Lock
from authpool.storage.sealing import decode_key, encode_key, fingerprint

__all__ = ["VaultKeyring"]

_VERSION = 1
_CHECK = b"authpool-vault-check"
_SCRYPT = {"n": 2**15, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024}


class VaultKeyring(KeyringBackend):
    """AES-256-GCM encrypted entries in ``<home>/vault.json``."""

    # Viable everywhere (it is just a file), but below 1 so keyring never "recommends" it over a
    # real OS store; authpool selects it explicitly (see pool.backend).
    priority = 0.5

    def __init__(self, home: Path | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._home = Home.open(home or resolve_home())
        self.path = self._home.vault_file
        self._lock = Lock(self._home.lock_file("vault"))
        self._cache: tuple[tuple[int, int, int], dict[str, Any]] | None = None
        self._key: bytes | None = None
        self._guard = threading.Lock()
        self._pending = threading.local()  # this thread's batch: the document being changed

    # -- keyring API -----------------------------------------------------------------------

    def get_password(self, service: str, username: str) -> str | None:
        doc = self._pending_doc() or self._read()
        sealed = doc["entries"].get(_entry(service, username))
        if sealed is None:
            return None
        return self._open(doc, sealed, service, username)

    def set_password(self, service: str, username: str, password: str) -> None:
        def change(doc: dict[str, Any]) -> None:
            doc["entries"][_entry(service, username)] = self._seal(doc, password, service, username)

        self._update(change)

    def delete_password(self, service: str, username: str) -> None:
        def change(doc: dict[str, Any]) -> None:
            if doc["entries"].pop(_entry(service, username), None) is None:
                raise PasswordDeleteError("no such entry")

        self._update(change)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Write every change this thread makes inside the block at once, when it ends: all, or none.

        The vault's lock is held meanwhile and the changes apply to one fresh read, so 1,000 new
        secrets cost one rewrite of the file instead of 1,000. If the block raises, nothing is
        written. Other threads and processes see none of the changes until the block ends.
        """
        if self._pending_doc() is not None:  # nested: the outer batch writes
            yield
            return
        with self._lock:
            doc = self._fresh()
            self._pending.doc = doc
            try:
                yield
            finally:
                self._pending.doc = None
            write_atomic(self.path, json.dumps(doc, indent=1, sort_keys=True).encode())

    def _pending_doc(self) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = getattr(self._pending, "doc", None)
        return doc

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

    # -- file ------------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {"version": _VERSION, "entries": {}}
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._guard:
            if self._cache is not None and self._cache[0] == sig:
                return self._cache[1]
        doc = self._parse(self.path.read_bytes())
        with self._guard:
            self._cache = (sig, doc)
        return doc

    def _parse(self, data: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("entries"), dict):
            raise SecretError(f"the vault {self.path} is damaged and cannot be read")
        if doc.get("version", 0) > _VERSION:
            raise SecretError(f"the vault {self.path} was written by a newer authpool; upgrade authpool")
        return doc

    def _update(self, change: Any) -> None:
        pending = self._pending_doc()
        if pending is not None:  # inside batch(): written when the batch ends
            change(pending)
            return
        with self._lock:
            doc = self._fresh()
            change(doc)
            write_atomic(self.path, json.dumps(doc, indent=1, sort_keys=True).encode())

    def _fresh(self) -> dict[str, Any]:
        """The vault as the file holds it now, with its key check (call with the lock held)."""
        doc = self._parse(self.path.read_bytes()) if self.path.exists() else {"version": _VERSION, "entries": {}}
        self._ensure_check(doc)
        return doc

    # -- crypto ----------------------------------------------------------------------------

    def _aead(self, doc: dict[str, Any]) -> Any:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        return AESGCM(self._key_for(doc))

    def _seal(self, doc: dict[str, Any], text: str, service: str, username: str) -> str:
        nonce = os.urandom(12)
        ct = self._aead(doc).encrypt(nonce, text.encode(), _entry(service, username).encode())
        return base64.b64encode(nonce + ct).decode()

    def _open(self, doc: dict[str, Any], sealed: str, service: str, username: str) -> str:
        from cryptography.exceptions import InvalidTag

        self._verify_key(doc)
        try:
            raw = base64.b64decode(sealed)
            plain = self._aead(doc).decrypt(raw[:12], raw[12:], _entry(service, username).encode())
        except (InvalidTag, ValueError, binascii.Error):
            raise SecretError(f"an entry of the vault {self.path} is damaged and cannot be decrypted") from None
        return str(plain.decode())

    def _ensure_check(self, doc: dict[str, Any]) -> None:
        if "check" not in doc:
            if "salt" not in doc and _passphrase_env() is not None:
                doc["salt"] = base64.b64encode(os.urandom(16)).decode()
            nonce = os.urandom(12)
            doc["check"] = base64.b64encode(nonce + self._aead(doc).encrypt(nonce, _CHECK, b"check")).decode()
        else:
            self._verify_key(doc)

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
