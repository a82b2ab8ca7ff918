"""The store's lock under contention: waiters wait in the kernel and are served in the order they came.

Every contender is a real process taking a real flock (``tests/workers.py take-turn``). A test
knows a process is waiting in the kernel by reading ``/proc/locks``, which lists each blocked
flock request under the lock it waits for (``->``) with the waiting process's id: no sleeps.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from authpool import LockTimeout
from authpool.storage.lock import Lock
from tests.conftest import REPO, run_worker, start_worker

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs Linux's /proc/locks")

DEADLINE = 60.0


def blocked_on(pid: int) -> set[int]:
    """The inodes of the files process ``pid`` waits in the kernel to flock (``/proc/locks``)."""
    out: set[int] = set()
    with open("/proc/locks", encoding="ascii") as f:
        for line in f:
            fields = line.split()
            # "7: -> FLOCK  ADVISORY  WRITE 4242 00:2f:1234 0 EOF": a request blocked on inode 1234
            if len(fields) >= 7 and fields[1] == "->" and fields[5] == str(pid):
                out.add(int(fields[6].rsplit(":", 1)[-1]))
    return out


def wait_until_blocked(lock_file: Path, pid: int, *, behind: int | None = None) -> None:
    """Wait until process ``pid`` waits in the kernel for the lock on ``lock_file``: for the lock file
    itself, or in line for the node of the one before it (a node of process ``behind``, if given)."""
    line = lock_file.with_name(lock_file.name + ".line")
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        waited = blocked_on(pid)
        if waited:
            nodes = {}
            with contextlib.suppress(FileNotFoundError):
                nodes = {p.name: p.stat().st_ino for p in line.iterdir()}
            targets = {n for name, n in nodes.items() if behind is None or name.startswith(f"{behind}-")}
            if behind is None:
                targets.add(lock_file.stat().st_ino)
            if waited & targets:
                return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never waited for {lock_file.name}" + (f" behind {behind}" if behind else ""))


def wait_for_line(proc: subprocess.Popen[str], expected: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == expected, (line, proc.stderr.read() if proc.stderr else "")


def finish(*procs: subprocess.Popen[str]) -> None:
    for p in procs:
        out, err = p.communicate(timeout=DEADLINE)
        assert p.returncode == 0, err


@pytest.fixture
def lock_file(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    return home / "contended.lock"


def turns(log: Path) -> list[str]:
    return log.read_text(encoding="utf-8").splitlines()


def test_a_holder_that_releases_and_asks_again_is_served_after_the_process_already_waiting(
        lock_file: Path, tmp_path: Path) -> None:
    """Back-to-back updates of one process cannot starve another: the lock goes to the waiter first."""
    log, release = tmp_path / "turns", tmp_path / "release"
    holder = start_worker("take-turn", str(lock_file), "holder", str(log), str(release), "again")
    wait_for_line(holder, "held")
    waiter = start_worker("take-turn", str(lock_file), "waiter", str(log), "-", "once")
    wait_until_blocked(lock_file, waiter.pid)
    release.touch()
    finish(holder, waiter)
    assert turns(log) == ["holder", "waiter", "holder again"]


def test_waiters_are_served_in_the_order_they_started_waiting(lock_file: Path, tmp_path: Path) -> None:
    """Each waiter waits on the one before it in line: three waiters and the holder asking again are
    served first come, first served."""
    log, release = tmp_path / "turns", tmp_path / "release"
    holder = start_worker("take-turn", str(lock_file), "holder", str(log), str(release), "again")
    wait_for_line(holder, "held")
    waiters = []
    before = holder.pid
    for name in ("first", "second", "third"):
        w = start_worker("take-turn", str(lock_file), name, str(log), "-", "once")
        wait_until_blocked(lock_file, w.pid, behind=before)
        waiters.append(w)
        before = w.pid
    release.touch()
    finish(holder, *waiters)
    assert turns(log) == ["holder", "first", "second", "third", "holder again"]


def test_a_lock_file_deleted_while_held_lets_nobody_in_before_the_holder_lets_go(
        lock_file: Path, tmp_path: Path) -> None:
    """The next process waits in line behind the holder, not on the lock file, so deleting the file (a
    cleaner) does not let it in early: it takes a new lock file only once the holder is done."""
    log, release = tmp_path / "turns", tmp_path / "release"
    holder = start_worker("take-turn", str(lock_file), "holder", str(log), str(release), "once")
    wait_for_line(holder, "held")
    lock_file.unlink()
    waiter = start_worker("take-turn", str(lock_file), "waiter", str(log), "-", "once")
    wait_until_blocked(lock_file, waiter.pid, behind=holder.pid)
    assert not lock_file.exists() and turns(log) == ["holder"]
    release.touch()
    finish(holder, waiter)
    assert turns(log) == ["holder", "waiter"] and lock_file.exists()


GIVE_UP = """
import sys
from pathlib import Path
from authpool import LockTimeout
from authpool.storage.lock import Lock
try:
    Lock(Path(sys.argv[1]), timeout=0.5).acquire()
except LockTimeout:
    print("gave up", flush=True)
"""


def test_the_line_s_directory_does_not_grow_when_a_process_gives_up_and_exits(
        lock_file: Path, tmp_path: Path) -> None:
    """A process that times out in line and exits lets the next go on (its node is let go with its
    descriptors); the node it was waiting on, which nobody after it deletes, is swept by the next process."""
    log, release = tmp_path / "turns", tmp_path / "release"
    holder = start_worker("take-turn", str(lock_file), "holder", str(log), str(release), "once")
    wait_for_line(holder, "held")
    gave_up = subprocess.run([sys.executable, "-c", GIVE_UP, str(lock_file)], capture_output=True, text=True,
                             timeout=DEADLINE, cwd=REPO)
    assert gave_up.stdout == "gave up\n", gave_up.stderr
    after = start_worker("take-turn", str(lock_file), "after", str(log), "-", "once")
    wait_until_blocked(lock_file, after.pid)
    release.touch()
    finish(holder, after)
    last = start_worker("take-turn", str(lock_file), "last", str(log), "-", "once")
    finish(last)
    assert turns(log) == ["holder", "after", "last"]
    line = lock_file.with_name(lock_file.name + ".line")
    assert [p.name.split("-")[0] for p in line.iterdir()] == [str(last.pid)]  # its node: last in line
    assert line.stat().st_mode & 0o777 == 0o700


def _lock_waiters() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("authpool-lock-wait")]


def test_a_wait_that_timed_out_never_takes_the_lock_later(lock_file: Path, tmp_path: Path) -> None:
    """A timed-out acquisition names the holder; when the holder lets go, its abandoned wait lets go too."""
    log, release = tmp_path / "turns", tmp_path / "release"
    holder = start_worker("take-turn", str(lock_file), "holder", str(log), str(release), "once")
    wait_for_line(holder, "held")
    with pytest.raises(LockTimeout) as e:
        Lock(lock_file, timeout=0.5).acquire()
    assert f"pid {holder.pid}" in str(e.value)
    release.touch()
    finish(holder)
    # This process is still alive with its abandoned wait: another process must still get the lock.
    r = run_worker("take-turn", str(lock_file), "next", str(log), "-", "once", timeout=DEADLINE)
    assert r.returncode == 0, r.stderr
    assert turns(log) == ["holder", "next"]
    deadline = time.monotonic() + DEADLINE
    while _lock_waiters():
        assert time.monotonic() < deadline, "the abandoned waiter thread never finished"
        time.sleep(0.01)
    with Lock(lock_file, timeout=0):  # and nothing of this process holds it
        pass


def test_a_zero_timeout_fails_at_once_without_starting_a_waiter(lock_file: Path, tmp_path: Path) -> None:
    """timeout=0 (a refresh that only renews if nobody else is) never waits, in the kernel or elsewhere."""
    log, release = tmp_path / "turns", tmp_path / "release"
    holder = start_worker("take-turn", str(lock_file), "holder", str(log), str(release), "once")
    wait_for_line(holder, "held")
    try:
        before = len(_lock_waiters())
        with pytest.raises(LockTimeout):
            Lock(lock_file, timeout=0).acquire()
        assert len(_lock_waiters()) == before
    finally:
        release.touch()
        finish(holder)


def test_a_wait_interrupted_by_ctrl_c_leaves_the_lock_to_the_next_process(lock_file: Path, tmp_path: Path) -> None:
    """Ctrl-C while waiting gives the wait up: the interrupted process, still running, never holds the lock."""
    log, release, leave = tmp_path / "turns", tmp_path / "release", tmp_path / "leave"
    holder = start_worker("take-turn", str(lock_file), "holder", str(log), str(release), "once")
    wait_for_line(holder, "held")
    interrupted = start_worker("wait-until-interrupted", str(lock_file), str(leave))
    try:
        wait_until_blocked(lock_file, interrupted.pid)
        interrupted.send_signal(signal.SIGINT)
        wait_for_line(interrupted, "interrupted")
        release.touch()
        finish(holder)
        r = run_worker("take-turn", str(lock_file), "next", str(log), "-", "once", timeout=DEADLINE)
        assert r.returncode == 0, r.stderr
        assert turns(log) == ["holder", "next"]
    finally:
        leave.touch()
        finish(interrupted)


def test_the_queue_file_is_private_and_kept(lock_file: Path) -> None:
    """Like the lock file, its queue file is created 0600 and never deleted."""
    with Lock(lock_file):
        pass
    queue = lock_file.with_name(lock_file.name + ".queue")
    assert queue.exists() and lock_file.exists()
    assert queue.stat().st_mode & 0o777 == 0o600
    assert lock_file.read_text().startswith(f"pid {os.getpid()} ")


def test_the_holder_s_line_covers_a_longer_one_left_in_the_lock_file(lock_file: Path) -> None:
    """The holder's line is written over the last one without trimming the file (it is padded to a
    fixed width); a longer line, as an older authpool or a long program name leaves, is trimmed."""
    lock_file.write_text("pid 1 (" + "an-older-tool-with-a-long-name-" * 10 + ") since 2020-01-01T00:00:00")
    with Lock(lock_file):
        held = lock_file.read_text()
    assert held.rstrip() == held.strip() and held.startswith(f"pid {os.getpid()} ") and "older-tool" not in held
    with Lock(lock_file):
        assert lock_file.read_text().startswith(f"pid {os.getpid()} ") and lock_file.stat().st_size == len(held)


FORK_INSIDE = """
import os, sys, time
from pathlib import Path
from authpool import LockTimeout
from authpool.storage.lock import Lock
lock = Lock(Path(sys.argv[1]), timeout=5)
lock.acquire()
pid = os.fork()
if pid == 0:
    lock.release()  # the child leaves the locked section too: that must let go of nothing of the parent's
    try:
        Lock(Path(sys.argv[1]), timeout=0).acquire()
        os._exit(3)  # took the lock while the parent holds it
    except LockTimeout:
        os._exit(0)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status), flush=True)
print("holding", flush=True)
time.sleep(600)
"""


def test_a_child_forked_inside_the_lock_never_takes_it_and_never_lets_it_go(lock_file: Path) -> None:
    """A fork while holding the lock: the child's release lets go of nothing of the parent's, the child
    cannot take the lock through a descriptor it inherited, and the parent still holds it after."""
    holder = subprocess.Popen([sys.executable, "-c", FORK_INSIDE, str(lock_file)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "child 0"
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(LockTimeout):  # still the parent's, for every other process too
            Lock(lock_file, timeout=0).acquire()
    finally:
        holder.kill()
        holder.communicate(timeout=DEADLINE)
    with Lock(lock_file, timeout=DEADLINE):  # and its death let it go
        pass


FORK_THEN_DIE = """
import os, sys, time
from pathlib import Path
from authpool.storage.lock import Lock
lock = Lock(Path(sys.argv[1]), timeout=5)
lock.acquire(); lock.release()  # a kept descriptor and a kept node
child = os.fork()
if child == 0:
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)  # not the test's pipes: it waits for its holder's output only
    os.dup2(null, 2)
    time.sleep(600)  # a long-lived child that never execs
    os._exit(0)
lock.acquire()
print(child, flush=True)
time.sleep(600)
"""


def test_a_lock_goes_when_its_holder_dies_even_with_a_child_it_forked_still_alive(lock_file: Path) -> None:
    """A process forks a long-lived child, takes the lock and is killed: the child's copies of the
    parent's kept descriptors were closed at the fork, so the lock is free at once for the next process."""
    holder = subprocess.Popen([sys.executable, "-c", FORK_THEN_DIE, str(lock_file)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO)
    child = 0
    try:
        assert holder.stdout is not None
        child = int(holder.stdout.readline())
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=DEADLINE)
        with Lock(lock_file, timeout=DEADLINE):  # lined up: waits on the dead holder's node, then the lock file
            pass
        with Lock(lock_file, timeout=0):  # and the lock file alone
            pass
    finally:
        holder.kill()
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


def test_a_replaced_lock_file_does_not_fail_a_zero_timeout_while_nobody_holds_it(lock_file: Path) -> None:
    """The descriptors this process keeps of the lock file point at the old file once it is replaced:
    ``timeout=0`` moves on to the file at the path instead of reporting a holder that is not there."""
    for _ in range(3):  # every kept descriptor in use at once would be 2: keep some
        with Lock(lock_file, timeout=0):
            pass
    replacement = lock_file.with_name("replacement")
    replacement.write_text("")
    os.replace(replacement, lock_file)
    with Lock(lock_file, timeout=0):
        pass


def test_a_lock_granted_and_then_interrupted_is_let_go(lock_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the moment after the lock is granted (the sweep of the line on a first acquisition):
    acquire raises, and nothing keeps the lock for a caller who never got it."""
    def interrupted(self: Lock) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Lock, "_sweep", interrupted)
    fresh = lock_file.with_name("fresh.lock")  # this process's first acquisition of it: it sweeps
    with pytest.raises(KeyboardInterrupt):
        Lock(fresh, timeout=5).acquire()
    r = run_worker("take-turn", str(fresh), "other", str(lock_file.with_name("turns")), "-", "once", timeout=DEADLINE)
    assert r.returncode == 0, r.stderr


def test_a_process_that_takes_many_locks_keeps_descriptors_for_the_last_few_only(tmp_path: Path) -> None:
    """A refresh lock per account, a home per test: descriptors are kept for the 16 locks used last, not
    one more per lock file ever taken (a process with thousands would run out at 1,024)."""
    before = len(os.listdir("/proc/self/fd"))
    for n in range(300):
        with Lock(tmp_path / f"account-{n}.lock", timeout=5):
            pass
    assert len(os.listdir("/proc/self/fd")) - before <= 3 * 16
