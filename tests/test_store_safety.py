"""The pool file keeps every change: deleted lock files, restores, symlinks, failed writes, hostile content."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from pool import Pool
from tests.conftest import run_cli, start_worker


def make_pool_with(home: Path, *labels: str) -> Pool:
    pool = Pool.open(home)
    for label in labels:
        pool.add_api_key("openai", label, f"sk-test-{label}")
    return pool


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
        second = run_cli("accounts", "disable", "openai/b")
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


def test_doctor_restore_refuses_to_replace_a_healthy_pool_file_unless_forced(home: Path) -> None:
    """`doctor --restore` on a healthy file refuses (it would undo the last write); --force restores, with a warning."""
    make_pool_with(home, "a", "b")
    before = (home / "pool.json").read_bytes()
    r = run_cli("doctor", "--restore")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "healthy" in r.stdout and "would undo the last write" in r.stdout and "--force" in r.stdout
    assert (home / "pool.json").read_bytes() == before
    assert not list(home.glob("pool.json.corrupt-*"))
    assert [a.label for a in Pool.open(home).accounts()] == ["a", "b"]

    r = run_cli("doctor", "--restore", "--force")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warn" in r.stdout and "undid the last write" in r.stdout
    assert [a.label for a in Pool.open(home).accounts()] == ["a"]
    kept = list(home.glob("pool.json.replaced-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == before


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
        r = run_cli(*argv)
        assert r.returncode == 1, r.stdout + r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert "is a symbolic link" in r.stderr and str(target) in r.stderr and "AUTHPOOL_HOME" in r.stderr
    r = run_cli("doctor")
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
    r = run_cli("accounts", "disable", "openai/a")
    assert r.returncode == 1, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "could not write" in r.stderr and "pool.json.bak" in r.stderr
    assert (home / "pool.json").read_bytes() == before
    assert sorted(p.name for p in home.iterdir() if p.name.endswith(".tmp")) == []
