"""The official TypeScript SDK v2 client (@modelcontextprotocol/client) against authpool, over stdio and HTTP.

``tests/node/ts_client.mjs`` connects in the handshake era (``legacy``) or negotiates 2026-07-28
(``auto``), lists the tools, calls ``list_accounts``, reads ``authpool://accounts`` and subscribes to
it (``resources/subscribe`` or ``subscriptions/listen``); the test then disables an account with the
CLI, in another process, and waits for the client to report the update. Installed by ``.ci/run``
into ``.ci/node``; without node or the package these tests skip, unless AUTHPOOL_REQUIRE_TS_SDK=1.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authpool.server.loopback import LoopbackProvider
from tests.conftest import REPO, assert_no_secrets
from tests.gateway_support import DEADLINE, Gateway
from tests.mcp_support import TS_SDK_VERSION, Lab, home_env, require_node_tool, ts_sdk_dir

SCRIPT = REPO / "tests" / "node" / "ts_client.mjs"


@pytest.fixture(scope="module")
def sdk() -> Path:
    package = ts_sdk_dir()
    reason = None
    if shutil.which("node") is None:
        reason = "node is not installed"
    elif package is None:
        reason = (f"not installed (.ci/run installs @modelcontextprotocol/client@{TS_SDK_VERSION} into .ci/node; "
                  "or set AUTHPOOL_NODE_MODULES)")
    require_node_tool("AUTHPOOL_REQUIRE_TS_SDK", "the TypeScript SDK v2 client", reason)
    assert package is not None
    return package


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lp = LoopbackProvider().start()
    try:
        lab = Lab(tmp_path_factory.mktemp("ts") / "home", lp, ["ts"])
        for name in ("stdio-legacy", "stdio-auto", "http-legacy", "http-auto"):
            lab.add_api_key("ts", name)
        yield lab
    finally:
        lp.stop()


@pytest.fixture(scope="module")
def key(lab: Lab) -> str:
    return lab.cli("gateway", "key").stdout.strip()


@pytest.fixture(scope="module")
def http_server(lab: Lab, key: str, sdk: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    server = Gateway(lab.home, tmp_path_factory.mktemp("ts-http"), command=("serve", "--http"))
    try:
        yield server
    finally:
        server.stop()
        assert_no_secrets(server.stderr(), [*lab.secrets(), key])


def lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    out: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.put(line)
        out.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return out


def next_step(proc: subprocess.Popen[str], lines: queue.Queue[str | None], step: str,
              seen: list[str]) -> dict[str, Any]:
    """The client's next JSON line, which must report ``step`` (kept in ``seen``, for the secret scan)."""
    try:
        line = lines.get(timeout=DEADLINE)
    except queue.Empty:
        proc.kill()
        raise AssertionError(f"the TypeScript client did not report {step!r}") from None
    if line is None:
        proc.wait()
        assert proc.stderr is not None
        raise AssertionError(f"the TypeScript client exited {proc.returncode}: {proc.stderr.read()[-3000:]}")
    seen.append(line)
    doc: dict[str, Any] = json.loads(line)
    assert doc["step"] == step, doc
    return doc


@pytest.mark.parametrize("mode", ["legacy", "auto"])
@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_the_typescript_client_uses_the_tools_and_hears_of_a_cli_change(
        sdk: Path, lab: Lab, key: str, request: pytest.FixtureRequest, transport: str, mode: str) -> None:
    """Tools and resources answer, and `authpool accounts disable` from the CLI reaches the subscribed client."""
    target = sys.executable if transport == "stdio" else f"{request.getfixturevalue('http_server').url}/mcp"
    env = {**os.environ, **home_env(lab.home), "AUTHPOOL_GATEWAY_KEY": key}
    proc = subprocess.Popen(["node", str(SCRIPT), str(sdk), transport, target, mode, "authpool://accounts"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    seen: list[str] = []
    try:
        lines = lines_of(proc)
        ready = next_step(proc, lines, "ready", seen)
        assert ready["protocol"] == ("2025-11-25" if mode == "legacy" else "2026-07-28")
        assert {"proxy_request", "list_accounts", "login", "list_models"} <= set(ready["tools"])
        assert f"ts/{transport}-{mode}" in ready["accounts"] and ready["resource"] == 4
        changed = lab.cli("accounts", "disable", f"ts/{transport}-{mode}")
        assert changed.returncode == 0, changed.stderr
        assert next_step(proc, lines, "updated", seen)["uri"] == "authpool://accounts"
        assert proc.wait(timeout=DEADLINE) == 0
        assert proc.stderr is not None
        # The client's output and, on stdio, the server's log it passed through: no token, key or gateway key.
        assert_no_secrets([*seen, proc.stderr.read()], [*lab.secrets(), key])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        lab.cli("accounts", "enable", f"ts/{transport}-{mode}")
