"""The MCP server when something is wrong: a damaged store, a bad config.toml, bad arguments.

The server runs in memory and the official client calls it (a home without AUTHPOOL_HOME and
JSON-RPC frames no client would send need a real process: ``test_mcp_stdio.py``). Each test
checks the one-line reason reaches the client and no traceback reaches the server's log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from tests.mcp_support import ServerLog, assert_no_traceback, assert_tool_error, memory_session

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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
    log = ServerLog()
    async with memory_session(home, log) as client:
        with pytest.raises(MCPError) as e:
            await client.read_resource(uri)
    message = e.value.error.message
    assert reason in message and "\n" not in message, message
    assert_no_traceback(log.text())


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
    log = ServerLog()
    async with memory_session(home, log) as client:
        for tool, arguments, lines in BAD_ARGUMENTS:
            result = await client.call_tool(tool, arguments)
            text = assert_tool_error(result, *lines)
            assert text.splitlines() == [f"invalid arguments for {tool}:", *lines], text
            assert "pydantic" not in text and "input_value" not in text and "type=" not in text, text
    assert_no_traceback(log.text())


async def test_an_unknown_prompt_is_invalid_params_with_its_name_not_a_crash(tmp_path: Path) -> None:
    """prompts/get for a name authpool does not have (it has none): -32602 naming it, no traceback in the log."""
    log = ServerLog()
    async with memory_session(_home_with(tmp_path), log) as client:
        assert (await client.list_prompts()).prompts == []
        with pytest.raises(MCPError) as e:
            await client.get_prompt("summarise_pool")
    assert (e.value.error.code, e.value.error.message) == (-32602, "unknown prompt: summarise_pool")
    assert_no_traceback(log.text())
