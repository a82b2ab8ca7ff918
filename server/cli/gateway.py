"""``authpool gateway``: the pool behind a local base URL; ``authpool gateway key``: the key clients present.

Claude Code, Codex, opencode and the OpenAI / Anthropic / Gemini SDKs take a base URL and an API
key: pointed at ``http://127.0.0.1:8787/PROVIDER`` with the gateway key, their requests go through
the pool (:mod:`authpool.server.gateway`). The web stack (Starlette, uvicorn) is imported only
when the gateway runs, so other commands stay fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_parser", "cmd_gateway", "cmd_gateway_key", "grace_seconds", "port_number"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``gateway`` (and ``gateway key``) to the CLI's subcommands."""
    p = sub.add_parser(
        "gateway",
        help="serve the pool over HTTP for Claude Code, Codex, opencode and SDKs (base URL http://HOST:PORT/PROVIDER)",
        description="Serve the pool at a local base URL until SIGTERM or Ctrl-C. Clients send the gateway key "
                    "(`authpool gateway key`) as their API key.",
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; another than a loopback address needs "
                        "--allow-remote)")
    p.add_argument("--port", type=port_number, default=8787, help="port (default 8787; 0 picks a free one)")
    p.add_argument("--port-file", type=Path, metavar="FILE", help="write the port to FILE once the gateway listens")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a --host other machines can reach (they still need the gateway key)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header is NAME (a name you reach the gateway by)")
    p.add_argument("--grace", type=grace_seconds, default=60.0, metavar="S",
                   help="seconds responses in flight may take to finish after SIGTERM (default 60)")
    p.set_defaults(handler=cmd_gateway)
    actions = p.add_subparsers(title="gateway commands", metavar="ACTION")
    k = actions.add_parser("key", help="print the gateway key (created on first use)")
    k.add_argument("--rotate", action="store_true",
                   help="replace the stored key with a new one (a running gateway follows within seconds)")
    k.set_defaults(handler=cmd_gateway_key)


def cmd_gateway(args: argparse.Namespace) -> int:
    """Run the gateway until a signal (the web stack is imported only now)."""
    from authpool.server.gateway.command import run_gateway

    return run_gateway(host=args.host, port=args.port, port_file=args.port_file, allow_remote=args.allow_remote,
                       allow_hosts=args.allow_host, grace=args.grace)


def cmd_gateway_key(args: argparse.Namespace) -> int:
    """Print the gateway key on stdout, for pasting into a client's configuration."""
    from authpool import Pool
    from authpool.server.gateway.keys import ENV_KEY, GatewayKey

    key = GatewayKey(Pool.open())
    if key.from_env is not None and not args.rotate:
        print(f"authpool: {ENV_KEY} is set; the gateway uses that key", file=sys.stderr)
    print(key.rotate() if args.rotate else key.load())
    if args.rotate:
        print("authpool: the gateway key was replaced; update your clients (a running gateway accepts the new key "
              "now and refuses the old one within seconds)", file=sys.stderr)
    return 0


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 (pick a free one) to 65535 (``gateway`` and ``serve --http``)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {port}")
    return port


def grace_seconds(text: str) -> float:
    """An argparse type: seconds to let responses finish after SIGTERM, 0 to 86400."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= seconds <= 86400:
        raise argparse.ArgumentTypeError("give 0 to 86400 seconds")
    return seconds
