"""Atomic file replacement: a reader sees the old content or the new, never a mix.

Write to a temporary file in the same directory (same filesystem, so the rename is atomic),
flush and fsync it, ``os.replace`` it over the target, then fsync the directory so the rename
itself survives a power cut. On any failure the temporary file is removed and the target is
untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from authpool.errors import StoreWriteError
from authpool.home import FILE_MODE

__all__ = ["fsync_dir", "write_atomic"]


def write_atomic(path: Path, data: bytes, *, mode: int = FILE_MODE,
                 before_replace: Callable[[], None] | None = None) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    ``before_replace`` runs after the data is on disk, just before the rename; if it raises,
    nothing is replaced and the exception propagates (the store checks its lock there).

    Raises:
        StoreWriteError: the write failed (disk full, read-only, permissions); ``path`` is unchanged.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise StoreWriteError(_describe(path, e)) from e
    except BaseException:
        _remove_quietly(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _describe(path: Path, e: OSError) -> str:
    reason = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EFBIG: "the file size limit is exceeded",
        errno.EROFS: "the filesystem is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
    }.get(e.errno or 0, e.strerror or str(e))
    return f"could not write {path}: {reason}; nothing was changed"
