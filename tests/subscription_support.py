"""Subscribing as a client does, in either protocol era, and waiting for the update (never timing it).

A 2025-era connection (``mode="legacy"``) subscribes with ``resources/subscribe`` and gets
``notifications/resources/updated`` through the client's message handler; a 2026-07-28 one opens
a ``subscriptions/listen`` stream. :func:`await_update` hides the difference: it subscribes, and
hands back a coroutine that returns once the URI's update arrived (failing after a generous
deadline, which is never a measure of speed).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from mcp import Client

from tests.gateway_support import DEADLINE
from tests.mcp_support import Lab, home_env

UPDATED = "notifications/resources/updated"


class Updates:
    """A message handler for a client: keeps every resource-updated URI it sees (2025-era delivery)."""

    def __init__(self) -> None:
        self.uris: list[str] = []
        self.changed = anyio.Event()

    async def handler(self, message: Any) -> None:
        if getattr(message, "method", None) == UPDATED:
            self.uris.append(str(message.params.uri))
            self.changed.set()
            self.changed = anyio.Event()
        await anyio.lowlevel.checkpoint()

    async def wait_for(self, uri: str, *, after: int = 0) -> None:
        """Return once ``uri`` was updated (counting from the ``after``-th notification)."""
        with anyio.fail_after(DEADLINE):
            while uri not in self.uris[after:]:
                await self.changed.wait()


@contextlib.asynccontextmanager
async def await_update(client: Client, uri: str, updates: Updates | None = None
                       ) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Subscribe ``client`` to ``uri`` in its era; yields ``wait()``, which returns once an update arrived.

    A legacy client needs ``updates`` installed as its message handler (``Client(message_handler=...)``).
    """
    if client.protocol_version.startswith("2026"):
        async with client.listen(resource_subscriptions=[uri]) as sub:

            async def wait_listen() -> None:
                with anyio.fail_after(DEADLINE):
                    async for event in sub:
                        if getattr(event, "uri", None) == uri:
                            return

            yield wait_listen
        return
    assert updates is not None, "a 2025-era client gets updates through its message handler: pass `updates`"
    seen = len(updates.uris)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # resources/subscribe is deprecated for 2026 only; this is a 2025 client
        await client.subscribe_resource(uri)

    async def wait_legacy() -> None:
        await updates.wait_for(uri, after=seen)

    yield wait_legacy


async def cli_async(lab: Lab, *args: str) -> str:
    """`authpool ARGS` as another process (the event loop keeps serving meanwhile); its stdout."""
    result = await anyio.run_process([sys.executable, "-m", "authpool.server.cli", *args],
                                     env={**os.environ, **home_env(lab.home)}, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode()
