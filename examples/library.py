"""authpool as a library: any httpx2 client can send through the pool.

    python examples/library.py anthropic

The transport picks an account per request, rotates on 429 and refreshes tokens on 401, and
attaches credentials only for the provider's own origins.
"""

from __future__ import annotations

import sys

import anyio

from authpool import Pool


async def main(provider: str) -> None:
    pool = Pool.open()
    try:
        async with pool.client(provider, wait_budget=30) as client:
            response = await client.get("/v1/models")
            result = response.extensions["authpool"]
            print(f"HTTP {response.status_code} via {result.account}")
            for attempt in result.attempts:
                print(f"  {attempt.account}: {attempt.outcome} ({attempt.status})")
    finally:
        pool.close()  # writes the batched usage counters


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "anthropic")
