"""``authpool serve``: run the MCP server on stdio until the client goes away.

Shutdown is clean both ways a client ends a stdio server: when stdin closes, the SDK's loop
returns and the lifespan waits for in-flight token refreshes and flushes pending counter
writes; on SIGTERM/SIGINT/SIGHUP (the Python and TypeScript clients send SIGTERM two seconds
after closing stdin), in-flight refreshes are finished first (a refresh that reached the token
endpoint may have rotated the login there: leaving before its answer is stored would log the
user out), pending writes are flushed and the process exits. A second signal leaves at once.
Tokens, cooldowns and needs-reauth are never pending: they are written before the request that
caused them returns.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import anyio

from authpool import Pool, PoolError
from authpool.server.mcp.server import build_server, finish_refreshes

__all__ = ["serve"]

log = logging.getLogger("authpool")


def serve() -> int:
    """Serve MCP over stdio; returns the exit status."""
    pool = Pool.open()
    # MCP clients often start servers without AUTHPOOL_HOME: say which pool this is, on stderr
    # (stdout is the wire), whatever the log level.
    source = "AUTHPOOL_HOME" if os.environ.get("AUTHPOOL_HOME") else "AUTHPOOL_HOME is not set: the default home"
    print(f"authpool: serving the pool in {pool.home.path} ({source})", file=sys.stderr, flush=True)
    server = build_server(pool)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_exit_on_signal, pool)
            await server.run_stdio_async()
            tg.cancel_scope.cancel()

    anyio.run(main)
    return 0


async def _exit_on_signal(pool: Pool) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with anyio.create_task_group() as tg:
            exiting = False
            async for signum in signals:
                if exiting:
                    log.warning("received %s again; leaving without waiting for token refreshes",
                                signal.Signals(signum).name)
                    sys.stderr.flush()
                    os._exit(128 + signum)
                exiting = True
                log.info("received %s; finishing refreshes, flushing and exiting", signal.Signals(signum).name)
                tg.start_soon(_finish_and_exit, pool)


async def _finish_and_exit(pool: Pool) -> None:
    # The refreshes run in threads of their own; waiting for them here keeps the event loop free
    # to notice a second signal.
    await anyio.to_thread.run_sync(finish_refreshes, abandon_on_cancel=True)
    try:
        await anyio.to_thread.run_sync(pool.flush)
    except PoolError as e:
        log.warning("could not write usage counters on exit: %s", e)
    sys.stderr.flush()
    # The SDK reads stdin in a worker thread that cannot be cancelled; a normal exit would wait
    # for it forever. Everything that matters is written: leave now.
    os._exit(0)
