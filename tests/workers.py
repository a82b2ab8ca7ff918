"""Worker programs for multi-process tests: each runs in its own real Python process.

Usage: python tests/workers.py COMMAND ARGS...   (AUTHPOOL_HOME and the keyring backend come
from the environment, as for the CLI).
"""

from __future__ import annotations

import json
import os
import sys
import time

from authpool import Pool, Secret


def increment(account: str, times: int) -> None:
    """Increment the account's request counter ``times`` times, one locked update each."""
    pool = Pool.open()

    def bump(p: object) -> None:
        p.find(account).counters.requests += 1  # type: ignore[attr-defined]

    for _ in range(times):
        pool.store.update(bump)


def increment_rows(accounts: str, times: int) -> None:
    """Increment each of the comma-separated accounts' request counters in turn, ``times`` rounds,
    one row update (``update_accounts``) each: the rows another process wrote since are read
    afresh, the row this process wrote last is taken from its own last commit."""
    pool = Pool.open()

    def bump(rows: object, account: str) -> None:
        rows.get(account).counters.requests += 1  # type: ignore[attr-defined]

    for _ in range(times):
        for account in accounts.split(","):
            pool.store.update_accounts((account,), lambda rows, a=account: bump(rows, a))


def rotate(account: str) -> None:
    """Replace the account's tokens (JSON on stdin, as a refresh does); print the new generation."""
    tokens = json.loads(sys.stdin.read())
    access, refresh = tokens["access_token"], tokens["refresh_token"]
    pool = Pool.open()
    acc = pool.set_secret(account, Secret(kind="oauth", access_token=access, refresh_token=refresh,
                                          expires_at=time.time() + 3600))
    print(json.dumps({"generation": acc.secret_generation}))


def read_secret(account: str) -> None:
    """Print whether the stored refresh token equals the one on stdin (never the values)."""
    expected = sys.stdin.read().strip()
    pool = Pool.open()
    acc = pool.get(account)
    secret = pool.secret_of(acc)
    print(json.dumps({"generation": acc.secret_generation, "refresh_matches": secret.refresh_token == expected}))


def _wait_for(path: str) -> None:
    """The start barrier: spin until the test creates ``path`` (every worker is ready by then)."""
    while not os.path.exists(path):
        time.sleep(0.002)


def _summary(results: list[tuple[int | None, str | None, list[str], str | None]]) -> dict[str, object]:
    return {
        "statuses": [r[0] for r in results],
        "subjects": [r[1] for r in results],
        "outcomes": [o for r in results for o in r[2]],
        "errors": [r[3] for r in results if r[3] is not None],
    }


def burst(provider: str, path: str, n: int, go_file: str) -> None:
    """Print "ready", wait for ``go_file``, then fire ``n`` concurrent async requests; print a JSON summary."""
    import asyncio

    from authpool import PoolError

    pool = Pool.open()

    async def one(client: object) -> tuple[int | None, str | None, list[str], str | None]:
        try:
            r = await client.post(path, json={"model": "m"})  # type: ignore[attr-defined]
        except PoolError as e:
            return None, None, [a.outcome for a in getattr(e, "attempts", [])], f"{type(e).__name__}: {e}"
        trail = [a.outcome for a in r.extensions["authpool"].attempts]
        subject = r.json().get("subject") if r.status_code == 200 else None
        return r.status_code, subject, trail, None

    async def main() -> list[tuple[int | None, str | None, list[str], str | None]]:
        async with pool.client(provider) as client:
            print("ready", flush=True)
            _wait_for(go_file)
            return list(await asyncio.gather(*(one(client) for _ in range(n))))

    results = asyncio.run(main())
    pool.close()
    print(json.dumps(_summary(results)), flush=True)


def loop(provider: str, path: str, stop_file: str) -> None:
    """A long-lived process: one request after another until ``stop_file`` exists; print a JSON summary."""
    from authpool import PoolError

    pool = Pool.open()
    results: list[tuple[int | None, str | None, list[str], str | None]] = []
    with pool.sync_client(provider) as client:
        print("ready", flush=True)
        while not os.path.exists(stop_file) or not results:
            try:
                r = client.post(path, json={"model": "m"})
            except PoolError as e:
                results.append((None, None, [a.outcome for a in e.attempts] if hasattr(e, "attempts") else [],
                                f"{type(e).__name__}: {e}"))
            else:
                subject = r.json().get("subject") if r.status_code == 200 else None
                results.append((r.status_code, subject, [a.outcome for a in r.extensions["authpool"].attempts],
                                None))
            time.sleep(0.03)  # a steady client, not a CPU hog competing with the CLIs
    pool.close()
    print(json.dumps(_summary(results)), flush=True)


def hold_lock(account: str, release_file: str) -> None:
    """Hold the account's refresh lock (a real file lock) until ``release_file`` exists; print "held" once held."""
    pool = Pool.open()
    with pool.secret_lock(pool.get(account).id):
        print("held", flush=True)
        _wait_for(release_file)


def refresh_holding_lock(account: str, go_file: str, release_file: str) -> None:
    """Another process's refresh, in steps the test controls: take the account's refresh lock
    ("held"), renew the token when ``go_file`` appears ("refreshed"), release the lock when
    ``release_file`` appears."""
    from authpool.auth.refresh import Refresher

    pool = Pool.open()
    acc = pool.get(account)
    with pool.secret_lock(acc.id):
        print("held", flush=True)
        _wait_for(go_file)
        current = pool.get(acc.id)
        # The refresh procedure proper (the lock is already ours, as Refresher.renew would take it).
        Refresher(pool)._refresh_locked(pool.provider(acc.provider), acc.id, current.secret_generation, "force")
        print("refreshed", flush=True)
        _wait_for(release_file)


def disable_when(account: str, ready_file: str, go_file: str) -> None:
    """One store update that stops inside its change (creating ``ready_file``) until ``go_file``
    exists, then disables ``account``; prints "done"."""
    pool = Pool.open()

    def change(p: object) -> None:
        open(ready_file, "a").close()
        _wait_for(go_file)
        p.find(account).enabled = False  # type: ignore[attr-defined]

    pool.store.update(change)
    print("done", flush=True)


def flush_when(account: str, ready_file: str, go_file: str) -> None:
    """Disable ``account`` with one store update whose flush of the log to the disk stops (creating
    ``ready_file``) until ``go_file`` exists; prints "done" when the update returns."""
    from authpool.storage import localstore

    real = localstore._fsync

    def slow_flush(path: object, *, data_only: bool = False) -> None:
        if data_only:
            open(ready_file, "a").close()
            _wait_for(go_file)
        real(path, data_only=data_only)  # type: ignore[arg-type]

    localstore._fsync = slow_flush  # type: ignore[assignment]
    pool = Pool.open()
    pool.store.update_accounts([pool.get(account).id], lambda rows: setattr(rows.accounts[pool.get(account).id],
                                                                            "enabled", False))
    print("done", flush=True)


def take_turn(lock_file: str, name: str, log_file: str, release_file: str, again: str) -> None:
    """Take the lock at ``lock_file`` (a real flock) and append ``name`` to ``log_file``; print "held".
    Release it once ``release_file`` exists ("-": at once); with ``again`` = "again", ask for it
    once more straight away and append "``name`` again" when it is granted."""
    from pathlib import Path

    from authpool.storage.lock import Lock

    lock = Lock(Path(lock_file), timeout=120)

    def turn(entry: str) -> None:
        with open(log_file, "a", encoding="utf-8") as f:
            f.write(entry + "\n")

    lock.acquire()
    turn(name)
    print("held", flush=True)
    if release_file != "-":
        _wait_for(release_file)
    lock.release()
    if again == "again":
        with lock:
            turn(f"{name} again")


def wait_until_interrupted(lock_file: str, exit_file: str) -> None:
    """Wait for the lock until Ctrl-C (SIGINT) interrupts the wait; print "interrupted", then stay
    alive (its descriptors open) until ``exit_file`` exists."""
    from pathlib import Path

    from authpool.storage.lock import Lock

    try:
        Lock(Path(lock_file), timeout=120).acquire()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    else:
        print("acquired", flush=True)
    _wait_for(exit_file)


def add_when(provider: str, label: str, ready_file: str, go_file: str) -> None:
    """One store update that stops inside its change (creating ``ready_file``) until ``go_file`` exists,
    then adds an account ``provider/label`` (metadata only); prints "done"."""
    from authpool import Account

    pool = Pool.open()

    def change(rows: object) -> None:
        open(ready_file, "a").close()
        _wait_for(go_file)
        rows.add(Account(id="racer001", provider=provider, label=label, kind="api_key"))  # type: ignore[attr-defined]

    pool.store.update_accounts((), change)
    print("done", flush=True)


def churn(provider: str, count_file: str, stop_file: str) -> None:
    """Add and remove accounts of ``provider`` until ``stop_file`` exists: each round adds two keys
    (one placed among the existing accounts' order, one after them) and removes the oldest it added;
    after each round, writes how many rounds are done to ``count_file`` (atomically)."""
    import random

    pool = Pool.open()
    rng = random.Random(os.getpid())
    mine: list[str] = []
    rounds = 0
    while not os.path.exists(stop_file):
        added = pool.add_api_keys(provider, [(f"churn-{rounds}-a", f"sk-churn-{rounds}-a"),
                                             (f"churn-{rounds}-b", f"sk-churn-{rounds}-b")])
        early = added[0].id
        place = rng.randrange(0, 120)

        def move(rows: object, account_id: str = early, order: int = place) -> None:
            rows.get(account_id).order = order  # type: ignore[attr-defined]

        pool.store.update_accounts([early], move)
        mine += [a.id for a in added]
        if len(mine) > 6:
            pool.remove(mine.pop(0))
        rounds += 1
        with open(count_file + ".tmp", "w", encoding="ascii") as f:
            f.write(str(rounds))
        os.replace(count_file + ".tmp", count_file)
    print(json.dumps({"rounds": rounds}), flush=True)


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "increment":
        increment(rest[0], int(rest[1]))
    elif command == "increment-rows":
        increment_rows(rest[0], int(rest[1]))
    elif command == "rotate":
        rotate(rest[0])
    elif command == "read-secret":
        read_secret(rest[0])
    elif command == "burst":
        burst(rest[0], rest[1], int(rest[2]), rest[3])
    elif command == "loop":
        loop(rest[0], rest[1], rest[2])
    elif command == "hold-lock":
        hold_lock(rest[0], rest[1])
    elif command == "refresh-holding-lock":
        refresh_holding_lock(rest[0], rest[1], rest[2])
    elif command == "disable-when":
        disable_when(rest[0], rest[1], rest[2])
    elif command == "flush-when":
        flush_when(rest[0], rest[1], rest[2])
    elif command == "take-turn":
        take_turn(rest[0], rest[1], rest[2], rest[3], rest[4])
    elif command == "add-when":
        add_when(rest[0], rest[1], rest[2], rest[3])
    elif command == "churn":
        churn(rest[0], rest[1], rest[2])
    elif command == "wait-until-interrupted":
        wait_until_interrupted(rest[0], rest[1])
    else:
        raise SystemExit(f"unknown worker command {command}")
