"""The `login` tool: the browser through URL-mode elicitation in both protocol eras, else the device flow.

The official client connects in memory (the handshake era with `mode="legacy"`, 2026-07-28 with
the default) with an elicitation callback that plays the user: it "opens" the page it is asked
to open by fetching it, and the LoopbackProvider's login page approves at once and redirects to
the server's own loopback listener. A client without URL elicitation gets the device flow's code.
Tokens never appear in a result or in the server's log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp import Client

from authpool import Pool
from authpool.server.loopback import LoopbackProvider
from authpool.server.mcp.server import build_server
from tests.conftest import assert_no_secrets, home_texts, write_config
from tests.mcp_support import ServerLog, assert_no_traceback, pool_env

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def lp() -> Iterator[LoopbackProvider]:
    server = LoopbackProvider().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def acme(home: Path, lp: LoopbackProvider) -> Path:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_config(home, {"acme": {"base_url": lp.base_url, "auth": "bearer", "oauth": {
        "token_url": lp.token_url, "authorize_url": lp.base_url + "/authorize",
        "device_authorization_url": lp.base_url + "/oauth/device", "client_id": lp.client_id}}})
    return home


class User:
    """Plays the user behind a client: opens (fetches) the page it is asked to, or declines."""

    def __init__(self, *, accept: bool = True) -> None:
        self.accept = accept
        self.pages: list[types.ElicitRequestURLParams] = []
        self.messages: list[Any] = []

    async def elicit(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestURLParams), params
        self.pages.append(params)
        if not self.accept:
            return types.ElicitResult(action="decline")
        async with httpx2.AsyncClient(follow_redirects=True, timeout=60) as browser:
            page = await browser.get(params.url)
        assert page.status_code == 200 and "authpool received the login" in page.text
        return types.ElicitResult(action="accept")

    async def handler(self, message: Any) -> None:
        self.messages.append(message)


async def call_login(home: Path, mode: str, user: User | None, args: dict[str, Any],
                     log: ServerLog) -> types.CallToolResult:
    with pool_env(home), log.capturing():
        pool = Pool.open(home)
        try:
            async with Client(build_server(pool), mode=mode, read_timeout_seconds=60,
                              elicitation_callback=user.elicit if user else None,
                              message_handler=user.handler if user else None) as client:
                return await client.call_tool("login", args)
        finally:
            pool.close()


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_client_with_url_elicitation_logs_in_through_the_browser(acme: Path, lp: LoopbackProvider,
                                                                         mode: str) -> None:
    """The client is asked to open the login page; the account comes back in the same call, tokens nowhere."""
    lp.set_login("grace@example.com")
    user, log = User(), ServerLog()
    result = await call_login(acme, mode, user, {"provider": "acme"}, log)
    assert result.is_error is False, result.content
    out = result.structured_content
    assert out is not None and out["status"] == "logged_in"
    assert out["account"]["name"] == "acme/grace@example.com" and out["account"]["created"] is True
    assert len(user.pages) == 1 and user.pages[0].url.startswith(lp.base_url + "/authorize?")
    if mode == "legacy":  # 2025-11-25: the elicitation has an id, and its completion is announced
        assert user.pages[0].elicitation_id
        assert any(getattr(m, "method", "") == "notifications/elicitation/complete" for m in user.messages)
    with pool_env(acme):
        assert [a.name for a in Pool.open(acme).accounts()] == ["acme/grace@example.com"]
    assert_no_traceback(log.text())
    assert_no_secrets([json.dumps(out), log.text(), *home_texts(acme)], lp.issued_secrets())


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_declined_page_stores_nothing(acme: Path, lp: LoopbackProvider, mode: str) -> None:
    """The user declines to open the page: a tool error saying so, and no account."""
    log = ServerLog()
    result = await call_login(acme, mode, User(accept=False), {"provider": "acme", "label": "x"}, log)
    assert result.is_error is True and "did not open the login page" in result.content[0].text  # type: ignore[union-attr]
    with pool_env(acme):
        assert Pool.open(acme).accounts() == []
    assert_no_traceback(log.text())


async def test_a_client_without_url_elicitation_gets_the_device_flow(acme: Path, lp: LoopbackProvider) -> None:
    """No elicitation callback: the answer is the device flow's page and code, and finish_login completes it."""
    lp.set_login("dan@example.com")
    log = ServerLog()
    with pool_env(acme), log.capturing():
        pool = Pool.open(acme)
        try:
            async with Client(build_server(pool), read_timeout_seconds=60) as client:
                result = await client.call_tool("login", {"provider": "acme"})
                out = result.structured_content
                assert out is not None and out["status"] == "device_code" and out["account"] is None
                device = out["device"]
                assert device["verification_uri"] == lp.base_url + "/device" and device["login_id"] in out["next_step"]
                lp.approve_device(device["user_code"])
                done = await client.call_tool("finish_login", {"login_id": device["login_id"]})
                assert done.structured_content["name"] == "acme/dan@example.com"  # type: ignore[index]
        finally:
            pool.close()
    assert_no_secrets([result.model_dump_json(), done.model_dump_json(), log.text()], lp.issued_secrets())


async def test_a_provider_without_any_login_settings_is_one_clear_error(home: Path, lp: LoopbackProvider) -> None:
    """No OAuth settings at all: the error names the config.toml table to add."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)  # noqa: ASYNC240 (setup before the server runs)
    write_config(home, {"bare": {"base_url": lp.base_url, "auth": "bearer"}})
    result = await call_login(home, "auto", User(), {"provider": "bare"}, ServerLog())
    assert result.is_error is True and "[providers.bare.oauth]" in result.content[0].text  # type: ignore[union-attr]
