"""Benchmark of ``authpool serve``: cold start, and what a proxied request costs over MCP.

Usage::

    python benchmarks/server.py [--quick] [--dir DIR] [--imports]

Measures, in one run:

1. Cold start, spawn to the ``initialize`` answer, of ``authpool serve`` against a minimal
   ``MCPServer`` with one tool (written to a temporary file), spawned the same way with the same
   environment (the official client's default environment plus ``AUTHPOOL_HOME``), alternating
   A/B run by run. Two ways: raw JSON-RPC over a pipe (write ``initialize`` right after the
   spawn, time until its answer: the precise one) and the official Python client
   (``mcp.Client``, ``mode="legacy"``, spawn to connected). Median of each, ratio, against the
   1.15x target (and the ratio of the fastest runs, which other load on the machine disturbs
   less). Also: the time to exit after stdin closes, and an in-process split of start-up into
   imports, the CLI parser and server construction.
2. ``tools/call proxy_request`` round trips over one warm session (raw pipe and official client),
   against a direct request through a warm ``pool.client("acme")`` and the tool's body
   (``authpool.server.mcp.proxy.run_proxy``) called in-process, plus ``tools/call`` of the minimal server's
   tool as the floor of the MCP framing, and ``tools/call`` of a minimal server whose one tool makes the
   same POST on a bare ``httpx2.AsyncClient`` (the target: ``proxy_request`` within 1.10x of it); all
   interleaved, to the same loopback endpoint.
3. If the cold-start ratio misses the target (or with ``--imports``): ``-X importtime`` of
   ``authpool``, ``authpool.server.cli`` and ``authpool.server.mcp``, and of both real server start-ups, listing the
   modules ``authpool serve`` loads before answering ``initialize`` that the minimal server does
   not, grouped by the authpool import statement (file:line) that pulls them in.

Everything runs in a temporary ``AUTHPOOL_HOME`` with the file vault as the keyring backend, against
the loopback provider (``authpool.server.loopback``). The markdown printed last, between
``<!-- bench:server -->`` markers, is meant for the README.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Container, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

os.environ["PYTHON_KEYRING_BACKEND"] = "authpool.storage.vault.VaultKeyring"
# This file is called server.py: keep its directory off sys.path, so `server` is authpool's package, and reach
# the shared helpers as `benchmarks.stats` through the repository root (appended: it shadows nothing).
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
sys.path.append(str(Path(__file__).resolve().parent.parent))

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import get_default_environment, stdio_client

from authpool import Pool, TokenSet
from authpool.server.loopback import LoopbackProvider
from authpool.server.mcp.proxy import ProxyCall, run_proxy
from benchmarks.stats import load_note, machine, md_table, ms, pct, table

TARGET_RATIO = 1.15
PATH = "/v1/messages"
BODY = {"model": "loopback-small", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
PROXY_ARGS = {"provider": "acme", "method": "POST", "path": PATH, "json": BODY}
ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = "2025-11-25"

MINIMAL_SERVER = '''"""A minimal MCP server: one tool, nothing else (the cold-start baseline)."""
from mcp.server.mcpserver import MCPServer

server = MCPServer("minimal")


@server.tool()
def ping() -> str:
    """Return pong."""
    return "pong"


if __name__ == "__main__":
    server.run()
'''

MINIMAL_POST_SERVER = '''"""A minimal MCP server whose one tool makes proxy_request's POST on a bare httpx2 client (the
round-trip baseline): what a hand-written tool for one account would do."""
import logging
import os
from typing import Any

import httpx2
from mcp.server.mcpserver import MCPServer

server = MCPServer("minimal-post")
# MCPServer logs at INFO through Rich, and httpx2 logs every request at INFO: a line per call that
# authpool does not write. Quiet, so the baseline is the POST and the framing alone.
logging.getLogger("httpx2").setLevel(logging.WARNING)
client = httpx2.AsyncClient(base_url=os.environ["BENCH_BASE_URL"],
                            headers={"Authorization": "Bearer " + os.environ["BENCH_TOKEN"]})


@server.tool()
async def post(path: str, json: dict[str, Any]) -> dict[str, Any]:
    """POST ``json`` to ``path``; return the status and the JSON answer."""
    r = await client.post(path, json=json)
    return {"status": r.status_code, "body": r.json()}


if __name__ == "__main__":
    server.run()
'''

# In-process split of start-up; each prints one JSON line of seconds.
AUTHPOOL_PHASES = """
import json, time
t0 = time.perf_counter()
import authpool.server.cli.main
t1 = time.perf_counter()
authpool.server.cli.main.setup_logging()
authpool.server.cli.main.build_parser().parse_args(["serve"])
t2 = time.perf_counter()
from authpool.server.mcp import server as app
t3 = time.perf_counter()
from authpool import Pool
pool = Pool.open()
t4 = time.perf_counter()
srv = app.build_server(pool)
t5 = time.perf_counter()
print(json.dumps({"import authpool.server.cli (library, CLI)": t1 - t0,
                  "CLI parser (imports the command modules)": t2 - t1,
                  "import authpool.server.mcp (MCP SDK, tools)": t3 - t2, "Pool.open()": t4 - t3,
                  "build_server() (tools, resources)": t5 - t4}))
"""
MINIMAL_PHASES = """
import json, time
t0 = time.perf_counter()
from mcp.server.mcpserver import MCPServer
t1 = time.perf_counter()
srv = MCPServer("minimal")
@srv.tool()
def ping() -> str:
    return "pong"
t2 = time.perf_counter()
print(json.dumps({"import mcp.server.mcpserver": t1 - t0, "MCPServer() + 1 tool": t2 - t1}))
"""


@dataclass(frozen=True)
class Sizes:
    cold: int  # raw-pipe cold starts per server
    client_cold: int  # official-client cold starts per server
    calls: int  # measured rounds of the round-trip comparison
    warmup: int  # unmeasured rounds first
    phases: int  # runs of the in-process start-up split (median)
    imports: int  # -X importtime runs per target (median)


FULL = Sizes(cold=12, client_cold=8, calls=400, warmup=30, phases=3, imports=2)
QUICK = Sizes(cold=10, client_cold=4, calls=150, warmup=15, phases=1, imports=1)


# -- fixtures --------------------------------------------------------------------------------


@dataclass
class Setup:
    base: Path
    home: Path
    provider: LoopbackProvider
    authpool_cmd: list[str]
    minimal_cmd: list[str]
    post_cmd: list[str]  # the minimal server whose tool makes the same POST on a bare client
    post_env: dict[str, str]  # its environment: the provider's URL and an access token of its own
    extra_env: dict[str, str]  # what an MCP client config would add for authpool
    errlog: IO[str]  # both servers' stderr

    @property
    def env(self) -> dict[str, str]:
        """The environment the official client gives a server: its defaults plus the configured extras."""
        return {**get_default_environment(), **self.extra_env}


def make_setup(base: Path) -> Setup:
    home = base / "home"
    home.mkdir(mode=0o700)
    os.environ["AUTHPOOL_HOME"] = str(home)
    provider = LoopbackProvider(access_ttl=3600).start()
    config = home / "config.toml"
    config.write_text(
        "[providers.acme]\n"
        'name = "Acme (loopback)"\n'
        f'base_url = "{provider.base_url}"\n'
        "[providers.acme.oauth]\n"
        f'token_url = "{provider.token_url}"\n'
        f'client_id = "{provider.client_id}"\n'
    )
    config.chmod(0o600)
    pool = Pool.open(home)
    for label in ("a1", "a2"):
        pool.add_oauth("acme", label, TokenSet.parse(provider.add_oauth_account(f"acme-{label}")))
    pool.close()
    minimal = base / "minimal_server.py"
    minimal.write_text(MINIMAL_SERVER)
    post = base / "minimal_post_server.py"
    post.write_text(MINIMAL_POST_SERVER)
    bare_token = provider.add_oauth_account("acme-bare")["access_token"]
    # What users configure: the console script (falls back to the module if it is not installed).
    script = Path(sys.executable).parent / "authpool"
    authpool_cmd = [str(script), "serve"] if script.exists() else [sys.executable, "-m", "authpool.server.cli", "serve"]
    return Setup(
        base=base,
        home=home,
        provider=provider,
        authpool_cmd=authpool_cmd,
        minimal_cmd=[sys.executable, str(minimal)],
        post_cmd=[sys.executable, str(post)],
        post_env={"BENCH_BASE_URL": provider.base_url, "BENCH_TOKEN": bare_token},
        extra_env={"AUTHPOOL_HOME": str(home), "PYTHON_KEYRING_BACKEND": "authpool.storage.vault.VaultKeyring"},
        errlog=(base / "servers-stderr.log").open("w", encoding="utf-8"),
    )


# -- raw JSON-RPC over a pipe ----------------------------------------------------------------


def _initialize(request_id: int = 1) -> bytes:
    msg = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}},
    }
    return json.dumps(msg).encode() + b"\n"


class RawSession:
    """One server process driven by hand: newline-delimited JSON-RPC on its stdin/stdout."""

    def __init__(self, cmd: list[str], env: dict[str, str], stderr: Any, *, python_flags: Sequence[str] = (),
                 cwd: Path | None = None) -> None:
        argv = cmd
        if python_flags:  # a console script is a Python file: run it with the flags too
            argv = [sys.executable, *python_flags, *(cmd[1:] if cmd[0] == sys.executable else cmd)]
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env,
                                     cwd=cwd)
        self.next_id = 1

    def send(self, payload: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(payload)
        self.proc.stdin.flush()

    def wait_for(self, request_id: int) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"server exited (status {self.proc.poll()}) before answering request {request_id}")
            msg = json.loads(line)
            if msg.get("id") == request_id:
                return msg  # type: ignore[no-any-return]

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        request_id = self.next_id
        self.next_id += 1
        self.send(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}).encode() + b"\n")
        msg = self.wait_for(request_id)
        if "error" in msg:
            raise RuntimeError(f"{method} failed: {msg['error']}")
        return msg["result"]  # type: ignore[no-any-return]

    def open(self) -> dict[str, Any]:
        """initialize + notifications/initialized; returns the initialize result."""
        result = self.request("initialize", json.loads(_initialize())["params"])
        self.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        return result

    def close(self, timeout: float = 10.0) -> float:
        """Close stdin and wait for the exit; returns how long that took."""
        t = time.perf_counter()
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return time.perf_counter() - t


def cold_raw(cmd: list[str], env: dict[str, str], stderr: Any, cwd: Path) -> tuple[float, float]:
    """Spawn, write ``initialize`` at once, time until its answer; then the exit after EOF."""
    s = RawSession(cmd, env, stderr, cwd=cwd)
    s.send(_initialize())
    msg = s.wait_for(1)
    answered = time.perf_counter() - s.started
    if "result" not in msg or "serverInfo" not in msg["result"]:
        raise RuntimeError(f"unexpected initialize answer: {msg}")
    return answered, s.close()


async def cold_client(cmd: list[str], setup: Setup) -> tuple[float, float]:
    """Official client, legacy handshake: spawn to connected; then ``Client.__aexit__``."""
    params = StdioServerParameters(command=cmd[0], args=cmd[1:], env=setup.extra_env, cwd=setup.base)
    t0 = time.perf_counter()
    client = Client(stdio_client(params, errlog=setup.errlog), mode="legacy")  # type: ignore[arg-type]
    await client.__aenter__()
    connected = time.perf_counter() - t0
    t1 = time.perf_counter()
    await client.__aexit__(None, None, None)
    return connected, time.perf_counter() - t1


@dataclass
class Cold:
    how: str
    authpool: list[float] = field(default_factory=list)
    minimal: list[float] = field(default_factory=list)
    authpool_exit: list[float] = field(default_factory=list)
    minimal_exit: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.authpool) / statistics.median(self.minimal)

    @property
    def min_ratio(self) -> float:
        """Ratio of the fastest runs: less sensitive to other load on the machine than the medians."""
        return min(self.authpool) / min(self.minimal)

    @property
    def met(self) -> bool:
        return self.ratio <= TARGET_RATIO


def measure_cold_raw(setup: Setup, runs: int) -> Cold:
    res = Cold("raw JSON-RPC pipe")
    env = setup.env
    for cmd in (setup.authpool_cmd, setup.minimal_cmd):  # warm-up: page cache, .pyc files
        cold_raw(cmd, env, setup.errlog, setup.base)
    for i in range(runs):
        order = [(setup.authpool_cmd, res.authpool, res.authpool_exit), (setup.minimal_cmd, res.minimal,
                                                                          res.minimal_exit)]
        for cmd, starts, exits in order if i % 2 == 0 else order[::-1]:
            start, stop = cold_raw(cmd, env, setup.errlog, setup.base)
            starts.append(start)
            exits.append(stop)
    return res


async def measure_cold_client(setup: Setup, runs: int) -> Cold:
    res = Cold('official client, mode="legacy"')
    for i in range(runs):
        order = [(setup.authpool_cmd, res.authpool, res.authpool_exit), (setup.minimal_cmd, res.minimal,
                                                                          res.minimal_exit)]
        for cmd, starts, exits in order if i % 2 == 0 else order[::-1]:
            start, stop = await cold_client(cmd, setup)
            starts.append(start)
            exits.append(stop)
    return res


def phases(code: str, env: dict[str, str], runs: int, cwd: Path) -> dict[str, float]:
    """Median of each phase printed by ``code`` run in a fresh interpreter."""
    samples: dict[str, list[float]] = {}
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             check=True, cwd=cwd)
        for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items():
            samples.setdefault(k, []).append(v)
    return {k: statistics.median(v) for k, v in samples.items()}


# -- round trips over warm sessions ----------------------------------------------------------

ARMS = [
    "direct: warm pool.client() request",
    "in-process run_proxy() (the tool's body, no MCP)",
    "tools/call proxy_request, raw pipe",
    "tools/call proxy_request, official client (legacy)",
    "tools/call ping, minimal server, raw pipe (MCP floor)",
    "tools/call of a minimal tool making the same POST on a bare httpx2 client, raw pipe",
]
TARGET_TOOL = 1.10  # proxy_request over the minimal tool making the same POST (raw pipe, medians)


async def round_trips(setup: Setup, pool: Pool, sizes: Sizes, raw_auth: RawSession,
                      raw_min: RawSession, raw_post: RawSession) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in ARMS}
    params = StdioServerParameters(command=setup.authpool_cmd[0], args=setup.authpool_cmd[1:],
                                   env=setup.extra_env, cwd=setup.base)
    async with (
        Client(stdio_client(params, errlog=setup.errlog), mode="legacy") as client,  # type: ignore[arg-type]
        pool.client("acme") as direct,
    ):

        async def via_direct() -> None:
            r = await direct.post(PATH, json=BODY)
            await r.aread()
            assert r.status_code == 200, r.status_code

        async def via_run_proxy() -> None:
            outcome = await run_proxy(pool, ProxyCall(provider="acme", method="POST", path=PATH, json_body=BODY))
            assert outcome.status == 200, outcome.status

        async def via_raw() -> None:
            result = raw_auth.request("tools/call", {"name": "proxy_request", "arguments": PROXY_ARGS})
            assert not result.get("isError") and result["structuredContent"]["status"] == 200, result

        async def via_client() -> None:
            r = await client.call_tool("proxy_request", PROXY_ARGS)
            assert not r.is_error and (r.structured_content or {}).get("status") == 200, r

        async def via_floor() -> None:
            result = raw_min.request("tools/call", {"name": "ping", "arguments": {}})
            assert not result.get("isError"), result

        async def via_bare_tool() -> None:
            result = raw_post.request("tools/call", {"name": "post", "arguments": {"path": PATH, "json": BODY}})
            assert not result.get("isError") and result["structuredContent"]["status"] == 200, result

        fns: list[Callable[[], Awaitable[None]]] = [via_direct, via_run_proxy, via_raw, via_client, via_floor,
                                                     via_bare_tool]
        # A fresh random order every round: a call inherits some of the previous call's tail (the client
        # library's background work, a server process still finishing), so no arm may always follow the same one.
        rng = random.Random(1)
        order = list(range(len(fns)))
        for i in range(sizes.warmup + sizes.calls):
            rng.shuffle(order)
            for k in order:
                t = time.perf_counter()
                await fns[k]()
                elapsed = time.perf_counter() - t
                if i >= sizes.warmup:
                    out[ARMS[k]].append(elapsed)
    return out


# -- import times --------------------------------------------------------------------------------


@dataclass
class ImportLine:
    name: str
    depth: int
    self_us: int
    cum_us: int
    parent: str | None = None


def parse_importtime(text: str) -> dict[str, ImportLine]:
    """``-X importtime`` output as name -> line, with each module's importer (its parent in the tree)."""
    lines: list[ImportLine] = []
    for raw in text.splitlines():
        if not raw.startswith("import time:") or "imported package" in raw:
            continue
        parts = raw[len("import time:") :].split("|")
        self_us, cum_us, name_field = parts[0].strip(), parts[1].strip(), parts[2]
        stripped = name_field.lstrip(" ")
        depth = (len(name_field) - len(stripped) - 1) // 2
        lines.append(ImportLine(stripped.strip(), depth, int(self_us), int(cum_us)))
    out: dict[str, ImportLine] = {}
    stack: list[ImportLine] = []
    for line in reversed(lines):  # post-order reversed is a pre-order: the parent comes first
        while stack and stack[-1].depth >= line.depth:
            stack.pop()
        line.parent = stack[-1].name if stack else None
        stack.append(line)
        out.setdefault(line.name, line)
    return out


def importtime_of(module: str, env: dict[str, str], runs: int, cwd: Path) -> float:
    """Median cumulative import time of ``module`` in a fresh interpreter (seconds)."""
    samples = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], env=env,
                              capture_output=True, text=True, check=True, cwd=cwd)
        tree = parse_importtime(proc.stderr)
        samples.append(tree[module].cum_us / 1e6)
    return statistics.median(samples)


def importtime_of_startup(cmd: list[str], env: dict[str, str], cwd: Path) -> dict[str, ImportLine]:
    """The import tree of a real server start-up, up to its answer to ``initialize``."""
    with tempfile.TemporaryFile("w+", encoding="utf-8") as err:
        s = RawSession(cmd, env, err, python_flags=["-X", "importtime"], cwd=cwd)
        s.send(_initialize())
        s.wait_for(1)
        err.flush()
        cut = os.fstat(err.fileno()).st_size  # what was imported before the answer
        s.close()
        err.seek(0)
        text = err.read()[:cut]
    return parse_importtime(text)


def _is_ours(name: str) -> bool:
    return name == "authpool" or name.startswith("authpool.")


def _import_site(importer: str, imported: str) -> str:
    """``file:line`` of the statement in module ``importer`` that imports ``imported`` (best effort)."""
    spec = importlib.util.find_spec(importer)
    origin = spec.origin if spec else None
    if not origin or not origin.endswith(".py"):
        return importer
    path = Path(origin)
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    tree = ast.parse(path.read_text(encoding="utf-8"))
    candidates: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                package = importer if spec and spec.submodule_search_locations else importer.rpartition(".")[0]
                module = importlib.util.resolve_name("." * node.level + module, package)
            names = [module, *(f"{module}.{a.name}" for a in node.names)]
        if any(n == imported or imported.startswith(n + ".") or n.startswith(imported + ".") for n in names):
            candidates.append((node.lineno, ast.get_source_segment(path.read_text(encoding="utf-8"), node) or ""))
    if not candidates:
        return f"{rel} (indirect)"
    line, text = min(candidates)
    first = text.splitlines()[0] if text else ""
    return f"{rel}:{line}  {first}"


def module_level_imports(package: str, loaded: Container[str] | None = None) -> list[str]:
    """``file:line`` of every module-level import of ``package`` (or its submodules) in pool/ and server/
    (only in modules named in ``loaded``, if given)."""
    out = []
    for path in sorted([*(ROOT / "pool").rglob("*.py"), *(ROOT / "server").rglob("*.py")]):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if loaded is not None and module not in loaded:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError):
            continue
        for node in tree.body:  # module level only: imports inside functions already are deferred
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            if any(n == package or n.startswith(package + ".") for n in names):
                out.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return out


@dataclass
class ImportReport:
    totals: dict[str, float]  # module -> cumulative seconds (import alone)
    own_self: float  # self time of pool.* and server.* during serve start-up
    added_total: float  # self time of every module serve loads and the minimal server does not
    added_count: int
    groups: list[tuple[str, str, float, int]]  # (import site, imported package, unique self s, modules)
    own: list[tuple[str, float, float, str]]  # authpool's own modules: (name, self s, cumulative s, import site)
    loaded: set[str]  # every module authpool serve had imported when it answered initialize


def import_report(setup: Setup, sizes: Sizes) -> ImportReport:
    env = setup.env
    totals = {m: importtime_of(m, env, sizes.imports, setup.base)
              for m in ("authpool", "authpool.server.cli", "authpool.server.mcp", "mcp.server.mcpserver")}
    auth = importtime_of_startup(setup.authpool_cmd, env, setup.base)
    minimal = importtime_of_startup(setup.minimal_cmd, env, setup.base)
    added = {n: line for n, line in auth.items() if n not in minimal}
    own_self = sum(line.self_us for n, line in added.items() if _is_ours(n)) / 1e6
    groups: dict[tuple[str, str], tuple[float, int]] = {}
    for name, line in added.items():
        if _is_ours(name):
            continue
        # Walk up to the authpool module that (first) imported this one; remember its direct child.
        child, parent = name, line.parent
        while parent is not None and not _is_ours(parent):
            child, parent = parent, auth[parent].parent if parent in auth else None
        key = (parent or "(at run time, not inside a module's import)", child)
        t, c = groups.get(key, (0.0, 0))
        groups[key] = (t + line.self_us / 1e6, c + 1)
    rows = []
    for (importer, child), (t, c) in groups.items():
        site = _import_site(importer, child) if _is_ours(importer) else importer
        rows.append((site, child, t, c))
    rows.sort(key=lambda r: r[2], reverse=True)
    return ImportReport(
        totals=totals,
        own_self=own_self,
        added_total=sum(line.self_us for line in added.values()) / 1e6,
        added_count=len(added),
        loaded=set(auth),
        groups=rows,
        own=sorted(
            ((n, line.self_us / 1e6, line.cum_us / 1e6,
              _import_site(line.parent, n) if line.parent else "(at run time)")
             for n, line in added.items() if _is_ours(n)),
            key=lambda r: r[1], reverse=True),
    )


# -- main ------------------------------------------------------------------------------------


@contextlib.contextmanager
def sessions(setup: Setup) -> Iterator[tuple[RawSession, RawSession, RawSession]]:
    raw_auth = RawSession(setup.authpool_cmd, setup.env, setup.errlog, cwd=setup.base)
    raw_min = RawSession(setup.minimal_cmd, setup.env, setup.errlog, cwd=setup.base)
    raw_post = RawSession(setup.post_cmd, {**setup.env, **setup.post_env}, setup.errlog, cwd=setup.base)
    try:
        for s in (raw_auth, raw_min, raw_post):
            s.open()
        yield raw_auth, raw_min, raw_post
    finally:
        for s in (raw_auth, raw_min, raw_post):
            s.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (about 40 s instead of 80 s)")
    parser.add_argument("--dir", type=Path, default=None, help="where to create the temporary home (default: $TMPDIR)")
    parser.add_argument("--imports", action="store_true", help="analyse import times even if the target is met")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    flag = " --quick" if args.quick else ""

    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="authpool-bench-", dir=args.dir) as tmp:
        env_desc = machine(["mcp", "pydantic"])
        print(f"authpool server benchmark{flag}")
        print(f"machine: {env_desc}\n")
        setup = make_setup(Path(tmp))
        pool = Pool.open(setup.home)
        try:
            print(f"  cold start, raw pipe: {sizes.cold} interleaved runs per server ...", flush=True)
            raw = measure_cold_raw(setup, sizes.cold)
            print(f"  cold start, official client: {sizes.client_cold} interleaved runs per server ...", flush=True)
            official = anyio.run(measure_cold_client, setup, sizes.client_cold)
            print("  start-up split, in-process ...", flush=True)
            split_auth = phases(AUTHPOOL_PHASES, setup.env, sizes.phases, setup.base)
            split_min = phases(MINIMAL_PHASES, setup.env, sizes.phases, setup.base)
            print(f"  round trips: {sizes.calls} interleaved rounds of {len(ARMS)} ...", flush=True)
            with sessions(setup) as (raw_auth, raw_min, raw_post):
                trips = anyio.run(round_trips, setup, pool, sizes, raw_auth, raw_min, raw_post)
            imports: ImportReport | None = None
            if not raw.met or args.imports:
                print("  import times (-X importtime) ...", flush=True)
                imports = import_report(setup, sizes)
            snap = setup.provider.snapshot()
        finally:
            pool.close()
            setup.provider.stop()
            setup.errlog.close()
        errors = (Path(tmp) / "servers-stderr.log").read_text(encoding="utf-8", errors="replace")
    elapsed = time.perf_counter() - started

    # 1. cold start
    print(f"\n1. Cold start, spawn to the initialize answer: `{' '.join(Path(c).name for c in setup.authpool_cmd)}` "
          "vs a minimal MCPServer with one tool")
    rows = []
    for c in (raw, official):
        rows.append([
            c.how,
            ms(statistics.median(c.authpool)),
            ms(statistics.median(c.minimal)),
            f"{c.ratio:.2f}x",
            ms(statistics.median(c.authpool) - statistics.median(c.minimal)),
            f"{c.min_ratio:.2f}x",
            f"{ms(min(c.authpool), 0)}-{ms(max(c.authpool), 0)} / {ms(min(c.minimal), 0)}-{ms(max(c.minimal), 0)}",
            str(len(c.authpool)),
        ])
    print(table(["measured by", "authpool ms", "minimal ms", "ratio", "added ms", "ratio of fastest",
                 "range ms (a / m)", "runs"], rows))
    print(f"target: ratio <= {TARGET_RATIO:.2f}x on the raw pipe (median): {'MET' if raw.met else 'NOT MET'}")
    print(f"exit after stdin closes (median): raw pipe authpool {ms(statistics.median(raw.authpool_exit))} ms, "
          f"minimal {ms(statistics.median(raw.minimal_exit))} ms; Client.__aexit__ authpool "
          f"{ms(statistics.median(official.authpool_exit))} ms, "
          f"minimal {ms(statistics.median(official.minimal_exit))} ms")
    print("\nStart-up split, in one fresh interpreter each (median ms; the interpreter's own start is not included)")
    split_rows = [[f"authpool: {k}", ms(v)] for k, v in split_auth.items()]
    split_rows.append(["authpool: total", ms(sum(split_auth.values()))])
    split_rows += [[f"minimal: {k}", ms(v)] for k, v in split_min.items()]
    split_rows.append(["minimal: total", ms(sum(split_min.values()))])
    print(table(["phase", "ms"], split_rows))

    # 2. round trips
    print(f"\n2. Round trips to the same loopback endpoint (POST {PATH}), one warm session each, "
          f"{sizes.calls} interleaved rounds")
    base = statistics.median(trips[ARMS[0]])
    trip_rows = [
        [name, ms(statistics.median(v), 3), ms(pct(v, 95), 3), f"{statistics.median(v) / base:.2f}x",
         ms(statistics.median(v) - base, 3)]
        for name, v in trips.items()
    ]
    print(table(["path", "median ms", "p95 ms", "vs direct", "added ms"], trip_rows))
    floor = statistics.median(trips[ARMS[4]])
    body = statistics.median(trips[ARMS[1]])
    tool_raw = statistics.median(trips[ARMS[2]])
    print(f"proxy_request over the raw pipe ({ms(tool_raw, 3)}) = run_proxy() {ms(body, 3)} + MCP floor "
          f"{ms(floor, 3)} {(tool_raw - body - floor) * 1e3:+.3f} ms (the rest: tool argument and result models, "
          "structured output, the tool's history)")
    bare_tool = statistics.median(trips[ARMS[5]])
    tool_ratio = tool_raw / bare_tool
    tool_verdict = (f"tools/call proxy_request over a minimal tool making the same POST on a bare httpx2 client "
                    f"(raw pipe, medians): {ms(tool_raw, 2)} / {ms(bare_tool, 2)} ms = {tool_ratio:.2f}x "
                    f"(target ≤ {TARGET_TOOL:.2f}x: {'met' if tool_ratio <= TARGET_TOOL else 'not met'})")
    print(tool_verdict)
    print(f"provider saw {snap['api_calls']} API calls, statuses {snap['statuses']}, "
          f"handler errors {snap['handler_errors']}")

    # 3. imports
    if imports is not None:
        print("\n3. Import times (-X importtime, cumulative, median ms of a fresh interpreter)")
        print(table(["import", "ms"], [[m, ms(t)] for m, t in imports.totals.items()]))
        print(f"\n`authpool serve` loads {imports.added_count} modules before answering initialize that the minimal "
              f"server does not: {ms(imports.added_total)} ms of import self time, {ms(imports.own_self)} ms of it "
              "authpool's own modules (pool.*, server.*). The rest, by the authpool import that pulls it in "
              "(self time of modules only authpool loads; deferring the import saves about this much):")
        print(table(["import site (file:line)", "package", "ms", "modules"],
                    [[site, child, ms(t), str(c)] for site, child, t, c in imports.groups[:15] if t >= 0.0005]))
        for _site, child, t, _c in imports.groups[:4]:
            package = child.split(".")[0]
            sites = module_level_imports(package, imports.loaded)
            if sites and t >= 0.001:
                print(f"  to defer {package} ({ms(t)} ms), every module-level import of it must go: {', '.join(sites)}")
        print("\nauthpool's own modules by import self time (the module body: class definitions, pydantic models); "
              "cumulative includes what it imports first")
        print(table(["module", "self ms", "cumulative ms (incl. shared deps)", "first imported at"],
                    [[n, ms(t), ms(c), site] for n, t, c, site in imports.own[:12]]))

    stderr_lines = [ln for ln in errors.splitlines() if ln.strip()]
    if stderr_lines:
        print(f"\nservers' stderr ({len(stderr_lines)} lines), last ones:")
        for ln in stderr_lines[-5:]:
            print(f"  {ln[:200]}")
    print(f"\ntotal time {elapsed:.1f} s; {load_note(load_start)}")

    # markdown, last
    md_cold = [
        [c.how, ms(statistics.median(c.authpool), 0), ms(statistics.median(c.minimal), 0), f"{c.ratio:.2f}x",
         str(len(c.authpool))]
        for c in (raw, official)
    ]
    md_trips = [[name, ms(statistics.median(v), 2), ms(pct(v, 95), 2)] for name, v in trips.items()]
    md = [
        "<!-- bench:server -->",
        f"`python benchmarks/server.py{flag}` on {env_desc}; loopback provider on 127.0.0.1.",
        "",
        md_table(["Cold start to the initialize answer", "authpool serve ms", "minimal MCPServer ms", "ratio",
                  "runs"], md_cold),
        "",
        md_table([f"Round trip, POST {PATH}", "median ms", "p95 ms"], md_trips),
        "",
        f"- {tool_verdict}",
        "<!-- /bench:server -->",
    ]
    print()
    print("\n".join(md))
    return 0 if snap["handler_errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
