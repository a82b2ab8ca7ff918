"""`authpool serve` when something is wrong: another home, a damaged store, bad arguments, broken JSON-RPC.

The server is spawned as MCP clients spawn it (the official client, or a raw pipe for frames no
client would send). Each test checks the one-line reason reaches the client and no traceback
reaches stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError

from authpool.storage.keyrings import VAULT_BACKEND
from tests.conftest import REPO, run_cli
from tests.mcp_support import SERVE_ARGS, RawServer, assert_no_traceback, assert_tool_error, mcp_session

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_serve_without_authpool_home_names_the_home_it_uses(tmp_path: Path) -> None:
    """Spawned without AUTHPOOL_HOME: stderr names the home, pool_status shows it, "no accounts" errors name it."""
    import sys

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


def _home_with(tmp_path: Path, pool_json: str | None = None, config: str | None = None) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    for name, text in (("pool.json", pool_json), ("config.toml", config)):
        if text is not None:
            (home / name).write_text(text)
            (home / name).chmod(0o600)
    return home


@pytest.mark.parametrize(("uri", "pool_json", "config", "reason"), [
    ("authpool://accounts", '{"schema_version": 2, "accounts": [', None, "is corrupt (invalid JSON at line 1"),
    ("authpool://providers", None, '[providers.x]\nauht = "bearer"\n', "unknown key 'auht' in [providers.x]"),
], ids=["corrupt-pool-file", "bad-config"])
async def test_a_resource_that_cannot_be_read_answers_with_the_one_line_reason(
        tmp_path: Path, uri: str, pool_json: str | None, config: str | None, reason: str) -> None:
    """resources/read on a damaged pool file or config.toml: a protocol error carrying the reason, no traceback."""
    home = _home_with(tmp_path, pool_json, config)
    errlog = tmp_path / "stderr.log"
    with errlog.open("w") as f:
        async with mcp_session(home, errlog=f) as client:
            with pytest.raises(MCPError) as e:
                await client.read_resource(uri)
    message = e.value.error.message
    assert reason in message and "\n" not in message, message
    assert_no_traceback(errlog.read_text())


BAD_ARGUMENTS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("proxy_request", {"provider": "p", "method": "GET", "path": "/", "max_body_chars": 10},
     ["max_body_chars must be at least 1000"]),
    ("proxy_request", {"provider": "p", "method": "GET", "path": "/", "wait_s": 4000, "query": {"n": 5}},
     ["query.n must be a string", "wait_s must be at most 3600"]),
    ("proxy_request", {"method": 5}, ["provider is required", "method must be a string", "path is required"]),
    ("set_account_enabled", {"account": "a", "enabled": "maybe"}, ["enabled must be true or false"]),
    ("proxy_request", {"provider": "p", "method": "GET", "path": "/", "headers": "x: 1"},
     ["headers must be a JSON object"]),
]


async def test_bad_tool_arguments_come_back_as_one_line_per_field(tmp_path: Path) -> None:
    """A tool call with bad arguments: one readable line per field, no pydantic dump, link or echoed input."""
    home = _home_with(tmp_path)
    errlog = tmp_path / "stderr.log"
    with errlog.open("w") as f:
        async with mcp_session(home, errlog=f) as client:
            for tool, arguments, lines in BAD_ARGUMENTS:
                result = await client.call_tool(tool, arguments)
                text = assert_tool_error(result, *lines)
                assert text.splitlines() == [f"invalid arguments for {tool}:", *lines], text
                assert "pydantic" not in text and "input_value" not in text and "type=" not in text, text
    assert_no_traceback(errlog.read_text())


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
    home = _home_with(tmp_path)
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
