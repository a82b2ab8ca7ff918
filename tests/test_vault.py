"""The encrypted-file vault (``vault.db``): one row per secret, and the move from ``vault.json``.

The vault is the secret store of machines without an OS credential store. Until 0.2 it was one
JSON file rewritten whole on every change; these tests hold the SQLite layout to what that file
promised (sealed entries, a wrong key refused, all or nothing) and to a move that never shows a
secret missing.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from keyring.errors import PasswordDeleteError

from authpool.errors import SecretBackendLocked, SecretError
from authpool.storage.vault import VaultKeyring
from tests.conftest import REPO, assert_no_secrets
from tests.history import module_at
from tests.keyrings import vault_commits

SERVICE = "authpool"


def legacy_vault(home: Path, entries: dict[str, str]) -> None:
    """Write ``vault.json`` and ``vault.key`` as authpool 0.1 and early 0.2 did (sealed by hand)."""
    key = os.urandom(32)
    aead = AESGCM(key)

    def seal(plain: bytes, aad: bytes) -> str:
        nonce = os.urandom(12)
        return base64.b64encode(nonce + aead.encrypt(nonce, plain, aad)).decode()

    doc = {"version": 1, "check": seal(b"authpool-vault-check", b"check"),
           "entries": {f"{SERVICE}\n{user}": seal(value.encode(), f"{SERVICE}\n{user}".encode())
                       for user, value in entries.items()}}
    home.mkdir(mode=0o700, exist_ok=True)
    (home / "vault.key").write_bytes(base64.b64encode(key) + b"\n")
    (home / "vault.key").chmod(0o600)
    (home / "vault.json").write_text(json.dumps(doc, indent=1))
    (home / "vault.json").chmod(0o600)


def read_in_another_process(home: Path, user: str) -> str:
    code = ("import sys; from authpool.storage.vault import VaultKeyring; "
            "print(VaultKeyring(__import__('pathlib').Path(sys.argv[1])).get_password('authpool', sys.argv[2]))")
    r = subprocess.run([sys.executable, "-c", code, str(home), user], capture_output=True, text=True,
                       cwd=REPO, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture(autouse=True)
def _no_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTHPOOL_VAULT_KEY", raising=False)


def test_an_older_vault_json_is_read_until_the_first_write_moves_it_into_vault_db(tmp_path: Path) -> None:
    """Secrets in vault.json stay readable; the first write builds vault.db from it and keeps the old file aside."""
    home = tmp_path / "home"
    legacy_vault(home, {"acc1": "sk-legacy-one", "acc2": "lprt-legacy-two"})
    vault = VaultKeyring(home)
    assert vault.get_password(SERVICE, "acc1") == "sk-legacy-one"
    assert not (home / "vault.db").exists()  # reading moves nothing
    vault.set_password(SERVICE, "acc3", "sk-new-three")
    assert (home / "vault.db").exists() and json.loads((home / "vault.json").read_text())["moved_to"] == "vault.db"
    assert (home / "vault.json.moved").exists()
    assert (home / "vault.db").stat().st_mode & 0o777 == 0o600
    for user, value in {"acc1": "sk-legacy-one", "acc2": "lprt-legacy-two", "acc3": "sk-new-three"}.items():
        assert read_in_another_process(home, user) == value
    assert_no_secrets([(home / "vault.db").read_bytes().decode(errors="replace")],
                      ["sk-legacy-one", "lprt-legacy-two", "sk-new-three"])


def test_a_process_that_read_vault_json_follows_the_move(tmp_path: Path) -> None:
    """A process that read vault.json before another one moved it in reads (and writes) vault.db after."""
    home = tmp_path / "home"
    legacy_vault(home, {"acc1": "sk-legacy-one"})
    reader = VaultKeyring(home)
    assert reader.get_password(SERVICE, "acc1") == "sk-legacy-one"
    VaultKeyring(home).set_password(SERVICE, "acc1", "sk-rotated-one")
    assert reader.get_password(SERVICE, "acc1") == "sk-rotated-one"
    reader.delete_password(SERVICE, "acc1")
    assert VaultKeyring(home).get_password(SERVICE, "acc1") is None


def test_each_write_is_one_commit_and_a_batch_is_one(tmp_path: Path) -> None:
    """set and delete commit once each; a batch of 500 secrets commits once; a batch that raises writes nothing."""
    home = tmp_path / "home"
    vault = VaultKeyring(home)
    vault.set_password(SERVICE, "first", "sk-first")
    before = vault_commits(home)
    vault.set_password(SERVICE, "second", "sk-second")
    assert vault_commits(home) == before + 1
    with vault.batch():
        for i in range(500):
            vault.set_password(SERVICE, f"b{i}", f"sk-batch-{i}")
        assert VaultKeyring(home).get_password(SERVICE, "b0") is None  # nobody else sees it yet
        assert vault.get_password(SERVICE, "b499") == "sk-batch-499"  # this thread does
    assert vault_commits(home) == before + 2
    assert read_in_another_process(home, "b250") == "sk-batch-250"
    with pytest.raises(RuntimeError), vault.batch():
        vault.set_password(SERVICE, "lost", "sk-lost")
        vault.delete_password(SERVICE, "first")
        raise RuntimeError("the caller failed midway")
    assert vault_commits(home) == before + 2
    assert vault.get_password(SERVICE, "lost") is None and vault.get_password(SERVICE, "first") == "sk-first"


def test_a_wrong_key_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """Another vault.key cannot read or add entries: a clear error naming the key, and the vault is unchanged."""
    home = tmp_path / "home"
    VaultKeyring(home).set_password(SERVICE, "acc", "sk-kept")
    before = vault_commits(home)
    (home / "vault.key").write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    other = VaultKeyring(home)
    with pytest.raises(SecretBackendLocked, match="different key"):
        other.get_password(SERVICE, "acc")
    with pytest.raises(SecretBackendLocked, match="different key"):
        other.set_password(SERVICE, "new", "sk-refused")
    assert vault_commits(home) == before


@pytest.mark.parametrize(("damage", "message"), [
    (lambda p: p.write_bytes(b"this is not a database" * 100), "damaged"),
    (lambda p: _set_layout(p, "99"), "newer authpool"),
])
def test_a_damaged_or_newer_vault_db_is_refused_in_one_line(tmp_path: Path, damage: object, message: str) -> None:
    """A vault.db that is not a database, or was written by a newer authpool, is named and left as it is."""
    home = tmp_path / "home"
    VaultKeyring(home).set_password(SERVICE, "acc", "sk-kept")
    path = home / "vault.db"
    assert callable(damage)
    damage(path)
    before = path.read_bytes()
    with pytest.raises(SecretError, match=message) as e:
        VaultKeyring(home).get_password(SERVICE, "acc")
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert path.read_bytes() == before


def _set_layout(path: Path, value: str) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'layout'", (value,))
        conn.commit()
    finally:
        conn.close()


def test_a_symlinked_vault_db_is_refused(tmp_path: Path) -> None:
    """Like the pool's store, the vault never follows a symbolic link to somewhere else."""
    home = tmp_path / "home"
    VaultKeyring(home).set_password(SERVICE, "acc", "sk-kept")
    elsewhere = tmp_path / "elsewhere.db"
    (home / "vault.db").rename(elsewhere)
    (home / "vault.db").symlink_to(elsewhere)
    with pytest.raises(SecretError, match="symbolic link"):
        VaultKeyring(home).get_password(SERVICE, "acc")


def test_deleting_a_secret_that_is_not_there_leaves_the_vault_writable_by_everyone(tmp_path: Path) -> None:
    """A delete of a missing entry (routine: removing an account whose secret never landed) raises, and
    rolls back: this process and another one can still write (a rotated token must always be storable)."""
    home = tmp_path / "home"
    vault = VaultKeyring(home)
    vault.set_password(SERVICE, "acc", "sk-first")
    with pytest.raises(PasswordDeleteError):
        vault.delete_password(SERVICE, "never-stored")
    code = ("import sys, pathlib; from authpool.storage.vault import VaultKeyring; "
            "VaultKeyring(pathlib.Path(sys.argv[1])).set_password('authpool', 'acc', 'lprt-rotated')")
    r = subprocess.run([sys.executable, "-c", code, str(home)], capture_output=True, text=True, cwd=REPO,
                       timeout=60, env={**os.environ, "PYTHONPATH": str(REPO), "AUTHPOOL_LOCK_TIMEOUT": "20"})
    assert r.returncode == 0, r.stderr
    vault.set_password(SERVICE, "other", "sk-other")
    assert vault.get_password(SERVICE, "acc") == "lprt-rotated"


VAULT_JSON_COMMIT = "7a08b52"  # the last commit whose vault was vault.json


def test_an_older_authpool_still_running_after_the_move_fails_closed_instead_of_losing_tokens(tmp_path: Path) -> None:
    """A server started before the upgrade, still running the old code: after the move it neither reads every
    secret as missing nor writes a rotated token where nobody reads it; it says to upgrade."""
    home = tmp_path / "home"
    old_class = module_at(VAULT_JSON_COMMIT, "pool/storage/vault.py", tmp_path).VaultKeyring
    old = old_class(home)
    old.path = home / "vault.json"  # its home knew the vault only as vault.json
    old.set_password(SERVICE, "alice", "lprt-one")
    assert old.get_password(SERVICE, "alice") == "lprt-one"
    VaultKeyring(home).set_password(SERVICE, "bob", "sk-bob")  # the upgraded CLI's first write: the move
    with pytest.raises(SecretError, match="upgrade authpool"):
        old.get_password(SERVICE, "alice")
    with pytest.raises(SecretError, match="upgrade authpool"):
        old.set_password(SERVICE, "alice", "lprt-two")
    assert read_in_another_process(home, "alice") == "lprt-one"
    assert json.loads((home / "vault.json.moved").read_text())["entries"]  # the old entries, kept
