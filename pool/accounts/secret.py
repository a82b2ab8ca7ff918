"""The secret of one account, and how it is serialised into one credential-store entry.

A :class:`Secret` never shows its values: ``repr``/``str`` print the kind and the expiry only,
so a secret that ends up in a log line, a traceback or an exception message leaks nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

from authpool.accounts.model import AccountKind
from authpool.errors import InvalidInput, SecretError

__all__ = ["Secret", "TokenSet", "time_left"]

_FORMAT = 1


@dataclass(frozen=True, repr=False)
class Secret:
    """An API key, or an OAuth token set (access token, refresh token, expiry)."""

    kind: AccountKind
    access_token: str | None = None
    refresh_token: str | None = None
    expires_at: float | None = None
    api_key: str | None = None
    # Provider extras that are as sensitive as the tokens (id_token, account ids for headers).
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_api_key(cls, key: str) -> Secret:
        key = key.strip()
        if not key:
            raise InvalidInput("the API key is empty")
        if any(c.isspace() for c in key):
            raise InvalidInput("the API key contains whitespace; paste the key alone")
        return cls(kind="api_key", api_key=key)

    @property
    def credential(self) -> str:
        """The value that goes into the auth header: the key, or the access token."""
        value = self.api_key if self.kind == "api_key" else self.access_token
        if not value:
            raise SecretError("the stored secret has no credential value")
        return value

    def values(self) -> list[str]:
        """Every sensitive string held, for scrubbing messages."""
        return [v for v in (self.access_token, self.refresh_token, self.api_key, *self.extra.values()) if v]

    def with_tokens(self, access_token: str, refresh_token: str | None, expires_at: float | None,
                    extra: dict[str, str] | None = None) -> Secret:
        """A copy with renewed tokens; keeps the old refresh token if the provider sent none, and the
        extras it did not replace."""
        return replace(
            self,
            access_token=access_token,
            refresh_token=refresh_token or self.refresh_token,
            expires_at=expires_at,
            extra={**self.extra, **(extra or {})},
        )

    def to_json(self) -> str:
        doc: dict[str, Any] = {"v": _FORMAT, "kind": self.kind}
        for name in ("access_token", "refresh_token", "expires_at", "api_key"):
            value = getattr(self, name)
            if value is not None:
                doc[name] = value
        if self.extra:
            doc["extra"] = self.extra
        # ASCII only: chunk sizes are counted in characters and some backends store UTF-16.
        return json.dumps(doc, ensure_ascii=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Secret:
        try:
            doc = json.loads(text)
            kind = doc["kind"]
            if kind not in ("oauth", "api_key"):
                raise ValueError(kind)
            return cls(
                kind=kind,
                access_token=doc.get("access_token"),
                refresh_token=doc.get("refresh_token"),
                expires_at=doc.get("expires_at"),
                api_key=doc.get("api_key"),
                extra=dict(doc.get("extra") or {}),
            )
        except (ValueError, KeyError, TypeError):
            raise SecretError("a stored secret is not in authpool's format") from None

    def __repr__(self) -> str:
        return f"Secret(kind={self.kind!r}, expires_at={self.expires_at!r}, values=<hidden>)"

    __str__ = __repr__


@dataclass(frozen=True, repr=False)
class TokenSet:
    """Tokens as a token endpoint or a script hands them over (``expires_in`` or ``expires_at``)."""

    access_token: str
    refresh_token: str | None
    expires_at: float | None
    extra: dict[str, str] = field(default_factory=dict)
    # Seconds the access token was issued for (``expires_in``); None when only a deadline is known.
    lifetime: float | None = None

    @classmethod
    def parse(cls, doc: object, *, now: float | None = None) -> TokenSet:
        """Read ``{access_token, refresh_token, expires_in | expires_at}``.

        ``expires_at`` may be epoch seconds or milliseconds (values past year 33658 in seconds
        are read as milliseconds, as other tools write them).

        Raises:
            InvalidInput: the document lacks an access token or has malformed fields.
        """
        if not isinstance(doc, dict):
            raise InvalidInput("the token set must be a JSON object")
        access = doc.get("access_token")
        if not isinstance(access, str) or not access.strip():
            raise InvalidInput("the token set needs a non-empty 'access_token'")
        refresh = doc.get("refresh_token")
        if refresh is not None and not isinstance(refresh, str):
            raise InvalidInput("'refresh_token' must be a string")
        now = time.time() if now is None else now
        expires_at: float | None = None
        lifetime: float | None = None
        if doc.get("expires_at") is not None:
            expires_at = _number(doc["expires_at"], "expires_at")
            if expires_at > 1e12:
                expires_at /= 1000.0
        elif doc.get("expires_in") is not None:
            lifetime = _number(doc["expires_in"], "expires_in")
            expires_at = now + lifetime
        return cls(access_token=access.strip(), refresh_token=(refresh or None), expires_at=expires_at,
                   lifetime=lifetime if lifetime is not None and lifetime > 0 else None)

    def issued_lifetime(self, now: float | None = None) -> float | None:
        """The token's issued lifetime, or (imports give only a deadline) the time it has left."""
        return self.lifetime if self.lifetime is not None else time_left(self.expires_at, now)

    def to_secret(self) -> Secret:
        return Secret(
            kind="oauth",
            access_token=self.access_token,
            refresh_token=self.refresh_token,
            expires_at=self.expires_at,
            extra=dict(self.extra),
        )

    def __repr__(self) -> str:
        return f"TokenSet(expires_at={self.expires_at!r}, values=<hidden>)"


def time_left(expires_at: float | None, now: float | None = None) -> float | None:
    """Seconds until ``expires_at``, or None if there is no deadline or it has passed."""
    if expires_at is None:
        return None
    left = expires_at - (time.time() if now is None else now)
    return left if left > 0 else None


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInput(f"'{name}' must be a number")
    try:
        return float(value)
    except ValueError:
        raise InvalidInput(f"'{name}' must be a number") from None
