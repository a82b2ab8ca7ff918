"""The engine's side of its conversation with a driver: the facts it gets and the effects it asks for.

The engine (:mod:`authpool.rotation.engine`) decides; a driver (:mod:`authpool.rotation.driver`)
does the I/O. The engine sees no HTTP client object: a request arrives as :class:`RequestFacts`
(parsed by the HTTP client's own parser, so the origin checked is the one connected to) and an
answer as :class:`Answer`. Each effect below says what the driver sends back into the engine;
a driver that fails an effect throws the error into the engine instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from authpool.accounts.model import Account, Rows
from authpool.auth.flight import RefreshMode

__all__ = [
    "LIST_HEADERS",
    "Answer",
    "Drop",
    "Effect",
    "LoadSecret",
    "Peek",
    "Progress",
    "ReadBody",
    "ReadPool",
    "Refresh",
    "RequestFacts",
    "Send",
    "Sleep",
    "Touch",
    "TryProbe",
    "Unreachable",
    "Write",
]


# Headers whose value is a comma-separated list of flags. When the caller sends one the provider
# also needs (Claude Code sends its own ``anthropic-beta``; an OAuth login needs ``oauth-2025-04-20``
# in it), the provider's items are appended to the caller's rather than dropped.
LIST_HEADERS = frozenset({"anthropic-beta"})


@dataclass(frozen=True)
class RequestFacts:
    """A caller's request as the engine needs it: where it goes, what it carries."""

    method: str
    scheme: str
    host: str
    port: int
    path: str
    has_userinfo: bool
    header_names: frozenset[str]  # lower-cased
    body: bytes | None  # None when the body is a stream (or unknown)
    replayable: bool  # the body can be sent again (bytes or JSON, not a consumed stream)
    # The caller's values of the LIST_HEADERS it sent (lower-cased names): the pool adds its own
    # items to these instead of leaving them out.
    list_values: Mapping[str, str] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        """``scheme://host:port``, brackets around an IPv6 host."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class Answer:
    """An answer's status line and headers; its body stays with the driver until asked for."""

    status: int
    headers: Mapping[str, str]  # lower-cased names
    event_stream: bool  # an uncompressed text/event-stream: the engine may peek at its start


@dataclass(frozen=True)
class Unreachable:
    """No answer: the connection failed, broke or timed out."""

    reason: str  # "timed out" or the error's kind, never a URL or header


@dataclass(frozen=True)
class Progress:
    """What a caller waiting for a cooling pool is told."""

    waited: float
    total: float | None
    message: str


# -- effects: each names what the driver returns into the engine -------------------------------


@dataclass(frozen=True)
class ReadPool:
    """-> :class:`PoolFile`: the store's current metadata (a cached read unless it changed)."""


@dataclass(frozen=True)
class LoadSecret:
    """-> :class:`~authpool.accounts.secret.Secret` of the account's current generation."""

    account: Account


@dataclass(frozen=True)
class Refresh:
    """-> :class:`~authpool.auth.flight.Renewal` or None (advisory, someone else renews it).

    The request waits ``wait`` seconds at most; the refresh itself goes on regardless.
    """

    account: Account
    mode: RefreshMode
    wait: float


@dataclass(frozen=True)
class Send:
    """-> :class:`Answer` or :class:`Unreachable`: the caller's request with ``headers`` set on it."""

    account: Account
    headers: Mapping[str, str]  # the credential, and the provider's fixed headers the caller did not set
    origin: str | None = None  # send to this origin instead (the API endpoint a token exchange named)


@dataclass(frozen=True)
class ReadBody:
    """-> bytes: read the current answer's body and close it (it will not be returned)."""


@dataclass(frozen=True)
class Drop:
    """-> None: close the current answer unread (a stream that opened with an error might never end)."""


@dataclass(frozen=True)
class Peek:
    """-> :class:`~authpool.rotation.sse.StreamVerdict`: read the current stream up to its first content event.

    The driver keeps the bytes it read and delivers them in front of the rest if the answer is returned.
    """


@dataclass(frozen=True)
class Sleep:
    """-> None: wait, telling the caller ``progress`` if given."""

    seconds: float
    progress: Progress | None = None


@dataclass(frozen=True)
class Write:
    """-> whatever ``change`` returns: apply it to a fresh read of the accounts ``ids``, under the store's lock.

    ``change`` is built from :mod:`authpool.accounts.transitions`; ``what`` names it.
    """

    what: str
    ids: tuple[str, ...]
    change: Callable[[Rows], Any]


@dataclass(frozen=True)
class TryProbe:
    """-> bool: take the account's probation lock if nobody holds it (kept until the request ends)."""

    account_id: str


@dataclass(frozen=True)
class Touch:
    """-> None: note that this process just picked the account (least-recently-used ordering)."""

    account_id: str


Effect = ReadPool | LoadSecret | Refresh | Send | ReadBody | Drop | Peek | Sleep | Write | TryProbe | Touch
