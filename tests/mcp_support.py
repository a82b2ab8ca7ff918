"""Helpers for the MCP tests: a home on a loopback provider, the server in memory or over real stdio.

Tool behaviour is tested in memory: the official client connected to ``build_server(pool)`` in
this process (:func:`memory_session`), the server's log records captured (:class:`ServerLog`).
The transport (stdio framing, stdout purity, shutdown) is tested on a real process: the server
is spawned exactly as an MCP client spawns it (``python -m authpool.server.cli serve`` with the
client's default environment plus AUTHPOOL_HOME and the keyring backend). The provider is a real
socket server and the CLI runs as a subprocess either way. Nothing of ours is mocked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TextIO

from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from authpool import Account, Pool, TokenSet
from authpool.server.loopback import LoopbackProvider
from authpool.server.mcp.server import build_server
from authpool.storage import VAULT_BACKEND
from tests.conftest import REPO, assert_no_secrets, raw_pool, run_cli

SERVE_ARGS = ["-m", "authpool.server.cli", "serve"]
INSPECTOR_VERSION = "2.12.0"
TS_SDK_VERSION = "2.4.0"
TOOLS = ("proxy_request", "list_accounts", "account_status", "pool_status", "set_account_enabled",
         "reset_cooldown", "list_providers")
#: Where .ci/run installs the Node clients (or $AUTHPOOL_NODE_MODULES).
NODE_MODULES = Path(os.environ.get("AUTHPOOL_NODE_MODULES") or REPO / ".ci" / "node" / "node_modules")


def home_env(home: Path) -> dict[str, str]:
    """The only variables `authpool serve` gets beyond the MCP client's default environment."""
    return {"AUTHPOOL_HOME": str(home), "PYTHON_KEYRING_BACKEND": VAULT_BACKEND}


@contextlib.contextmanager
def pool_env(home: Path) -> Iterator[None]:
    """Point this (test) process at ``home`` too, for in-process setup, and restore afterwards."""
    saved = {k: os.environ.get(k) for k in (*home_env(home), "AUTHPOOL_VAULT_KEY", "AUTHPOOL_LOG")}
    os.environ.update(home_env(home))
    os.environ.pop("AUTHPOOL_VAULT_KEY", None)
    os.environ.pop("AUTHPOOL_LOG", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def write_providers(home: Path, providers: dict[str, LoopbackProvider], **fields: str) -> None:
    """config.toml defining each provider id on its loopback (bearer auth, loopback OAuth)."""
    lines = []
    for pid, lp in providers.items():
        lines += [f"[providers.{pid}]", f'base_url = "{lp.base_url}"', 'auth = "bearer"',
                  *(f'{k} = "{v}"' for k, v in fields.items()),
                  f"[providers.{pid}.oauth]", f'token_url = "{lp.token_url}"', f'client_id = "{lp.client_id}"', ""]
    path = home / "config.toml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    # The server re-reads config.toml when (mtime, size) changes: make every rewrite visible.
    st = path.stat()
    stamp = max(time.time_ns(), st.st_mtime_ns + 1_000_000_000)
    os.utime(path, ns=(stamp, stamp))


class Lab:
    """A home whose providers all live on one LoopbackProvider.

    Each test that needs its own accounts uses its own provider id (all on the same loopback),
    so tests sharing one server never see each other's accounts or rate limits. Account
    ``P/S`` is loopback subject ``S``; subjects must be unique across providers.
    """

    def __init__(self, home: Path, lp: LoopbackProvider, provider_ids: list[str]) -> None:
        self.home = home
        self.lp = lp
        home.mkdir(parents=True, exist_ok=True)
        home.chmod(0o700)
        write_providers(home, dict.fromkeys(provider_ids, lp))
        with pool_env(home):
            self.pool = Pool.open(home)
            self.pool.accounts()  # creates pool.json
        self.handed_out: list[str] = []

    def add_oauth(self, provider: str, *subjects: str) -> list[Account]:
        out = []
        with pool_env(self.home):
            for subject in subjects:
                doc = self.lp.add_oauth_account(subject)
                self.handed_out += [doc["access_token"], doc["refresh_token"]]
                out.append(self.pool.add_oauth(provider, subject, TokenSet.parse(doc)))
        return out

    def add_api_key(self, provider: str, subject: str) -> Account:
        key = self.lp.add_api_key(subject)
        self.handed_out.append(key)
        with pool_env(self.home):
            return self.pool.add_api_key(provider, subject, key)

    def secrets(self) -> list[str]:
        """Every token and key the loopback minted or the test handed to the pool."""
        return sorted({*self.handed_out, *self.lp.issued_secrets()})

    def account_json(self, name: str) -> dict[str, Any]:
        """The account ``provider/label`` as pool.json holds it (raw JSON, as another process reads it)."""
        provider, label = name.split("/", 1)
        for a in raw_pool(self.home)["accounts"]:
            if a["provider"] == provider and a["label"] == label:
                return dict(a)
        raise KeyError(name)

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """`authpool ARGS` as a real subprocess on this home."""
        return run_cli(*args, input=input, env=home_env(self.home))


class ServerLog(logging.Handler):
    """The log records of an in-memory server (the ``authpool`` and ``mcp`` loggers), as its stderr would show them."""

    LOGGERS = ("authpool", "mcp")

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        """Every record formatted, tracebacks included (as a stderr log would carry them)."""
        return "\n".join(self.format(r) for r in self.records)

    @contextlib.contextmanager
    def capturing(self) -> Iterator[ServerLog]:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)
        try:
            yield self
        finally:
            for name in self.LOGGERS:
                logging.getLogger(name).removeHandler(self)


@contextlib.asynccontextmanager
async def memory_session(home: Path, log: ServerLog | None = None) -> AsyncIterator[Client]:
    """The official client connected in memory to ``build_server`` over ``home``'s pool.

    The server gets a pool of its own (as a server process would have), and this process points
    at ``home`` meanwhile (the secret backend is read from the environment).
    """
    with pool_env(home), (log or ServerLog()).capturing():
        pool = Pool.open(home)
        try:
            async with Client(build_server(pool), read_timeout_seconds=60) as client:
                yield client
        finally:
            pool.close()


class Session:
    """A connected client plus the checks every call gets: no secret in any result, nor in the server's log."""

    def __init__(self, client: Client, lab: Lab, log: ServerLog) -> None:
        self.client = client
        self.lab = lab
        self.log = log

    async def call(self, name: str, args: dict[str, Any], **kw: Any) -> Any:
        result = await self.client.call_tool(name, args, **kw)
        assert_no_secrets(result.model_dump_json(by_alias=True), self.lab.secrets())
        return result

    async def ok(self, name: str, args: dict[str, Any], **kw: Any) -> dict[str, Any]:
        """Call a tool that must succeed; its structured content."""
        result = await self.call(name, args, **kw)
        assert result.is_error is False, text_of(result)
        # The text block mirrors the structured content (for clients that only read text).
        assert json.loads(text_of(result)) == result.structured_content
        out: dict[str, Any] = result.structured_content
        return out

    async def err(self, name: str, args: dict[str, Any], *fragments: str) -> str:
        """Call a tool that must fail as a tool error naming ``fragments``; its message."""
        return assert_tool_error(await self.call(name, args), *fragments)

    def stderr(self) -> str:
        """What the server logged so far, as its stderr would carry it."""
        return self.log.text()


@contextlib.asynccontextmanager
async def lab_session(lab: Lab) -> AsyncIterator[Session]:
    """A :class:`Session` in memory on ``lab``'s home; afterwards, no traceback and no secret was logged."""
    log = ServerLog()
    async with memory_session(lab.home, log) as client:
        yield Session(client, lab, log)
    assert_no_traceback(log.text())
    assert_no_secrets(log.text(), lab.secrets())


def server_params(home: Path, **extra_env: str) -> StdioServerParameters:
    """`authpool serve` as an MCP client spawns it: absolute interpreter, default env + ours."""
    return StdioServerParameters(command=sys.executable, args=SERVE_ARGS, env={**home_env(home), **extra_env},
                                 cwd=str(REPO))


@contextlib.asynccontextmanager
async def mcp_session(home: Path, *, mode: str = "auto", errlog: TextIO | None = None,
                      **extra_env: str) -> AsyncIterator[Client]:
    """The official client connected to a fresh `authpool serve` over stdio (stderr to ``errlog``)."""
    params = server_params(home, **extra_env)
    transport = stdio_client(params, errlog=errlog) if errlog is not None else stdio_client(params)
    async with Client(transport, mode=mode, read_timeout_seconds=60) as client:
        yield client


def text_of(result: Any) -> str:
    """The text of a tool result's first content block."""
    return str(result.content[0].text) if result.content else ""


def assert_tool_error(result: Any, *fragments: str) -> str:
    """A tool error (not a protocol error) whose message names the problem and is no traceback."""
    text = text_of(result)
    assert result.is_error is True, text
    assert result.structured_content is None
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"
    assert "Traceback" not in text and 'File "' not in text, text
    return text


def assert_no_traceback(log_text: str) -> None:
    assert "Traceback" not in log_text, log_text[-3000:]


# -- raw JSON-RPC over a pipe ----------------------------------------------------------------


class RawServer:
    """`authpool serve` as a bare subprocess: newline-delimited JSON-RPC written and read by hand.

    Every stdout line is kept (``lines``) so a test can check that each one is JSON-RPC.
    """

    def __init__(self, home: Path, **extra_env: str) -> None:
        from mcp.client.stdio import get_default_environment

        self.proc = subprocess.Popen(
            [sys.executable, *SERVE_ARGS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**get_default_environment(), **home_env(home), **extra_env}, cwd=REPO,
        )
        self.lines: list[bytes] = []
        self._q: queue.Queue[bytes | None] = queue.Queue()
        self._err: list[bytes] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self._q.put(line)
        self._q.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._err.append(line)

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def recv(self, timeout: float = 30) -> dict[str, Any]:
        """The next stdout line, parsed (fails if it is not JSON)."""
        line = self._q.get(timeout=timeout)
        assert line is not None, "server closed stdout"
        doc: dict[str, Any] = json.loads(line)
        return doc

    def response(self, request_id: int, timeout: float = 30) -> dict[str, Any]:
        """The response to ``request_id`` (notifications in between are skipped, but kept in ``lines``)."""
        deadline = time.monotonic() + timeout
        while True:
            doc = self.recv(timeout=max(0.1, deadline - time.monotonic()))
            if doc.get("id") == request_id:
                return doc

    def call(self, request_id: int, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.send({"jsonrpc": "2.0", "id": request_id, "method": method, **({"params": params} if params else {})})
        return self.response(request_id)

    def initialize(self) -> dict[str, Any]:
        result = self.call(1, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                             "clientInfo": {"name": "raw-test", "version": "0"}})
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return result

    def wait(self, timeout: float = 10) -> int:
        """Exit status (the process is killed, and the test fails, if it does not exit in time)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"authpool serve did not exit within {timeout}s") from None

    def stderr(self) -> str:
        return b"".join(self._err).decode(errors="replace")

    def stdout_lines(self) -> list[bytes]:
        return list(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- the MCP Inspector (a client we did not write) -------------------------------------------


def inspector_command() -> str | None:
    """The installed ``mcp-inspector`` binary: $AUTHPOOL_INSPECTOR, else .ci/node's, else None."""
    env = os.environ.get("AUTHPOOL_INSPECTOR")
    if env:
        return env
    local = NODE_MODULES / ".bin" / "mcp-inspector"
    if local.exists():
        return str(local)
    return None


def ts_sdk_dir() -> Path | None:
    """The installed TypeScript SDK v2 client package (``@modelcontextprotocol/client``), or None."""
    package = NODE_MODULES / "@modelcontextprotocol" / "client"
    return package if (package / "package.json").exists() else None


def require_node_tool(flag: str, what: str, reason: str | None) -> None:
    """Skip (``reason`` given), or fail when ``flag`` is set to 1 (.ci/run sets it after a good install)."""
    import pytest

    if reason is None:
        return
    if os.environ.get(flag) == "1":
        pytest.fail(f"{flag}=1 but {what}: {reason}")
    pytest.skip(f"{what}: {reason}")


def node_available() -> bool:
    return shutil.which("node") is not None
