"""Secrets of accounts in a keyring backend: one entry per account, chunked when too large.

Entries live under service ``authpool``, username = account id. Some stores limit an entry's
size (Windows Credential Manager: 2,560 bytes, stored as UTF-16), and OAuth JWTs easily exceed
it. A secret longer than ``chunk_size`` characters is written as numbered chunk entries tagged
with a fresh random tag, then the account's entry is replaced by a small head that names the
tag and count, then the previous chunks are deleted. The head is the single switch-over point,
so a crash at any moment leaves either the old or the new secret readable, never a mix.

Reads are cached by ``(account id, secret_generation)``: the generation lives in the pool file
and moves on every write, so a process sees another's rotation without asking the keyring on
every request. Code that must see the latest value (refresh, under the refresh lock) calls
:meth:`SecretStore.load_fresh`.

Every keyring failure is translated here into a :class:`~pool.errors.SecretError` whose message
never includes secret material.
"""

from __future__ import annotations

import contextlib
import json
import secrets as _random
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from authpool.accounts.secret import Secret
from authpool.errors import PoolError, SecretBackendLocked, SecretBackendUnavailable, SecretError, SecretMissing

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

__all__ = ["CHUNK_SIZE", "SERVICE", "VAULT_BACKEND", "SecretStore", "canonical_backend"]

SERVICE = "authpool"
# 1,000 ASCII characters are 2,000 bytes in UTF-16: under Windows' 2,560-byte blob limit.
CHUNK_SIZE = 1000
_HEAD_KEY = "authpool_chunked"

VAULT_BACKEND = "authpool.storage.vault.VaultKeyring"
# Names an earlier authpool recorded in pool.json (or users set in PYTHON_KEYRING_BACKEND) for
# backends that have moved since: the same store, so the same pool.
_LEGACY_BACKENDS = {"pool.vault.VaultKeyring": VAULT_BACKEND}


def canonical_backend(name: str) -> str:
    """The current name of the backend recorded or requested as ``name``."""
    return _LEGACY_BACKENDS.get(name, name)

T = TypeVar("T")


class SecretStore:
    """Read and write account secrets in one keyring backend.

    Example:
        >>> store = SecretStore(VaultKeyring())  # doctest: +SKIP
        >>> store.save("a2b3c4d5", Secret.from_api_key("sk-..."), generation=1)  # doctest: +SKIP
    """

    def __init__(self, backend: KeyringBackend, *, chunk_size: int = CHUNK_SIZE) -> None:
        self.backend = backend
        cls = type(backend)
        self.name = f"{cls.__module__}.{cls.__qualname__}"  # as recorded in the pool file
        self.chunk_size = chunk_size
        self._cache: dict[str, tuple[int, Secret]] = {}
        # keyring backends are not documented as thread-safe (D-Bus connections, file writes).
        self._io = threading.Lock()

    def load(self, account_id: str, generation: int) -> Secret:
        """The secret for ``account_id`` at ``generation`` (cached per generation).

        Raises:
            SecretMissing: no entry exists.
            SecretError: the store failed.
        """
        cached = self._cache.get(account_id)
        if cached is not None and cached[0] == generation:
            return cached[1]
        secret = self.load_fresh(account_id)
        self._cache[account_id] = (generation, secret)
        return secret

    def cached(self, account_id: str, generation: int) -> Secret | None:
        """The cached secret for this generation, without touching the store (None on a miss)."""
        cached = self._cache.get(account_id)
        return cached[1] if cached is not None and cached[0] == generation else None

    def load_fresh(self, account_id: str) -> Secret:
        """Read the secret from the store, bypassing the cache."""
        text = self._call("read", _of(account_id), lambda: self._read_entry(account_id))
        if text is None:
            raise SecretMissing(
                f"the secret of account {account_id} is missing from {self.name}; "
                f"log in again or re-add it (`authpool accounts remove {account_id}` then add it)"
            )
        return Secret.from_json(text)

    def save(self, account_id: str, secret: Secret, generation: int) -> None:
        """Write ``secret``; the caller records ``generation`` in the pool file afterwards."""
        self._call("write", _of(account_id), lambda: self._write_entry(account_id, secret.to_json()), [secret])
        self._cache[account_id] = (generation, secret)

    def save_many(self, items: Sequence[tuple[str, Secret, int]]) -> None:
        """Write the secrets of new accounts, ``(account id, secret, generation)`` each: all, or none.

        A backend that batches writes (the vault: :meth:`VaultKeyring.batch`) gets them in one
        write. Any other is written entry by entry, and the entries written are deleted again if
        one fails (so use it for new accounts: an overwritten secret would not come back).
        """
        items = list(items)
        if not items:
            return

        def write_all() -> None:
            with self._batch():
                written: list[str] = []
                try:
                    for account_id, secret, _ in items:
                        self._write_entry(account_id, secret.to_json())
                        written.append(account_id)
                except BaseException:
                    if not self._batched():  # a batch writes nothing when it fails: nothing to undo
                        for account_id in written:
                            with contextlib.suppress(Exception):
                                self._delete_entry(account_id)
                    raise

        self._call("write", f"the secrets of {len(items)} accounts", write_all, [s for _, s, _ in items])
        for account_id, secret, generation in items:
            self._cache[account_id] = (generation, secret)

    def swap(self, account_id: str, old: Secret, new: Secret, generation: int) -> Secret:
        """Store ``new`` only if the stored secret is still ``old``; returns what is stored afterwards.

        Under the account's refresh lock nobody else writes, so this only catches a writer outside
        the lock discipline (an import, a re-login in an older authpool): theirs is kept.
        """
        def exchange() -> Secret:
            text = self._read_entry(account_id)
            if text is not None and text != old.to_json():
                return Secret.from_json(text)
            self._write_entry(account_id, new.to_json())
            return new

        stored = self._call("write", _of(account_id), exchange, [new])
        self._cache[account_id] = (generation, stored)
        return stored

    def delete(self, account_id: str) -> None:
        """Remove the secret and its chunks (missing entries are not an error)."""
        self._cache.pop(account_id, None)
        self._call("delete", _of(account_id), lambda: self._delete_entry(account_id))

    def delete_many(self, account_ids: Sequence[str]) -> None:
        """Remove several secrets and their chunks (missing ones are not an error), in one write where the
        backend batches writes."""
        ids = list(account_ids)
        if not ids:
            return
        for account_id in ids:
            self._cache.pop(account_id, None)

        def delete_all() -> None:
            with self._batch():
                for account_id in ids:
                    self._delete_entry(account_id)

        self._call("delete", f"the secrets of {len(ids)} accounts", delete_all)

    def forget(self, account_id: str) -> None:
        """Drop the cached copy (another process may have changed the secret)."""
        self._cache.pop(account_id, None)

    # -- entries ---------------------------------------------------------------------------

    def _read_entry(self, account_id: str) -> str | None:
        head = self.backend.get_password(SERVICE, account_id)
        if head is None:
            return None
        chunked = _parse_head(head)
        if chunked is None:
            return head
        tag, count = chunked
        parts = []
        for i in range(count):
            part = self.backend.get_password(SERVICE, _chunk_user(account_id, tag, i))
            if part is None:
                raise SecretError(f"the secret of account {account_id} is incomplete in {self.name}")
            parts.append(part)
        return "".join(parts)

    def _write_entry(self, account_id: str, text: str) -> None:
        old = self.backend.get_password(SERVICE, account_id)
        old_chunks = _parse_head(old) if old is not None else None
        if len(text) <= self.chunk_size:
            self.backend.set_password(SERVICE, account_id, text)
        else:
            tag = _random.token_hex(4)
            pieces = [text[i : i + self.chunk_size] for i in range(0, len(text), self.chunk_size)]
            for i, piece in enumerate(pieces):
                self.backend.set_password(SERVICE, _chunk_user(account_id, tag, i), piece)
            head = json.dumps({_HEAD_KEY: 1, "tag": tag, "count": len(pieces)})
            self.backend.set_password(SERVICE, account_id, head)
        if old_chunks is not None:
            self._delete_chunks(account_id, *old_chunks)

    def _delete_entry(self, account_id: str) -> None:
        head = self.backend.get_password(SERVICE, account_id)
        if head is None:
            return
        chunked = _parse_head(head)
        _delete_quietly(self.backend, account_id)
        if chunked is not None:
            self._delete_chunks(account_id, *chunked)

    def _delete_chunks(self, account_id: str, tag: str, count: int) -> None:
        for i in range(count):
            _delete_quietly(self.backend, _chunk_user(account_id, tag, i))

    def _batched(self) -> bool:
        """Whether the backend applies a batch of writes at once (all or nothing)."""
        return callable(getattr(self.backend, "batch", None))

    def _batch(self) -> contextlib.AbstractContextManager[object]:
        """The backend's batch of writes (written once, when the block ends), or nothing special."""
        batch = getattr(self.backend, "batch", None)
        return batch() if callable(batch) else contextlib.nullcontext()

    def _call(self, op: str, what: str, fn: Callable[[], T], secrets: Sequence[Secret] = ()) -> T:
        import keyring.errors  # imported with the first secret access, not at start-up

        with self._io:
            try:
                return fn()
            except PoolError:
                raise
            except keyring.errors.KeyringLocked as e:
                raise SecretBackendLocked(
                    f"the credential store {self.name} is locked; unlock it (log in to the desktop "
                    "session or unlock the keyring) and try again"
                ) from e
            except keyring.errors.NoKeyringError as e:
                raise SecretBackendUnavailable(
                    f"no credential store is available ({self.name}); see `authpool doctor`"
                ) from e
            except Exception as e:  # any backend failure (D-Bus, OS API): translate, never leak
                raise SecretError(
                    f"the credential store {self.name} failed to {op} {what}: {_scrub(e, secrets)}"
                ) from e


def _chunk_user(account_id: str, tag: str, index: int) -> str:
    return f"{account_id}#{tag}#{index}"


def _parse_head(text: str) -> tuple[str, int] | None:
    if not text.startswith("{") or _HEAD_KEY not in text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get(_HEAD_KEY) != 1:
        return None
    return str(doc["tag"]), int(doc["count"])


def _delete_quietly(backend: KeyringBackend, user: str) -> None:
    import keyring.errors

    with contextlib.suppress(keyring.errors.PasswordDeleteError):
        backend.delete_password(SERVICE, user)


def _of(account_id: str) -> str:
    return f"the secret of account {account_id}"


def _scrub(e: BaseException, secrets: Sequence[Secret]) -> str:
    text = f"{type(e).__name__}: {e}"
    # Scrub before cutting: a value cut in half at the end would no longer match.
    for secret in secrets:
        for value in secret.values():
            if value:
                text = text.replace(value, "<hidden>")
    return text[:300]
