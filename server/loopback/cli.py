"""``python -m authpool.server.loopback``: serve a fake provider for manual testing."""

from __future__ import annotations

import argparse
import json
import signal
import threading
import types

from authpool.server.loopback.provider import LoopbackProvider
from authpool.server.loopback.ratelimit import RATE_LIMIT_STYLES


def main(argv: list[str] | None = None) -> int:
    """``python -m authpool.server.loopback``: print connection details as JSON, serve until signalled."""
    parser = argparse.ArgumentParser(
        prog="python -m authpool.server.loopback", description="Serve a fake LLM provider on 127.0.0.1."
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--accounts", type=int, default=0, help="create N OAuth accounts and print their tokens")
    parser.add_argument("--api-keys", type=int, default=0, metavar="N",
                        help="create N API keys (subjects key1@loopback.test, ...) and print them")
    parser.add_argument("--access-ttl", type=float, default=3600.0)
    parser.add_argument("--rate-limit", type=int, default=None)
    parser.add_argument("--rate-limit-style", choices=sorted(RATE_LIMIT_STYLES), default="retry-after-seconds")
    parser.add_argument("--retry-after", type=float, default=30.0)
    args = parser.parse_args(argv)

    done = threading.Event()

    def _on_signal(signum: int, frame: types.FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    provider = LoopbackProvider(
        access_ttl=args.access_ttl,
        rate_limit=args.rate_limit,
        rate_limit_style=args.rate_limit_style,
        retry_after=args.retry_after,
        port=args.port,
    ).start()
    try:
        accounts = [provider.add_oauth_account(f"user{i}@loopback.test") for i in range(1, max(0, args.accounts) + 1)]
        api_keys = [{"subject": subject, "api_key": provider.add_api_key(subject)}
                    for subject in (f"key{i}@loopback.test" for i in range(1, max(0, args.api_keys) + 1))]
        info = {
            "base_url": provider.base_url,
            "token_url": provider.token_url,
            "client_id": provider.client_id,
            "accounts": accounts,
            "api_keys": api_keys,
        }
        print(json.dumps(info), flush=True)
        while not done.wait(0.5):
            pass
    finally:
        provider.stop()
    return 0
