"""The pool file of authpool 0.1: ``pool.json``, read once to move it into ``pool.db``.

The metadata lived in one JSON document rewritten whole on every change, which made a pool of
thousands of accounts slow (see ``docs/design.md``, "The local store is SQLite"). The local
store (:mod:`authpool.storage.localstore`) reads a home's ``pool.json`` here, strictly — a
damaged file is refused, never half-imported — and moves it into ``pool.db`` on its first write.
The document's schema migrations live here too: they apply to the account documents wherever
they are stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from authpool.accounts.model import SCHEMA_VERSION, PoolFile
from authpool.errors import StoreCorrupt, StoreError, StoreVersionError

__all__ = ["MIGRATIONS", "extras_too_deep", "migrate", "parse_legacy", "read_legacy", "validation_summary"]


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


def read_legacy(path: Path) -> PoolFile | None:
    """The pool as ``pool.json`` holds it, or None if there is no such file.

    Raises:
        StoreCorrupt, StoreVersionError: the file cannot be used (it is left untouched).
        StoreError: unreadable, or a symbolic link.
    """
    if path.is_symlink():
        raise StoreError(f"{path} is a symbolic link; authpool does not follow it: move the real file into the home")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror}") from e
    try:
        return parse_legacy(path, data)
    except MovedToDatabase:
        return None


# What pool.json holds once the pool moved into pool.db: a pool of a schema no authpool reads.
# An authpool from before pool.db, still running (a server started before the upgrade), refuses it
# with "upgrade authpool" instead of finding the file gone and serving an empty pool, or writing a
# new pool.json nobody reads (its renewals would then bump no generation a newer process sees).
MOVED_MARKER = (json.dumps({"schema_version": 1_000_000, "moved_to": "pool.db",
                            "note": "the pool is in pool.db; this authpool is too old to read it: upgrade authpool"},
                           indent=1) + "\n").encode()


class MovedToDatabase(Exception):  # a signal between two functions of this module, never raised out
    """``pool.json`` is the marker a move into ``pool.db`` leaves."""


def is_moved_marker(path: Path) -> bool:
    """Whether ``path`` is the marker a move into ``pool.db`` leaves."""
    try:
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and raw.get("moved_to") == "pool.db"


def parse_legacy(path: Path, data: bytes) -> PoolFile:
    """Parse the bytes of a ``pool.json``, strictly (see the module docstring).

    Raises:
        StoreCorrupt, StoreVersionError: as :func:`read_legacy`.
    """
    backup = path.with_name(path.name + ".bak")
    backup_found = backup if backup.exists() else None
    try:
        # Decoded here, strictly: json.loads(bytes) would guess UTF-16 or UTF-32 from the
        # first bytes and then report a syntax error at line 1 column 1.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        detail = f"not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start}"
        raise StoreCorrupt(path, detail, backup_found) from None
    if "\x00" in text:
        raise StoreCorrupt(path, "contains NUL bytes: binary data, not JSON text", backup_found)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise StoreCorrupt(path, f"invalid JSON at line {e.lineno} column {e.colno}", backup_found) from e
    except RecursionError:
        raise StoreCorrupt(path, "JSON nested too deeply", backup_found) from None
    if not isinstance(raw, dict):
        raise StoreCorrupt(path, "top level is not a JSON object", backup_found)
    if raw.get("moved_to") == "pool.db":
        raise MovedToDatabase(path)
    version = raw.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StoreCorrupt(path, "missing or invalid schema_version", backup_found)
    if version > SCHEMA_VERSION:
        raise StoreVersionError(path, version, SCHEMA_VERSION)
    raw = migrate(raw)
    try:
        pool = PoolFile.model_validate(raw)
    except ValidationError as e:
        raise StoreCorrupt(path, validation_summary(e), backup_found) from None
    if extras_too_deep(pool):
        raise StoreCorrupt(path, "JSON nested too deeply", backup_found)
    return pool


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


def extras_too_deep(pool: PoolFile) -> bool:
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


def validation_summary(e: ValidationError) -> str:
    # Locations and messages only: pydantic's default text includes input values.
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "document"
        parts.append(f"{loc}: {err['msg']}")
    more = f" (+{e.error_count() - 3} more)" if e.error_count() > 3 else ""
    return "; ".join(parts) + more
