"""`authpool serve --http` and the gateway's `/mcp` as clients meet them: the official Python client, raw HTTP.

One `serve --http` process serves the module, on a home whose provider lives on a LoopbackProvider;
the official client connects over Streamable HTTP in both protocol eras (the `initialize`
handshake, and 2026-07-28's per-request envelope). What a client must never get is shown with raw
requests: no key (401), a foreign `Host` (421), a web page's `Origin` (403). The key, the accounts'
tokens and keys never appear in an answer or on stderr.
"""

from __future__ import annotations

import contextlib
import json
import signal
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from authpool.server.loopback import LoopbackProvider
from tests.conftest import assert_no_secrets
from tests.gateway_support import DEADLINE, Gateway, Transcript, raw_request
from tests.mcp_support import Lab, text_of
from tests.subscription_support import Updates, await_update, cli_async

TRANSCRIPT = Transcript()
pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lp = LoopbackProvider().start()
    try:
        lab = Lab(tmp_path_factory.mktemp("mcp-http") / "home", lp, ["web", "gw"])
        lab.add_api_key("web", "web-1")
        lab.add_api_key("gw", "gw-1")
        yield lab
    finally:
        lp.stop()


@pytest.fixture(scope="module")
def key(lab: Lab) -> str:
    r = lab.cli("gateway", "key")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture(scope="module")
def server(lab: Lab, key: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    srv = Gateway(lab.home, tmp_path_factory.mktemp("serve-http"), command=("serve", "--http"))
    try:
        yield srv
    finally:
        srv.stop()
        TRANSCRIPT.add(srv.stderr())
        assert_no_secrets(TRANSCRIPT.texts, [*lab.secrets(), key])


@contextlib.asynccontextmanager
async def http_client(url: str, key: str | None, *, mode: str = "auto",
                      updates: Updates | None = None) -> AsyncIterator[Client]:
    """The official client over Streamable HTTP at ``url``, sending ``key`` as a bearer token."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(DEADLINE, read=300)) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode, read_timeout_seconds=DEADLINE,
                          message_handler=updates.handler if updates else None) as client:
            yield client


def mcp_post(port: int, *headers: str) -> tuple[int, dict[str, str], dict[str, object]]:
    """A raw `initialize` POST to /mcp with ``headers`` (each `Name: value`); status, headers and JSON body."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}).encode()
    head = "\n".join(["POST /mcp HTTP/1.1", *headers, "Content-Type: application/json",
                      "Accept: application/json, text/event-stream", f"Content-Length: {len(body)}",
                      "Connection: close"])
    status, got, raw = raw_request(port, head, body)
    TRANSCRIPT.add(raw)
    return status, got, json.loads(raw) if raw.startswith(b"{") else {}


def test_a_request_without_the_key_or_with_a_wrong_one_is_refused_401(server: Gateway, key: str) -> None:
    """No key, or a wrong one, is 401 with WWW-Authenticate and one JSON-RPC error that names the fix."""
    host = f"Host: 127.0.0.1:{server.port}"
    for headers in ((host,), (host, "Authorization: Bearer wrong-key-0123456789")):
        status, got, body = mcp_post(server.port, *headers)
        assert status == 401 and got["www-authenticate"].startswith("Bearer")
        message = body["error"]["message"]  # type: ignore[index]
        assert "authpool gateway key" in message and key not in message
    status, got, _ = mcp_post(server.port, host, f"Authorization: Bearer {key}")
    assert status == 200 and got["content-type"].startswith("text/event-stream")  # the answer streams


def test_a_foreign_host_is_421_and_a_web_pages_origin_is_403(server: Gateway, key: str) -> None:
    """DNS rebinding: a Host that is not the server's is 421, a browser Origin from elsewhere 403, key or not."""
    auth = f"Authorization: Bearer {key}"
    status, _, body = mcp_post(server.port, f"Host: rebind.example:{server.port}", auth)
    assert status == 421 and "Host" in body["error"]["message"]  # type: ignore[index]
    status, _, body = mcp_post(server.port, f"Host: 127.0.0.1:{server.port}", "Origin: http://evil.example", auth)
    assert status == 403 and "Origin" in body["error"]["message"]  # type: ignore[index]
    status, _, _ = mcp_post(server.port, f"Host: 127.0.0.1:{server.port}", "Sec-Fetch-Site: cross-site", auth)
    assert status == 403
    status, _, _ = mcp_post(server.port, f"Host: localhost:{server.port}", f"Origin: http://localhost:{server.port}",
                            auth)
    assert status == 200


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_the_official_client_uses_the_tools_over_http_in_both_eras(server: Gateway, key: str, lab: Lab,
                                                                          mode: str) -> None:
    """Over Streamable HTTP, in the handshake era and the 2026-07-28 era, tools list and answer as on stdio."""
    async with http_client(f"{server.url}/mcp", key, mode=mode) as client:
        assert client.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"proxy_request", "list_accounts", "login", "list_models"} <= names
        listed = await client.call_tool("list_accounts", {"provider": "web"})
        assert [a["name"] for a in listed.structured_content["accounts"]] == ["web/web-1"]  # type: ignore[index]
        answer = await client.call_tool("proxy_request", {"provider": "web", "method": "GET", "path": "/v1/models"})
        assert answer.is_error is False and answer.structured_content["status"] == 200  # type: ignore[index]
        TRANSCRIPT.add(answer.model_dump_json() + text_of(listed))


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_cli_change_reaches_a_client_subscribed_over_http(server: Gateway, key: str, lab: Lab,
                                                                  mode: str) -> None:
    """`authpool accounts disable` in another process reaches a subscribed HTTP client, in both eras."""
    account_id = lab.pool.get("web/web-1").id
    uri = f"authpool://accounts/{account_id}"
    updates = Updates()
    async with (http_client(f"{server.url}/mcp", key, mode=mode, updates=updates) as client,
                await_update(client, uri, updates) as updated):
        await cli_async(lab, "accounts", "disable", "web/web-1")
        await updated()
        assert '"state": "disabled"' in (await client.read_resource(uri)).contents[0].text  # type: ignore[union-attr]
        await cli_async(lab, "accounts", "enable", "web/web-1")


async def test_the_gateway_serves_the_same_mcp_endpoint_beside_the_providers(lab: Lab, key: str,
                                                                             tmp_path: Path) -> None:
    """`authpool gateway` answers MCP at /mcp (same key, same 421) while /PROVIDER/... still relays."""
    gw = Gateway(lab.home, tmp_path / "gw")
    try:
        async with http_client(f"{gw.url}/mcp", key) as client:
            listed = await client.call_tool("list_accounts", {"provider": "gw"})
            assert [a["name"] for a in listed.structured_content["accounts"]] == ["gw/gw-1"]  # type: ignore[index]
        status, _, _ = mcp_post(gw.port, f"Host: rebind.example:{gw.port}", f"Authorization: Bearer {key}")
        assert status == 421
        status, _, _ = mcp_post(gw.port, f"Host: 127.0.0.1:{gw.port}")
        assert status == 401
        async with httpx2.AsyncClient(headers={"x-api-key": key}, timeout=DEADLINE) as http:
            r = await http.get(f"{gw.url}/gw/v1/models")
        assert r.status_code == 200 and r.headers["x-authpool-account"] == "gw/gw-1"
    finally:
        assert gw.stop() == 0
        TRANSCRIPT.add(gw.stderr())


def test_no_auth_is_refused_off_loopback(lab: Lab) -> None:
    """`serve --http --no-auth --host 0.0.0.0 --allow-remote` stops with one line: no key off loopback."""
    r = lab.cli("serve", "--http", "--no-auth", "--host", "0.0.0.0", "--allow-remote", "--port", "0")
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "--no-auth is accepted on a loopback address only" in r.stderr


def test_serve_options_without_http_are_a_usage_error(lab: Lab) -> None:
    """`serve --port 9` without --http says the options go with --http (stdio has no port)."""
    r = lab.cli("serve", "--port", "9")
    assert r.returncode == 2 and "go with --http" in r.stderr and "Traceback" not in r.stderr


async def test_no_auth_on_loopback_serves_without_a_key_and_warns(lab: Lab, tmp_path: Path) -> None:
    """With --no-auth on loopback no key is asked for; stderr warns that every local user can use the pool."""
    srv = Gateway(lab.home, tmp_path / "noauth", "--no-auth", command=("serve", "--http"))
    try:
        async with http_client(f"{srv.url}/mcp", None) as client:
            assert (await client.call_tool("list_providers", {})).is_error is False
        assert "--no-auth: any program of any user of this machine" in srv.stderr()
    finally:
        srv.signal(signal.SIGINT)
        assert srv.wait() == 0
        TRANSCRIPT.add(srv.stderr())


async def test_sigterm_with_clients_connected_exits_cleanly(lab: Lab, key: str, tmp_path: Path) -> None:
    """SIGTERM while a client holds a session and a listen stream: the server stops and exits 0."""
    srv = Gateway(lab.home, tmp_path / "stop", command=("serve", "--http"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            async with http_client(f"{srv.url}/mcp", key, mode="legacy") as client:
                await client.subscribe_resource("authpool://accounts")
                srv.signal(signal.SIGTERM)
                status = await anyio.to_thread.run_sync(srv.wait)
        assert status == 0 and "MCP server stopped" in srv.stderr()
    finally:
        srv.kill()
        TRANSCRIPT.add(srv.stderr())
