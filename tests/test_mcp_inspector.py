"""The same basic flow through a client we did not write: the MCP Inspector CLI (0.15, Node).

The Inspector spawns `authpool serve` itself, speaks the legacy handshake, passes tool
arguments as strings (``--tool-arg k=v``) and prints the raw result as JSON. It is installed
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
from tests.mcp_support import INSPECTOR_VERSION, SERVE_ARGS, TOOLS, Lab, home_env, inspector_command, node_available


def _inspector() -> str:
    """The Inspector binary, or skip (fail when AUTHPOOL_REQUIRE_INSPECTOR=1) with the reason."""
    required = os.environ.get("AUTHPOOL_REQUIRE_INSPECTOR") == "1"
    command = inspector_command()
    reason = None
    if not node_available():
        reason = "node is not installed"
    elif command is None:
        reason = (f"the MCP Inspector is not installed (.ci/run installs @modelcontextprotocol/inspector@"
                  f"{INSPECTOR_VERSION} into .ci/node; or set AUTHPOOL_INSPECTOR)")
    elif not os.access(command, os.X_OK):
        reason = f"AUTHPOOL_INSPECTOR={command} is not an executable file"
    if reason is None:
        assert command is not None
        return command
    if required:
        pytest.fail(f"AUTHPOOL_REQUIRE_INSPECTOR=1 but {reason}")
    pytest.skip(reason)


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


def run_inspector(inspector: str, lab: Lab, *args: str) -> dict[str, Any]:
    """`mcp-inspector --cli -e ... python -m authpool.server.cli serve ARGS`; the JSON it prints."""
    env_args = [a for k, v in home_env(lab.home).items() for a in ("-e", f"{k}={v}")]
    # The Inspector hands its own environment to the server: keep ours (AUTHPOOL_*) out of it.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTHPOOL_", "PYTHON_KEYRING"))}
    r = subprocess.run([inspector, "--cli", *env_args, sys.executable, *SERVE_ARGS, *args],
                       capture_output=True, text=True, timeout=120, env=env, cwd=Path(lab.home).parent)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}"
    assert_no_secrets([r.stdout, r.stderr], lab.secrets())
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def test_the_inspector_lists_every_tool_with_schemas(inspector: str, lab: Lab) -> None:
    """`--method tools/list` shows the pool's tools, each with an inputSchema and an outputSchema."""
    tools = {t["name"]: t for t in run_inspector(inspector, lab, "--method", "tools/list")["tools"]}
    assert set(tools) >= set(TOOLS)
    for tool in tools.values():
        assert tool["inputSchema"]["type"] == "object" and tool["outputSchema"]["type"] == "object"
    assert set(tools["proxy_request"]["inputSchema"]["required"]) == {"provider", "method", "path"}


def test_the_inspector_calls_list_accounts(inspector: str, lab: Lab) -> None:
    """`tools/call list_accounts --tool-arg provider=main` returns the accounts as structured content."""
    r = run_inspector(inspector, lab, "--method", "tools/call", "--tool-name", "list_accounts",
                      "--tool-arg", "provider=main")
    assert r["isError"] is False
    assert [(a["name"], a["kind"]) for a in r["structuredContent"]["accounts"]] == [
        ("main/alice", "oauth"), ("main/bob", "api_key")]
    assert json.loads(r["content"][0]["text"]) == r["structuredContent"]


def test_the_inspector_calls_proxy_request_with_string_arguments(inspector: str, lab: Lab) -> None:
    """Every --tool-arg is a string: numbers and a JSON object for `json` are coerced to the declared types."""
    r = run_inspector(inspector, lab, "--method", "tools/call", "--tool-name", "proxy_request",
                      "--tool-arg", "provider=main", "--tool-arg", "method=GET", "--tool-arg", "path=/v1/models",
                      "--tool-arg", "wait_s=0", "--tool-arg", "max_body_chars=5000",
                      "--tool-arg", "account=main/bob")
    assert r["isError"] is False, r
    out = r["structuredContent"]
    assert out["status"] == 200 and out["account"]["name"] == "main/bob" and out["body"]["subject"] == "bob"
    assert [m["id"] for m in out["body"]["data"]] == ["loopback-small", "loopback-large"]

    message = {"model": "from-inspector", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    r = run_inspector(inspector, lab, "--method", "tools/call", "--tool-name", "proxy_request",
                      "--tool-arg", "provider=main", "--tool-arg", "method=POST", "--tool-arg", "path=/v1/messages",
                      "--tool-arg", f"json={json.dumps(message)}")
    assert r["isError"] is False, r
    assert r["structuredContent"]["body"]["model"] == "from-inspector"
    assert r["structuredContent"]["attempts"][0]["outcome"] == "ok"


def test_the_inspector_sees_tool_errors_as_is_error_results(inspector: str, lab: Lab) -> None:
    """An unknown provider comes back as an isError result with the message, not as a protocol failure."""
    r = run_inspector(inspector, lab, "--method", "tools/call", "--tool-name", "proxy_request",
                      "--tool-arg", "provider=nope", "--tool-arg", "method=GET", "--tool-arg", "path=/v1/models")
    assert r["isError"] is True
    assert "unknown provider 'nope'" in r["content"][0]["text"]
    assert "Traceback" not in r["content"][0]["text"]
