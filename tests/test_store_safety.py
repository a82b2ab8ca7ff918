"""The pool file keeps every change: deleted lock files, restores, symlinks, failed writes, hostile content."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from authpool import Pool, StoreCorrupt
from tests.conftest import assert_no_secrets, home_texts, run_cli, start_worker

KEYS = {label: f"sk-test-safety-{label}-5f0c7e1d9a2b" for label in ("a", "b")}
PIPED_KEY = "sk-test-safety-piped-3e8d1c0b"  # given on stdin to commands that fail


def make_pool_with(home: Path, *labels: str) -> Pool:
    pool = Pool.open(home)
    for label in labels:
        pool.add_api_key("openai", label, KEYS[label])
    return pool


def cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """`authpool ARGS` as a real subprocess; no key this module hands out may appear in its output."""
    r = run_cli(*args, input=input)
    assert_no_secrets([r.stdout, r.stderr], [*KEYS.values(), PIPED_KEY])
    return r


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Wait for ``condition`` (the event itself), failing after a generous deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_writer_whose_lock_file_is_deleted_mid_change_does_not_undo_the_next_writer(home: Path,
                                                                                        tmp_path: Path) -> None:
    """locks/pool.lock is deleted while a process holds it: the next writer's change survives the holder's write."""
    make_pool_with(home, "a", "b")
    ready, go = tmp_path / "ready", tmp_path / "go"
    holder = start_worker("disable-when", "openai/a", str(ready), str(go))
    try:
        wait_until(ready.exists, "the holder to be inside its change, holding the pool lock")
        (home / "locks" / "pool.lock").unlink()  # a cleaner, or a user's rm -rf
        second = cli("accounts", "disable", "openai/b")
        assert second.returncode == 0, second.stderr
        go.touch()
        out, err = holder.communicate(timeout=60)
    finally:
        holder.kill()
    assert holder.returncode == 0, err
    assert out.strip() == "done"
    pool = Pool.open(home)
    assert pool.get("openai/a").enabled is False  # the holder's change landed ...
    assert pool.get("openai/b").enabled is False  # ... on top of the second writer's, not over it
    assert_no_secrets([out, err, *home_texts(home)], list(KEYS.values()))


def test_doctor_restore_refuses_to_replace_a_healthy_pool_file_unless_forced(home: Path) -> None:
    """`doctor --restore` on a healthy file refuses (it would undo the last write); --force restores, with a warning."""
    make_pool_with(home, "a", "b")
    before = (home / "pool.json").read_bytes()
    r = cli("doctor", "--restore")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "healthy" in r.stdout and "would undo the last write" in r.stdout and "--force" in r.stdout
    assert (home / "pool.json").read_bytes() == before
    assert not list(home.glob("pool.json.corrupt-*"))
    assert [a.label for a in Pool.open(home).accounts()] == ["a", "b"]

    r = cli("doctor", "--restore", "--force")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warn" in r.stdout and "undid the last write" in r.stdout
    assert [a.label for a in Pool.open(home).accounts()] == ["a"]
    kept = list(home.glob("pool.json.replaced-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == before
    assert_no_secrets(home_texts(home), list(KEYS.values()))


def test_a_symlinked_pool_file_is_refused_with_a_clear_error_and_left_as_it_is(home: Path, tmp_path: Path) -> None:
    """pool.json as a symbolic link is refused (read and write) naming the fix; the link and its target stay."""
    make_pool_with(home, "a")
    elsewhere = tmp_path / "synced"
    elsewhere.mkdir()
    target = elsewhere / "pool.json"
    (home / "pool.json").rename(target)
    (home / "pool.json").symlink_to(target)
    before = target.read_bytes()
    for argv in (["accounts", "disable", "openai/a"], ["accounts", "list"]):
        r = cli(*argv)
        assert r.returncode == 1, r.stdout + r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert "is a symbolic link" in r.stderr and str(target) in r.stderr and "AUTHPOOL_HOME" in r.stderr
    r = cli("doctor")
    assert r.returncode == 1 and "is a symbolic link" in r.stdout
    assert (home / "pool.json").is_symlink() and (home / "pool.json").resolve() == target
    assert target.read_bytes() == before


def test_a_write_whose_backup_step_fails_leaves_no_temporary_file(home: Path) -> None:
    """When pool.json.bak cannot be replaced, the write fails with one line and no .pool.json.bak.*.tmp is left."""
    make_pool_with(home, "a")
    before = (home / "pool.json").read_bytes()
    (home / "pool.json.bak").unlink()
    (home / "pool.json.bak").mkdir(mode=0o700)  # something in the way that a rename cannot replace
    (home / "pool.json.bak" / "keep").touch(mode=0o600)
    r = cli("accounts", "disable", "openai/a")
    assert r.returncode == 1, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "could not write" in r.stderr and "pool.json.bak" in r.stderr
    assert (home / "pool.json").read_bytes() == before
    assert sorted(p.name for p in home.iterdir() if p.name.endswith(".tmp")) == []


@pytest.mark.parametrize("text", [
    "[" * 100_000,
    # Parses, but an unknown field this deep could never be written back (pydantic stops at ~255).
    '{"schema_version": 2, "accounts": [], "future": ' + "[" * 300 + "]" * 300 + "}",
], ids=["100000-brackets", "deep-unknown-field"])
def test_a_deeply_nested_pool_file_is_reported_as_corrupt_not_as_an_internal_error(home: Path, text: str) -> None:
    """Deep nesting: every command says the file is corrupt (one line), doctor included; no RecursionError."""
    home.mkdir(mode=0o700)
    (home / "pool.json").write_text(text)
    with pytest.raises(StoreCorrupt, match="nested too deeply"):
        Pool.open(home).accounts()
    for argv in (["accounts", "list"], ["status"], ["accounts", "add-key", "openai", "--label", "x"]):
        r = cli(*argv, input=PIPED_KEY)
        assert r.returncode == 1, r.stdout + r.stderr
        assert r.stderr.count("\n") == 1 and "corrupt" in r.stderr and "nested too deeply" in r.stderr, r.stderr
        assert "internal error" not in r.stderr and "Recursion" not in r.stderr
    r = cli("doctor")
    assert r.returncode == 1 and "[ fail] pool file" in r.stdout and "nested too deeply" in r.stdout
    assert (home / "pool.json").read_text() == text


def _tamper(doc: dict[str, Any], where: str, value: Any) -> None:
    target: Any = doc
    *path, last = where.split(".")
    for part in path:
        target = target[int(part)] if part.isdigit() else target[part]
    target[last] = value


@pytest.mark.parametrize(("where", "raw_value", "named"), [
    ("accounts.0.secret_generation", "-5", "accounts.0.secret_generation"),
    ("accounts.0.access_expires_at", "Infinity", "accounts.0.access_expires_at"),
    ("accounts.0.access_expires_at", "NaN", "accounts.0.access_expires_at"),
    ("accounts.0.last_used_at", "1e999", "accounts.0.last_used_at"),
    ("accounts.0.created_at", "-Infinity", "accounts.0.created_at"),
    ("accounts.0.counters.requests", "-1", "accounts.0.counters.requests"),
    ("accounts.0.counters.rate_limited", "-3", "accounts.0.counters.rate_limited"),
    ("accounts.0.backoff_level", "-2", "accounts.0.backoff_level"),
    ("accounts.0.cooldowns", '{"*": {"until": NaN, "reason": "429"}}', "accounts.0.cooldowns.*.until"),
])
def test_impossible_numbers_in_the_pool_file_are_refused_as_corrupt_naming_the_field(
        home: Path, where: str, raw_value: str, named: str) -> None:
    """Negative counters or generations, NaN and infinite times: the pool file is corrupt, and the field is named."""
    make_pool_with(home, "a")
    doc = json.loads((home / "pool.json").read_text())
    marker = "__VALUE__"
    _tamper(doc, where, marker)
    text = json.dumps(doc).replace(f'"{marker}"', raw_value)
    (home / "pool.json").write_text(text)
    with pytest.raises(StoreCorrupt) as e:
        Pool.open(home).accounts()
    assert named in str(e.value), str(e.value)
    r = cli("accounts", "list")
    assert r.returncode == 1 and "corrupt" in r.stderr and named in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1
    assert (home / "pool.json").read_text() == text


@pytest.mark.parametrize("data", [
    "{}".encode("utf-16"),                               # a UTF-16 file (with its byte order mark)
    b'{"schema_version": 2, "accounts": [], "note": "caf\xe9"}',  # Latin-1
    b"\xff\xfe\x00garbage",
])
def test_a_pool_file_that_is_not_utf8_is_reported_as_such(home: Path, data: bytes) -> None:
    """Bytes that are not UTF-8 are reported as "not UTF-8 text", not as a JSON syntax error at line 1 column 1."""
    home.mkdir(mode=0o700)
    (home / "pool.json").write_bytes(data)
    with pytest.raises(StoreCorrupt, match="not UTF-8 text") as e:
        Pool.open(home).accounts()
    assert "line 1 column 1" not in str(e.value)
    r = cli("accounts", "list")
    assert r.returncode == 1 and "not UTF-8 text" in r.stderr
