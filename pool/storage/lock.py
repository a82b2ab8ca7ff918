"""Locks shared by threads and processes: the pool's store lock and per-account refresh locks.

A :class:`Lock` is a ``threading.Lock`` (one per path per process, so threads queue in memory
instead of polling the file) plus an OS file lock (``flock``) on ``NAME.lock`` for other
processes. Lock files are never deleted: a deleted lock file lets two processes lock two
different inodes and both believe they hold the lock. Each holder writes its pid and command
into the lock file, so a timeout can say who is holding it.

Waiters are served first come, first served, and wait in the kernel, not by polling. ``flock``
alone is not fair: on release the kernel wakes every waiter and whoever runs first wins, which
under back-to-back updates is usually the process that just let go (measured with 4 processes
on 2 CPUs, even with every contender taking a shared queue file first: one process took the
lock up to 47 times in a row while three others waited). So the
waiters form a line, as in a CLH queue lock: each contender creates a *node* file of its own in
``NAME.lock.line/`` and locks it, then, under the short-held ``NAME.lock.queue`` file, reads who
is last in line and writes its own node's name there; it then waits (a blocking ``flock``) on
the node of the one before it, which its owner lets go only after releasing ``NAME.lock``. So
each release wakes exactly one waiter, the next in line, and a newcomer lines up behind the
others: nobody can cut in. The next in line deletes the node it waited on; a process that dies
lets go of its node with its file descriptors, so the line moves on without it. A node nobody
holds may be deleted at any time (whoever looks for it then goes straight on to ``NAME.lock``),
so each process sweeps such leftovers on its first acquisition and now and then after. Without
contention no file is created: a process keeps its last node open and takes it again if nobody
lined up after it. ``NAME.lock`` itself is still locked by whoever's turn it is, so mutual
exclusion never depends on the line (another program, or an older authpool, locking
``NAME.lock`` alone is still excluded).

A blocking ``flock`` cannot be cancelled, so a caller whose timeout passes *abandons* its place
rather than leaving the line: the waiter thread keeps waiting for its turn and, when it comes,
passes it straight on. Nobody is left holding a lock they stopped waiting for, and nobody behind
waits for a caller who gave up. ``timeout=0`` never lines up: it takes ``NAME.lock`` if it is
free at that moment, or fails.

Someone else may still delete a lock file (a cleaner, an ``rm -rf``). Two checks keep that from
losing a change. After locking, the locked file must still be the file at the path (same device
and inode), else the lock is taken again. And a holder about to commit asks
:meth:`Lock.ensure_held` first: if its file was deleted or replaced meanwhile, another process may
hold the new one, so the holder raises :class:`LockLost` instead of writing (the store then
redoes its change under a fresh lock). What remains is the moment between that check and the
commit itself. A deleted line or queue file costs fairness for a moment, never exclusion.

``flock`` is POSIX; so is the rest of the store's write discipline. Elsewhere acquiring a lock
raises :class:`~authpool.errors.StoreError` saying so.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from authpool.errors import LockLost, LockTimeout, StoreError

__all__ = ["DEFAULT_TIMEOUT", "Lock"]

DEFAULT_TIMEOUT = float(os.environ.get("AUTHPOOL_LOCK_TIMEOUT", "15"))
_REPLACED_ATTEMPTS = 100  # a lock file replaced under us this often in a row while we lock it: give up
_SWEEP_EVERY = 256  # acquisitions of a lock by one process between two sweeps of its line's directory
_KEPT_LOCKS = 16  # locks whose node and descriptors a process keeps between turns (the ones used last)

_T = TypeVar("_T")
_registry_guard = threading.Lock()
_thread_locks: dict[str, threading.Lock] = {}
_acquisitions: dict[str, int] = {}


def _registered(registry: dict[str, _T], path: Path, make: Callable[[], _T]) -> _T:
    """This process's one ``registry`` entry for ``path``, made on first use."""
    key = str(path)
    with _registry_guard:
        found = registry.get(key)
        if found is None:
            found = registry[key] = make()
        return found


def _thread_lock(path: Path) -> threading.Lock:
    return _registered(_thread_locks, path, threading.Lock)


def _count(path: Path) -> int:
    """How many times this process has acquired ``path``'s lock, this one included."""
    key = str(path)
    with _registry_guard:
        n = _acquisitions[key] = _acquisitions.get(key, 0) + 1
        return n


if sys.platform != "win32":
    import fcntl

    def _flock(fd: int, *, block: bool) -> bool:
        """Lock ``fd``'s file; without ``block``, False instead of waiting."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if block else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unflock(fd: int) -> None:
        # Explicitly, not only by closing: a child forked meanwhile shares the open file
        # description, and would otherwise keep the lock after we close our descriptor.
        fcntl.flock(fd, fcntl.LOCK_UN)

else:  # pragma: no cover - not run on POSIX

    def _unsupported() -> StoreError:
        return StoreError("authpool's file locks need POSIX flock, which this platform does not have")

    def _flock(fd: int, *, block: bool) -> bool:
        raise _unsupported()

    def _unflock(fd: int) -> None:
        raise _unsupported()


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _open(path: Path) -> int:
    # Never O_TRUNC: the lock file names the current holder, the queue file the last in line.
    return os.open(path, os.O_RDWR | os.O_CREAT | _CLOEXEC, 0o600)


def _close(fd: int) -> None:
    """Let go of ``fd``'s lock and close it."""
    try:
        _unflock(fd)
    finally:
        os.close(fd)


def _write_over(fd: int, data: bytes) -> None:
    # Write, then trim the tail: truncating to zero first makes the filesystem free and
    # reallocate a block on every acquisition (measured: 5x slower lock cycle on ext4).
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))


_HOLDER_WIDTH = 128  # bytes the holder's line is padded to: see _record_holder
_holder_line: tuple[int, int, bytes] = (0, 0, b"")  # (pid, second, line) of the last line made


def _record_holder(fd: int, size: int) -> None:
    """Name this process as the holder in the lock file (``size`` bytes now); runs with the flock held.

    Contenders never truncate the file (see _open), so what we write here names the current holder.
    The line is padded to a fixed width so that it covers the last holder's and no ``ftruncate`` is
    needed (it cost more than the write, inside every turn); a longer line, or a file an older
    authpool left longer, is trimmed as before."""
    global _holder_line  # noqa: PLW0603 - a per-process memo of one line
    pid, now = os.getpid(), int(time.time())
    if _holder_line[:2] != (pid, now):
        prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
        _holder_line = (pid, now, f"pid {pid} ({prog}) since {stamp}".encode().ljust(_HOLDER_WIDTH))
    line = _holder_line[2]
    if size == len(line):
        os.pwrite(fd, line, 0)
    else:
        _write_over(fd, line)


def _describe_holder(lock_file: Path) -> str | None:
    try:
        text = lock_file.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    return text or None


def _same_file(path: Path, fd: int) -> bool:
    """Whether ``fd`` is the file at ``path`` now (not deleted or replaced since it was opened)."""
    st = os.fstat(fd)
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


class _Kept:
    """Which locks keep descriptors between turns: the ones used last, at most ``_KEPT_LOCKS``.

    A process may touch thousands of lock files (a refresh lock per account, a probe lock per
    account, a home per test): keeping descriptors for all of them would run it out of descriptors
    (1,024 by default). The least recently used lock's kept descriptors are closed instead; the
    next turn on it opens what it needs, as without keeping.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._order: OrderedDict[tuple[str, str], Callable[[], None]] = OrderedDict()

    def touch(self, key: tuple[str, str], close: Callable[[], None]) -> None:
        """``key`` keeps descriptors (``close`` lets them go); the least recently used beyond the bound go."""
        with self._guard:
            self._order[key] = close
            self._order.move_to_end(key)
            evicted = []
            while len(self._order) > _KEPT_LOCKS:
                evicted.append(self._order.popitem(last=False)[1])
        for close_kept in evicted:
            close_kept()

    def after_fork(self) -> None:
        self._guard = threading.Lock()
        self._order = OrderedDict()


_kept = _Kept()


class _Spare:
    """This process's node from its last turn on a lock, let go of but kept open: the next turn
    reuses it if nobody lined up after it meanwhile (the usual case without contention), so an
    uncontended lock creates and deletes no file."""

    def __init__(self, key: str) -> None:
        self._key = key
        self._guard = threading.Lock()
        self._node: tuple[int, str, int] | None = None  # (pid, name, descriptor)

    def take(self) -> tuple[str, int] | None:
        with self._guard:
            node, self._node = self._node, None
        if node is None or node[0] != os.getpid():
            return None  # none, or inherited across a fork: the parent's
        return node[1], node[2]

    def put(self, name: str, fd: int) -> None:
        with self._guard:
            old, self._node = self._node, (os.getpid(), name, fd)
        if old is not None and old[0] == os.getpid():
            os.close(old[2])
        _kept.touch(("spare", self._key), self.let_go)

    def let_go(self) -> None:
        """Close the kept node (nobody waits on a node nobody holds: a later waiter goes straight on)."""
        with self._guard:
            node, self._node = self._node, None
        if node is not None and node[0] == os.getpid():
            with contextlib.suppress(OSError):
                os.close(node[2])

    def after_fork(self) -> None:
        """In a forked child: close the child's copy of the parent's node (see _after_fork_in_child)."""
        self._guard = threading.Lock()
        node, self._node = self._node, None
        if node is not None:
            with contextlib.suppress(OSError):
                os.close(node[2])


_spares: dict[str, _Spare] = {}


def _spare(path: Path) -> _Spare:
    return _registered(_spares, path, lambda: _Spare(str(path)))


class _Descriptors:
    """Open descriptors of one lock file, each lent to one turn at a time and kept between turns:
    opening the file cost more than locking it (14 µs against 10 µs on a 2-CPU VM). Never shared:
    a flock belongs to the open file description, so two turns holding one descriptor would both
    believe they hold the lock. A fork starts with none (the parent's are the parent's)."""

    _KEPT = 2

    def __init__(self, path: Path) -> None:
        self.path = path
        self._guard = threading.Lock()
        self._free: list[tuple[int, int]] = []  # (pid, descriptor), unlocked

    def take(self) -> int:
        with self._guard:
            while self._free:
                pid, fd = self._free.pop()
                if pid == os.getpid():
                    return fd
        return _open(self.path)

    def give_back(self, fd: int) -> None:
        """Take ``fd`` back, unlocked (or close it if enough are kept)."""
        with self._guard:
            kept = len(self._free) < self._KEPT
            if kept:
                self._free.append((os.getpid(), fd))
        if not kept:
            os.close(fd)
            return
        _kept.touch(("descriptors", str(self.path)), self.let_go)

    def let_go(self) -> None:
        """Close every kept descriptor (unlocked, lent to nobody)."""
        with self._guard:
            free, self._free = self._free, []
        for pid, fd in free:
            if pid == os.getpid():
                with contextlib.suppress(OSError):
                    os.close(fd)

    def after_fork(self) -> None:
        """In a forked child: close the child's copies of the parent's descriptors."""
        self._guard = threading.Lock()
        free, self._free = self._free, []
        for _, fd in free:
            with contextlib.suppress(OSError):
                os.close(fd)


_descriptors: dict[str, _Descriptors] = {}


def _descriptors_of(path: Path) -> _Descriptors:
    return _registered(_descriptors, path, lambda: _Descriptors(path))


class _Turn:
    """One acquisition's way to the lock: its place in line (its node file, locked while it is in
    line or holds the lock), the node of the one before it, and the lock file.

    :meth:`advance` takes the steps in order: line up (under the queue file), wait for the one
    before to let go of its node, lock the lock file. Without blocking it stops at the first step
    that would wait, so the rest can go on in a waiter thread.
    """

    def __init__(self, lock: Lock, *, in_line: bool = True) -> None:
        self.lock = lock
        self.node_name = ""
        self.node: int | None = None  # our node, locked, once we are in line
        self.before: int | None = None  # the node of the one before us in line, until it lets go
        self.passed: str | None = None  # the node we waited on: deleted once we are done
        self.mutex: int | None = None  # the lock file, once locked
        self.pid = os.getpid()  # a turn inherited across a fork is the parent's: see finish
        self._lined_up = not in_line  # not in line: timeout=0 takes the lock file or nothing

    def advance(self, *, block: bool, wanted: Callable[[], bool] = lambda: True) -> bool:
        """Take the steps left; True once the lock file is ours (or, if ``wanted`` turns false, once
        nobody waits on us). Without ``block``, False at the first step that would wait."""
        if not self._lined_up:
            if not wanted():
                return True  # not in line yet: nobody waits on us
            if not self._line_up(block=block):
                return False
        if self.before is not None:
            if not _flock(self.before, block=block):
                return False
            _close(self.before)
            self.before = None
        return self._lock_file(block=block, wanted=wanted)

    def _lock_file(self, *, block: bool, wanted: Callable[[], bool]) -> bool:
        """Our turn has come: lock the lock file (unless nobody wants it any more)."""
        if not wanted():
            return True
        for _ in range(_REPLACED_ATTEMPTS):
            fd = self.lock.descriptors.take()
            try:
                if not _flock(fd, block=block):
                    self.lock.descriptors.give_back(fd)
                    return False
            except BaseException:
                os.close(fd)
                raise
            if _same_file(self.lock.path, fd):
                self.mutex = fd
                return True
            # We locked a file that is no longer the lock file (deleted or replaced meanwhile):
            # others lock the new one, so ours excludes no one. Lock the path again.
            _close(fd)
            if not wanted():
                return True
        raise LockTimeout(self.lock.path, self.lock.timeout, "nobody: the lock file kept being deleted or replaced")

    def _line_up(self, *, block: bool) -> bool:
        """Under the queue file, become last in line and note who was before. Our last turn's node
        (the spare), if it is still last in line, is our node again and nobody is before us; else
        a new node goes last. False if the queue file would make us wait."""
        spare = self.lock.spare.take() if self.node is None else None
        queue = _open(self.lock.queue_path)
        try:
            if not _flock(queue, block=block):
                if spare is not None:
                    self.lock.spare.put(*spare)  # taken again when the waiter thread goes on
                return False
            try:
                last = os.pread(queue, 256, 0).decode("ascii", "replace").strip()
                if spare is not None:
                    if self._reuse(spare, last):
                        return True
                    os.close(spare[1])  # someone lined up after it: theirs to delete
                if self.node is None:
                    self.node_name, self.node = self.lock.new_node()
                _write_over(queue, self.node_name.encode())
            finally:
                _unflock(queue)
        finally:
            os.close(queue)
        self._lined_up = True
        if last:
            try:
                self.before = os.open(self.lock.line_dir / last, os.O_RDWR | _CLOEXEC)
                self.passed = last
            except FileNotFoundError:
                pass  # deleted (a sweep, or whoever cleaned the directory): nobody to wait for
        return True

    def _reuse(self, spare: tuple[str, int], last: str) -> bool:
        """Take our last turn's node again if it is still last in line (under the queue file)."""
        if last != spare[0] or not _flock(spare[1], block=False):
            return False
        if os.fstat(spare[1]).st_nlink == 0:  # swept meanwhile: nobody could find it
            _unflock(spare[1])
            return False
        self.node_name, self.node = spare
        self._lined_up = True
        return True

    def finish(self, *, keep: bool = False) -> None:
        """Let go of everything: the lock file if ours, then our node (the next in line goes on).
        With ``keep``, our node stays open as this process's spare for its next turn."""
        if self.pid != os.getpid():
            # Inherited across a fork (a fork inside `with lock:`): the flocks are the parent's, on
            # descriptions the parent shares; unlocking here would let go of the parent's lock.
            for fd in (self.mutex, self.before, self.node):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self.mutex = self.before = self.node = None
            return
        try:
            if self.mutex is not None:
                mutex, self.mutex = self.mutex, None
                _unflock(mutex)
                self.lock.descriptors.give_back(mutex)
            if self.before is not None:
                os.close(self.before)  # never locked by us: only closed
                self.before = None
        finally:
            node, self.node = self.node, None
            if node is not None:
                if keep:
                    _unflock(node)
                    self.lock.spare.put(self.node_name, node)
                else:
                    _close(node)
            if self.passed is not None:  # off the critical path: the next in line is already going
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.lock.line_dir / self.passed)
                self.passed = None


class _Helpers:
    """Threads that wait for turns, kept between turns: starting a thread costs about 0.15 ms of
    CPU, as much as the rest of a contended turn, and under contention every turn waits.

    An idle helper is named ``authpool-lock-idle``; while it waits for a turn, ``authpool-lock-wait``
    and the lock file's name. A fork starts with none (the parent's threads are not the child's)."""

    _IDLE_KEPT = 4  # idle helpers kept per process; more end when their turn is done

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._pid = os.getpid()
        self._idle: list[queue.SimpleQueue[Callable[[], None]]] = []

    def run(self, job: Callable[[], None], name: str) -> None:
        """Run ``job`` in an idle helper, or a new one."""
        with self._guard:
            if self._pid != os.getpid():
                self._pid, self._idle = os.getpid(), []
            jobs = self._idle.pop() if self._idle else None
        if jobs is None:
            jobs = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(jobs,), name=name, daemon=True).start()
        jobs.put(lambda: self._named(job, name))

    def after_fork(self) -> None:
        """In a forked child: none of the parent's threads exist here."""
        self._guard = threading.Lock()
        self._pid, self._idle = os.getpid(), []

    @staticmethod
    def _named(job: Callable[[], None], name: str) -> None:
        threading.current_thread().name = name
        try:
            job()
        finally:
            threading.current_thread().name = "authpool-lock-idle"

    def _serve(self, jobs: queue.SimpleQueue[Callable[[], None]]) -> None:
        me = os.getpid()
        while True:
            jobs.get()()
            with self._guard:
                if self._pid != me or len(self._idle) >= self._IDLE_KEPT:
                    return
                self._idle.append(jobs)


_helpers = _Helpers()


def _after_fork_in_child() -> None:
    """A forked child (``os.fork``, multiprocessing's ``fork``) starts with none of its parent's lock
    state. Its copies of the parent's kept descriptors are closed: closing a copy never lets go of
    the parent's flock (a flock belongs to the open file description, which the parent still has
    open), whereas keeping them would let the child lock through the parent's description (both
    would "hold" the lock) and keep the parent's lock alive after the parent dies. Guards and
    thread locks are made afresh, since another thread of the parent may have held one at the fork."""
    global _registry_guard  # noqa: PLW0603 - module state, replaced once in a new process
    _registry_guard = threading.Lock()
    _thread_locks.clear()
    _kept.after_fork()
    for spare in _spares.values():
        spare.after_fork()
    for descriptors in _descriptors.values():
        descriptors.after_fork()
    _helpers.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Waiter:
    """The rest of a :class:`_Turn`, in a helper thread (:class:`_Helpers`).

    When :meth:`wait` returns True the caller owns the turn, the lock file locked. When it returns
    False (or raises), the caller has abandoned it and the thread owns it: it waits for the turn to
    come and passes it straight on, never locking the lock file for nobody.
    """

    def __init__(self, turn: _Turn, path: Path) -> None:
        self.turn = turn
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._state = threading.Lock()  # orders "granted" against "abandoned"
        self._abandoned = False
        _helpers.run(self._run, f"authpool-lock-wait {path.name}")

    def _wanted(self) -> bool:
        with self._state:
            return not self._abandoned

    def _run(self) -> None:
        try:
            self.turn.advance(block=True, wanted=self._wanted)
        except BaseException as e:  # noqa: BLE001 - handed to the caller (or dropped if it left)
            self.error = e
        with self._state:
            if not self._abandoned:
                self._done.set()
                return
        # Abandoned: the caller gave up (timeout, Ctrl-C). Our turn goes straight to the next in line.
        self.turn.finish()

    def wait(self, timeout: float) -> bool:
        """Whether the lock was granted within ``timeout`` seconds (False: abandoned)."""
        try:
            if self._done.wait(max(0.0, timeout)):
                return True
        except BaseException:
            # Interrupted while waiting (KeyboardInterrupt, the CLI's SIGTERM): give it up too.
            if not self._abandon():
                self.turn.finish()
            raise
        return not self._abandon()

    def _abandon(self) -> bool:
        """Stop wanting the lock; False if the waiter finished already (then the turn is still the caller's)."""
        with self._state:
            if self._done.is_set():
                return False
            self._abandoned = True
            return True


class Lock:
    """A lock on ``path`` that excludes other threads of this process and other processes, and
    serves the processes waiting for it in the order they came.

    Usable as ``with lock:``. Async callers take it in a worker thread, so the event loop keeps
    running while another process holds it; it may be released from another thread than the one
    that acquired it.

    Raises:
        LockTimeout: not acquired within ``timeout`` seconds; names the holder when known.
    """

    def __init__(self, path: Path, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        # Who is last in line (see _Turn); never deleted either.
        self.queue_path = path.with_name(path.name + ".queue")
        # The line's node files, one per acquisition in line or holding.
        self.line_dir = path.with_name(path.name + ".line")
        self._thread_lock = _thread_lock(path)  # looked up again at each acquisition (a fork makes new ones)
        self.spare = _spare(path)
        self.descriptors = _descriptors_of(path)
        self._turn: _Turn | None = None  # while held
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file locked

    def acquire(self, timeout: float | None = None) -> None:
        """Block until held, or raise :class:`LockTimeout` (``timeout`` defaults to the lock's own)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        thread_lock = _thread_lock(self.path)
        if not thread_lock.acquire(timeout=max(0.0, timeout)):
            raise LockTimeout(self.path, timeout, f"another thread of this process (pid {os.getpid()})")
        try:
            turn = self._try_now() if timeout <= 0 else self._wait_turn(deadline)
            if turn is None:
                raise LockTimeout(self.path, timeout, _describe_holder(self.path))
            try:
                assert turn.mutex is not None  # noqa: S101 - a granted turn holds the lock file
                st = os.fstat(turn.mutex)
                self._turn, self._identity, self._thread_lock = turn, (st.st_dev, st.st_ino), thread_lock
                with contextlib.suppress(OSError):  # who holds it is for messages only (a full disk)
                    _record_holder(turn.mutex, st.st_size)
                if _count(self.path) % _SWEEP_EVERY == 1:  # a process's first acquisition, then now and then
                    self._sweep()
            except BaseException:
                # Granted, then failed (Ctrl-C in the sweep): never keep a lock nobody will release.
                self._turn = self._identity = None
                turn.finish(keep=True)
                raise
        except BaseException:
            thread_lock.release()
            raise

    def _try_now(self) -> _Turn | None:
        """``timeout=0``: the lock file if it is free now, without lining up (nobody may wait on us)."""
        for _ in range(_Descriptors._KEPT + 1):  # kept descriptors of a replaced file, then a fresh one
            fd = self.descriptors.take()
            try:
                if not _flock(fd, block=False):
                    self.descriptors.give_back(fd)
                    return None
                if _same_file(self.path, fd):
                    turn = _Turn(self, in_line=False)
                    turn.mutex = fd
                    return turn
            except BaseException:
                os.close(fd)
                raise
            _close(fd)  # a file no longer at the path: never lent again; try the next
        return None

    def _wait_turn(self, deadline: float) -> _Turn | None:
        turn = _Turn(self)
        try:
            if turn.advance(block=False):
                return turn
        except BaseException:
            turn.finish()
            raise
        waiter = _Waiter(turn, self.path)  # owns the turn until it reports
        if not waiter.wait(deadline - time.monotonic()):
            return None
        if waiter.error is not None:
            turn.finish()
            raise waiter.error
        return turn

    def new_node(self) -> tuple[str, int]:
        """A new node file in the line's directory, locked: ``(name, descriptor)``."""
        for _ in range(3):
            name = f"{os.getpid()}-{secrets.token_hex(6)}"
            try:
                fd = os.open(self.line_dir / name, os.O_RDWR | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o600)
            except FileNotFoundError:
                self.line_dir.mkdir(mode=0o700, exist_ok=True)
                continue
            except FileExistsError:
                continue
            _flock(fd, block=True)  # a new file: nobody else has it
            return name, fd
        raise StoreError(f"could not create a file in {self.line_dir} to wait in line for {self.path}")

    def _sweep(self) -> None:
        """Delete the nodes nobody holds (left by a process that gave up its place and exited before its
        turn came, which nobody after it deletes). Harmless at any time: a node nobody holds is waited
        for by nobody, or by one who then finds it gone and goes straight on to the lock file."""
        try:
            names = os.listdir(self.line_dir)
        except FileNotFoundError:
            return
        for name in names:
            try:
                fd = os.open(self.line_dir / name, os.O_RDWR | _CLOEXEC)
            except OSError:
                continue
            try:
                if _flock(fd, block=False):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.line_dir / name)
            finally:
                os.close(fd)

    def _is_current(self) -> bool:
        """Whether the file we locked is the one at the path (unknown counts as yes)."""
        if self._identity is None:
            return True
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def ensure_held(self) -> None:
        """Check, before committing, that the file this object locked is still the lock file.

        Raises:
            LockLost: it was deleted or replaced while held; another process may hold the new one.
        """
        if not self._is_current():
            raise LockLost(self.path)

    def release(self) -> None:
        """Let the next in line in (another thread of this process, or the next process in line)."""
        turn, self._turn, self._identity = self._turn, None, None
        try:
            if turn is not None:
                turn.finish(keep=True)
        finally:
            self._thread_lock.release()

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
