"""Resources that stay current: a change from any process reaches subscribed clients, in both protocol eras.

The official client subscribes the way its era does (``resources/subscribe`` after the
``initialize`` handshake, ``subscriptions/listen`` at 2026-07-28), in memory and over stdio to a
real `authpool serve`; another process (the CLI) changes the pool. Tests wait for the
notification with a generous deadline and never time it: the latency is measured in
``benchmarks/subscriptions.py``.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
from mcp import Client

from authpool import Account, Pool
from authpool.server.loopback import LoopbackProvider
from authpool.server.mcp.server import build_server
from authpool.server.mcp.watcher import changed_uris
from tests.mcp_support import Lab, ServerLog, assert_no_traceback, pool_env, server_params
from tests.subscription_support import Updates, await_update, cli_async

pytestmark = pytest.mark.anyio
MODES = ["legacy", "auto"]  # the 2025 handshake era, and 2026-07-28 (what "auto" negotiates with authpool)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lp = LoopbackProvider().start()
    try:
        lab = Lab(tmp_path_factory.mktemp("subs") / "home", lp, ["subs"])
        for name in ("mem-legacy", "mem-auto", "stdio-legacy", "stdio-auto", "tool-legacy", "tool-auto", "other"):
            lab.add_api_key("subs", name)
        yield lab
    finally:
        lp.stop()


@contextlib.asynccontextmanager
async def in_memory(lab: Lab, mode: str, updates: Updates) -> AsyncIterator[Client]:
    log = ServerLog()
    with pool_env(lab.home), log.capturing():
        pool = Pool.open(lab.home)
        try:
            async with Client(build_server(pool), mode=mode, read_timeout_seconds=60,
                              message_handler=updates.handler) as client:
                yield client
        finally:
            pool.close()
    assert_no_traceback(log.text())


def account(lab: Lab, name: str) -> Account:
    with pool_env(lab.home):
        return Pool.open(lab.home).get(f"subs/{name}")


@pytest.mark.parametrize("mode", MODES)
async def test_a_cli_change_reaches_a_client_subscribed_in_memory(lab: Lab, mode: str) -> None:
    """`authpool accounts disable` in another process: the subscribed client hears of the account and the lists."""
    a = account(lab, f"mem-{mode}")
    updates = Updates()
    async with in_memory(lab, mode, updates) as client:
        for uri in (f"authpool://accounts/{a.id}", "authpool://pool-status"):
            async with await_update(client, uri, updates) as updated:
                await cli_async(lab, "accounts", "disable", a.name)
                await updated()
                await cli_async(lab, "accounts", "enable", a.name)
        text = (await client.read_resource(f"authpool://accounts/{a.id}")).contents[0].text  # type: ignore[union-attr]
        assert json.loads(text)["state"] == "ready"


@pytest.mark.parametrize("mode", MODES)
async def test_a_cli_change_reaches_a_client_subscribed_over_stdio(lab: Lab, mode: str) -> None:
    """The same through a real `authpool serve` on stdio, spawned as an MCP client spawns it."""
    from mcp.client.stdio import stdio_client

    a = account(lab, f"stdio-{mode}")
    updates = Updates()
    async with Client(stdio_client(server_params(lab.home)), mode=mode, read_timeout_seconds=60,
                      message_handler=updates.handler) as client:
        assert client.server_capabilities.resources is not None
        assert client.server_capabilities.resources.subscribe is True
        async with await_update(client, "authpool://accounts", updates) as updated:
            await cli_async(lab, "accounts", "disable", a.name)
            await updated()
        await cli_async(lab, "accounts", "enable", a.name)


@pytest.mark.parametrize("mode", MODES)
async def test_a_change_made_by_a_tool_in_the_same_server_reaches_its_subscribers(lab: Lab, mode: str) -> None:
    """set_account_enabled in this server: its own subscribers hear of it (the tool call kicks the watcher)."""
    a = account(lab, f"tool-{mode}")
    updates = Updates()
    async with in_memory(lab, mode, updates) as client:
        async with await_update(client, f"authpool://accounts/{a.id}", updates) as updated:
            result = await client.call_tool("set_account_enabled", {"account": a.id, "enabled": False})
            assert result.is_error is False
            await updated()
        await client.call_tool("set_account_enabled", {"account": a.id, "enabled": True})


async def test_only_the_account_that_changed_is_announced_and_unsubscribing_ends_it(lab: Lab) -> None:
    """A 2025-era client subscribed to two accounts hears only of the one that changed; after unsubscribing, nothing."""
    changed, quiet = account(lab, "mem-legacy"), account(lab, "other")
    updates = Updates()
    async with in_memory(lab, "legacy", updates) as client:
        async with await_update(client, f"authpool://accounts/{quiet.id}", updates), \
                await_update(client, f"authpool://accounts/{changed.id}", updates) as updated:
            await cli_async(lab, "accounts", "disable", changed.name)
            await updated()
            assert f"authpool://accounts/{quiet.id}" not in updates.uris
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # removed at 2026-07-28 only; this is a 2025-era client
                await client.unsubscribe_resource(f"authpool://accounts/{changed.id}")
            seen = len(updates.uris)
            await cli_async(lab, "accounts", "enable", changed.name)
            # Another account's change is announced (to nobody subscribed to it): wait for a look that
            # certainly happened after the enable, then check the unsubscribed URI stayed quiet.
            async with await_update(client, "authpool://accounts", updates) as listed:
                await cli_async(lab, "accounts", "disable", quiet.name)
                await listed()
            assert f"authpool://accounts/{changed.id}" not in updates.uris[seen:]
            await cli_async(lab, "accounts", "enable", quiet.name)


def test_which_uris_a_change_touches() -> None:
    """An account that changed: itself and the two lists; one added or removed: the providers too."""
    assert changed_uris({"a": "1", "b": "2"}, {"a": "1", "b": "2"}) == []
    assert changed_uris({"a": "1", "b": "2"}, {"a": "1", "b": "3"}) == [
        "authpool://accounts", "authpool://pool-status", "authpool://accounts/b"]
    assert changed_uris({"a": "1"}, {"a": "1", "c": "9"}) == [
        "authpool://accounts", "authpool://pool-status", "authpool://providers", "authpool://accounts/c"]


async def test_the_watcher_s_first_look_does_not_wait_out_the_debounce(lab: Lab) -> None:
    """The server waits for the baseline before answering anything: only changes are debounced."""
    from authpool.server.mcp.watcher import PoolWatcher

    published: list[list[str]] = []

    async def publish(uris: list[str]) -> None:
        published.append(uris)

    watcher = PoolWatcher(lambda: lab.pool, publish, debounce=3600)
    with anyio.fail_after(60):  # a generous deadline: before, the first look slept the debounce out
        await watcher.check()
    assert published == []  # the baseline reports nothing


async def test_a_watcher_that_cannot_read_the_store_keeps_the_server_up(lab: Lab) -> None:
    """A store that fails mid-watch is logged once as one line; tools keep answering."""
    from authpool.server.mcp.watcher import PoolWatcher

    published: list[list[str]] = []

    class Broken:
        store = None  # any attribute access on None fails: the watcher must survive it

    async def publish(uris: list[str]) -> None:
        published.append(uris)

    log = ServerLog()
    with log.capturing():
        watcher = PoolWatcher(lambda: Broken(), publish, poll_every=0.01)  # type: ignore[arg-type, return-value]
        with anyio.move_on_after(0.3):
            await watcher.run()
    assert published == [] and log.text().count("cannot watch the pool for changes") == 1
