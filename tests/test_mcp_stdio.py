"""`authpool serve` as a process: the stdio transport, stdout purity, JSON-RPC framing and shutdown.

The server is spawned the way an MCP client spawns it (``python -m authpool.server.cli serve`` with
the client's default environment plus AUTHPOOL_HOME and the keyring backend), driven by the
official client over stdio or by a raw pipe for frames no client would send. What the tools do
is tested in memory (``test_mcp_server.py``); here is what only a real process shows. The
provider is a real LoopbackProvider; CLI processes are real subprocesses on the same home. No
test waits "long enough": requests that must be in flight are held at the provider until the
test releases them, and every wait has a generous deadline.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from authpool.server.loopback import LoopbackProvider
from authpool.storage import VAULT_BACKEND
from tests.conftest import REPO, assert_no_secrets, run_cli
from tests.mcp_support import (
    SERVE_ARGS,
    TOOLS,
    Lab,
    RawServer,
    assert_no_traceback,
    assert_tool_error,
    mcp_session,
    text_of,
)

pytestmark = pytest.mark.anyio

ACCOUNTS: dict[str, list[str]] = {
    "main": ["alice", "bob"],      # + carol (API key)
    "conc": ["victor"],            # 20 requests at once while the CLI rotates its token
    "flush": ["walter"],           # counters flushed on SIGTERM
}
MESSAGE = {"model": "loopback-small", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
DEADLINE = 60.0  # seconds any one wait may take before the test fails: generous, never a measure


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One home and one loopback for the module."""
    lp = LoopbackProvider().start()
    try:
        lab = Lab(tmp_path_factory.mktemp("stdio") / "home", lp, list(ACCOUNTS))
        for provider, subjects in ACCOUNTS.items():
            lab.add_oauth(provider, *subjects)
        lab.add_api_key("main", "carol")
        yield lab
    finally:
        lp.stop()


def trail(result: dict[str, Any]) -> list[tuple[str, int | None, str]]:
    return [(a["account"], a["status"], a["outcome"]) for a in result["attempts"]]


def models(provider: str, **extra: Any) -> dict[str, Any]:
    return {"provider": provider, "method": "GET", "path": "/v1/models", **extra}


# -- the handshake, over stdio ---------------------------------------------------------------------


async def test_the_default_client_negotiates_the_current_protocol(lab: Lab) -> None:
    """In the client's default auto mode the server answers as authpool on protocol 2026-07-28, with instructions."""
    async with mcp_session(lab.home) as c:
        assert c.protocol_version == "2026-07-28"
        assert c.server_info is not None and c.server_info.name == "authpool"
        assert c.instructions is not None and "proxy_request" in c.instructions
        r = await c.call_tool("proxy_request", models("main", account="main/alice"))
        assert r.is_error is False and r.structured_content["status"] == 200
        assert_no_secrets(r.model_dump_json(by_alias=True), lab.secrets())


async def test_the_legacy_initialize_handshake_works_too(lab: Lab) -> None:
    """mode="legacy" (initialize + initialized, 2025-11-25) lists the same tools and serves calls."""
    async with mcp_session(lab.home, mode="legacy") as c:
        assert c.protocol_version == "2025-11-25"
        assert c.server_info is not None and c.server_info.name == "authpool"
        assert c.instructions is not None and "pool of accounts" in c.instructions
        assert {t.name for t in (await c.list_tools()).tools} >= set(TOOLS)
        r = await c.call_tool("list_accounts", {"provider": "main"})
        assert r.is_error is False
        assert [a["name"] for a in r.structured_content["accounts"]] == ["main/alice", "main/bob", "main/carol"]


# -- many calls at once, with another process ---------------------------------------------------


async def test_twenty_concurrent_calls_succeed_while_the_cli_rotates_the_token(lab: Lab, tmp_path: Path) -> None:
    """20 calls wait at the provider while `authpool request` meets the 401 and refreshes: all succeed, 1 token call."""
    errlog = tmp_path / "server-stderr.log"
    results: list[Any] = []
    cli: dict[str, Any] = {}

    async def wait(condition: Any, *args: int) -> bool:
        return bool(await anyio.to_thread.run_sync(lambda: condition(*args, DEADLINE)))

    with errlog.open("w") as f:
        async with mcp_session(lab.home, errlog=f, AUTHPOOL_LOG="DEBUG") as client:
            await client.list_tools()
            lab.lp.expire_access_tokens("victor")
            before = lab.lp.snapshot()
            lab.lp.hold_api_requests()  # every API request waits at the provider until the test lets it go
            async with anyio.create_task_group() as tg:
                async def run_cli() -> None:
                    cli["r"] = await anyio.to_thread.run_sync(
                        lambda: lab.cli("request", "conc", "POST", "/v1/messages", "--json", json.dumps(MESSAGE)))

                async def one() -> None:
                    results.append(await client.call_tool("proxy_request", {
                        "provider": "conc", "method": "POST", "path": "/v1/messages", "json": MESSAGE}))

                try:
                    tg.start_soon(run_cli)
                    assert await wait(lab.lp.wait_for_held_requests, 1), "the CLI's request never arrived"
                    for _ in range(20):
                        tg.start_soon(one)
                    assert await wait(lab.lp.wait_for_held_requests, 21), "the 20 calls never arrived together"
                    in_flight = lab.lp.held_requests()
                    # The CLI's request (the oldest) goes on first: it meets the 401 and rotates the token
                    # while our 20 still wait; its retry, with the new token, is the 22nd request.
                    lab.lp.release_api_requests(1)
                    assert await wait(lab.lp.wait_for_api_calls, before["api_calls"] + 22), "the CLI never retried"
                finally:
                    lab.lp.release_api_requests()
    assert in_flight == 21, f"{in_flight} requests reached the provider together, expected 21"
    assert len(results) == 20
    for r in results:
        assert r.is_error is False, text_of(r)
        assert r.structured_content["status"] == 200 and r.structured_content["body"]["subject"] == "victor"
        assert trail(r.structured_content) == [("conc/victor", 401, "refreshed"), ("conc/victor", 200, "ok")]
    cli_run = cli["r"]
    assert cli_run.returncode == 0, cli_run.stderr
    assert "conc/victor: refreshed (401)" in cli_run.stderr and json.loads(cli_run.stdout)["subject"] == "victor"
    after = lab.lp.snapshot()
    assert after["refresh_calls"] - before["refresh_calls"] == 1
    assert after["invalid_grant_count"] == 0 and after["reuse_detected_count"] == 0
    stderr = errlog.read_text()
    assert "via conc/victor: refreshed (401)" in stderr  # DEBUG logging was on, and went to stderr
    assert_no_traceback(stderr)
    texts = [r.model_dump_json(by_alias=True) for r in results] + [stderr, cli_run.stdout, cli_run.stderr]
    assert_no_secrets(texts, lab.secrets())


# -- the process: stdout discipline and shutdown -------------------------------------------------


def _is_jsonrpc(line: bytes) -> bool:
    doc = json.loads(line)
    if doc.get("jsonrpc") != "2.0":
        return False
    return ("id" in doc and ("result" in doc or "error" in doc)) or "method" in doc


def test_stdout_carries_only_json_rpc_and_debug_logs_go_to_stderr(lab: Lab) -> None:
    """Raw newline-delimited JSON-RPC with AUTHPOOL_LOG=DEBUG: every stdout line is JSON-RPC, the logs are on stderr."""
    s = RawServer(lab.home, AUTHPOOL_LOG="DEBUG")
    try:
        init = s.initialize()
        assert init["result"]["serverInfo"]["name"] == "authpool"
        failed = s.call(2, "tools/call", {"name": "account_status", "arguments": {"account": "main/nobody"}})
        assert failed["result"]["isError"] is True
        invalid = s.call(3, "tools/call", {"name": "proxy_request", "arguments": {"provider": "main"}})
        assert invalid["result"]["isError"] is True
        ok = s.call(4, "tools/call", {"name": "proxy_request", "arguments": models("main", account="main/bob")})
        assert ok["result"]["isError"] is False and ok["result"]["structuredContent"]["status"] == 200
        assert s.proc.stdin is not None
        s.proc.stdin.close()
        assert s.wait() == 0
    finally:
        s.kill()
    lines = s.stdout_lines()
    assert len(lines) == 4
    for line in lines:
        assert line.endswith(b"\n") and _is_jsonrpc(line), line[:200]
    stderr = s.stderr()
    assert "authpool: GET /v1/models via main/bob: ok (200)" in stderr
    assert not any(b"authpool: GET" in line for line in lines)
    assert_no_traceback(stderr)
    assert_no_secrets([stderr, *(line.decode() for line in lines)], lab.secrets())


def test_closing_stdin_makes_the_server_exit_with_status_0_even_with_a_request_in_flight(lab: Lab) -> None:
    """EOF on stdin while a request waits on the provider (held there, never answered): the server exits 0 anyway."""
    s = RawServer(lab.home)
    lab.lp.hold_api_requests()
    try:
        s.initialize()
        s.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "proxy_request", "arguments": models("main")}})
        assert lab.lp.wait_for_held_requests(1, DEADLINE), "the request never reached the provider"
        assert s.proc.stdin is not None
        s.proc.stdin.close()
        # The request is answered only after this returns: exiting cannot have waited for it.
        assert s.wait(timeout=DEADLINE) == 0
    finally:
        lab.lp.release_api_requests()
        s.kill()
    assert all(_is_jsonrpc(line) for line in s.stdout_lines())
    assert_no_traceback(s.stderr())


def test_sigterm_exits_0_and_flushes_pending_usage_counters(lab: Lab) -> None:
    """A counter maybe still pending in memory after a served request: SIGTERM writes it to pool.json, exits 0."""
    before = lab.account_json("flush/walter")["counters"]["requests"]
    s = RawServer(lab.home)
    try:
        s.initialize()
        r = s.call(2, "tools/call", {"name": "proxy_request", "arguments": models("flush")})
        assert r["result"]["structuredContent"]["status"] == 200
        s.proc.send_signal(signal.SIGTERM)
        assert s.wait(timeout=DEADLINE) == 0
    finally:
        s.kill()
    walter = lab.account_json("flush/walter")
    assert walter["counters"]["requests"] == before + 1 and walter["last_status"] == 200
    assert all(_is_jsonrpc(line) for line in s.stdout_lines())
    assert_no_traceback(s.stderr())


# -- a server spawned without AUTHPOOL_HOME, and frames no client would send ----------------------


async def test_serve_without_authpool_home_names_the_home_it_uses(tmp_path: Path) -> None:
    """Spawned without AUTHPOOL_HOME: stderr names the home, pool_status shows it, "no accounts" errors name it."""
    data_home = tmp_path / "xdg-data"
    default_home = data_home / "authpool"  # where the platform's user data dir puts it on Linux
    params = StdioServerParameters(command=sys.executable, args=SERVE_ARGS, cwd=str(REPO), env={
        "HOME": str(tmp_path), "XDG_DATA_HOME": str(data_home), "PYTHON_KEYRING_BACKEND": VAULT_BACKEND})
    errlog = tmp_path / "stderr.log"
    with errlog.open("w") as f:
        async with Client(stdio_client(params, errlog=f), read_timeout_seconds=60) as client:
            status = await client.call_tool("pool_status", {})
            assert status.is_error is False
            assert status.structured_content["home"] == str(default_home)
            failed = await client.call_tool("proxy_request", {"provider": "openai", "method": "GET",
                                                              "path": "/v1/models"})
            assert_tool_error(failed, "provider openai has no accounts", str(default_home), "AUTHPOOL_HOME")
    stderr = errlog.read_text()
    assert f"authpool: serving the pool in {default_home}" in stderr and "AUTHPOOL_HOME is not set" in stderr
    assert_no_traceback(stderr)
    cli = run_cli("request", "openai", "GET", "/v1/models",
                  env={"AUTHPOOL_HOME": str(default_home), "PYTHON_KEYRING_BACKEND": VAULT_BACKEND})
    assert cli.returncode == 1 and f"pool home: {default_home}" in cli.stderr, cli.stderr


def _empty_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    return home


FRAMES: list[tuple[bytes, int | str | None, int, str]] = [
    (b'{"jsonrpc": "2.0", "id": 5}', 5, -32600, "missing method"),
    (b'{"jsonrpc": "1.0", "id": 6, "method": "tools/list"}', 6, -32600, 'jsonrpc must be "2.0"'),
    (b'{"jsonrpc": "2.0", "id": "seven", "method": "tools/list", "params": "x"}', "seven", -32600,
     "params must be an object"),
    (b'{"jsonrpc": "2.0", "id": 8, "method": 42}', 8, -32600, "method must be a string"),
    (b'{"jsonrpc": "2.0", "id": 9.5, "method": "tools/list"}', None, -32600, "id must be a string or an integer"),
    (b"{not json", None, -32700, "not valid JSON"),
    (b"[1, 2]", None, -32600, "a JSON object"),
    (b'"just a string"', None, -32600, "a JSON object"),
]


def test_json_rpc_frames_the_server_cannot_process_get_an_error_answer(tmp_path: Path) -> None:
    """Over a real `authpool serve` pipe: -32600 (with the request's id) or -32700 (id null); the server goes on."""
    home = _empty_home(tmp_path)
    s = RawServer(home)
    try:
        s.initialize()
        assert s.proc.stdin is not None
        for frame, _, _, _ in FRAMES:
            s.proc.stdin.write(frame + b"\n")
        s.proc.stdin.write(b"\n")  # a blank line is no message: no answer
        s.proc.stdin.flush()
        answers = [s.recv() for _ in FRAMES]
        assert s.call(10, "tools/list")["result"]["tools"]  # still serving
        s.proc.stdin.close()
        assert s.wait() == 0
    finally:
        s.kill()
    for (frame, request_id, code, reason), answer in zip(FRAMES, answers, strict=True):
        assert answer["jsonrpc"] == "2.0" and "result" not in answer, (frame, answer)
        assert answer["id"] == request_id, (frame, answer)
        assert answer["error"]["code"] == code and reason in answer["error"]["message"], (frame, answer)
    assert len(s.stdout_lines()) == 1 + len(FRAMES) + 1  # initialize, one answer per frame, tools/list
    assert_no_traceback(s.stderr())
