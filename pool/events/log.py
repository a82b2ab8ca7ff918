"""The event log: ``events.jsonl`` in the home, appended by every process, read by ``authpool log``,
``authpool top`` and the gateway's dashboard.

Writing never holds up a request: :meth:`EventLog.emit` puts the event in a bounded in-memory list
and wakes this process's writer thread, which appends everything pending in one ``write()`` on a
file opened with ``O_APPEND``, so lines of several processes never interleave mid-line. When the
file passes ``max_bytes`` the writer that notices it (under a lock file, re-checking the size)
renames it to ``events.jsonl.1`` (``.1`` to ``.2`` … up to ``keep``), so the log stays bounded.
If events come faster than the disk takes them, the oldest pending ones are dropped and counted,
never the request. Readers (:func:`read_events`, :func:`follow_events`) skip lines that are not
events (a torn last line, a foreign one) and follow a rotation by the file's identity.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from authpool.events.event import Event
from authpool.events.writer import Writer
from authpool.storage.lock import Lock

__all__ = ["EventFilter", "EventLog", "follow_events", "read_events"]

log = logging.getLogger("authpool")

MAX_BYTES = 8 * 1024 * 1024  # a file's size before it is rotated
KEEP = 3  # rotated files kept (events.jsonl.1 .. .3): at most 32 MB in all
PENDING_MAX = 10_000  # events waiting for the writer before the oldest are dropped
LINGER = 0.05  # seconds the writer gathers events before a write (readers poll every 0.2 s)
FILE_MODE = 0o600


@dataclass(frozen=True)
class EventFilter:
    """Which events a reader wants: an account (id or provider/label), a provider, a start time, kinds."""

    account: str | None = None
    provider: str | None = None
    since: float | None = None
    kinds: frozenset[str] | None = None

    def __call__(self, event: Event) -> bool:
        return event.matches(account=self.account, provider=self.provider, since=self.since, kinds=self.kinds)


class EventLog:
    """This process's writer of ``path`` (one per pool; threads share it)."""

    def __init__(self, path: Path, *, max_bytes: int = MAX_BYTES, keep: int = KEEP,
                 lock_path: Path | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock_path = lock_path or path.with_name(path.name + ".lock")
        self._pending: deque[Event] = deque()
        self.dropped = 0  # events lost because the writer fell behind (or the disk failed)
        self._overflowing = False  # dropping since the writer last took the pending events
        self._guard = threading.Lock()
        self._writing = threading.Lock()
        # A command that exits without closing its pool still logs: closed at exit once in use.
        self._writer = Writer(self.flush, name="authpool-events", on_start=self._close_at_exit, linger=LINGER)
        self._failing_since: float | None = None

    def emit(self, event: Event) -> None:
        """Queue ``event`` for the writer thread; returns at once."""
        with self._guard:
            overflow = len(self._pending) >= PENDING_MAX
            if overflow:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append(event)
            first = overflow and not self._overflowing  # one warning until the writer catches up
            self._overflowing = self._overflowing or overflow
        if first:
            log.warning("the event log %s fell %d events behind: the oldest are dropped (counted in "
                        "authpool_events_dropped_total)", self.path, PENDING_MAX)
        self._writer.kick()  # after close() it does not: close()'s own flush() writes what is pending

    def flush(self) -> None:
        """Write every pending event now (the writer thread does this on its own)."""
        with self._writing:
            with self._guard:
                batch = list(self._pending)
                self._pending.clear()
                self._overflowing = False
            if not batch:
                return
            lines = []
            for e in batch:
                try:
                    lines.append(e.to_json() + "\n")
                except (TypeError, ValueError):  # an event that cannot be a line: it alone is lost
                    with self._guard:
                        self.dropped += 1
            data = "".join(lines).encode("ascii")
            try:
                size = self._append(data)
                self._failing_since = None
            except OSError as e:
                with self._guard:
                    self.dropped += len(batch)
                if self._failing_since is None:  # one warning per outage, not one per batch
                    self._failing_since = time.time()
                    log.warning("could not write the event log %s: %s", self.path, e.strerror or e)
                return
            if size > self.max_bytes:
                self._rotate()

    def _close_at_exit(self) -> None:
        atexit.register(_close_at_exit, weakref.ref(self))

    def close(self) -> None:
        """Stop the writer thread (after its current write) and write what is pending."""
        self._writer.stop()
        self.flush()

    def _append(self, data: bytes) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
        try:
            view = memoryview(data)
            while view:  # one write() in practice; a short write (disk nearly full) continues it
                written = os.write(fd, view)
                view = view[written:]
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def _rotate(self) -> None:
        """Move the full file aside (``.1`` …), once, whichever process noticed first."""
        lock = Lock(self._lock_path, timeout=5.0)
        try:
            lock.acquire()
        except Exception:  # noqa: BLE001 - another process is rotating; this write already landed
            return
        try:
            try:
                if self.path.stat().st_size <= self.max_bytes:
                    return  # another process rotated it meanwhile
            except FileNotFoundError:
                return
            for n in range(self.keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        except OSError as e:
            log.warning("could not rotate the event log %s: %s", self.path, e.strerror or e)
        finally:
            lock.release()


def _close_at_exit(ref: weakref.ref[EventLog]) -> None:
    log_ = ref()
    if log_ is not None:
        log_.close()


def _files(path: Path, keep: int = KEEP) -> list[Path]:
    """The log's files, oldest first."""
    rotated = [path.with_name(f"{path.name}.{n}") for n in range(keep + 4, 0, -1)]
    return [p for p in [*rotated, path] if p.exists()]


def read_events(path: Path, want: EventFilter | None = None) -> Iterator[Event]:
    """Every event in the log (rotated files first), oldest first, that ``want`` accepts."""
    return _read_files(_files(path), want)


def _read_files(files: list[Path], want: EventFilter | None) -> Iterator[Event]:
    for file in files:
        try:
            with file.open("rb") as f:
                for raw in f:
                    event = _parse(raw)
                    if event is not None and (want is None or want(event)):
                        yield event
        except FileNotFoundError:
            continue  # rotated away while reading: its lines are in the next file


def follow_events(path: Path, want: EventFilter | None = None, *, poll: float = 0.2,
                  stop: threading.Event | None = None, from_end: bool = False,
                  on_idle: Callable[[], None] | None = None) -> Iterator[Event]:
    """The log's events as they are written, like ``tail -f`` (after the existing ones, unless
    ``from_end``), following rotations; ends when ``stop`` is set. ``on_idle`` is called each
    time the reader has caught up with the log (before it waits)."""
    tail = _Tail(path, from_end=from_end)
    try:
        while stop is None or not stop.is_set():
            lines = tail.read()
            for raw in lines:
                event = _parse(raw)
                if event is not None and (want is None or want(event)):
                    yield event
            if lines or tail.rotated():
                continue
            if on_idle is not None:
                on_idle()
            if stop is not None:
                stop.wait(poll)
            else:
                time.sleep(poll)
    finally:
        tail.close_all()


class _Tail:
    """The log read line by line as it grows, across rotations.

    Files are told apart by identity, not name: the file being read may be renamed to ``.1`` under
    the reader, and between two looks a new file may be written and rotated too. So on a rotation
    the reader reads its file to the end, then every rotated file it has not read (oldest first),
    then the file now at the path, each opened at once (an open file cannot be rotated away from
    under the reader). A file rotated out of ``keep`` before anyone opened it is gone: the log is
    bounded, not a queue. An identity is (device, inode) while the file is open (an open file keeps
    its inode), and (device, inode, first bytes) once it is closed: a deleted file's inode is soon
    reused by a new one, whose first line tells it apart.
    """

    def __init__(self, path: Path, *, from_end: bool) -> None:
        self.path = path
        self.file: BinaryIO | None = None
        self.identity: tuple[int, int] | None = None
        self.partial = b""
        self.current = False  # the file being read is the one at the path (not a rotated one)
        self.done: set[_Key] = set()  # files read to their end, never to be read again
        self.carry: list[bytes] = []  # the last lines of a file that was rotated away, not yet handed out
        rotated = [p for p in _files(path) if p != path]
        if from_end:
            self.done.update(k for k in map(_key, rotated) if k is not None)
            self.backlog: list[BinaryIO] = []
            try:
                self._take(path.open("rb"))
            except FileNotFoundError:
                pass
            else:
                self._skip_to_end()
        else:
            self.backlog = self._open_all([*rotated, path])

    def _skip_to_end(self) -> None:
        if self.file is not None:
            self.file.seek(0, os.SEEK_END)

    def _open_all(self, paths: list[Path]) -> list[BinaryIO]:
        """``paths`` opened now, those already read left out."""
        opened: list[BinaryIO] = []
        for p in paths:
            try:
                f = p.open("rb")
            except FileNotFoundError:
                continue
            if _key_of(f) in self.done:
                f.close()
            else:
                opened.append(f)
        return opened

    def _take(self, f: BinaryIO) -> None:
        self.close()
        st = os.fstat(f.fileno())
        self.file, self.identity, self.partial = f, (st.st_dev, st.st_ino), b""
        self.current = _identity(self.path) == self.identity

    def read(self) -> list[bytes]:
        """The complete lines written since the last read (a line still being written waits)."""
        if self.carry:
            lines, self.carry = self.carry, []
            return lines
        while True:
            if self.file is None:
                if not self.backlog:
                    return []
                self._take(self.backlog.pop(0))
                continue
            chunk = self.file.read()
            if chunk:
                lines = (self.partial + chunk).split(b"\n")
                self.partial = lines.pop()
                return lines
            if self.current:
                return []
            self._finish()  # a rotated file read to its end: on to the next

    def rotated(self) -> bool:
        """When the file being read is no longer at the path: keep its last lines, queue every file
        that came after it (rotated ones not read yet, then the one at the path); True if any."""
        if self.backlog or self.carry or (self.file is not None and _identity(self.path) == self.identity):
            return False
        if self.file is not None:  # what was appended between the last read and the rotation
            rest = (self.partial + self.file.read()).split(b"\n")
            self.carry = [line for line in rest if line]
        self._finish()
        self.backlog = self._open_all([*(p for p in _files(self.path) if p != self.path), self.path])
        return bool(self.backlog or self.carry)

    def _finish(self) -> None:
        if self.file is not None:
            self.done.add(_key_of(self.file))
        self.close()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.file, self.identity, self.current, self.partial = None, None, False, b""

    def close_all(self) -> None:
        self.close()
        for f in self.backlog:
            f.close()
        self.backlog = []


_Key = tuple[int, int, bytes]
# Bytes of a file's start that tell it apart from a later file on the same inode: its first
# line or more (every line carries its time to the microsecond, its process and its account).
_HEAD = 1024


def _key_of(f: BinaryIO) -> _Key:
    st = os.fstat(f.fileno())
    at = f.tell()
    f.seek(0)
    head = f.read(_HEAD)
    f.seek(at)
    return (st.st_dev, st.st_ino, head)


def _key(path: Path) -> _Key | None:
    try:
        with path.open("rb") as f:
            return _key_of(f)
    except FileNotFoundError:
        return None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def _parse(raw: bytes) -> Event | None:
    try:
        line = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    return Event.from_json(line) if line else None
