"""``authpool serve``: the MCP server, on stdio (how MCP clients spawn it) or over HTTP (``--http``).

On stdio, stdout carries JSON-RPC only (:mod:`authpool.server.mcp.serve`). With ``--http`` it
serves Streamable HTTP at ``http://HOST:PORT/mcp`` until SIGTERM or Ctrl-C, behind the gateway
key (:mod:`authpool.server.gateway.endpoint`); ``authpool gateway`` serves the same endpoint
beside the provider routes. The MCP SDK and the web stack are imported only when serving.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from authpool.server.cli.errors import UsageError
from authpool.server.cli.gateway import grace_seconds, port_number

__all__ = ["DEFAULT_PORT", "add_parser", "cmd_serve"]

DEFAULT_PORT = 8788  # the gateway's is 8787


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` to the CLI's subcommands."""
    p = sub.add_parser(
        "serve", help="run the MCP server on stdio (for Claude Desktop and other MCP clients), or over HTTP",
        description="Run the MCP server: on stdio (what MCP clients spawn), or with --http as Streamable HTTP at "
                    "http://HOST:PORT/mcp, where clients send the gateway key (`authpool gateway key`) as "
                    "Authorization: Bearer.",
    )
    p.add_argument("--http", action="store_true", help="serve Streamable HTTP at /mcp instead of stdio")
    p.add_argument("--host", default=None, help="with --http: address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=None,
                   help=f"with --http: port (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--port-file", type=Path, metavar="FILE",
                   help="with --http: write the port to FILE once the server accepts connections")
    p.add_argument("--no-auth", action="store_true",
                   help="with --http on a loopback address: ask for no key (any user of this machine can then "
                        "use the pool)")
    p.add_argument("--allow-remote", action="store_true",
                   help="with --http: allow a --host other machines can reach (they still need the key)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="with --http: also answer requests whose Host header is NAME")
    p.add_argument("--grace", type=grace_seconds, default=None, metavar="S",
                   help="with --http: seconds responses in flight may take to finish after SIGTERM (default 10)")
    p.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """``authpool serve [--http ...]`` (the SDK is imported only now)."""
    if not getattr(args, "http", False):
        given = [flag for flag, value in (("--host", getattr(args, "host", None)),
                                          ("--port", getattr(args, "port", None)),
                                          ("--port-file", getattr(args, "port_file", None)),
                                          ("--no-auth", getattr(args, "no_auth", False)),
                                          ("--allow-remote", getattr(args, "allow_remote", False)),
                                          ("--allow-host", getattr(args, "allow_host", [])),
                                          ("--grace", getattr(args, "grace", None))) if value]
        if given:
            raise UsageError(f"{', '.join(given)} go with --http (without it, serve speaks MCP on stdio)")
        from authpool.server.mcp.serve import serve

        return serve()
    from authpool.server.gateway.command import run_gateway

    return run_gateway(host=args.host or "127.0.0.1", port=DEFAULT_PORT if args.port is None else args.port,
                       port_file=args.port_file, allow_remote=args.allow_remote, allow_hosts=args.allow_host,
                       grace=10.0 if args.grace is None else args.grace, mcp_only=True, no_auth=args.no_auth)
