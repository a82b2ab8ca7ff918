"""The ``authpool`` command line.

Every command is a thin shell over :mod:`pool`. Errors are one line on stderr and a non-zero
exit status, never a traceback (``AUTHPOOL_DEBUG=1`` shows one for bugs). Secrets are read
from stdin or a hidden prompt, never from argv, where every user of the machine can see them.
Ad-hoc commands must stay fast, so nothing here imports the MCP SDK except ``serve``/``demo``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from authpool import Pool, PoolError, TokenSet
from authpool.accounts.model import Account
from authpool.accounts.views import account_view, fix_command
from authpool.errors import InvalidInput

__all__ = ["main"]

log = logging.getLogger("authpool")

EXIT_ERROR = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A command line that cannot be run as given (exit status 2)."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt, so the command unwinds."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (the console script exits with it).

    Whatever ends a command (success, an error, Ctrl-C, SIGTERM), a token refresh it sent is
    waited for before the process exits: the provider may have rotated the login already, and
    leaving before the answer is stored would log the user out.
    """
    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    previous = _on_sigterm(_raise_terminated)
    try:
        status = _run(argv)
    finally:
        _on_sigterm(previous)
    return _after_refreshes(status)


def _run(argv: list[str]) -> int:  # noqa: PLR0911 - one exit status per failure kind
    handler: Callable[[argparse.Namespace], int] | None
    if argv == ["serve"]:
        # An MCP client is waiting for `initialize`: skip building every command's parser.
        handler, args = cmd_serve, argparse.Namespace()
    else:
        parser = build_parser()
        args = parser.parse_args(argv)
        handler = getattr(args, "handler", None)
        if handler is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
    try:
        return handler(args)
    except PoolError as e:
        print(f"authpool: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except UsageError as e:
        print(f"authpool: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("authpool: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("authpool: terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:
        return EXIT_ERROR  # stdout closed early (e.g. `| head`): nothing left to say
    except Exception as e:  # a bug: keep the one-line contract, offer the traceback on request
        if os.environ.get("AUTHPOOL_DEBUG"):
            raise
        print(
            f"authpool: internal error ({type(e).__name__}); rerun with AUTHPOOL_DEBUG=1 for details",
            file=sys.stderr,
        )
        return EXIT_ERROR


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def _on_sigterm(handler: Any) -> Any:
    """Install ``handler`` for SIGTERM (main thread only); returns the previous one."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler) if handler is not None else None


def _after_refreshes(status: int) -> int:
    """Wait for this process's token refreshes that reached their endpoint, then return ``status``.

    A second Ctrl-C or SIGTERM leaves at once: the journal then tells the next process what
    happened, and the error message names it if the provider revoked the login.
    """
    from authpool.auth.refresh import drain, in_flight

    if not in_flight():
        return status

    def say(pending: list[Any]) -> None:
        names = ", ".join(sorted({f.name for f in pending}))
        print(f"authpool: finishing a token refresh ({names}) before exiting: the provider may have rotated "
              "the login already; press Ctrl-C again to leave anyway", file=sys.stderr, flush=True)

    previous = _on_sigterm(_raise_terminated)
    try:
        drain(notify=say)
    except (KeyboardInterrupt, Terminated):
        print("authpool: left before a token refresh finished; if the provider revoked the login, the next "
              "request says so", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(status or 130)  # the refresh threads must not hold the exit up any longer
    finally:
        _on_sigterm(previous)
    return status


def setup_logging() -> None:
    """Log to stderr only (stdout is for results, and for JSON-RPC under ``serve``)."""
    level_name = os.environ.get("AUTHPOOL_LOG", "WARNING").upper()
    level = logging.getLevelName(level_name)
    if not isinstance(level, int):
        level = logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("authpool: %(message)s"))
    root = logging.getLogger("authpool")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


# -- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - one declaration per command
    parser = argparse.ArgumentParser(
        prog="authpool",
        description="A pool of LLM-provider accounts: rotates on rate limits, refreshes tokens safely.",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    accounts = sub.add_parser("accounts", help="list, add, remove, enable, disable, reset accounts")
    acc_sub = accounts.add_subparsers(title="accounts commands", metavar="ACTION")

    p = acc_sub.add_parser("list", help="list accounts (no secrets)")
    p.add_argument("--provider", help="only this provider")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_accounts_list)

    p = acc_sub.add_parser("add-key", help="add an API-key account (key from stdin or a hidden prompt)")
    p.add_argument("provider")
    p.add_argument("--label", required=True, help="a name unique within the provider, e.g. 'work'")
    p.add_argument("--namespace", default="default", help="sub-pool within the provider (default: default)")
    p.set_defaults(handler=cmd_add_key)

    p = acc_sub.add_parser(
        "add-oauth",
        help="add an OAuth account from a JSON token set on stdin "
        "({access_token, refresh_token, expires_in|expires_at})",
    )
    p.add_argument("provider")
    p.add_argument("--label", required=True)
    p.add_argument("--namespace", default="default")
    p.set_defaults(handler=cmd_add_oauth)

    for name, fn, text in (
        ("remove", cmd_remove, "remove an account and its secret"),
        ("enable", cmd_enable, "let rotation use the account again"),
        ("disable", cmd_disable, "keep the account but never use it"),
        ("reset", cmd_reset, "clear cooldowns, needs-reauth and the last error"),
    ):
        p = acc_sub.add_parser(name, help=text)
        p.add_argument("account", help="account id or provider/label")
        p.set_defaults(handler=fn)

    from authpool.server.cli.login import add_parser as add_login_parser  # the command's parser lives with its handler

    add_login_parser(sub)

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
    p.set_defaults(handler=cmd_request)

    secrets = sub.add_parser("secrets", help="where the pool's secrets are kept")
    sec_sub = secrets.add_subparsers(title="secrets commands", metavar="ACTION")
    p = sec_sub.add_parser("move", help="move every secret to another credential store and record it")
    p.add_argument("target", help="'vault' (encrypted file), 'os' (the best working OS store), or a keyring "
                                  "backend class such as keyring.backends.SecretService.Keyring")
    p.set_defaults(handler=cmd_secrets_move)

    p = sub.add_parser("status", help="per provider: accounts ready, cooling (until when), needs-reauth, counters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_status)

    from authpool.server.cli.imports import (
        add_parser as add_import_parser,  # the command's parser lives with its handler
    )

    add_import_parser(sub)

    p = sub.add_parser("serve", help="run the MCP server on stdio (for Claude Desktop and other MCP clients)")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("demo", help="show the pool working end to end against a loopback provider (touches nothing)")
    p.add_argument("--keep", action="store_true", help="keep the temporary home for inspection")
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("doctor", help="check the home directory, file modes, credential store and pool file")
    p.add_argument("--restore", action="store_true", help="replace a corrupt pool file with the last good copy")
    p.add_argument("--force", action="store_true", help="with --restore: restore even over a healthy pool file "
                                                        "(undoes its last write)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_doctor)
    return parser


# -- accounts -----------------------------------------------------------------------------


def cmd_accounts_list(args: argparse.Namespace) -> int:
    pool = Pool.open()
    accounts = pool.accounts(args.provider)
    if args.json:
        print(json.dumps([account_view(a) for a in accounts], indent=2))
        return 0
    if not accounts:
        print("no accounts" + (f" for {args.provider}" if args.provider else "") +
              f" in {pool.home.path}; add one with `authpool accounts add-key PROVIDER --label NAME`")
        return 0
    now = time.time()
    rows = [["ID", "ACCOUNT", "KIND", "STATE", "TOKEN EXPIRES", "LAST USED", "REQUESTS", "429s"]]
    for a in accounts:
        rows.append([
            a.id,
            a.name if a.namespace == "default" else f"{a.name} [{a.namespace}]",
            a.kind,
            describe_state(a, now),
            relative(a.access_expires_at, now) if a.kind == "oauth" else "-",
            relative(a.last_used_at, now),
            str(a.counters.requests),
            str(a.counters.rate_limited),
        ])
    print_table(rows)
    fixes = [(a.name, cmd) for a in accounts if (cmd := fix_command(a))]
    if fixes:
        print("\nneeds re-auth; to fix:")
        for name, cmd in fixes:
            print(f"  {name}: {cmd}")
    return 0


def cmd_add_key(args: argparse.Namespace) -> int:
    key = read_secret_input(f"API key for {args.provider}/{args.label}: ")
    acc = Pool.open().add_api_key(args.provider, args.label, key, namespace=args.namespace)
    print(f"added {acc.name} (id {acc.id})")
    return 0


def cmd_add_oauth(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        raise UsageError(
            "add-oauth reads a JSON token set on stdin, e.g. `authpool accounts add-oauth P --label L < tokens.json`"
        )
    text = sys.stdin.read()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"stdin is not valid JSON (line {e.lineno} column {e.colno})") from None
    tokens = TokenSet.parse(doc)
    acc = Pool.open().add_oauth(args.provider, args.label, tokens, namespace=args.namespace)
    print(f"added {acc.name} (id {acc.id})")
    if not tokens.refresh_token:
        print(f"authpool: warning: the token set has no refresh token, so {acc.name} cannot be renewed: when its "
              f"access token expires it needs a new login (`authpool login {acc.provider} "
              f"--label {shlex.quote(acc.label)}`)",
              file=sys.stderr)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    acc = Pool.open().remove(args.account)
    print(f"removed {acc.name} (id {acc.id}) and its secret")
    return 0


def cmd_enable(args: argparse.Namespace) -> int:
    acc = Pool.open().set_enabled(args.account, True)
    print(f"enabled {acc.name}")
    return 0


def cmd_disable(args: argparse.Namespace) -> int:
    acc = Pool.open().set_enabled(args.account, False)
    print(f"disabled {acc.name}")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    acc = Pool.open().reset(args.account)
    print(f"reset {acc.name}: cooldowns, needs-reauth and last error cleared")
    return 0


def read_secret_input(prompt: str) -> str:
    """A secret from stdin (piped) or a hidden prompt on the terminal — never from argv."""
    value = getpass.getpass(prompt) if sys.stdin.isatty() else sys.stdin.read()
    if not value.strip():
        raise InvalidInput("no secret given on stdin")
    return value.strip()


# -- requests -----------------------------------------------------------------------------

EXIT_HTTP_4XX = 4
EXIT_HTTP_5XX = 5


def cmd_request(args: argparse.Namespace) -> int:
    from authpool.server.cli.request import run_request

    return run_request(args)


def cmd_status(args: argparse.Namespace) -> int:
    from authpool.accounts.views import pool_status

    pool = Pool.open()
    report = pool_status(pool.accounts())
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if not report["providers"]:
        print(f"no accounts yet in {pool.home.path}; add one with `authpool accounts add-key PROVIDER --label NAME`")
        return 0
    now = time.time()
    for prov in report["providers"]:
        nxt = prov["next_free_at"]
        extra = f", next frees up {relative(nxt, now)}" if nxt and not prov["ready"] else ""
        failing = f", {prov['refresh_failing']} failing to renew" if prov["refresh_failing"] else ""
        print(f"{prov['provider']}: {prov['ready']} ready, {prov['cooling']} cooling, "
              f"{prov['needs_reauth']} need re-auth{failing}, {prov['disabled']} disabled{extra}")
        for a in prov["accounts"]:
            until = a["cooling_until"]
            state = f"cooling {relative(until, now)}" if a["state"] == "cooling" and until else a["state"]
            state = a["refresh_failing"] or state
            c = a["counters"]
            print(f"  {a['name']:<32} {state:<18} requests {c['requests']}, 429s {c['rate_limited']}, "
                  f"401/403s {c['unauthorized']}, refreshes {c['refreshes']}, failures {c['failures']}")
    return 0


def cmd_secrets_move(args: argparse.Namespace) -> int:
    source, destination, moved = Pool.open().move_secrets(args.target)
    if moved == 0 and source == destination:
        print(f"secrets are already in {destination}")
    else:
        print(f"moved {moved} secret(s) from {source} to {destination}; every process now uses {destination}")
    return 0


# -- server -------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from authpool.server.mcp.serve import serve

    return serve()


def cmd_demo(args: argparse.Namespace) -> int:
    from authpool.server.cli.demo import run_demo

    return run_demo(keep=args.keep)


# -- doctor -------------------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace) -> int:
    from authpool.server.cli.doctor import run_doctor

    if args.force and not args.restore:
        raise UsageError("--force only goes with --restore")
    return run_doctor(restore=args.restore, force=args.force, as_json=args.json)


# -- formatting ---------------------------------------------------------------------------


def describe_state(a: Account, now: float) -> str:
    state = a.state(now)
    if state == "cooling":
        return f"cooling {relative(a.cooldown_until(now=now), now)}"
    if state == "refresh-failing" and (failing := a.failing_refresh()) is not None:
        return failing.describe()
    return state


def relative(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    delta = ts - now
    span = abs(delta)
    if span < 60:
        text = f"{span:.0f}s"
    elif span < 3600:
        text = f"{span / 60:.0f}m"
    elif span < 86400:
        text = f"{span / 3600:.1f}h"
    else:
        text = f"{span / 86400:.1f}d"
    return f"in {text}" if delta >= 0 else f"{text} ago"


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
