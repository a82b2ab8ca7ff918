"""What one MCP server keeps between calls: its pool, the attempts it made, the logins it started, its subscribers.

``build_server`` creates one :class:`ServerState`; the lifespan hands it to the SDK, and every
tool reaches it as ``ctx.request_context.lifespan_context`` (:func:`state_of`). Nothing here
outlives the server process, and nothing here is a secret: attempts carry no credentials, and a
started login's device code stays inside its ``DeviceFlow``.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import anyio
from mcp.server.mcpserver import Context

from authpool import Pool
from authpool.auth import DeviceFlow
from authpool.auth.login import AuthorizationCodeLogin
from authpool.auth.redirect import RedirectListener
from authpool.rotation import Attempt
from authpool.server.mcp.subscriptions import Subscriptions
from authpool.server.mcp.watcher import PoolWatcher

__all__ = ["HISTORY", "MAX_PENDING_LOGINS", "BrowserLogin", "PendingLogin", "ServerState", "ToolContext", "state_of"]

HISTORY = 20  # attempts remembered per account, for account_status
MAX_PENDING_LOGINS = 20  # started logins kept per server; the oldest is dropped beyond this


@dataclass
class PendingLogin:
    """A device login started by ``start_login``, waiting for ``finish_login``."""

    provider: str
    label: str | None
    flow: DeviceFlow
    started: float = field(default_factory=time.monotonic)
    lock: anyio.Lock = field(default_factory=anyio.Lock)

    def expired(self) -> bool:
        """Whether the provider's device code has expired."""
        return self.flow.event().remaining <= 0


@dataclass
class BrowserLogin:
    """An authorization-code login started by ``login`` (2026 era), waiting for its redirect between rounds.

    The listener, the PKCE verifier and the state stay in this process; the client only ever
    holds the login's id, sealed in the multi-round-trip ``request_state``.
    """

    provider: str
    label: str | None
    login: AuthorizationCodeLogin
    listener: RedirectListener[str]
    deadline: float  # time.monotonic() after which the redirect is no longer waited for

    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def close(self) -> None:
        self.listener.close()


class ServerState:
    """The pool a server serves (opened on first use) and what the server remembers between calls."""

    def __init__(self, pool: Pool | None = None, *, open_pool: Callable[[], Pool] = Pool.open) -> None:
        """Serve ``pool``, or the pool ``open_pool()`` opens when a tool first needs one."""
        self._pool = pool
        self._open_pool = open_pool
        self._opening = threading.Lock()
        #: Recent attempts per account id, with the wall time each was made (for account_status).
        self.history: dict[str, collections.deque[tuple[Attempt, float]]] = {}
        #: Device logins started by start_login, by login_id.
        self.logins: dict[str, PendingLogin] = {}
        #: Browser logins between the rounds of a 2026-era ``login`` call, by login_id.
        self.browser_logins: dict[str, BrowserLogin] = {}
        #: Who is subscribed to which resource, in both protocol eras.
        self.subscriptions = Subscriptions()
        #: Notices pool changes from any process and tells the subscribers (run by the lifespan).
        self.watcher = PoolWatcher(lambda: self.pool, self.subscriptions.publish,
                                   wanted=lambda: self.subscriptions.active)
        self.subscriptions.on_subscribe(self.watcher.kick)

    @property
    def pool(self) -> Pool:
        """The served pool (``AUTHPOOL_HOME``'s unless one was given), opened on first use."""
        with self._opening:
            if self._pool is None:
                self._pool = self._open_pool()
            return self._pool

    def remember(self, attempts: Iterable[Attempt]) -> None:
        """Keep ``attempts`` (the latest :data:`HISTORY` per account) for ``account_status``."""
        now = time.time()
        for a in attempts:
            self.history.setdefault(a.account_id, collections.deque(maxlen=HISTORY)).append((a, now))

    def recent(self, account_id: str) -> list[tuple[Attempt, float]]:
        """The attempts this server made with ``account_id``, oldest first."""
        return list(self.history.get(account_id, ()))

    def add_login(self, login_id: str, login: PendingLogin) -> None:
        """Keep a started login, dropping expired ones and, beyond :data:`MAX_PENDING_LOGINS`, the oldest."""
        for known, pending in list(self.logins.items()):
            if pending.expired():
                del self.logins[known]
        while len(self.logins) >= MAX_PENDING_LOGINS:
            del self.logins[next(iter(self.logins))]
        self.logins[login_id] = login


    def add_browser_login(self, login_id: str, login: BrowserLogin) -> None:
        """Keep a browser login between rounds, closing expired ones and, beyond the limit, the oldest."""
        for known, pending in list(self.browser_logins.items()):
            if pending.expired():
                self.browser_logins.pop(known).close()
        while len(self.browser_logins) >= MAX_PENDING_LOGINS:
            self.browser_logins.pop(next(iter(self.browser_logins))).close()
        self.browser_logins[login_id] = login


#: The ``Context`` a tool receives: its lifespan context is the server's state.
ToolContext: TypeAlias = Context[ServerState, Any]


def state_of(ctx: ToolContext) -> ServerState:
    """The state of the server that is handling ``ctx``'s request."""
    return ctx.request_context.lifespan_context
