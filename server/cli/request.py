"""``authpool request``: one request through the pool, from the shell.

The response body goes to stdout (so it pipes into ``jq``), the account that served it and
the attempt trail to stderr. Exit status: 0 for 2xx/3xx, 4 for a final 4xx, 5 for a final 5xx,
1 when the pool could not serve the request at all (all cooling, no accounts, refused origin,
a refused header). The request passes the same front door (:mod:`authpool.server.front`) as
MCP's ``proxy_request``: a bad method, origin or header is one clear line, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import httpx2

from authpool import InvalidInput, Pool, RequestFailed
from authpool.rotation import Attempt, RequestResult
from authpool.server.front import naming_the_home, prepare, unreadable_body

__all__ = ["add_parser", "parse_headers", "print_trail", "read_body", "run_request"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``request`` to the CLI's subcommands."""
    p = sub.add_parser(
        "request",
        help="send one request through the pool; body to stdout, account and attempt trail to stderr",
    )
    p.add_argument("provider")
    p.add_argument("method", help="GET, POST, ...")
    p.add_argument("path", help="path relative to the provider's base URL (or a URL on one of its origins)")
    body = p.add_mutually_exclusive_group()
    body.add_argument("--json", dest="json_body", metavar="BODY", help="a JSON request body")
    body.add_argument("--data", metavar="@FILE|-|TEXT", help="raw body: @FILE, - for stdin, or literal text")
    p.add_argument("-H", "--header", action="append", default=[], metavar="'K: V'", help="extra request header")
    p.add_argument("--account", help="use only this account (id or provider/label)")
    p.add_argument("--namespace", help="rotate only within this namespace")
    p.add_argument("--session", metavar="KEY",
                   help="keep requests with the same KEY on one account while it is healthy (shared across processes)")
    p.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="seconds to wait when every account is cooling (default: fail at once)")
    p.add_argument("--quiet", "-q", action="store_true", help="do not print the attempt trail")
    p.set_defaults(handler=run_request)


def run_request(args: argparse.Namespace) -> int:
    """Run ``authpool request``; returns the exit status (errors are raised as PoolError)."""
    headers = parse_headers(args.header)
    content, content_type = read_body(args.json_body, args.data)
    pool = Pool.open()

    def progress(waited: float, total: float | None, message: str) -> None:
        print(f"authpool: {message}", file=sys.stderr)

    out = sys.stdout.buffer
    last = b""
    try:
        # The front door MCP's proxy_request uses too: method, origin, header and body checks.
        outgoing = prepare(pool, args.provider, args.method, args.path, headers=headers, body=content,
                           content_type=content_type)
        with pool.sync_client(args.provider, account=args.account, namespace=args.namespace,
                              wait_budget=args.wait, on_progress=progress, session=args.session) as client:
            request = client.build_request(outgoing.method, outgoing.url, content=outgoing.content,
                                           headers=outgoing.headers)
            # Streamed to stdout as it arrives: an event stream (stream: true) shows tokens live.
            with naming_the_home(pool):
                response = client.send(request, stream=True)
            try:
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    out.flush()
                    last = chunk or last
            except httpx2.HTTPError as e:  # the body broke off, or is not the encoding it claims
                raise unreadable_body(args.provider, response, e) from None
            finally:
                response.close()
    except RequestFailed as e:
        if not args.quiet:
            print_trail(e.attempts)
        raise
    finally:
        pool.close()
        # Also when the body broke off or Ctrl-C stopped it: the next line (an error, the
        # trail, the shell prompt) must not start after the body's last character.
        if last and not last.endswith(b"\n") and sys.stdout.isatty():
            with contextlib.suppress(OSError):
                out.write(b"\n")
                out.flush()
    out.flush()
    result: RequestResult | None = response.extensions.get("authpool")
    if result is not None and not args.quiet:
        print(f"authpool: HTTP {response.status_code} from {result.account} ({result.account_id})",
              file=sys.stderr)
        print_trail(result.attempts)
    if response.status_code >= 500:
        return 5
    if response.status_code >= 400:
        return 4
    return 0


def print_trail(attempts: list[Attempt]) -> None:
    """One stderr line per attempt: account, outcome, status, cooldown."""
    for a in attempts:
        status = f" ({a.status})" if a.status else ""
        until = f" until {time.strftime('%H:%M:%S', time.localtime(a.cooldown_until))}" if a.cooldown_until else ""
        detail = f": {a.detail}" if a.detail and a.outcome not in ("ok", "rate_limited") else ""
        print(f"authpool:   {a.account}: {a.outcome}{status}{until}{detail}", file=sys.stderr)


def parse_headers(values: list[str]) -> dict[str, str]:
    """``-H 'K: V'`` options as a dict, names lower-cased (HTTP names are case-insensitive; errors name
    them as the pool's client sees them).

    Raises:
        InvalidInput: a header without a colon.
    """
    out: dict[str, str] = {}
    for raw in values:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            raise InvalidInput(f"bad header {raw!r}: use 'Name: value'")
        out[name.strip().lower()] = value.strip()
    return out


def read_body(json_body: str | None, data: str | None) -> tuple[bytes | None, str | None]:
    """The request body and its content type from ``--json`` or ``--data``.

    Raises:
        InvalidInput: malformed JSON, or an unreadable @FILE.
    """
    if json_body is not None:
        try:
            json.loads(json_body)
        except json.JSONDecodeError as e:
            raise InvalidInput(f"--json is not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
        return json_body.encode(), "application/json"
    if data is None:
        return None, None
    if data == "-":
        return sys.stdin.buffer.read(), None
    if data.startswith("@"):
        try:
            with open(data[1:], "rb") as f:
                return f.read(), None
        except OSError as e:
            raise InvalidInput(f"cannot read {data[1:]}: {e.strerror}") from None
    return data.encode(), None

