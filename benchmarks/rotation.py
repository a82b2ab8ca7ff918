"""Benchmark of the rotation transport: what a request through the pool costs over a plain client.

Usage::

    python benchmarks/rotation.py [--quick] [--dir DIR] [--procs N] [--stampede N]

Measures, in one run, against the loopback provider (``authpool.server.loopback``, a real HTTP/1.1
server on 127.0.0.1 with keep-alive) and a temporary ``AUTHPOOL_HOME``:

1. The warm path: ``POST /v1/messages`` through ``pool.client("acme")`` (async) and
   ``pool.sync_client("acme")`` (sync) against the same request through a plain
   ``httpx2.AsyncClient`` / ``httpx2.Client`` with the ``Authorization`` header set by hand.
   The two sides alternate request by request (A,B then B,A) so drift (CPU frequency, other
   load) hits both alike. Median, p95, ratio and the absolute added time, against the target
   (at most 1.1x or at most 0.3 ms added). When the target is missed, the pool path is profiled
   (cProfile) and each of its hot-path steps is timed on its own.
2. The 429 path: the first account answers 429 (re-armed every round, and its cooldown cleared
   before the round), the transport persists the cooldown and retries on the second account,
   all within one call; against one plain request, and against the same two round trips made
   by hand with a plain client (429 on one key, then 200 on the other).
3. The refresh stampede: N concurrent requests spread over P processes (default 64 over 4) on
   one OAuth account whose access token has expired, either at the provider (every request gets
   401, then a forced refresh) or locally (``expires_at`` has passed: a mandatory refresh before
   sending). Counts the token endpoint calls (must be 1 per stampede) and the total time, next to
   the same burst with a valid token.

Everything runs in a temporary ``AUTHPOOL_HOME`` with the file vault as the keyring backend, so no
real keyring or home is touched. The markdown printed last, between ``<!-- bench:rotation -->``
markers, is meant for the README.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import multiprocessing as mp
import os
import pstats
import statistics
import sys
import sysconfig
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ["PYTHON_KEYRING_BACKEND"] = "authpool.storage.vault.VaultKeyring"
# benchmarks/server.py would shadow authpool's `server` package: keep this directory off sys.path, and reach
# the shared helpers as `benchmarks.stats` through the repository root (appended: it shadows nothing).
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
sys.path.append(str(Path(__file__).resolve().parent.parent))

import anyio
import httpx2

from authpool import Pool, TokenSet
from authpool.rotation.candidates import in_scope, select
from authpool.rotation.driver import PoolTransport, facts_of
from authpool.rotation.engine import Engine
from authpool.server.loopback import LoopbackProvider
from benchmarks import stats
from benchmarks.stats import load_note, machine, md_table, pct, table, us

TARGET_RATIO = 1.10
TARGET_ADDED_MS = 0.30
PATH = "/v1/messages"
BODY = {"model": "loopback-small", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sizes:
    warmup: int  # unmeasured A/B pairs before each comparison
    pairs: int  # measured A/B pairs, per flavour (async, sync)
    rotate_rounds: int  # measured 429-then-rotate rounds
    stampede_rounds: int  # stampedes per scenario
    profile_requests: int  # requests under cProfile, when the target is missed
    steps: int  # repetitions of each step in the breakdown


FULL = Sizes(warmup=300, pairs=3000, rotate_rounds=300, stampede_rounds=3, profile_requests=3000, steps=3000)
QUICK = Sizes(warmup=100, pairs=800, rotate_rounds=80, stampede_rounds=1, profile_requests=1000, steps=1000)


def ms(seconds: float) -> str:
    """Milliseconds, to this benchmark's precision (3 decimals)."""
    return stats.ms(seconds, 3)


@dataclass
class Pair:
    """Interleaved latencies of the pool path (a) and the plain path (b)."""

    name: str
    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.a) / statistics.median(self.b)

    @property
    def added(self) -> float:
        return statistics.median(self.a) - statistics.median(self.b)

    @property
    def added_p95(self) -> float:
        return pct(self.a, 95) - pct(self.b, 95)

    @property
    def met(self) -> bool:
        return self.ratio <= TARGET_RATIO or self.added * 1e3 <= TARGET_ADDED_MS


# -- fixtures --------------------------------------------------------------------------------


@dataclass
class Setup:
    home: Path
    provider: LoopbackProvider
    tokens: dict[str, dict[str, Any]]  # subject -> token set as issued


def make_setup(base: Path) -> Setup:
    """A home with provider ``acme`` (accounts a1, a2) and ``stamp`` (account s1), both on the loopback."""
    home = base / "home"
    home.mkdir(mode=0o700)
    os.environ["AUTHPOOL_HOME"] = str(home)  # the vault keyring and spawned workers read it
    provider = LoopbackProvider(access_ttl=3600).start()
    lines = []
    for pid in ("acme", "stamp"):
        lines += [
            f"[providers.{pid}]",
            f'name = "{pid} (loopback)"',
            f'base_url = "{provider.base_url}"',
            f"[providers.{pid}.oauth]",
            f'token_url = "{provider.token_url}"',
            f'client_id = "{provider.client_id}"',
        ]
    config = home / "config.toml"
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o600)
    pool = Pool.open(home)
    tokens = {}
    for pid, label, subject in (("acme", "a1", "acme-1"), ("acme", "a2", "acme-2"), ("stamp", "s1", "stamp-1")):
        tokens[subject] = provider.add_oauth_account(subject)
        pool.add_oauth(pid, label, TokenSet.parse(tokens[subject]))
    pool.close()
    return Setup(home, provider, tokens)


# -- part 1: the warm path -------------------------------------------------------------------


async def compare_async(setup: Setup, pool: Pool, sizes: Sizes) -> Pair:
    pair = Pair("async")
    token = setup.tokens["acme-1"]["access_token"]
    async with (
        pool.client("acme") as pooled,
        httpx2.AsyncClient(base_url=setup.provider.base_url, headers={"authorization": f"Bearer {token}"}) as plain,
    ):

        async def via_pool() -> float:
            t = time.perf_counter()
            r = await pooled.post(PATH, json=BODY)
            elapsed = time.perf_counter() - t
            assert r.status_code == 200 and r.extensions["authpool"].account == "acme/a1", r.status_code
            return elapsed

        async def via_plain() -> float:
            t = time.perf_counter()
            r = await plain.post(PATH, json=BODY)
            elapsed = time.perf_counter() - t
            assert r.status_code == 200, r.status_code
            return elapsed

        for i in range(sizes.warmup + sizes.pairs):
            if i % 2 == 0:
                a = await via_pool()
                b = await via_plain()
            else:
                b = await via_plain()
                a = await via_pool()
            if i >= sizes.warmup:
                pair.a.append(a)
                pair.b.append(b)
    return pair


def compare_sync(setup: Setup, pool: Pool, sizes: Sizes) -> Pair:
    pair = Pair("sync")
    token = setup.tokens["acme-1"]["access_token"]
    with (
        pool.sync_client("acme") as pooled,
        httpx2.Client(base_url=setup.provider.base_url, headers={"authorization": f"Bearer {token}"}) as plain,
    ):

        def via_pool() -> float:
            t = time.perf_counter()
            r = pooled.post(PATH, json=BODY)
            elapsed = time.perf_counter() - t
            assert r.status_code == 200 and r.extensions["authpool"].account == "acme/a1", r.status_code
            return elapsed

        def via_plain() -> float:
            t = time.perf_counter()
            r = plain.post(PATH, json=BODY)
            elapsed = time.perf_counter() - t
            assert r.status_code == 200, r.status_code
            return elapsed

        for i in range(sizes.warmup + sizes.pairs):
            if i % 2 == 0:
                a, b = via_pool(), via_plain()
            else:
                b, a = via_plain(), via_pool()
            if i >= sizes.warmup:
                pair.a.append(a)
                pair.b.append(b)
    return pair


# -- when the target is missed: where the time goes ------------------------------------------

_PREFIXES = tuple(
    dict.fromkeys(p + os.sep for p in (str(ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"]))
)


def _short(path: str) -> str:
    for prefix in _PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix) :]
    return path


Profile = dict[str, tuple[float, float, int]]  # "file:line func" -> (self s, cumulative s, calls), per request


def _collect(prof: cProfile.Profile, n: int) -> Profile:
    out: Profile = {}
    for (filename, line, func), (_cc, calls, tt, ct, _callers) in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
        out[f"{_short(filename)}:{line} {func}"] = (tt / n, ct / n, round(calls / n))
    return out


async def _profile_async(client: httpx2.AsyncClient, n: int) -> Profile:
    for _ in range(50):
        await client.post(PATH, json=BODY)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        await client.post(PATH, json=BODY)
    prof.disable()
    return _collect(prof, n)


def _profile_sync(client: httpx2.Client, n: int) -> Profile:
    for _ in range(50):
        client.post(PATH, json=BODY)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        client.post(PATH, json=BODY)
    prof.disable()
    return _collect(prof, n)


def profile_flavour(setup: Setup, pool: Pool, flavour: str, n: int) -> tuple[Profile, Profile]:
    """cProfile ``n`` warm requests through the pool, then ``n`` through the plain client."""
    base, headers = setup.provider.base_url, {"authorization": f"Bearer {setup.tokens['acme-1']['access_token']}"}
    if flavour == "sync":
        with pool.sync_client("acme") as client:
            pooled = _profile_sync(client, n)
        with httpx2.Client(base_url=base, headers=headers) as client:
            return pooled, _profile_sync(client, n)

    async def run() -> tuple[Profile, Profile]:
        async with pool.client("acme") as client:
            pooled = await _profile_async(client, n)
        async with httpx2.AsyncClient(base_url=base, headers=headers) as client:
            return pooled, await _profile_async(client, n)

    return anyio.run(run)


def _in_project(where: str) -> bool:
    return where.startswith(("pool/", "server/"))  # repository paths of authpool and authpool.server


async def _thread_hop() -> None:
    await anyio.to_thread.run_sync(lambda: None)


def step_breakdown(pool: Pool, sizes: Sizes) -> list[tuple[str, float]]:
    """Median time of each step the transport adds to a warm request (a diagnostic)."""
    transport: PoolTransport = pool.transport("acme")
    provider = pool.provider("acme")
    request = httpx2.Request("POST", provider.base_url + PATH, json=BODY)  # type: ignore[operator]
    pool_file = pool.store.read()
    acc = pool.get("acme/a1")
    facts = facts_of(request)

    def usage(a: Any, now: float) -> Any:
        return transport.usage.view(a, provider.weights, now)

    def engine() -> Engine:
        return Engine(provider, transport.options, facts, usage=usage)

    def timed(fn: Callable[[], Any]) -> float:
        return statistics.median(stats.timed(fn, sizes.steps))

    def timed_async(fn: Callable[[], Awaitable[Any]]) -> float:
        async def run() -> float:
            out = []
            for _ in range(sizes.steps):
                t = time.perf_counter()
                await fn()
                out.append(time.perf_counter() - t)
            return statistics.median(out)

        return anyio.run(run)

    def first_effect() -> Any:
        return engine().run().send(None)  # the origin and header checks, then ReadPool

    steps = [
        ("anyio.to_thread.run_sync hop (an async Write or uncached LoadSecret)", timed_async(_thread_hop)),
        ("facts_of(request) (the engine's view of it)", timed(lambda: facts_of(request))),
        ("Engine(...) + its first decisions (origin, base path, headers)", timed(first_effect)),
        ("store.read() (cached: open + fstat + close)", timed(pool.store.read)),
        ("candidates.select() (scope, cooldowns, strategy order)",
         timed(lambda: select(in_scope(pool_file, "acme", namespace=None, pinned=None), provider, now=time.time(),
                              exclude=set(), model=None, usage=lambda a: usage(a, time.time())))),
        ("pool.secret_of(acc) (cached by generation)", timed(lambda: pool.secret_of(acc))),
        ("usage.touch + usage.record + usage.due", timed(lambda: (transport.usage.touch(acc.id),
                                                                   transport.usage.record(acc.id, 200),
                                                                   transport.usage.due()))),
        ("pool.provider('acme') (per client, not per request)", timed(lambda: pool.provider("acme"))),
    ]
    return steps


# -- part 2: 429 then rotate -----------------------------------------------------------------


@dataclass
class RotateResult:
    pool: list[float] = field(default_factory=list)  # one call: a1 429 -> cooldown written -> a2 200
    plain_one: list[float] = field(default_factory=list)  # one plain request (200)
    plain_two: list[float] = field(default_factory=list)  # by hand: 429 on a1's token, then 200 on a2's
    bad_trails: int = 0
    write: list[float] = field(default_factory=list)  # the cooldown's durable store.update() alone
    wire: list[float] = field(default_factory=list)  # of the pool call: the two sends (Attempt.elapsed_ms)


async def compare_rotate(setup: Setup, pool: Pool, sizes: Sizes) -> RotateResult:
    res = RotateResult()
    wire: list[float] = []
    tok1 = setup.tokens["acme-1"]["access_token"]
    tok2 = setup.tokens["acme-2"]["access_token"]
    base = setup.provider.base_url
    async with (
        pool.client("acme") as pooled,
        httpx2.AsyncClient(base_url=base) as plain,
    ):

        async def via_pool() -> float:
            t = time.perf_counter()
            r = await pooled.post(PATH, json=BODY)
            elapsed = time.perf_counter() - t
            attempts = r.extensions["authpool"].attempts
            trail = [(a.account, a.outcome) for a in attempts]
            wire.append(sum(a.elapsed_ms for a in attempts) / 1e3)
            if r.status_code != 200 or trail != [("acme/a1", "rate_limited"), ("acme/a2", "ok")]:
                res.bad_trails += 1
            return elapsed

        async def via_plain_one() -> float:
            t = time.perf_counter()
            r = await plain.post(PATH, json=BODY, headers={"authorization": f"Bearer {tok2}"})
            elapsed = time.perf_counter() - t
            assert r.status_code == 200, r.status_code
            return elapsed

        async def via_plain_two() -> float:
            t = time.perf_counter()
            r = await plain.post(PATH, json=BODY, headers={"authorization": f"Bearer {tok1}"})
            assert r.status_code == 429, r.status_code
            r = await plain.post(PATH, json=BODY, headers={"authorization": f"Bearer {tok2}"})
            elapsed = time.perf_counter() - t
            assert r.status_code == 200, r.status_code
            return elapsed

        warm = max(5, sizes.warmup // 10)
        orders = [(0, 1, 2), (1, 2, 0), (2, 0, 1)]
        for i in range(warm + sizes.rotate_rounds):
            # Re-arm: a1 is rate-limited again at the provider, and ready again in the pool.
            setup.provider.set_rate_limit("acme-1", 0, retry_after=3600)
            await anyio.to_thread.run_sync(pool.reset, "acme/a1")
            pool.store.read()  # re-warm the read cache the reset invalidated (not part of the request)
            got = [0.0, 0.0, 0.0]
            for k in orders[i % 3]:
                got[k] = await (via_pool, via_plain_one, via_plain_two)[k]()
            if i >= warm:
                res.wire.append(wire[-1])
                res.pool.append(got[0])
                res.plain_one.append(got[1])
                res.plain_two.append(got[2])
    setup.provider.clear_rate_limit("acme-1")
    pool.reset("acme/a1")

    def mark(p: Any) -> None:
        p.find("acme/a2").last_status = 429

    for _ in range(sizes.rotate_rounds):
        t = time.perf_counter()
        pool.store.update(mark)
        res.write.append(time.perf_counter() - t)
    return res


# -- part 3: the refresh stampede ------------------------------------------------------------


def _stampede_worker(home: str, n: int, commands: Any, results: Any) -> None:
    os.environ["AUTHPOOL_HOME"] = home
    pool = Pool.open(Path(home))

    async def burst(client: httpx2.AsyncClient) -> tuple[float, float, list[int | None], list[str], list[str]]:
        async def one() -> tuple[int | None, list[str], str | None]:
            try:
                r = await client.post(PATH, json=BODY)
            except Exception as e:
                return None, [a.outcome for a in getattr(e, "attempts", [])], f"{type(e).__name__}: {e}"
            return r.status_code, [a.outcome for a in r.extensions["authpool"].attempts], None

        start = time.perf_counter()
        outs = await asyncio.gather(*(one() for _ in range(n)))
        end = time.perf_counter()
        return (start, end, [o[0] for o in outs], [x for o in outs for x in o[1]],
                [o[2] for o in outs if o[2] is not None])

    async def main() -> None:
        async with pool.client("stamp") as client:
            await burst(client)  # warm-up: imports, connections, caches (the token is valid)
            results.put(("ready", os.getpid()))
            while True:
                cmd = await asyncio.to_thread(commands.get)
                if cmd == "stop":
                    return
                before = pool.refresher.calls
                start, end, statuses, outcomes, errors = await burst(client)
                results.put(("done", start, end, statuses, outcomes, errors, pool.refresher.calls - before))

    asyncio.run(main())
    pool.close()


@dataclass
class StampedeResult:
    scenario: str
    walls: list[float] = field(default_factory=list)
    token_calls: list[int] = field(default_factory=list)  # counted by the provider
    refresher_calls: list[int] = field(default_factory=list)  # counted by the workers' Refreshers
    requests: int = 0
    ok: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    reuse_detected: int = 0


def run_stampede(setup: Setup, pool: Pool, sizes: Sizes, procs: int, total: int) -> list[StampedeResult]:
    per = max(1, total // procs)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    queues = [ctx.Queue() for _ in range(procs)]
    workers = [ctx.Process(target=_stampede_worker, args=(str(setup.home), per, q, results)) for q in queues]
    for w in workers:
        w.start()
    try:
        for _ in workers:
            kind, *_rest = results.get(timeout=120)
            assert kind == "ready", kind

        def expire_at_provider() -> None:
            setup.provider.expire_access_tokens("stamp-1")

        def expire_locally() -> None:
            acc = pool.get("stamp/s1")
            secret = pool.secret_of(acc)
            assert secret.access_token is not None
            pool.set_secret(acc.id, secret.with_tokens(secret.access_token, secret.refresh_token, time.time() - 1))

        scenarios: list[tuple[str, Callable[[], None] | None]] = [
            ("valid token (no refresh), for reference", None),
            ("expired at the provider: 401, forced refresh", expire_at_provider),
            ("expired locally: mandatory refresh before sending", expire_locally),
        ]
        out = []
        for name, arm in scenarios:
            res = StampedeResult(name)
            for _ in range(sizes.stampede_rounds):
                if arm is not None:
                    arm()
                before = setup.provider.snapshot()
                for q in queues:
                    q.put("go")
                done = [results.get(timeout=120) for _ in workers]
                after = setup.provider.snapshot()
                res.walls.append(max(d[2] for d in done) - min(d[1] for d in done))
                res.token_calls.append(after["token_calls"] - before["token_calls"])
                res.refresher_calls.append(sum(d[6] for d in done))
                res.reuse_detected += after["reuse_detected_count"] - before["reuse_detected_count"]
                for d in done:
                    res.requests += len(d[3])
                    res.ok += sum(1 for s in d[3] if s == 200)
                    for o in d[4]:
                        res.outcomes[o] = res.outcomes.get(o, 0) + 1
                    res.errors += d[5]
            out.append(res)
        for q in queues:
            q.put("stop")
        for w in workers:
            w.join(timeout=30)
            if w.exitcode != 0:
                raise SystemExit(f"stampede worker {w.pid} failed with exit code {w.exitcode}")
        return out
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()


# -- reporting ---------------------------------------------------------------------------------


def pair_rows(pairs: Sequence[Pair]) -> list[list[str]]:
    rows = []
    for p in pairs:
        rows.append([
            f"{p.name}: pool client",
            ms(statistics.median(p.a)),
            ms(pct(p.a, 95)),
            ms(pct(p.a, 99)),
        ])
        rows.append([
            f"{p.name}: plain httpx2 client",
            ms(statistics.median(p.b)),
            ms(pct(p.b, 95)),
            ms(pct(p.b, 99)),
        ])
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (about 20 s instead of 60 s)")
    parser.add_argument("--dir", type=Path, default=None, help="where to create the temporary home (default: $TMPDIR)")
    parser.add_argument("--procs", type=int, default=4, help="processes in the refresh stampede (default 4)")
    parser.add_argument("--stampede", type=int, default=64, help="concurrent requests in a stampede (default 64)")
    parser.add_argument("--profile", action="store_true", help="profile the pool path even if the target is met")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    flag = " --quick" if args.quick else ""

    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="authpool-bench-", dir=args.dir) as tmp:
        env = machine(["httpx2", "anyio", "pydantic"])
        print(f"authpool rotation benchmark{flag}")
        print(f"machine: {env}\n")
        setup = make_setup(Path(tmp))
        pool = Pool.open(setup.home)
        try:
            print(f"  warm path, async: {sizes.pairs} interleaved pairs ...", flush=True)
            gc.collect()
            pa = anyio.run(compare_async, setup, pool, sizes)
            print(f"  warm path, sync: {sizes.pairs} interleaved pairs ...", flush=True)
            gc.collect()
            ps = compare_sync(setup, pool, sizes)
            pairs = [pa, ps]
            profiles: dict[str, tuple[Profile, Profile]] = {}
            steps: list[tuple[str, float]] = []
            for p in pairs:
                if not p.met or args.profile:
                    print(f"  profiling {sizes.profile_requests} {p.name} requests, pool and plain ...", flush=True)
                    profiles[p.name] = profile_flavour(setup, pool, p.name, sizes.profile_requests)
            if profiles:
                print("  step breakdown ...", flush=True)
                steps = step_breakdown(pool, sizes)
            print(f"  429 then rotate: {sizes.rotate_rounds} rounds ...", flush=True)
            rot = anyio.run(compare_rotate, setup, pool, sizes)
            n = args.procs * max(1, args.stampede // args.procs)
            print(f"  refresh stampede: {n} requests over {args.procs} processes, "
                  f"{sizes.stampede_rounds} round(s) per scenario ...", flush=True)
            stamp = run_stampede(setup, pool, sizes, args.procs, args.stampede)
            loopback_errors = setup.provider.snapshot()["handler_errors"]
        finally:
            pool.close()
            setup.provider.stop()
    elapsed = time.perf_counter() - started

    # 1. warm path
    print("\n1. Warm path: POST /v1/messages through the pool vs a plain httpx2 client (same loopback server)")
    print(table(["path", "median ms", "p95 ms", "p99 ms"], pair_rows(pairs)))
    print()
    verdict_rows = [
        [p.name, f"{p.ratio:.2f}x", ms(p.added), ms(p.added_p95), "MET" if p.met else "NOT MET"] for p in pairs
    ]
    print(table(["flavour", "ratio (median)", "added ms (median)", "added ms (p95)", "target"], verdict_rows))
    print(f"target: <= {TARGET_RATIO:.2f}x or <= {TARGET_ADDED_MS:.1f} ms added (median), warm pool; "
          f"{sizes.pairs} interleaved pairs per flavour after {sizes.warmup} warm-up pairs")

    for name, (pooled, plain) in profiles.items():
        keys = set(pooled) | set(plain)
        zero = (0.0, 0.0, 0)
        diff = sorted(((k, pooled.get(k, zero)[0] - plain.get(k, zero)[0], pooled.get(k, zero)[2]) for k in keys),
                      key=lambda r: r[1], reverse=True)
        tot_pool = sum(v[0] for v in pooled.values())
        tot_plain = sum(v[0] for v in plain.values())
        print(f"\nWhere the {name} pool path's extra time goes: cProfile self time per request, pool minus plain "
              f"({sizes.profile_requests} requests each; totals {tot_pool * 1e3:.3f} vs {tot_plain * 1e3:.3f} ms, "
              "inflated by the profiler)")
        print(table(["function", "extra µs/request", "calls/request (pool)"],
                    [[k, us(d), str(c)] for k, d, c in diff[:14]]))
        own = sorted(((k, v) for k, v in pooled.items() if _in_project(k)), key=lambda r: r[1][1], reverse=True)
        print()
        print(table(["authpool function", "cumulative µs", "self µs", "calls/request"],
                    [[k, us(ct), us(tt), str(c)] for k, (tt, ct, c) in own[:12]]))
    if steps:
        print("\nEach hot-path step timed on its own (median)")
        print(table(["step", "µs"], [[step, us(t)] for step, t in steps]))

    # 2. 429 path
    print("\n2. 429 then rotate: a1 answers 429 (Retry-After: 3600), the pool cools it down and retries on a2")
    rot_rows = [
        ["pool: 429 on a1 + cooldown write + 200 on a2", ms(statistics.median(rot.pool)), ms(pct(rot.pool, 95))],
        ["plain: one request (200)", ms(statistics.median(rot.plain_one)), ms(pct(rot.plain_one, 95))],
        ["plain: 429 then 200 by hand (two requests)", ms(statistics.median(rot.plain_two)),
         ms(pct(rot.plain_two, 95))],
        ["for comparison: one store.update() (lock, read, 2 fsyncs)", ms(statistics.median(rot.write)),
         ms(pct(rot.write, 95))],
    ]
    print(table(["path", "median ms", "p95 ms"], rot_rows))
    r1 = statistics.median(rot.pool) / statistics.median(rot.plain_one)
    r2 = statistics.median(rot.pool) - statistics.median(rot.plain_two)
    engine = [t - w for t, w in zip(rot.pool, rot.wire, strict=True)]
    print(f"pool / one plain request: {r1:.1f}x; pool - two plain requests: {r2 * 1e3:+.3f} ms; "
          f"trails other than [a1 rate_limited, a2 ok]: {rot.bad_trails}")
    print(f"of the pool call: {ms(statistics.median(rot.wire))} ms in the two sends (Attempt.elapsed_ms), "
          f"{ms(statistics.median(engine))} ms (median; p95 {ms(pct(engine, 95))}) between them: the 429 read, "
          "cooldown decision and durable write, the re-read of the changed pool file, the second pick")

    # 3. stampede
    print(f"\n3. Refresh stampede: {n} concurrent requests over {args.procs} processes, one OAuth account")
    st_rows = []
    stampede_ok = True
    for s in stamp:
        expect = 0 if s.walls and "valid" in s.scenario else 1
        good = all(c == expect for c in s.token_calls) and s.ok == s.requests and not s.reuse_detected
        stampede_ok = stampede_ok and good
        st_rows.append([
            s.scenario,
            "/".join(str(c) for c in s.token_calls),
            "/".join(str(c) for c in s.refresher_calls),
            f"{s.ok}/{s.requests}",
            ms(statistics.median(s.walls)),
            ms(max(s.walls)),
            "OK" if good else "FAIL",
        ])
    print(table(["scenario", "token calls", "refresher calls", "200s", "median total ms", "max ms", "check"],
                st_rows))
    for s in stamp:
        trail = ", ".join(f"{k} {v}" for k, v in sorted(s.outcomes.items()))
        print(f"  {s.scenario}: attempt outcomes {trail}; refresh-token reuse detected {s.reuse_detected}")
        for e in s.errors[:3]:
            print(f"    error: {e}")
    print(f"token calls: per stampede, counted by the provider; expected 1 when the token has expired "
          f"(0 when valid): {'PASS' if stampede_ok else 'FAIL'}")
    if loopback_errors:
        print(f"loopback handler errors: {loopback_errors}")
    print(f"\ntotal time {elapsed:.1f} s; {load_note(load_start)}")

    # markdown, last
    md_rows = [
        [
            f"{p.name} request, warm pool",
            ms(statistics.median(p.a)),
            ms(statistics.median(p.b)),
            f"{p.ratio:.2f}x",
            f"{p.added * 1e3:+.3f}",
            f"{ms(pct(p.a, 95))} / {ms(pct(p.b, 95))}",
        ]
        for p in pairs
    ]
    md_rows.append([
        "429 on the first account, rotated (vs one request)",
        ms(statistics.median(rot.pool)),
        ms(statistics.median(rot.plain_one)),
        f"{r1:.2f}x",
        f"{(statistics.median(rot.pool) - statistics.median(rot.plain_one)) * 1e3:+.3f}",
        f"{ms(pct(rot.pool, 95))} / {ms(pct(rot.plain_one, 95))}",
    ])
    st_md = [
        [s.scenario, "/".join(str(c) for c in s.token_calls), f"{s.ok}/{s.requests}",
         ms(statistics.median(s.walls))]
        for s in stamp
    ]
    md = [
        "<!-- bench:rotation -->",
        f"`python benchmarks/rotation.py{flag}` on {env}; loopback provider on 127.0.0.1.",
        "",
        md_table(["Request", "pool ms", "plain httpx2 ms", "ratio", "added ms", "p95 pool / plain ms"], md_rows),
        "",
        md_table([f"Refresh stampede ({n} requests, {args.procs} processes)", "token calls, per stampede",
                  "200s, all rounds", "total ms (median)"], st_md),
        "<!-- /bench:rotation -->",
    ]
    print()
    print("\n".join(md))
    return 0 if stampede_ok and rot.bad_trails == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
