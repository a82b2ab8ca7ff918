"""Locks shared by threads and processes: the pool file lock and per-account refresh locks.

A :class:`Lock` is a ``threading.Lock`` (one per path per process, so threads queue in memory
instead of polling the file) plus an OS file lock (``flock``) for other processes. Lock files are
never deleted: a deleted lock file lets two processes lock two different inodes and both believe
they hold the lock. Each holder writes its pid and command into the lock file, so a timeout can
say who is holding it.

A contended lock is waited for in the kernel: a blocking ``flock`` in a waiter thread, which the
kernel wakes the moment the holder lets go. ``flock`` alone is not fair, though: on release the
kernel wakes every waiter and the first to run wins, which is often the releasing process itself
coming straight back. So a lock has a second file, ``NAME.lock.queue``: a contender takes the
queue file first and lets go of it once it holds the lock file. At most one process waits for
the lock file itself, and it gets it next; a holder that releases and asks again queues behind
it. A blocking ``flock`` cannot be cancelled, so a caller whose timeout passes *abandons* its
waiter rather than stopping it; an abandoned waiter lets go of whatever it is granted later, at
once. Nobody is left holding a lock they stopped waiting for.

Someone else may still delete a lock file (a cleaner, an ``rm -rf``). Two checks keep that from
losing a change. After locking, the locked file must still be the file at the path (same device
and inode), else the lock is taken again. And a holder about to commit asks
:meth:`Lock.ensure_held` first: if its file was deleted or replaced meanwhile, another process may
hold the new one, so the holder raises :class:`LockLost` instead of writing (the store then
redoes its change under a fresh lock). What remains is the moment between that check and the
commit itself.

``flock`` is POSIX; so is the rest of the pool file's write discipline (``pwrite``, directory
fsyncs). Elsewhere acquiring a lock raises :class:`~authpool.errors.StoreError` saying so.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from authpool.errors import LockLost, LockTimeout, StoreError

__all__ = ["DEFAULT_TIMEOUT", "Lock"]

DEFAULT_TIMEOUT = float(os.environ.get("AUTHPOOL_LOCK_TIMEOUT", "15"))

_registry_guard = threading.Lock()
_thread_locks: dict[str, threading.Lock] = {}


def _thread_lock(path: Path) -> threading.Lock:
    key = str(path)
    with _registry_guard:
        lock = _thread_locks.get(key)
        if lock is None:
            lock = _thread_locks[key] = threading.Lock()
        return lock


if sys.platform != "win32":
    import fcntl

    def _try_flock(fd: int) -> bool:
        """Lock ``fd`` if nobody holds its file; never waits."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _flock(fd: int) -> None:
        """Wait in the kernel until ``fd``'s file is ours."""
        fcntl.flock(fd, fcntl.LOCK_EX)

    def _unflock(fd: int) -> None:
        # Explicitly, not only by closing: a child forked meanwhile shares the open file
        # description, and would otherwise keep the lock after we close our descriptor.
        fcntl.flock(fd, fcntl.LOCK_UN)

else:  # pragma: no cover - not run on POSIX

    def _unsupported() -> StoreError:
        return StoreError("authpool's file locks need POSIX flock, which this platform does not have")

    def _try_flock(fd: int) -> bool:
        raise _unsupported()

    def _flock(fd: int) -> None:
        raise _unsupported()

    def _unflock(fd: int) -> None:
        raise _unsupported()


def _open(path: Path) -> int:
    # Never O_TRUNC: the file names the current holder, and a contender must not erase that.
    return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)


def _close(fd: int) -> None:
    """Let go of ``fd``'s lock and close it."""
    try:
        _unflock(fd)
    finally:
        os.close(fd)


def _record_holder(fd: int) -> None:
    # Runs with the flock held. Contenders never truncate the file (see _open), so what we
    # write here names the current holder.
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
    info = f"pid {os.getpid()} ({prog}) since {stamp}".encode()
    # Write, then trim the tail: truncating to zero first makes the filesystem free and
    # reallocate a block on every acquisition (measured: 5x slower lock cycle on ext4).
    os.pwrite(fd, info, 0)
    os.ftruncate(fd, len(info))


def _describe_holder(lock_file: Path) -> str | None:
    try:
        text = lock_file.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    return text or None


class _Waiter:
    """The blocking part of an acquisition, in a daemon thread of its own: the queue file, then the lock file.

    Started with ``queue`` already locked or not. Once the lock file is granted the queue file is
    let go, and the caller owns ``mutex`` when :meth:`wait` returns True. When :meth:`wait`
    returns False (or raises), the caller has abandoned it and the waiter owns both descriptors:
    it lets go of whatever the kernel grants it later, since nobody wants it any more.
    """

    def __init__(self, queue: int, mutex: int, *, queued: bool, path: Path) -> None:
        self.queue = queue
        self.mutex = mutex
        self.error: OSError | None = None
        self._queued = queued
        self._done = threading.Event()
        self._state = threading.Lock()  # orders "granted" against "abandoned"
        self._abandoned = False
        threading.Thread(target=self._run, name=f"authpool-lock-wait {path.name}", daemon=True).start()

    def _run(self) -> None:
        granted = False
        try:
            if not self._queued:
                _flock(self.queue)
            with self._state:
                abandoned = self._abandoned
            if not abandoned:  # nobody waits for it any more: do not queue for the lock file itself
                _flock(self.mutex)
                granted = True
        except OSError as e:
            self.error = e
        finally:
            _close(self.queue)  # the next in the queue may now wait for the lock file
        with self._state:
            if not self._abandoned:
                self._done.set()
                return
        # Abandoned: the caller gave up (timeout, Ctrl-C). Whatever we got goes straight back.
        if granted:
            _close(self.mutex)
        else:
            os.close(self.mutex)

    def wait(self, timeout: float) -> bool:
        """Whether the lock was granted within ``timeout`` seconds (False: abandoned)."""
        try:
            if self._done.wait(max(0.0, timeout)):
                return True
        except BaseException:
            # Interrupted while waiting (KeyboardInterrupt, the CLI's SIGTERM): give it up too.
            if not self._abandon():
                if self.error is None:
                    _close(self.mutex)
                else:
                    os.close(self.mutex)
            raise
        return not self._abandon()

    def _abandon(self) -> bool:
        """Stop wanting the lock; False if the waiter finished already (then ``mutex`` is still the caller's)."""
        with self._state:
            if self._done.is_set():
                return False
            self._abandoned = True
            return True


class Lock:
    """A lock on ``path`` that excludes other threads of this process and other processes.

    Usable as ``with lock:``. Async callers take it in a worker thread, so the event loop keeps
    running while another process holds it; it may be released from another thread than the one
    that acquired it.

    Raises:
        LockTimeout: not acquired within ``timeout`` seconds; names the holder when known.
    """

    def __init__(self, path: Path, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        # Waiters queue on this file first (see _lock_file); never deleted either.
        self.queue_path = path.with_name(path.name + ".queue")
        self._thread_lock = _thread_lock(path)
        self._fd: int | None = None  # the locked descriptor while held
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file locked

    def acquire(self, timeout: float | None = None) -> None:
        """Block until held, or raise :class:`LockTimeout` (``timeout`` defaults to the lock's own)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if not self._thread_lock.acquire(timeout=max(0.0, timeout)):
            raise LockTimeout(self.path, timeout, f"another thread of this process (pid {os.getpid()})")
        try:
            while True:
                fd = self._lock_file(deadline)
                if fd is None:
                    raise LockTimeout(self.path, timeout, _describe_holder(self.path))
                st = os.fstat(fd)
                identity = (st.st_dev, st.st_ino)
                if self._is_path(identity):
                    self._fd, self._identity = fd, identity
                    _record_holder(fd)
                    return
                # We locked a file that is no longer the lock file (deleted or replaced while we
                # waited): others lock the new one, so ours excludes no one. Lock the path again.
                _close(fd)
                if time.monotonic() >= deadline:
                    raise LockTimeout(self.path, timeout, "nobody: the lock file kept being deleted or replaced")
        except BaseException:
            self._thread_lock.release()
            raise

    def _lock_file(self, deadline: float) -> int | None:
        """A descriptor of the lock file, locked; None if the deadline passed first.

        The queue file is taken first and let go once the lock file is ours, so at most one
        process at a time waits for the lock file itself: the holder, releasing it, cannot take
        it straight back (it has to queue again), and the one waiting longest gets it next.
        """
        queue = _open(self.queue_path)
        try:
            mutex = _open(self.path)
        except BaseException:
            os.close(queue)
            raise
        try:
            queued = _try_flock(queue)
            if queued and _try_flock(mutex):
                _close(queue)
                return mutex
        except BaseException:
            _close(queue)
            _close(mutex)
            raise
        if time.monotonic() >= deadline:
            _close(queue)
            os.close(mutex)
            return None
        waiter = _Waiter(queue, mutex, queued=queued, path=self.path)  # owns both until it reports
        if not waiter.wait(deadline - time.monotonic()):
            return None
        if waiter.error is not None:
            os.close(mutex)
            raise waiter.error
        return mutex

    def _is_path(self, identity: tuple[int, int]) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == identity

    def _is_current(self) -> bool:
        """Whether the file we locked is the one at the path (unknown counts as yes)."""
        return self._identity is None or self._is_path(self._identity)

    def ensure_held(self) -> None:
        """Check, before committing, that the file this object locked is still the lock file.

        Raises:
            LockLost: it was deleted or replaced while held; another process may hold the new one.
        """
        if not self._is_current():
            raise LockLost(self.path)

    def release(self) -> None:
        """Let the next waiter in (another thread of this process, or the kernel's next waiter)."""
        fd, self._fd, self._identity = self._fd, None, None
        try:
            if fd is not None:
                _close(fd)
        finally:
            self._thread_lock.release()

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
