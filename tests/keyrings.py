"""Keyring backends for tests: real KeyringBackend subclasses with a real limitation each.

Priorities are below 1, so authpool's own backend choice never picks them; tests select them
explicitly (PYTHON_KEYRING_BACKEND=tests.keyrings.X or by constructing them).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from keyring.backend import KeyringBackend
from keyring.errors import KeyringLocked, PasswordDeleteError, PasswordSetError

WINDOWS_LIMIT = 2560  # bytes; Windows Credential Manager's CRED_MAX_CREDENTIAL_BLOB_SIZE


class LimitedKeyring(KeyringBackend):
    """An in-memory store that refuses entries larger than Windows Credential Manager's limit.

    Like the Windows backend it stores UTF-16, so the limit is 1,280 characters.
    """

    priority = 0.1

    def __init__(self, limit: int = WINDOWS_LIMIT) -> None:
        super().__init__()
        self.limit = limit
        self.entries: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        if len(password.encode("utf-16-le")) > self.limit:
            raise PasswordSetError("the stub message is too long")  # what Windows says (error 1783)
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.entries.pop((service, username), None) is None:
            raise PasswordDeleteError("not found")


class LockedKeyring(KeyringBackend):
    """A store that is locked: every operation raises KeyringLocked, as a locked Secret Service does."""

    priority = 0.1

    def get_password(self, service: str, username: str) -> str | None:
        raise KeyringLocked("Failed to unlock the collection!")

    def set_password(self, service: str, username: str, password: str) -> None:
        raise KeyringLocked("Failed to unlock the collection!")

    def delete_password(self, service: str, username: str) -> None:
        raise KeyringLocked("Failed to unlock the collection!")


class FileLimitedKeyring(LimitedKeyring):
    """LimitedKeyring persisted in a plain JSON file, for multi-process tests ($TEST_KEYRING_FILE)."""

    def __init__(self) -> None:
        super().__init__()
        self.path = Path(os.environ["TEST_KEYRING_FILE"])

    def _load(self) -> dict[str, str]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def get_password(self, service: str, username: str) -> str | None:
        return self._load().get(f"{service}\n{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        if len(password.encode("utf-16-le")) > self.limit:
            raise PasswordSetError("the stub message is too long")
        data = self._load()
        data[f"{service}\n{username}"] = password
        self.path.write_text(json.dumps(data))

    def delete_password(self, service: str, username: str) -> None:
        data = self._load()
        if data.pop(f"{service}\n{username}", None) is None:
            raise PasswordDeleteError("not found")
        self.path.write_text(json.dumps(data))


class FullKeyring(LimitedKeyring):
    """An in-memory store that holds at most ``capacity`` entries, then refuses writes (a store that fills up)."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def set_password(self, service: str, username: str, password: str) -> None:
        if (service, username) not in self.entries and len(self.entries) >= self.capacity:
            raise PasswordSetError(f"the store is full; refused {password}")  # a backend that echoes what it got
        super().set_password(service, username, password)


class FileFullKeyring(FileLimitedKeyring):
    """FileLimitedKeyring that holds at most $TEST_KEYRING_CAPACITY entries, then refuses writes: a store
    that fails after N writes. Its error repeats the value it refused, as some backends' messages do."""

    def __init__(self) -> None:
        super().__init__()
        self.capacity = int(os.environ["TEST_KEYRING_CAPACITY"])

    def set_password(self, service: str, username: str, password: str) -> None:
        data = self._load()
        if f"{service}\n{username}" not in data and len(data) >= self.capacity:
            raise PasswordSetError(f"the store is full; refused {password}")
        super().set_password(service, username, password)


# -- the vault's database, read as it is on disk ------------------------------------------------


def vault_entries(home: Path) -> set[str]:
    """The names of the vault's entries (service and account id; the values are sealed)."""
    path = home / "vault.db"
    if not path.exists():
        return set()
    conn = sqlite3.connect(path)
    try:
        return {entry for (entry,) in conn.execute("SELECT entry FROM entries")}
    finally:
        conn.close()


def vault_commits(home: Path) -> int:
    """How many write transactions the vault has committed."""
    conn = sqlite3.connect(home / "vault.db")
    try:
        return int(conn.execute("SELECT value FROM meta WHERE key = 'changes'").fetchone()[0])
    finally:
        conn.close()
