"""Worker programs for multi-process tests: each runs in its own real Python process.

Usage: python tests/workers.py COMMAND ARGS...   (AUTHPOOL_HOME and the keyring backend come
from the environment, as for the CLI).
"""

from __future__ import annotations

import json
import sys
import time

from pool import Pool, Secret


def increment(account: str, times: int) -> None:
    """Increment the account's request counter ``times`` times, one locked update each."""
    pool = Pool.open()

    def bump(p: object) -> None:
        p.find(account).counters.requests += 1  # type: ignore[attr-defined]

    for _ in range(times):
        pool.store.update(bump)


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


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "increment":
        increment(rest[0], int(rest[1]))
    elif command == "rotate":
        rotate(rest[0])
    elif command == "read-secret":
        read_secret(rest[0])
    else:
        raise SystemExit(f"unknown worker command {command}")
