"""What a source yields: candidate accounts, and the entries skipped with the reason.

A :class:`Candidate` carries a secret (a token set or an API key), so its ``repr`` and ``str``
show metadata only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from authpool.accounts.model import AccountKind
from authpool.accounts.secret import Secret, TokenSet

__all__ = ["Candidate", "Scan", "Skipped"]


@dataclass(frozen=True, repr=False)
class Candidate:
    """One account found in a source. Holds a secret, so its ``repr`` shows metadata only."""

    source: str
    origin: str  # where in the source, for messages: "entry 'anthropic'", "$OPENAI_API_KEY"
    provider: str
    kind: AccountKind
    label: str  # the suggested label (made unique by plan_import)
    tokens: TokenSet | None = None
    api_key: str | None = None
    detail: str = ""  # non-secret facts worth showing, e.g. "subscription: max"
    entry: str | None = None  # the login's key in a file holding several (opencode's provider name)

    @property
    def expires_at(self) -> float | None:
        """When the access token expires (epoch seconds), if known."""
        return self.tokens.expires_at if self.tokens else None

    def secret_values(self) -> list[str]:
        """Every sensitive string held (for tests and scrubbing)."""
        if self.tokens is not None:
            return self.tokens.to_secret().values()
        return [self.api_key] if self.api_key else []

    def is_same_login(self, secret: Secret) -> bool:
        """Whether ``secret`` is this login: same refresh token (OAuth) or same API key."""
        if self.kind == "api_key":
            return secret.kind == "api_key" and secret.api_key == self.api_key
        if secret.kind != "oauth" or self.tokens is None:
            return False
        if self.tokens.refresh_token:
            return secret.refresh_token == self.tokens.refresh_token
        # No refresh token in the source: the access token is the only identity there is.
        return secret.access_token == self.tokens.access_token

    def __repr__(self) -> str:
        return (f"Candidate(source={self.source!r}, origin={self.origin!r}, provider={self.provider!r}, "
                f"kind={self.kind!r}, label={self.label!r}, expires_at={self.expires_at!r}, values=<hidden>)")

    __str__ = __repr__


@dataclass(frozen=True)
class Skipped:
    """An entry of a source that is not imported, and why (never a secret)."""

    origin: str
    reason: str


@dataclass
class Scan:
    """What one source holds: ``where`` it was read from, candidates, skipped entries."""

    source: str
    where: str
    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
