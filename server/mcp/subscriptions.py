"""Who wants to hear about which resource, in both protocol eras, and telling them.

Two ways to subscribe reach one :class:`Subscriptions`:

- the 2025 era's ``resources/subscribe`` / ``resources/unsubscribe`` (what clients that open with
  the ``initialize`` handshake use): the SDK's ``MCPServer`` registers no handler for them, so
  :meth:`Subscriptions.register` adds both to the low-level server, which then advertises
  ``resources.subscribe``. A subscription belongs to its connection and ends with it;
  ``notifications/resources/updated`` goes out on the connection's own channel (stdio, or the
  HTTP session's GET stream).
- the 2026-07-28 era's ``subscriptions/listen``: the SDK serves the stream itself from a
  :class:`~mcp.server.subscriptions.SubscriptionBus`; the server is built with
  :class:`CountingBus`, which this module publishes ``ResourceUpdated`` events on.

:meth:`Subscriptions.publish` tells both; :attr:`Subscriptions.active` says whether anybody
listens at all, so the watcher (:mod:`~authpool.server.mcp.watcher`) reads nothing while nobody does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from mcp.server import Server
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated, ServerEvent
from mcp_types import EmptyResult, SubscribeRequestParams, UnsubscribeRequestParams

__all__ = ["CountingBus", "Subscriptions"]

log = logging.getLogger("authpool")


class CountingBus(InMemorySubscriptionBus):
    """The SDK's in-process bus, counting its listeners (one per open ``subscriptions/listen`` stream)."""

    def __init__(self) -> None:
        super().__init__()
        self.listeners = 0
        #: Called when a stream starts listening (the watcher then looks at the store at once).
        self.on_subscribe: Callable[[], None] = lambda: None

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        unsubscribe = super().subscribe(listener)
        self.listeners += 1
        self.on_subscribe()
        done = False

        def counted() -> None:
            nonlocal done
            if not done:
                done = True
                self.listeners -= 1
            unsubscribe()

        return counted


class Subscriptions:
    """Every subscriber of one server: 2025-era connections by URI, and the 2026 era's listen streams."""

    def __init__(self, bus: CountingBus | None = None) -> None:
        self.bus = bus or CountingBus()
        self._legacy: dict[Connection, set[str]] = {}
        self._callback: Callable[[], None] = lambda: None

    def on_subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever a client subscribes, in either era."""
        self._callback = callback
        self.bus.on_subscribe = callback

    @property
    def active(self) -> bool:
        """Whether any client is subscribed to anything."""
        return self.bus.listeners > 0 or any(self._legacy.values())

    def uris_of(self, connection: Connection) -> frozenset[str]:
        """The URIs one 2025-era connection is subscribed to."""
        return frozenset(self._legacy.get(connection, ()))

    def register(self, server: Server[Any]) -> None:
        """Serve ``resources/subscribe`` and ``resources/unsubscribe`` on ``server`` (the low-level one)."""
        server.add_request_handler("resources/subscribe", SubscribeRequestParams, self._subscribe)
        server.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, self._unsubscribe)

    async def publish(self, uris: list[str]) -> None:
        """Tell every subscriber of each of ``uris`` that it changed (best effort: a gone client is dropped)."""
        for uri in uris:
            await self.bus.publish(ResourceUpdated(uri=uri))
        for connection, wanted in list(self._legacy.items()):
            for uri in uris:
                if uri in wanted:
                    # Connection.notify never raises: a client that has gone just misses it, and its
                    # subscriptions end when its connection's teardown runs.
                    await connection.send_resource_updated(uri)

    async def _subscribe(self, ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
        connection = _connection_of(ctx)
        if connection not in self._legacy:
            self._legacy[connection] = set()
            connection.exit_stack.callback(self._legacy.pop, connection, None)
        self._legacy[connection].add(str(params.uri))
        self._callback()
        return EmptyResult()

    async def _unsubscribe(self, ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams) -> EmptyResult:
        self._legacy.get(_connection_of(ctx), set()).discard(str(params.uri))
        return EmptyResult()


def _connection_of(ctx: ServerRequestContext[Any, Any]) -> Connection:
    """The connection a request arrived on.

    The SDK hands a handler a per-request ``ServerSession`` whose connection (the object that
    outlives the request, with the standalone channel and the teardown stack) is not public in
    mcp 2.3. This reads the session's own reference; should a release rename it, subscribing
    fails loudly in the tests instead of silently losing notifications.
    """
    connection = getattr(ctx.session, "_connection", None)
    if not isinstance(connection, Connection):  # pragma: no cover - guards an SDK change
        raise TypeError("this mcp release keeps a request's connection elsewhere: resources/subscribe needs updating")
    return connection
