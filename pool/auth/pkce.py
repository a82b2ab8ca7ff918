"""PKCE (RFC 7636) and the ``state`` value of an authorization-code login.

PKCE binds the authorization code to the process that started the login: whoever intercepts
the code on its way through the browser cannot redeem it without the verifier, which never
leaves this process. ``state`` ties the redirect to this login, so a stale browser tab or a
forged redirect cannot complete it.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass

__all__ = ["Pkce", "new_state", "s256"]


def s256(verifier: str) -> str:
    """The S256 code challenge of ``verifier``: base64url(SHA-256(verifier)) without padding.

    Example:
        >>> s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")  # RFC 7636 appendix B
        'E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM'
    """
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_state() -> str:
    """A fresh unguessable ``state`` value (32 URL-safe characters)."""
    return secrets.token_urlsafe(24)


@dataclass(frozen=True, repr=False)
class Pkce:
    """A code verifier and its S256 challenge; ``repr`` never shows the verifier."""

    verifier: str
    challenge: str
    method: str = "S256"

    @classmethod
    def new(cls) -> Pkce:
        """A new pair; the verifier is 86 characters of ``[A-Za-z0-9_-]`` (RFC 7636 allows 43-128)."""
        verifier = secrets.token_urlsafe(64)
        return cls(verifier=verifier, challenge=s256(verifier))

    def __repr__(self) -> str:
        return f"Pkce(method={self.method!r}, challenge={self.challenge!r})"
