"""Reading another tool's credentials file: read-only, bounded, and without quoting a value.

:func:`read_json_file` opens the file read-only (its bytes and mtime stay as they are) and turns
every way it can be unusable into one clear :class:`~pool.errors.PoolError` naming the file.
:class:`JsonObject` gives typed access whose errors name the key path and the expected type,
never the value: the values are tokens.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from authpool.errors import InvalidInput, NotFound

__all__ = ["MAX_FILE_BYTES", "JsonObject", "json_type", "read_file_bytes", "read_json_file"]

# A credentials file is a few kilobytes; refusing big files keeps a wrong path from being slurped.
MAX_FILE_BYTES = 1 << 20


def read_json_file(path: Path) -> Any:
    """Parse a small JSON file, opened read-only (its bytes and mtime stay as they are).

    Raises:
        NotFound: the file does not exist.
        InvalidInput: a directory or other non-file, unreadable, too large, empty, not UTF-8 or
            not JSON. Messages name the file and never quote its content.
    """
    data = read_file_bytes(path)
    if not data.strip():
        raise InvalidInput(f"{path} is empty")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput(f"{path} is not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        # Position only: the decoder's own message may quote the document.
        raise InvalidInput(f"{path} is not valid JSON (line {e.lineno} column {e.colno})") from None


def read_file_bytes(path: Path) -> bytes:
    """The bytes of a regular file of at most :data:`MAX_FILE_BYTES`, opened read-only.

    Raises:
        NotFound: the file does not exist.
        InvalidInput: a directory or other non-file, unreadable, or too large.
    """
    # O_NONBLOCK: opening a FIFO at this path must not hang; fstat then refuses it.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise NotFound(f"{path} does not exist") from None
    except IsADirectoryError:  # Windows; POSIX opens directories and fstat catches them
        raise InvalidInput(f"{path} is a directory, not a credentials file") from None
    except OSError as e:
        raise _unreadable(path, e) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InvalidInput(f"{path} is a directory, not a credentials file")
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInput(f"{path} is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                raise InvalidInput(f"{path} is larger than {MAX_FILE_BYTES // 1024} KiB; not a credentials file")
        return b"".join(chunks)
    except OSError as e:
        raise _unreadable(path, e) from None
    finally:
        os.close(fd)


def _unreadable(path: Path, e: OSError) -> InvalidInput:
    reason = "permission denied" if isinstance(e, PermissionError) else (e.strerror or type(e).__name__)
    return InvalidInput(f"cannot read {path}: {reason}")


class JsonObject:
    """Typed access to one JSON object of a source file.

    Every error names the file and the key path and says what type was expected; values are
    never quoted, since they are tokens.
    """

    def __init__(self, file: Path, doc: object, where: str = "") -> None:
        if not isinstance(doc, dict):
            what = f"'{where}'" if where else "the top level"
            raise InvalidInput(f"{file}: {what} must be a JSON object, not {json_type(doc)}")
        self.file = file
        self.doc: dict[str, Any] = doc
        self.where = where

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def _bad(self, key: str, wanted: str) -> InvalidInput:
        return InvalidInput(f"{self.file}: '{self._path(key)}' must be {wanted}, not {json_type(self.doc[key])}")

    def has(self, key: str) -> bool:
        return self.doc.get(key) is not None

    def obj(self, key: str) -> JsonObject:
        if key not in self.doc:
            raise InvalidInput(f"{self.file}: '{self._path(key)}' is missing")
        return JsonObject(self.file, self.doc[key], self._path(key))

    def text(self, key: str, *, required: bool = False) -> str | None:
        """A non-empty string (surrounding whitespace removed), or None when absent/null/empty."""
        value = self.doc.get(key)
        if value is None:
            if required:
                raise InvalidInput(f"{self.file}: '{self._path(key)}' is missing")
            return None
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        value = value.strip()
        if not value and required:
            raise InvalidInput(f"{self.file}: '{self._path(key)}' is empty")
        return value or None

    def number(self, key: str) -> float | None:
        value = self.doc.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._bad(key, "a number")
        if not math.isfinite(value):  # json reads 1e999 as inf, which no later JSON write accepts
            raise InvalidInput(f"{self.file}: '{self._path(key)}' must be a finite number")
        return float(value)


def json_type(value: object) -> str:
    """How JSON calls the type of a parsed value ("a string", "an array", "null"), for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
