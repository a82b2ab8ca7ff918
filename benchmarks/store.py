"""Benchmark of the pool file store: locked updates across processes, and reads of a large pool.

Usage::

    python benchmarks/store.py [--quick] [--dir DIR]

Measures, in one run:

1. ``Store.update()`` with 1, 2 and 4 concurrent processes (real ``spawn`` subprocesses), each
   incrementing the request counter of one account of a small pool (the hot path): latency per
   update (median, p95, p99, max), total updates/s and how unevenly the processes finished; then
   checks that no update was lost.
2. One uncontended update's median latency against the 2 ms target.
3. A 1,000-account pool: cold ``Store.read()`` (fresh ``Store``, parse from disk), cached
   ``read()`` (same ``Store``, file unchanged) and ``update()``; then, for both pool sizes, the
   median time of each step of an update (lock, fresh read, validation, backup link, durable write).

Everything runs in a temporary ``AUTHPOOL_HOME`` with the file vault as the keyring backend, so no
real keyring or home is touched. The markdown table printed last, between
``<!-- bench:store -->`` markers, is meant for the README.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ["PYTHON_KEYRING_BACKEND"] = "authpool.storage.vault.VaultKeyring"
# benchmarks/server.py would shadow authpool's `server` package: keep this directory off sys.path, and reach
# the shared helpers as `benchmarks.stats` through the repository root (appended: it shadows nothing).
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
sys.path.append(str(Path(__file__).resolve().parent.parent))

from authpool.accounts.model import Account, PoolFile
from authpool.home import Home
from authpool.storage.atomicfile import write_atomic
from authpool.storage.localstore import Store
from benchmarks import stats
from benchmarks.stats import machine, md_table, pct, table, timed, us

TARGET_MS = 2.0
HOT_ID = "hot2acct"
SMALL_POOL = 4
LARGE_POOL = 1000


@dataclass(frozen=True)
class Sizes:
    per_process: int  # measured updates per process in the concurrency runs
    warmup: int  # unmeasured updates per process first (imports, pydantic, page cache)
    single: int  # uncontended updates in part 2
    breakdown: int  # repetitions of each phase in the breakdown
    cold_reads: int
    cached_reads: int
    large_updates: int


FULL = Sizes(
    per_process=1000, warmup=20, single=1000, breakdown=300, cold_reads=40, cached_reads=10000, large_updates=60
)
QUICK = Sizes(per_process=250, warmup=10, single=300, breakdown=100, cold_reads=15, cached_reads=3000, large_updates=20)


def ms(seconds: float) -> str:
    """Milliseconds, to this benchmark's precision (2 decimals)."""
    return stats.ms(seconds, 2)


# -- fixtures --------------------------------------------------------------------------------


def make_account(i: int, account_id: str | None = None) -> Account:
    return Account(
        id=account_id or f"x{i:07d}",
        provider="bench",
        label=f"account-{i:04d}",
        kind="oauth" if i % 2 else "api_key",
        order=i,
        last_used_at=time.time(),
    )


def make_home(base: Path, name: str, accounts: int) -> Path:
    """A fresh home whose pool holds ``accounts`` accounts (the first is HOT_ID), built in one update."""
    home = base / name
    store = Store(Home.open(home))

    def fill(pool: PoolFile) -> None:
        pool.accounts.extend(make_account(i, HOT_ID if i == 0 else None) for i in range(accounts))

    store.update(fill)
    return home


def bump(pool: PoolFile) -> None:
    """The hot-path change: one more request on the hot account."""
    acc = pool.find(HOT_ID)
    acc.counters.requests += 1
    acc.last_used_at = time.time()


def warm(pool: PoolFile) -> None:
    # A different counter, so warm-up updates do not blur the lost-update check.
    pool.find(HOT_ID).counters.refreshes += 1


# -- part 1: concurrent processes ------------------------------------------------------------


def _worker(home: str, n: int, warmup: int, ready: Any, go: Any, results: Any) -> None:
    store = Store(Home.open(Path(home)))
    for _ in range(warmup):
        store.update(warm)
    ready.put(os.getpid())
    go.wait()
    latencies = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        store.update(bump)
        latencies.append(time.perf_counter() - t)
    end = time.perf_counter()  # perf_counter is CLOCK_MONOTONIC: comparable across processes
    results.put((start, end, latencies))


@dataclass
class ConcurrencyResult:
    procs: int
    latencies: list[float]
    wall: float
    counter: int
    expected: int
    warm_counter: int
    warm_expected: int
    finish_spread: float

    @property
    def total(self) -> int:
        return len(self.latencies)

    @property
    def ok(self) -> bool:
        return self.counter == self.expected and self.warm_counter == self.warm_expected


def run_concurrent(base: Path, procs: int, sizes: Sizes) -> ConcurrencyResult:
    home = make_home(base, f"procs-{procs}", SMALL_POOL)
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    workers = [
        ctx.Process(target=_worker, args=(str(home), sizes.per_process, sizes.warmup, ready, go, results))
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    for _ in workers:
        ready.get(timeout=60)
    go.set()
    outs = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=30)
        if w.exitcode != 0:
            raise SystemExit(f"worker {w.pid} failed with exit code {w.exitcode}")
    hot = Store(Home.open(home)).read().find(HOT_ID)
    return ConcurrencyResult(
        procs=procs,
        latencies=[x for _, _, lat in outs for x in lat],
        wall=max(e for _, e, _ in outs) - min(s for s, _, _ in outs),
        counter=hot.counters.requests,
        expected=procs * sizes.per_process,
        warm_counter=hot.counters.refreshes,
        warm_expected=procs * sizes.warmup,
        finish_spread=(max(e for _, e, _ in outs) - min(e for _, e, _ in outs))
        / (max(e for _, e, _ in outs) - min(s for s, _, _ in outs)),
    )


# -- part 2: one uncontended update, and where its time goes -----------------------------------


def breakdown(store: Store, n: int) -> list[tuple[str, float]]:
    """Median time of each step ``Store.update`` takes, timed one by one (private helpers: a diagnostic)."""
    data = store.path.read_bytes()
    raw = json.loads(data)
    pool = PoolFile.model_validate(raw)
    scratch = store.path.with_name("scratch.json")

    def lock_cycle() -> None:
        with store.lock:
            pass

    steps: list[tuple[str, Callable[[], Any]]] = [
        ("lock acquire + release", lock_cycle),
        ("read file + json.loads", lambda: json.loads(store.path.read_bytes())),
        ("PoolFile.model_validate(raw)", lambda: PoolFile.model_validate(raw)),
        ("re-check: model_validate(model_dump())", lambda: PoolFile.model_validate(pool.model_dump())),
        ("model_dump_json(indent=1)", lambda: pool.model_dump_json(indent=1)),
        ("backup hard link", store._keep_backup),
        ("durable write (write_atomic, 2 fsyncs)", lambda: write_atomic(scratch, data)),
    ]
    out = [(name, statistics.median(timed(fn, n))) for name, fn in steps]
    out.append(("sum of the steps", sum(t for _, t in out)))
    out.append(("update(), measured", statistics.median(timed(lambda: store.update(bump), n))))
    gc.collect()
    gc.disable()
    try:
        out.append(("update(), garbage collector off", statistics.median(timed(lambda: store.update(bump), n))))
    finally:
        gc.enable()
    return out


@dataclass
class SingleResult:
    latencies: list[float]
    steps: list[tuple[str, float]]

    @property
    def median(self) -> float:
        return statistics.median(self.latencies)

    @property
    def met(self) -> bool:
        return self.median * 1e3 < TARGET_MS


def run_single(base: Path, sizes: Sizes) -> SingleResult:
    home = make_home(base, "single", SMALL_POOL)
    store = Store(Home.open(home))
    for _ in range(sizes.warmup):
        store.update(bump)
    latencies = timed(lambda: store.update(bump), sizes.single)
    return SingleResult(latencies, breakdown(store, sizes.breakdown))


# -- part 3: a 1,000-account pool --------------------------------------------------------------


@dataclass
class LargeResult:
    size_bytes: int
    cold: list[float]
    cached: list[float]
    updates: list[float]
    steps: list[tuple[str, float]]


def run_large(base: Path, sizes: Sizes) -> LargeResult:
    home = make_home(base, "large", LARGE_POOL)
    h = Home.open(home)
    assert len(Store(h).read().accounts) == LARGE_POOL
    Store(h).read()  # warm the page cache and pydantic
    cold = timed(lambda: Store(h).read(), sizes.cold_reads)
    store = Store(h)
    first = store.read()
    cached = timed(store.read, sizes.cached_reads)
    assert store.read() is first, "cached read returned a new object"
    store.update(bump)  # warm-up
    updates = timed(lambda: store.update(bump), sizes.large_updates)
    steps = breakdown(store, sizes.large_updates // 2)
    return LargeResult(store.path.stat().st_size, cold, cached, updates, steps)


# -- reporting ---------------------------------------------------------------------------------


def fs_type(path: Path) -> str:
    """The filesystem type holding ``path`` (Linux /proc/mounts), or '?'."""
    best, kind = "", "?"
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                    best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (about 7 s instead of 25 s)")
    parser.add_argument("--dir", type=Path, default=None, help="where to create the temporary home (default: $TMPDIR)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    flag = " --quick" if args.quick else ""

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="authpool-bench-", dir=args.dir) as tmp:
        base = Path(tmp)
        os.environ["AUTHPOOL_HOME"] = str(base / "home")  # inherited by the spawned workers
        env = machine(["pydantic", "filelock"], f"temp dir on {fs_type(base.resolve())}")
        print(f"authpool store benchmark{flag}")
        print(f"machine: {env}\n")
        conc = []
        for procs in (1, 2, 4):
            print(f"  {procs} process(es) x {sizes.per_process} updates ...", flush=True)
            conc.append(run_concurrent(base, procs, sizes))
        print(f"  {sizes.single} uncontended updates + step breakdown ...", flush=True)
        single = run_single(base, sizes)
        print(f"  {LARGE_POOL}-account pool ...", flush=True)
        large = run_large(base, sizes)
    elapsed = time.perf_counter() - started

    # 1. contention
    print(f"\n1. Store.update() on a {SMALL_POOL}-account pool, N concurrent processes (one hot account)")
    rows = [
        [
            str(r.procs),
            str(r.total),
            ms(statistics.median(r.latencies)),
            ms(pct(r.latencies, 95)),
            ms(pct(r.latencies, 99)),
            ms(max(r.latencies)),
            f"{r.total / r.wall:.0f}",
            f"{100 * r.finish_spread:.0f}%",
            f"{r.counter}/{r.expected} {'OK' if r.ok else 'LOST'}",
        ]
        for r in conc
    ]
    heads = ["processes", "updates", "median ms", "p95 ms", "p99 ms", "max ms", "updates/s", "finish spread", "counter"]
    print(table(heads, rows))
    all_ok = all(r.ok for r in conc)
    print(
        f"lost-update check: {'PASS' if all_ok else 'FAIL'} "
        "(hot counter == total updates, warm-up counter == total warm-ups, in every configuration)"
    )
    print("finish spread: (last process done - first process done) / wall time; near 0% when the lock is fair")

    # 2. single update
    print(f"\n2. One uncontended Store.update(), {SMALL_POOL}-account pool")
    print(
        f"median {ms(single.median)} ms, p95 {ms(pct(single.latencies, 95))} ms over {len(single.latencies)} "
        f"updates; target < {TARGET_MS:g} ms: {'MET' if single.met else 'NOT MET'}"
    )

    # 3. large pool
    print(f"\n3. {LARGE_POOL}-account pool ({large.size_bytes / 1024:.0f} KiB on disk)")
    large_rows = [
        ["cold read (fresh Store, parse)", f"{ms(statistics.median(large.cold))} ms", f"{ms(pct(large.cold, 95))} ms"],
        ["cached read (same Store)", f"{us(statistics.median(large.cached))} µs", f"{us(pct(large.cached, 95))} µs"],
        ["update()", f"{ms(statistics.median(large.updates))} ms", f"{ms(pct(large.updates, 95))} ms"],
    ]
    print(table(["operation", "median", "p95"], large_rows))

    print("\nWhere an update's time goes (median ms of each step, timed separately)")
    steps = [[name, ms(a), ms(b)] for (name, a), (_, b) in zip(single.steps, large.steps, strict=True)]
    print(table(["step", f"{SMALL_POOL} accounts", f"{LARGE_POOL} accounts"], steps))
    print(f"\ntotal time {elapsed:.1f} s")

    # markdown, last
    conc_md = [
        [
            f"{r.procs} process{'es' if r.procs > 1 else ''}",
            str(r.total),
            ms(statistics.median(r.latencies)),
            ms(pct(r.latencies, 95)),
            ms(pct(r.latencies, 99)),
            f"{r.total / r.wall:.0f}",
            str(r.expected - r.counter),
        ]
        for r in conc
    ]
    ops_md = [
        [
            f"uncontended update(), {SMALL_POOL} accounts",
            f"{ms(single.median)} ms",
            f"{ms(pct(single.latencies, 95))} ms",
        ],
        *[[f"{LARGE_POOL} accounts: {r[0]}", r[1], r[2]] for r in large_rows],
    ]
    md = [
        "<!-- bench:store -->",
        f"`python benchmarks/store.py{flag}` on {env}.",
        "",
        md_table(
            [f"Store.update(), {SMALL_POOL} accounts", "updates", "median ms", "p95 ms", "p99 ms", "updates/s", "lost"],
            conc_md,
        ),
        "",
        md_table(["Operation", "median", "p95"], ops_md),
        "<!-- /bench:store -->",
    ]
    print()
    print("\n".join(md))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
