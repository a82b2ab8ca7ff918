"""What a request through the pool asks for and what it reports: options, attempts, the result.

The vocabulary of attempt outcomes is a ``Literal`` here, used by the engine and by the MCP
server's output schemas alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Attempt", "Outcome", "ProgressCallback", "RequestResult", "RotationOptions"]

ProgressCallback = Callable[[float, float | None, str], Awaitable[None] | None]

Outcome = Literal[
    "ok",  # the answer (any status a retry would not change)
    "rate_limited",  # 429: the account cools down, the request moves on
    "refreshed",  # 401/403 with an OAuth token: renewed, retried on the same account
    "refresh_failed",  # the token endpoint failed, or renewal backs off: the account is skipped
    "refresh_pending",  # the token endpoint is slow: the refresh goes on, the request moves on
    "needs_reauth",  # the login or key is dead
    "unauthorized",  # a 401 not yet confirmed: no other account's credentials were accepted
    "forbidden",  # 403 after renewal (or an API key): moved on, not marked
    "server_error",  # 5xx: retried with backoff, then the next account
    "network_error",  # no answer: retried with backoff, then the next account
    "secret_error",  # the account's secret could not be read
    "stream_rate_limited",  # a 200 stream that opened with a rate-limit error event
    "stream_overloaded",  # a 200 stream that opened with an overloaded error event
]


@dataclass
class Attempt:
    """One try within a request: which account, what came back, what the engine did about it."""

    account_id: str
    account: str  # provider/label
    status: int | None
    outcome: Outcome
    elapsed_ms: float
    cooldown_until: float | None = None
    detail: str | None = None


@dataclass
class RequestResult:
    """Attached to every response as ``response.extensions["authpool"]``."""

    account_id: str
    account: str
    attempts: list[Attempt] = field(default_factory=list)


@dataclass(frozen=True)
class RotationOptions:
    """Per-client choices: pin an account, stay in a namespace, wait for a cooling pool, keep a session."""

    account: str | None = None  # id or provider/label: use only this account
    namespace: str | None = None
    wait_budget: float = 0.0  # seconds a request may wait for a cooling account
    on_progress: ProgressCallback | None = None
    session: str | None = None  # requests with the same key stay on one account while it is healthy
    session_ttl: float = 3600.0
    # All cooling: raise AllAccountsCooling (default), or answer a synthetic 429 with Retry-After,
    # for callers that speak HTTP to their own clients.
    cooling_response: bool = False
