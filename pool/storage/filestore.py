"""The pool file: shared metadata, changed only by locked read-modify-write.

Every mutation goes through :meth:`Store.update`: take the pool lock, read the file fresh,
apply the caller's change function, validate, write atomically, release. Nobody ever writes a
snapshot taken earlier, so one process can never write stale state over another's change (in
particular over a ``secret_generation`` bump that records a refresh-token rotation).

Reads take no lock: writes replace the file atomically, so a reader sees a whole old or a whole
new file. Parsed reads are cached by the file's identity (inode, mtime, size), which changes on
every replace.

A corrupt file is never overwritten: the error names it and the last good copy
(``pool.json.bak``, a hard link to the previous version taken before each replace).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Hashable
from pathlib import Path
from typing import Any, TypeVar

import anyio
from pydantic import ValidationError

from authpool.accounts.model import SCHEMA_VERSION, PoolFile, Rows
from authpool.errors import InvalidInput, LockLost, StoreCorrupt, StoreError, StoreVersionError
from authpool.home import Home
from authpool.storage.atomicfile import write_atomic
from authpool.storage.lock import DEFAULT_TIMEOUT, Lock

__all__ = ["MIGRATIONS", "Store"]

log = logging.getLogger("authpool")

T = TypeVar("T")

def _v1_to_v2(raw: dict[str, Any]) -> dict[str, Any]:
    """Version 2 added session bindings and per-account probation and quota-reset fields."""
    raw.setdefault("sessions", {})
    for acc in raw.get("accounts") or []:
        if isinstance(acc, dict):
            acc.setdefault("probation", False)
            acc.setdefault("quota_resets_at", None)
    return raw


# schema_version N -> function turning a version-N document into version N+1. Add an entry (and
# bump SCHEMA_VERSION) for every change; an older file is migrated in memory on read and saved
# in the new version on the next write (its previous version stays in pool.json.bak).
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}

_Signature = tuple[int, int, int, int]

_LOCK_LOST_ATTEMPTS = 3  # a lock file deleted under us this often in a row: someone keeps deleting it


class Store:
    """The pool file of one home directory.

    Example:
        >>> store = Store(Home.open())  # doctest: +SKIP
        >>> store.update(lambda pool: setattr(pool.find("a2b3c4d5"), "enabled", False))  # doctest: +SKIP
    """

    def __init__(self, home: Home, *, lock_timeout: float = DEFAULT_TIMEOUT) -> None:
        self.home = home
        self.path = home.pool_file
        self.backup_path = self.path.with_name(self.path.name + ".bak")
        self.lock = Lock(home.lock_file("pool"), lock_timeout)
        self._cache: tuple[_Signature, PoolFile] | None = None
        self._cache_guard = threading.Lock()

    # -- reading -------------------------------------------------------------------------

    def read(self) -> PoolFile:
        """The current pool, parsed. Treat it as read-only: change things with :meth:`update`.

        Raises:
            StoreCorrupt, StoreVersionError: the file cannot be used (it is left untouched).
        """
        fd = self._open()
        if fd is None:
            return PoolFile()
        try:
            st = os.fstat(fd)
            sig = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)
            with self._cache_guard:
                if self._cache is not None and self._cache[0] == sig:
                    return self._cache[1]
            data = _read_all(fd, st.st_size)
        finally:
            os.close(fd)
        pool = self._parse(data)
        with self._cache_guard:
            self._cache = (sig, pool)
        return pool

    def peek(self) -> PoolFile:
        """:meth:`read`: a local file answers at once (an ``fstat`` unless another process wrote)."""
        return self.read()

    def now(self) -> float:
        """This machine's clock: every process using the pool file runs on it."""
        return time.time()

    def _read_fresh(self) -> tuple[PoolFile, bool]:
        """Parse the file from disk, bypassing the cache; returns (pool, existed)."""
        if self.path.is_symlink():  # where O_NOFOLLOW does not exist: before a write cuts the link
            raise self._symlink_refused()
        fd = self._open()
        if fd is None:
            return PoolFile(), False
        try:
            data = _read_all(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        return self._parse(data), True

    def _open(self) -> int | None:
        """A read-only descriptor of the pool file, or None if there is none.

        Raises:
            StoreError: unreadable, or a symbolic link (see :meth:`_symlink_refused`).
        """
        try:
            return os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return None
        except OSError as e:
            if self.path.is_symlink():  # ELOOP (EMLINK on some BSDs) from O_NOFOLLOW
                raise self._symlink_refused() from None
            raise StoreError(f"cannot read {self.path}: {e.strerror}") from e

    def _symlink_refused(self) -> StoreError:
        # Refused rather than followed: every write replaces the file (a rename would cut the
        # link), and the file's lock, backup and vault live in the home, not next to the target.
        # See docs/design.md, "A symlinked pool file is refused".
        return StoreError(
            f"pool file {self.path} is a symbolic link (to {os.path.realpath(self.path)}); authpool does not "
            "follow it, because every write replaces the file and its lock, backup and vault live in the home: "
            "move the real file into the home, or point AUTHPOOL_HOME at the directory holding it (a symlinked "
            "home directory is fine)"
        )

    def _parse(self, data: bytes) -> PoolFile:
        backup = self.backup_path if self.backup_path.exists() else None
        try:
            # Decoded here, strictly: json.loads(bytes) would guess UTF-16 or UTF-32 from the
            # first bytes and then report a syntax error at line 1 column 1.
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            detail = f"not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start}"
            raise StoreCorrupt(self.path, detail, backup) from None
        if "\x00" in text:
            raise StoreCorrupt(self.path, "contains NUL bytes: binary data, not JSON text", backup)
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise StoreCorrupt(self.path, f"invalid JSON at line {e.lineno} column {e.colno}", backup) from e
        except RecursionError:
            raise StoreCorrupt(self.path, "JSON nested too deeply", backup) from None
        if not isinstance(raw, dict):
            raise StoreCorrupt(self.path, "top level is not a JSON object", backup)
        version = raw.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise StoreCorrupt(self.path, "missing or invalid schema_version", backup)
        if version > SCHEMA_VERSION:
            raise StoreVersionError(self.path, version, SCHEMA_VERSION)
        raw = migrate(raw)
        try:
            pool = PoolFile.model_validate(raw)
        except ValidationError as e:
            raise StoreCorrupt(self.path, _validation_summary(e), backup) from None
        if _extras_too_deep(pool):
            raise StoreCorrupt(self.path, "JSON nested too deeply", backup)
        return pool

    # -- writing -------------------------------------------------------------------------

    def update(self, change: Callable[[PoolFile], T]) -> T:
        """Apply ``change`` to a fresh read of the pool under the lock and save the result.

        ``change`` mutates the :class:`PoolFile` it is given (and may return a value, which
        ``update`` returns). If it raises, nothing is written. The result is validated before
        it is written; an invalid result (say, a duplicate label) raises :class:`InvalidInput`.
        If the lock file is deleted while held, ``change`` is applied again to a fresh read, so
        it must depend only on the pool it is given.

        Raises:
            LockTimeout: another process held the lock too long.
            StoreCorrupt, StoreVersionError: the file cannot be used (left untouched).
            StoreWriteError: the disk refused the write (the old file stays in place).
            LockLost: the lock file kept being deleted while held (nothing was written).
        """
        deadline = time.monotonic() + self.lock.timeout
        for attempt in range(1, _LOCK_LOST_ATTEMPTS + 1):
            try:
                return self._update_locked(change, max(0.0, deadline - time.monotonic()))
            except LockLost as e:
                # Our lock file was deleted or replaced while we held it: another process may
                # have written since our read. Nothing was written; redo the change on a fresh
                # read under the lock file that is there now.
                if attempt == _LOCK_LOST_ATTEMPTS:
                    raise
                log.warning("%s; applying the change again (attempt %d/%d)", e, attempt + 1, _LOCK_LOST_ATTEMPTS)
        raise AssertionError("unreachable")  # pragma: no cover

    def _update_locked(self, change: Callable[[PoolFile], T], timeout: float) -> T:
        self.lock.acquire(timeout)
        try:
            pool, existed = self._read_fresh()
            result = change(pool)
            try:
                checked = PoolFile.model_validate(pool.model_dump())
            except ValidationError as e:
                raise InvalidInput(f"change rejected: {_validation_summary(e)}") from None
            data = checked.model_dump_json(indent=1).encode()
            if existed:
                self._keep_backup()
            write_atomic(self.path, data, before_replace=self.lock.ensure_held)
        finally:
            self.lock.release()
        return result

    async def aupdate(self, change: Callable[[PoolFile], T]) -> T:
        """:meth:`update` for async callers: waits for the lock in a worker thread."""
        return await anyio.to_thread.run_sync(self.update, change)

    # -- the rest of the MetadataStore protocol -------------------------------------------

    def update_accounts(self, ids: Collection[str], change: Callable[[Rows], T]) -> T:
        """:meth:`update` limited to some accounts and the sessions (the pool file rewrites them all)."""
        wanted = set(ids)

        def apply(pool: PoolFile) -> T:
            rows = Rows({a.id: a for a in pool.accounts if a.id in wanted}, pool.sessions)
            result = change(rows)
            pool.sessions = rows.sessions
            return result

        return self.update(apply)

    @property
    def location(self) -> str:
        """The pool file's path."""
        return str(self.path)

    def version(self) -> Hashable:
        """The pool file's identity (inode, mtime, size, ctime): every write replaces the file."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)

    def named_lock(self, name: str, timeout: float) -> Lock:
        """The lock file ``locks/NAME.lock`` of the home (never deleted)."""
        return Lock(self.home.lock_file(name), timeout)

    def _keep_backup(self) -> None:
        # Called under the lock after the current file parsed cleanly: it is a good copy.
        # A hard link costs no data copy; the old inode is never written again because every
        # write replaces the file instead of changing it in place.
        tmp = self.backup_path.with_name(f".{self.backup_path.name}.{os.getpid()}.tmp")
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.link(self.path, tmp)
            os.replace(tmp, self.backup_path)
        except OSError:
            # Filesystems without hard links: fall back to a real copy.
            write_atomic(self.backup_path, self.path.read_bytes())
        finally:
            # Gone after a successful rename; after any failure, nothing of ours is left behind.
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def restore_backup(self, *, force: bool = False) -> Path:
        """Replace a corrupt pool file with the last good copy; returns where the replaced one went.

        A pool file that parses is refused unless ``force``: the backup is the version before
        the last write, so restoring over a healthy file undoes that write.

        Raises:
            StoreError: there is no usable backup, or the pool file is healthy (and not ``force``).
        """
        with self.lock:
            if self.path.is_symlink():
                raise self._symlink_refused()
            if not self.backup_path.exists():
                raise StoreError(f"no backup at {self.backup_path} to restore")
            good = self.backup_path.read_bytes()
            self._parse(good)  # refuse to restore a backup that is itself unusable
            healthy = self._healthy()
            if healthy and not force:
                raise StoreError(
                    f"pool file {self.path} is healthy; restoring {self.backup_path} would undo the last write "
                    "(use --force to restore it anyway)"
                )
            kind = "replaced" if healthy else "corrupt"
            aside = _unused(self.path.with_name(f"{self.path.name}.{kind}-{time.strftime('%Y%m%d-%H%M%S')}"))
            self.lock.ensure_held()  # before anything moves: a lost lock leaves the files as they were
            if self.path.exists():
                os.replace(self.path, aside)
            write_atomic(self.path, good)
            return aside

    def _healthy(self) -> bool:
        """Whether the pool file exists and is usable (a newer schema counts: it is not damaged)."""
        try:
            return self._read_fresh()[1]
        except StoreCorrupt:
            return False
        except StoreVersionError:
            return True


def _unused(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... whichever does not exist (never overwrite a kept file)."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def migrate(raw: dict[str, Any]) -> dict[str, Any]:
    """Bring an older document up to :data:`SCHEMA_VERSION` (in memory; saved on next write)."""
    version = int(raw["schema_version"])
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise StoreError(f"no migration from pool schema version {version}")
        raw = step(raw)
        version += 1
        raw["schema_version"] = version
    return raw


# Unknown fields are kept through a read-modify-write (extra="allow"), so their depth is bounded
# here: pydantic cannot write back values nested deeper than about 255 levels, and nothing
# authpool writes comes near this.
_MAX_EXTRA_DEPTH = 64


def _extras_too_deep(pool: PoolFile) -> bool:
    extras: list[dict[str, Any] | None] = [pool.model_extra]
    for acc in pool.accounts:
        extras += [acc.model_extra, acc.counters.model_extra, *(cd.model_extra for cd in acc.cooldowns.values())]
    extras += [binding.model_extra for binding in pool.sessions.values()]
    return any(extra and _deeper_than(extra, _MAX_EXTRA_DEPTH) for extra in extras)


def _deeper_than(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _read_all(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, max(size, 65536))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _validation_summary(e: ValidationError) -> str:
    # Locations and messages only: pydantic's default text includes input values.
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "document"
        parts.append(f"{loc}: {err['msg']}")
    more = f" (+{e.error_count() - 3} more)" if e.error_count() > 3 else ""
    return "; ".join(parts) + more
