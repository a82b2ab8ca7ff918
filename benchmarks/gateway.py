"""Benchmark of ``authpool gateway``: a request through the gateway against the same request sent directly.

Usage::

    python benchmarks/gateway.py [--quick] [--dir DIR] [--litellm VENV | --no-litellm]

Measures, in one run, against the loopback provider (``authpool.server.loopback``, a real HTTP/1.1
server on 127.0.0.1 with keep-alive) and a temporary ``AUTHPOOL_HOME`` with one API-key account:

1. Latency: ``POST /v1/chat/completions`` (not streamed) with a plain ``httpx2.Client``, directly to
   the provider (the key set by hand) and through a real ``authpool gateway`` process (the gateway
   key set by hand), request by request in rotating order (A,B / B,A, or A,B,C / B,C,A / C,A,B with
   LiteLLM) so drift hits every side alike. Median and p95; targets: the gateway adds at most 1 ms
   and stays within 1.5x of direct (median).
2. A 200-event stream (``stream: true``, the provider set to 200 text deltas, 1 ms apart as a
   model's tokens arrive apart): time from sending the request to the first ``data:`` event and to
   the last (``[DONE]``), interleaved the same way. Target: the first event within 2 ms of direct.
   (Unpaced, the provider's writing thread, the proxy and the client compete for 2 CPUs and the
   first event measures that contention instead.)
3. Throughput: 32 concurrent clients (one process of its own, asyncio, one connection each) sending
   the request of 1. back to back for a few seconds, rounds alternating between the sides. Target:
   the gateway at least 0.6x of direct.

For reference, a bare proxy on the same stack is measured too: a raw ASGI app on uvicorn that sends
each request on with one ``httpx2.AsyncClient`` and relays the answer (no pool, no checks, no
rotation). It is the floor of any gateway written this way; the gap between it and the gateway
is what authpool adds.

LiteLLM's proxy (``litellm --config``, an OpenAI-compatible proxy in front of the same provider and
key) is measured beside them when it can run: ``--litellm VENV`` names a virtualenv with
``litellm[proxy]`` installed; by default one is created in the user cache directory and installed
with pip (minutes, once). ``--no-litellm`` skips it. If it cannot be installed or started, the
reason is printed and put in the report.

Everything runs in a temporary ``AUTHPOOL_HOME`` with the file vault as the keyring backend, so no
real keyring or home is touched. The markdown printed last, between ``<!-- bench:gateway -->``
markers, is meant for the README.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing as mp
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ["PYTHON_KEYRING_BACKEND"] = "authpool.storage.vault.VaultKeyring"
# benchmarks/server.py would shadow authpool's `server` package: keep this directory off sys.path, and reach
# the shared helpers as `benchmarks.stats` through the repository root (appended: it shadows nothing).
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
sys.path.append(str(Path(__file__).resolve().parent.parent))

import httpx2

from authpool import Pool
from authpool.server.loopback import LoopbackProvider
from benchmarks.stats import load_note, machine, md_table, ms, pct, table

TARGET_ADDED_MS = 1.0
TARGET_RATIO = 1.5
TARGET_FIRST_EVENT_MS = 2.0
TARGET_THROUGHPUT = 0.6
CONCURRENCY = 32
STREAM_EVENTS = 200
STREAM_GAP = 0.001  # seconds between a stream's events
PATH = "/v1/chat/completions"
BODY = {"model": "loopback-small", "messages": [{"role": "user", "content": "hi"}]}
STREAM_BODY = {**BODY, "stream": True}
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sizes:
    warmup: int  # unmeasured rounds before each comparison
    rounds: int  # measured latency rounds (one request per side each)
    stream_rounds: int  # measured 200-event streams per side
    load_rounds: int  # throughput rounds per side
    load_seconds: float  # length of one throughput round


FULL = Sizes(warmup=200, rounds=2000, stream_rounds=60, load_rounds=3, load_seconds=5.0)
QUICK = Sizes(warmup=50, rounds=400, stream_rounds=15, load_rounds=2, load_seconds=3.0)


@dataclass(frozen=True)
class Side:
    """One way to reach the provider: a base URL that serves ``/v1/chat/completions`` and the header to send."""

    name: str
    base: str
    headers: dict[str, str]


@dataclass
class Results:
    latency: dict[str, list[float]] = field(default_factory=dict)
    first: dict[str, list[float]] = field(default_factory=dict)
    last: dict[str, list[float]] = field(default_factory=dict)
    throughput: dict[str, list[float]] = field(default_factory=dict)  # requests per second, per round
    errors: dict[str, int] = field(default_factory=dict)


# -- the processes ----------------------------------------------------------------------------------


def wait_for(url: str, headers: dict[str, str], what: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        with contextlib.suppress(httpx2.HTTPError):
            if httpx2.get(url, headers=headers, timeout=5).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer within {timeout:.0f}s")


@contextlib.contextmanager
def gateway(home: Path, base: Path, key: str) -> Iterator[Side]:
    port_file = base / "gateway.port"
    env = {**os.environ, "AUTHPOOL_HOME": str(home), "AUTHPOOL_GATEWAY_KEY": key}
    env.pop("AUTHPOOL_LOG", None)
    with (base / "gateway.stderr").open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "authpool.server.cli", "gateway", "--port", "0",
                                 "--port-file", str(port_file)], stdin=subprocess.DEVNULL, stderr=err, env=env,
                                cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not port_file.exists():
            raise RuntimeError(f"the gateway did not start: {(base / 'gateway.stderr').read_text()}")
        url = f"http://127.0.0.1:{port_file.read_text().strip()}/acme"
        yield Side("gateway", url, {"authorization": f"Bearer {key}"})
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _bare_proxy(upstream: str, port_file: str) -> None:
    """The reference: a raw ASGI proxy on uvicorn with one httpx2.AsyncClient, nothing else."""
    import socket

    import uvicorn

    client: httpx2.AsyncClient | None = None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal client
        if scope["type"] != "http":
            return
        if client is None:
            client = httpx2.AsyncClient(base_url=upstream, timeout=60)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"host", b"content-length")]
        request = client.build_request(scope["method"], scope["path"][len("/acme"):], content=body, headers=headers)
        response = await client.send(request, stream=True)
        out = [(k, v) for k, v in response.headers.raw if k.lower() not in (b"transfer-encoding", b"connection")]
        await send({"type": "http.response.start", "status": response.status_code, "headers": out})
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        await response.aclose()

    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    Path(port_file).write_text(str(sock.getsockname()[1]))
    uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", server_header=False,
                                  date_header=False)).run(sockets=[sock])


@contextlib.contextmanager
def bare_proxy(provider: LoopbackProvider, api_key: str, base: Path) -> Iterator[Side]:
    port_file = base / "bare.port"
    proc = subprocess.Popen([sys.executable, __file__, "--bare-proxy", provider.base_url, str(port_file)],
                            stdin=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield Side("bare proxy", f"http://127.0.0.1:{port_file.read_text().strip()}/acme",
                   {"authorization": f"Bearer {api_key}"})
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def litellm_venv(requested: Path | None, base: Path) -> tuple[Path | None, str]:
    """The virtualenv with LiteLLM's proxy, installed if needed; or None and why not."""
    venv = requested or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "authpool-bench" / "litellm"
    exe = venv / "bin" / "litellm"
    if exe.exists():
        return venv, ""
    print(f"  installing litellm[proxy] into {venv} (once; this takes minutes) ...", flush=True)
    log = base / "litellm-install.log"
    with log.open("wb") as out:
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], stdout=out, stderr=out, check=False)
        if made.returncode == 0:
            made = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "litellm[proxy]"], stdout=out,
                                  stderr=out, check=False, timeout=1800)
    if made.returncode != 0 or not exe.exists():
        last = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
        return None, f"`pip install litellm[proxy]` failed: {last[0] if last else made.returncode}"
    return venv, ""


@contextlib.contextmanager
def litellm(venv: Path, provider: LoopbackProvider, api_key: str, base: Path) -> Iterator[Side]:
    """LiteLLM's proxy in front of the same provider and key; its master key as the client's key."""
    master = "sk-bench-" + secrets.token_hex(8)
    config = base / "litellm.yaml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "model_list": [{"model_name": "loopback-small",
                        "litellm_params": {"model": "openai/loopback-small", "api_base": f"{provider.base_url}/v1",
                                           "api_key": api_key}}],
        "general_settings": {"master_key": master},
        "litellm_settings": {"telemetry": False},
    }))
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
           "LITELLM_LOG": "ERROR"}
    with (base / "litellm.log").open("wb") as out:
        proc = subprocess.Popen([str(venv / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1",
                                 "--port", str(port)], stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                cwd=base)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/health/liveliness", {}, "litellm", 300, proc)
        yield Side("litellm", url, {"authorization": f"Bearer {master}"})
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- 1. latency and 2. the stream, interleaved ------------------------------------------------------


def rotations(n: int) -> list[list[int]]:
    return [[(i + k) % n for i in range(n)] for k in range(n)]


def measure_latency(sides: list[Side], sizes: Sizes, res: Results) -> None:
    clients = [httpx2.Client(base_url=s.base, headers=s.headers, timeout=60) for s in sides]
    try:
        orders = rotations(len(sides))
        for i in range(sizes.warmup + sizes.rounds):
            for k in orders[i % len(orders)]:
                t = time.perf_counter()
                r = clients[k].post(PATH, json=BODY)
                elapsed = time.perf_counter() - t
                if r.status_code != 200 or "Hello from bench." not in r.text:
                    res.errors[sides[k].name] = res.errors.get(sides[k].name, 0) + 1
                if i >= sizes.warmup:
                    res.latency.setdefault(sides[k].name, []).append(elapsed)
    finally:
        for c in clients:
            c.close()


def measure_stream(sides: list[Side], sizes: Sizes, res: Results) -> None:
    clients = [httpx2.Client(base_url=s.base, headers=s.headers, timeout=60) for s in sides]
    try:
        orders = rotations(len(sides))
        warm = max(3, sizes.warmup // 20)
        for i in range(warm + sizes.stream_rounds):
            for k in orders[i % len(orders)]:
                first = last = None
                events = 0
                t = time.perf_counter()
                with clients[k].stream("POST", PATH, json=STREAM_BODY) as r:
                    for chunk in r.iter_raw():
                        if first is None and b"data:" in chunk:
                            first = time.perf_counter() - t
                        events += chunk.count(b"data:")
                    last = time.perf_counter() - t
                if first is None or events < STREAM_EVENTS:
                    res.errors[sides[k].name] = res.errors.get(sides[k].name, 0) + 1
                    continue
                if i >= warm:
                    res.first.setdefault(sides[k].name, []).append(first)
                    res.last.setdefault(sides[k].name, []).append(last)
    finally:
        for c in clients:
            c.close()


# -- 3. throughput, from a process of its own --------------------------------------------------------


def _load(base: str, headers: dict[str, str], seconds: float, out: Any) -> None:
    """Send the request from CONCURRENCY clients back to back for ``seconds``; put (done, failed, elapsed)."""

    async def main() -> tuple[int, int, float]:
        done = failed = 0
        limits = httpx2.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        async with httpx2.AsyncClient(base_url=base, headers=headers, timeout=60, limits=limits) as client:
            async def worker(stop_at: float) -> None:
                nonlocal done, failed
                while time.perf_counter() < stop_at:
                    r = await client.post(PATH, json=BODY)
                    if r.status_code == 200:
                        done += 1
                    else:
                        failed += 1

            await asyncio.gather(*(worker(time.perf_counter() + 0.5) for _ in range(CONCURRENCY)))  # warm-up
            done = failed = 0
            t = time.perf_counter()
            await asyncio.gather(*(worker(t + seconds) for _ in range(CONCURRENCY)))
            return done, failed, time.perf_counter() - t

    out.put(asyncio.run(main()))


def measure_throughput(sides: list[Side], sizes: Sizes, res: Results) -> None:
    ctx = mp.get_context("spawn")
    for i in range(sizes.load_rounds):
        for k in rotations(len(sides))[i % len(sides)]:
            side = sides[k]
            q = ctx.Queue()
            p = ctx.Process(target=_load, args=(side.base, side.headers, sizes.load_seconds, q))
            p.start()
            done, failed, elapsed = q.get(timeout=sizes.load_seconds + 120)
            p.join()
            res.throughput.setdefault(side.name, []).append(done / elapsed)
            if failed:
                res.errors[side.name] = res.errors.get(side.name, 0) + failed


# -- report -----------------------------------------------------------------------------------------


def verdicts(res: Results) -> list[tuple[str, str, bool]]:
    d, g = res.latency["direct"], res.latency["gateway"]
    added = statistics.median(g) - statistics.median(d)
    ratio = statistics.median(g) / statistics.median(d)
    first_added = statistics.median(res.first["gateway"]) - statistics.median(res.first["direct"])
    tp = statistics.median(res.throughput["gateway"]) / statistics.median(res.throughput["direct"])
    return [
        ("added median latency <= 1 ms", f"+{ms(added, 3)} ms", added * 1e3 <= TARGET_ADDED_MS),
        ("median latency <= 1.5x direct", f"{ratio:.2f}x", ratio <= TARGET_RATIO),
        ("first event within 2 ms of direct", f"+{ms(first_added, 3)} ms", first_added * 1e3 <= TARGET_FIRST_EVENT_MS),
        ("throughput at 32 clients >= 0.6x direct", f"{tp:.2f}x", tp >= TARGET_THROUGHPUT),
    ]


def report(res: Results, names: list[str], env: str, flag: str, note: str, litellm_note: str) -> tuple[str, str]:
    d_lat = statistics.median(res.latency["direct"])
    lat_rows = []
    for n in names:
        v = res.latency[n]
        lat_rows.append([n, ms(statistics.median(v), 3), ms(pct(v, 95), 3),
                         f"{statistics.median(v) / d_lat:.2f}x", f"+{ms(statistics.median(v) - d_lat, 3)}"
                         if n != "direct" else "", str(len(v))])
    lat_head = ["POST /v1/chat/completions", "median ms", "p95 ms", "vs direct", "added ms", "requests"]
    d_first = statistics.median(res.first["direct"])
    stream_rows = [[n, ms(statistics.median(res.first[n]), 3), ms(pct(res.first[n], 95), 3),
                    f"+{ms(statistics.median(res.first[n]) - d_first, 3)}" if n != "direct" else "",
                    ms(statistics.median(res.last[n]), 2), ms(pct(res.last[n], 95), 2), str(len(res.first[n]))]
                   for n in names]
    stream_head = [f"{STREAM_EVENTS}-event stream", "first event ms", "p95", "added", "last event ms", "p95",
                   "streams"]
    d_tp = statistics.median(res.throughput["direct"])
    tp_rows = [[n, f"{statistics.median(res.throughput[n]):.0f}", f"{statistics.median(res.throughput[n]) / d_tp:.2f}x",
                " / ".join(f"{x:.0f}" for x in res.throughput[n])] for n in names]
    tp_head = [f"{CONCURRENCY} concurrent clients", "requests/s (median)", "vs direct", "rounds"]
    checks = verdicts(res)
    check_rows = [[what, got, "met" if ok else "MISSED"] for what, got, ok in checks]
    own = ""
    if "bare proxy" in res.latency:
        share = statistics.median(res.latency["gateway"]) - statistics.median(res.latency["bare proxy"])
        floor = statistics.median(res.latency["bare proxy"]) - d_lat
        own = (f"Of the gateway's added median latency, +{ms(floor, 3)} ms is the second HTTP hop itself (the bare "
               f"proxy on the same stack) and +{ms(share, 3)} ms is authpool's (checks, rotation engine, relaying).")
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(res.errors.items())) or "none"
    text = "\n\n".join([table(lat_head, lat_rows), table(stream_head, stream_rows), table(tp_head, tp_rows),
                        table(["target", "measured", ""], check_rows), own, f"failed requests: {errors}"])
    md = "\n".join([
        "<!-- bench:gateway -->",
        f"`python benchmarks/gateway.py{flag}` on {env}; loopback provider on 127.0.0.1; {note}.",
        "",
        md_table(lat_head, lat_rows),
        "",
        md_table(stream_head, stream_rows),
        "",
        md_table(tp_head, tp_rows),
        "",
        md_table(["target", "measured", ""], check_rows),
        "",
        own,
        "",
        litellm_note,
        "<!-- /bench:gateway -->",
    ])
    return text, md


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (about 1 minute instead of 3)")
    parser.add_argument("--dir", type=Path, default=None, help="where to create the temporary home (default: $TMPDIR)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--litellm", type=Path, metavar="VENV", help="a virtualenv with litellm[proxy] installed")
    group.add_argument("--no-litellm", action="store_true", help="do not measure LiteLLM's proxy")
    parser.add_argument("--bare-proxy", nargs=2, metavar=("UPSTREAM", "PORT_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_proxy:
        _bare_proxy(*args.bare_proxy)
        return 0
    sizes = QUICK if args.quick else FULL
    flag = " --quick" if args.quick else ""
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="authpool-bench-", dir=args.dir) as tmp:
        base = Path(tmp)
        home = base / "home"
        home.mkdir(mode=0o700)
        os.environ["AUTHPOOL_HOME"] = str(home)
        provider = LoopbackProvider().start()
        api_key = provider.add_api_key("bench")
        (home / "config.toml").write_text(f'[providers.acme]\nbase_url = "{provider.base_url}"\nauth = "bearer"\n')
        (home / "config.toml").chmod(0o600)
        pool = Pool.open(home)
        pool.add_api_key("acme", "bench", api_key)
        pool.close()
        venv: Path | None = None
        why_not = "skipped (--no-litellm)"
        if not args.no_litellm:
            venv, why_not = litellm_venv(args.litellm, base)
        dists = ["httpx2", "starlette", "uvicorn", "h11"]
        env = machine(dists)
        print(f"authpool gateway benchmark{flag}\nmachine: {env}\n", flush=True)
        with contextlib.ExitStack() as stack:
            sides = [Side("direct", provider.base_url, {"authorization": f"Bearer {api_key}"})]
            sides.append(stack.enter_context(gateway(home, base, "bench-gateway-key-" + secrets.token_hex(16))))
            sides.append(stack.enter_context(bare_proxy(provider, api_key, base)))
            litellm_version = ""
            if venv is not None:
                try:
                    sides.append(stack.enter_context(litellm(venv, provider, api_key, base)))
                    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                                          "import importlib.metadata as m; print(m.version('litellm'))"],
                                         capture_output=True, text=True, check=False)
                    litellm_version = out.stdout.strip()
                except (RuntimeError, OSError) as e:
                    why_not = f"its proxy did not start: {e} (log: {base / 'litellm.log'})"
            names = [s.name for s in sides]
            res = Results()
            steps: list[tuple[str, Callable[[list[Side], Sizes, Results], None]]] = [
                (f"latency: {sizes.rounds} rounds of {', '.join(names)}", measure_latency),
                (f"{STREAM_EVENTS}-event streams: {sizes.stream_rounds} rounds", measure_stream),
                (f"throughput: {sizes.load_rounds} rounds of {sizes.load_seconds:g}s per side, {CONCURRENCY} clients",
                 measure_throughput),
            ]
            for what, step in steps:
                print(f"  {what} ...", flush=True)
                if step is measure_stream:
                    provider.set_stream_length(STREAM_EVENTS)
                    provider.set_stream_delay(STREAM_GAP)
                gc.collect()
                step(sides, sizes, res)
                provider.set_stream_length(None)
                provider.set_stream_delay(0)
        provider.stop()
        if litellm_version:
            litellm_note = (f"LiteLLM {litellm_version} (`litellm --config`, its proxy with a master key, in front of "
                            "the same provider and key) measured in the same run.")
        else:
            litellm_note = f"LiteLLM's proxy was not measured: {why_not}."
        note = load_note(load_start)
        text, md = report(res, names, env, flag, note, litellm_note)
        print()
        print(text)
        print(f"\n{litellm_note}\n({time.perf_counter() - started:.0f}s)\n")
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
