"""The basic flow through a client we did not write: the MCP Inspector CLI (2.x, Node), over stdio and HTTP.

The Inspector spawns `authpool serve` itself (stdio) or connects to a running `authpool serve
--http` (its key in a 0600 config file, never in argv), in the handshake era and in 2026-07-28's;
it passes tool arguments as strings (``--tool-arg k=v``) and prints the raw result as JSON.
``--strict`` reports every tool-schema portability problem; there must be none. It is installed
by ``.ci/run`` into ``.ci/node`` (or found through $AUTHPOOL_INSPECTOR). Without node or the
Inspector these tests skip, unless AUTHPOOL_REQUIRE_INSPECTOR=1 (set by .ci/run after a good
install), in which case they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authpool.server.loopback import LoopbackProvider
from tests.conftest import assert_no_secrets
from tests.gateway_support import Gateway
from tests.mcp_support import (
    INSPECTOR_VERSION,
    SERVE_ARGS,
    TOOLS,
    Lab,
    home_env,
    inspector_command,
    node_available,
    require_node_tool,
)

ERAS = ["legacy", "modern"]


def _inspector() -> str:
    """The Inspector binary, or skip (fail when AUTHPOOL_REQUIRE_INSPECTOR=1) with the reason."""
    command = inspector_command()
    reason = None
    if not node_available():
        reason = "node is not installed"
    elif command is None:
        reason = (f"not installed (.ci/run installs @modelcontextprotocol/inspector@{INSPECTOR_VERSION} into "
                  ".ci/node; or set AUTHPOOL_INSPECTOR)")
    elif not os.access(command, os.X_OK):
        reason = f"AUTHPOOL_INSPECTOR={command} is not an executable file"
    require_node_tool("AUTHPOOL_REQUIRE_INSPECTOR", "the MCP Inspector", reason)
    assert command is not None
    return command


@pytest.fixture(scope="module")
def inspector() -> str:
    return _inspector()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lp = LoopbackProvider().start()
    try:
        lab = Lab(tmp_path_factory.mktemp("inspector") / "home", lp, ["main"])
        lab.add_oauth("main", "alice")
        lab.add_api_key("main", "bob")
        yield lab
    finally:
        lp.stop()


@pytest.fixture(scope="module")
def http_config(lab: Lab, inspector: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A running `serve --http`, and an Inspector config file (0600) naming it with the key."""
    key = lab.cli("gateway", "key").stdout.strip()
    run = tmp_path_factory.mktemp("inspector-http")
    server = Gateway(lab.home, run, command=("serve", "--http"))
    config = run / "mcp.json"
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"mcpServers": {"authpool": {"type": "streamable-http", "url": f"{server.url}/mcp",
                                               "headers": {"Authorization": f"Bearer {key}"}}}}, f)
    try:
        yield config
    finally:
        server.stop()
        assert_no_secrets(server.stderr(), [*lab.secrets(), key])


def run_inspector(inspector: str, lab: Lab, target: str | Path, era: str, *args: str,
                  expect: int = 0, stderr: list[str] | None = None) -> dict[str, Any]:
    """`mcp-inspector --cli` on stdio (``target`` "stdio") or HTTP (a config file); the JSON it prints."""
    if target == "stdio":
        where = [a for k, v in home_env(lab.home).items() for a in ("-e", f"{k}={v}")]
        where += [sys.executable, *SERVE_ARGS]
    else:
        where = ["--config", str(target), "--server", "authpool"]
    # The Inspector hands its own environment to a stdio server: keep ours (AUTHPOOL_*) out of it.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTHPOOL_", "PYTHON_KEYRING"))}
    env["MCP_INSPECTOR_SECRET_STORE"] = "memory"  # it keeps OAuth secrets of its own; none are needed here
    r = subprocess.run([inspector, "--cli", *where, "--protocol-era", era, *args], capture_output=True, text=True,
                       timeout=120, env=env, cwd=Path(lab.home).parent)
    assert r.returncode == expect, f"exit {r.returncode}\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}"
    assert_no_secrets([r.stdout, r.stderr], lab.secrets())
    if stderr is not None:
        stderr.append(r.stderr)
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


@pytest.fixture(params=["stdio", "http"])
def target(request: pytest.FixtureRequest, inspector: str) -> str | Path:
    if request.param == "stdio":
        return "stdio"
    config: Path = request.getfixturevalue("http_config")
    return config


@pytest.mark.parametrize("era", ERAS)
def test_the_inspector_lists_every_tool_with_strict_schemas(inspector: str, lab: Lab, target: str | Path,
                                                            era: str) -> None:
    """`tools/list --strict`: every tool with typed input and output schemas, no portability problem reported."""
    said: list[str] = []
    tools = {t["name"]: t for t in run_inspector(inspector, lab, target, era, "--method", "tools/list",
                                                 "--strict", stderr=said)["tools"]}
    assert "Warning" not in said[0] and "Error" not in said[0], said[0]
    assert set(tools) >= {*TOOLS, "login", "list_models"}
    for tool in tools.values():
        assert tool["inputSchema"]["type"] == "object" and tool["outputSchema"]["type"] == "object"
        hints = tool["annotations"]
        assert {"readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"} <= set(hints), tool["name"]
    assert set(tools["proxy_request"]["inputSchema"]["required"]) == {"provider", "method", "path"}


@pytest.mark.parametrize("era", ERAS)
def test_the_inspector_calls_list_accounts_and_reads_a_resource(inspector: str, lab: Lab, target: str | Path,
                                                                era: str) -> None:
    """`tools/call list_accounts` gives structured content; `resources/read authpool://pool-status` its JSON."""
    r = run_inspector(inspector, lab, target, era, "--method", "tools/call", "--tool-name", "list_accounts",
                      "--tool-arg", "provider=main")
    assert r["isError"] is False
    assert [(a["name"], a["kind"]) for a in r["structuredContent"]["accounts"]] == [
        ("main/alice", "oauth"), ("main/bob", "api_key")]
    assert json.loads(r["content"][0]["text"]) == r["structuredContent"]
    status = run_inspector(inspector, lab, target, era, "--method", "resources/read", "--uri",
                           "authpool://pool-status")
    doc = json.loads(status["contents"][0]["text"])
    assert doc["providers"][0]["provider"] == "main" and doc["providers"][0]["ready"] == 2


def test_the_inspector_calls_proxy_request_with_string_arguments(inspector: str, lab: Lab) -> None:
    """Every --tool-arg is a string: numbers and a JSON object for `json` are coerced to the declared types."""
    r = run_inspector(inspector, lab, "stdio", "legacy", "--method", "tools/call", "--tool-name", "proxy_request",
                      "--tool-arg", "provider=main", "--tool-arg", "method=GET", "--tool-arg", "path=/v1/models",
                      "--tool-arg", "wait_s=0", "--tool-arg", "max_body_chars=5000",
                      "--tool-arg", "account=main/bob")
    assert r["isError"] is False, r
    out = r["structuredContent"]
    assert out["status"] == 200 and out["account"]["name"] == "main/bob" and out["body"]["subject"] == "bob"
    assert [m["id"] for m in out["body"]["data"]] == ["loopback-small", "loopback-large"]

    message = {"model": "from-inspector", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    r = run_inspector(inspector, lab, "stdio", "legacy", "--method", "tools/call", "--tool-name", "proxy_request",
                      "--tool-arg", "provider=main", "--tool-arg", "method=POST", "--tool-arg", "path=/v1/messages",
                      "--tool-arg", f"json={json.dumps(message)}")
    assert r["isError"] is False, r
    assert r["structuredContent"]["body"]["model"] == "from-inspector"
    assert r["structuredContent"]["attempts"][0]["outcome"] == "ok"


def test_the_inspector_sees_tool_errors_as_is_error_results(inspector: str, lab: Lab) -> None:
    """An unknown provider comes back as an isError result with its message (Inspector exits 5), no protocol error."""
    r = run_inspector(inspector, lab, "stdio", "legacy", "--method", "tools/call", "--tool-name", "proxy_request",
                      "--tool-arg", "provider=nope", "--tool-arg", "method=GET", "--tool-arg", "path=/v1/models",
                      expect=5)
    assert r["isError"] is True
    assert "unknown provider 'nope'" in r["content"][0]["text"]
    assert "Traceback" not in r["content"][0]["text"]
