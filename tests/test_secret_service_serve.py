"""`authpool serve` spawned the way MCP clients spawn it, against a real Secret Service.

MCP clients pass a stdio server only HOME, LOGNAME, PATH, SHELL, TERM and USER: no
DBUS_SESSION_BUS_ADDRESS. On a Linux desktop the session bus still lives at
/run/user/<uid>/bus, and authpool must find it there — otherwise the server could not reach the
secrets the CLI stored, and the pool's secrets would split. This test puts a private bus (with
gnome-keyring) at exactly that path, so it only runs where that path is free (CI, headless
machines), and cleans up after itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from authpool.server.loopback import LoopbackProvider
from tests.conftest import REPO, assert_no_secrets, raw_pool
from tests.secret_service import SecretServiceSession, SecretServiceUnavailable, secret_service_session

STANDARD_BUS = Path(f"/run/user/{os.getuid()}/bus")


@pytest.fixture
def desktop_bus() -> Iterator[SecretServiceSession]:
    """A private Secret Service listening on the user's standard bus path."""
    if STANDARD_BUS.exists():
        pytest.skip(f"{STANDARD_BUS} belongs to a real session here; not replacing it")
    created_dir = not STANDARD_BUS.parent.exists()
    try:
        STANDARD_BUS.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        pytest.skip(f"cannot create {STANDARD_BUS.parent}: {e.strerror}")
    try:
        with secret_service_session(socket_path=STANDARD_BUS) as session:
            yield session
    except SecretServiceUnavailable as e:
        pytest.skip(f"no Secret Service here: {e}")
    finally:
        STANDARD_BUS.unlink(missing_ok=True)
        if created_dir:
            shutil.rmtree(STANDARD_BUS.parent, ignore_errors=True)


def test_serve_with_the_clients_default_environment_reaches_the_secret_service(
    desktop_bus: SecretServiceSession, tmp_path: Path
) -> None:
    """Secrets stored by the CLI (with the bus address) are used by `serve` spawned without it."""
    home = tmp_path / "home"
    with LoopbackProvider() as lp:
        home.mkdir(mode=0o700)
        (home / "config.toml").write_text(
            f'[providers.desk]\nbase_url = "{lp.base_url}"\nauth = "bearer"\n'
            f'[providers.desk.oauth]\ntoken_url = "{lp.token_url}"\nclient_id = "{lp.client_id}"\n'
        )
        tokens = lp.add_oauth_account("dora")
        cli_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AUTHPOOL_HOME": str(home),
                   **desktop_bus.env}
        added = subprocess.run(
            [sys.executable, "-m", "authpool.server.cli", "accounts", "add-oauth", "desk", "--label", "dora"],
            input=json.dumps(tokens), capture_output=True, text=True, env=cli_env, cwd=REPO, timeout=60,
        )
        assert added.returncode == 0, added.stderr
        pool_file = raw_pool(home)
        assert pool_file["secret_backend"] == "keyring.backends.SecretService.Keyring"

        # Exactly what an MCP client passes: its default environment plus the config's "env".
        params = StdioServerParameters(command=sys.executable, args=["-m", "authpool.server.cli", "serve"],
                                       env={"AUTHPOOL_HOME": str(home)}, cwd=str(REPO))
        assert "DBUS_SESSION_BUS_ADDRESS" not in (params.env or {})
        errlog = tmp_path / "serve.stderr"

        async def drive() -> list[str]:
            from mcp.client.stdio import stdio_client

            with errlog.open("w") as err:  # noqa: ASYNC230 - opened once, before the session starts
                async with Client(stdio_client(params, errlog=err), mode="legacy") as client:
                    r = await client.call_tool("proxy_request", {"provider": "desk", "method": "POST",
                                                                 "path": "/v1/chat/completions",
                                                                 "json": {"model": "m"}})
                    assert not r.is_error, r.content
                    assert r.structured_content is not None
                    assert r.structured_content["status"] == 200
                    assert r.structured_content["account"]["name"] == "desk/dora"
                    return [json.dumps(r.structured_content)]

        outputs = anyio.run(drive)
        assert_no_secrets([*outputs, errlog.read_text()], [tokens["access_token"], tokens["refresh_token"]])
        assert not (home / "vault.db").exists()  # nothing quietly went to another store
