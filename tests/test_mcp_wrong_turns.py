"""`authpool serve` when something is wrong: another home, a damaged store, bad arguments, broken JSON-RPC.

The server is spawned as MCP clients spawn it (the official client, or a raw pipe for frames no
client would send). Each test checks the one-line reason reaches the client and no traceback
reaches stderr.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from pool.backend import VAULT_BACKEND
from tests.conftest import REPO, run_cli
from tests.mcp_support import SERVE_ARGS, assert_no_traceback, assert_tool_error

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
