"""Logins linked to an official tool's own credential file, kept in step in both directions.

A login imported from Claude Code, the Codex CLI, the Gemini CLI or opencode shares its refresh
token with that tool. With providers that rotate refresh tokens, whichever program refreshes
second presents a spent token and the login is revoked: the most common complaint in this field.
A *linked* account keeps the tool's file as the other half of its state:

- before authpool renews the login (under the account's refresh lock), it reads the file; if the
  tool renewed the login since authpool last saw the file, authpool adopts the tool's tokens and
  makes no token call;
- after authpool renews the login, it writes the new tokens back into the file at once:
  atomically (temp file in the same directory, fsync, rename), keeping every other field, the
  file's own key names and units (milliseconds where the tool uses them) and its mode; if the
  file changed since it was read, it is read again and the newer login wins.

Which side is newer is told by the refresh token itself: authpool remembers a digest of the
refresh token it last read from or wrote to the file (``Secret.extra["link_seen"]``, in the
secret store beside the tokens). A file whose refresh token has another digest was written by
the tool since, and a tool only ever writes a newer login.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authpool.accounts.jwt import jwt_claims
from authpool.accounts.model import LinkedFile
from authpool.accounts.secret import Secret
from authpool.errors import InvalidInput, StoreWriteError
from authpool.storage.atomicfile import write_atomic

__all__ = ["LINKABLE", "FileLogin", "changed_since", "digest", "read_login", "spending", "spent", "write_login"]

LINKABLE = ("claude-code", "codex", "gemini", "opencode")
_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class FileLogin:
    """The login a tool's file holds now, and the file's identity when it was read."""

    access_token: str
    refresh_token: str | None
    expires_at: float | None
    extra: dict[str, str]
    signature: tuple[int, int, str]  # (mtime ns, size, sha256 of the content)


class _Changed(Exception):
    """The file changed between reading it and replacing it: read it again and decide again."""


def digest(refresh_token: str | None) -> str:
    """A short one-way digest of a refresh token: enough to tell two apart, useless to anyone else."""
    return hashlib.sha256((refresh_token or "").encode()).hexdigest()[:16]


_SPENT_KEPT = 8  # digests of refresh tokens authpool has spent, kept per linked login


def spent(secret: Secret) -> list[str]:
    """Digests of the refresh tokens authpool spent for this login, newest first (``link_spent``)."""
    return [d for d in secret.extra.get("link_spent", "").split(",") if d]


def spending(secret: Secret) -> str:
    """``link_spent`` once ``secret``'s refresh token is spent (a rotation, or an adoption of the
    tool's renewal): a file that still holds it, or gets it back from a tool that read it earlier,
    must never be taken for a newer login."""
    return ",".join(list(dict.fromkeys([digest(secret.refresh_token), *spent(secret)]))[:_SPENT_KEPT])


def _known(secret: Secret, refresh_token: str | None) -> bool:
    """Whether a file's refresh token is one authpool saw there or spent: never a renewal by the tool."""
    found = digest(refresh_token)
    return found == secret.extra.get("link_seen") or found in spent(secret)


def read_login(link: LinkedFile) -> FileLogin:
    """The login in the linked file now.

    Raises:
        InvalidInput: the file is missing, unreadable, or does not hold a login in the tool's format.
    """
    data, signature = _read(Path(link.path))
    doc = _parse(data, link)
    access, refresh, expires, extra = _tokens(link, doc)
    return FileLogin(access, refresh, expires, extra, signature)


def changed_since(link: LinkedFile, secret: Secret) -> FileLogin | None:
    """The file's login if the tool renewed it since authpool last saw the file, else None.

    Raises:
        InvalidInput: as :func:`read_login`.
    """
    login = read_login(link)
    if login.refresh_token is None or login.refresh_token == secret.refresh_token:
        return None
    if _known(secret, login.refresh_token):
        return None  # what authpool last saw there, or a token it spent: authpool's own login is the newer
    return login


def write_login(link: LinkedFile, secret: Secret, seen: FileLogin | None) -> FileLogin | None:
    """Write ``secret``'s tokens back into the file, unless the tool wrote a newer login meanwhile.

    ``seen`` is the file as read before the refresh. Returns the tool's newer login when it wrote
    one since (the caller adopts it), else None once the file holds ``secret``'s tokens.

    Raises:
        InvalidInput: the file is gone or no longer in the tool's format.
        StoreWriteError: the file cannot be written.
    """
    for _attempt in range(3):
        data, signature = _read(Path(link.path))
        doc = _parse(data, link)
        _, refresh, _, _ = _tokens(link, doc)
        if seen is not None and signature != seen.signature and refresh != secret.refresh_token and \
                not _known(secret, refresh):
            return read_login(link)  # the tool renewed it after our read: its login is the newer
        _merge(link, doc, secret)
        mode = stat.S_IMODE(os.stat(link.path).st_mode)

        def still(sig: tuple[int, int, str] = signature) -> None:
            _unchanged(Path(link.path), sig)

        try:
            write_atomic(Path(link.path), _dump(doc, data), mode=mode, before_replace=still)
        except _Changed:
            seen = None if seen is None else FileLogin(seen.access_token, seen.refresh_token, seen.expires_at,
                                                       seen.extra, signature)
            continue
        return None
    raise StoreWriteError(f"{link.path} kept changing while authpool wrote the renewed login back; "
                          "the pool holds it, the tool's file was left as the tool wrote it")


# -- the files -------------------------------------------------------------------------------


def _read(path: Path) -> tuple[bytes, tuple[int, int, str]]:
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read(_MAX_BYTES + 1)
    except FileNotFoundError:
        raise InvalidInput(f"the linked file {path} is gone (the tool logged out?); "
                           "`authpool accounts unlink` keeps the account on its own") from None
    except OSError as e:
        raise InvalidInput(f"cannot read the linked file {path}: {e.strerror}") from None
    if len(data) > _MAX_BYTES:
        raise InvalidInput(f"the linked file {path} is larger than a credentials file can be")
    return data, (st.st_mtime_ns, st.st_size, hashlib.sha256(data).hexdigest())


def _unchanged(path: Path, signature: tuple[int, int, str]) -> None:
    try:
        _, now = _read(path)
    except InvalidInput:
        raise _Changed from None
    if now != signature:
        raise _Changed


def _parse(data: bytes, link: LinkedFile) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(f"the linked file {link.path} is not JSON") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"the linked file {link.path} does not hold a JSON object")
    return doc


def _dump(doc: dict[str, Any], original: bytes) -> bytes:
    # Keep the tool's own layout as far as JSON allows: indented files stay indented.
    indent = 2 if b"\n" in original.strip() else None
    text = json.dumps(doc, indent=indent)
    return (text + "\n").encode() if original.endswith(b"\n") else text.encode()


def _section(link: LinkedFile, doc: dict[str, Any]) -> dict[str, Any]:
    """The object that holds the login: the whole file, or the tool's login entry in it."""
    key = {"claude-code": "claudeAiOauth", "codex": "tokens", "opencode": link.entry}.get(link.source, "")
    if not key:
        return doc
    section = doc.get(key)
    if not isinstance(section, dict):
        raise InvalidInput(f"the linked file {link.path} has no login {key!r} any more")
    return section


def _tokens(link: LinkedFile, doc: dict[str, Any]) -> tuple[str, str | None, float | None, dict[str, str]]:
    s = _section(link, doc)
    names = _NAMES[link.source]
    access, refresh = s.get(names["access"]), s.get(names["refresh"])
    if not isinstance(access, str) or not access:
        raise InvalidInput(f"the linked file {link.path} holds no access token")
    expires: float | None = None
    if names.get("expires"):
        raw = s.get(names["expires"])
        if isinstance(raw, int | float) and not isinstance(raw, bool) and raw > 0:
            expires = raw / 1000 if raw > 1e12 else float(raw)
    else:
        exp = jwt_claims(access).get("exp")  # the Codex CLI keeps no expiry: the token says it
        expires = float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None
    extra = {k: v for k in ("id_token", "account_id") if isinstance(v := s.get(k), str) and v}
    return access, refresh if isinstance(refresh, str) and refresh else None, expires, extra


# Per tool: the key names of access token, refresh token and expiry (milliseconds), as its file has them.
_NAMES: dict[str, dict[str, str]] = {
    "claude-code": {"access": "accessToken", "refresh": "refreshToken", "expires": "expiresAt"},
    "codex": {"access": "access_token", "refresh": "refresh_token"},
    "gemini": {"access": "access_token", "refresh": "refresh_token", "expires": "expiry_date"},
    "opencode": {"access": "access", "refresh": "refresh", "expires": "expires"},
}


def _merge(link: LinkedFile, doc: dict[str, Any], secret: Secret) -> None:
    s = _section(link, doc)
    names = _NAMES[link.source]
    s[names["access"]] = secret.access_token
    if secret.refresh_token:
        s[names["refresh"]] = secret.refresh_token
    if names.get("expires") and secret.expires_at is not None:
        s[names["expires"]] = int(secret.expires_at * 1000)  # every tool that keeps one keeps milliseconds
    if link.source == "codex":
        if secret.extra.get("id_token"):
            s["id_token"] = secret.extra["id_token"]
        doc["last_refresh"] = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")

