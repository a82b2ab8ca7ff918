"""``authpool accounts``: list, add, remove, enable, disable and reset the pool's accounts.

Secrets are read from stdin or a hidden prompt, never from argv, where every user of the
machine can see them. Nothing printed here is ever a secret.
"""

from __future__ import annotations

import argparse
import getpass
import json
import shlex
import sys
import time

from authpool import InvalidInput, Pool, PoolError, TokenSet
from authpool.accounts import account_view, describe_windows, fix_command, page_accounts
from authpool.accounts.batch import KeyBatch
from authpool.accounts.listing import DEFAULT_LIMIT, MAX_LIMIT, STATES
from authpool.server.cli.errors import EXIT_ERROR, UsageError
from authpool.server.cli.format import describe_state, print_table, relative

__all__ = [
    "add_parser",
    "cmd_accounts_list",
    "cmd_add_key",
    "cmd_add_oauth",
    "cmd_disable",
    "cmd_enable",
    "cmd_remove",
    "cmd_reset",
    "read_key_lines",
    "read_secret_input",
]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``accounts`` and its actions to the CLI's subcommands."""
    accounts = sub.add_parser("accounts", help="list, add, remove, enable, disable, reset accounts")
    acc_sub = accounts.add_subparsers(title="accounts commands", metavar="ACTION")

    p = acc_sub.add_parser("list", help="list accounts (no secrets), a page at a time")
    p.add_argument("--provider", help="only this provider")
    p.add_argument("--namespace", help="only this sub-pool")
    p.add_argument("--state", help=f"only accounts in this state: {', '.join(STATES)}")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                   help=f"at most this many accounts (default {DEFAULT_LIMIT}, at most {MAX_LIMIT})")
    p.add_argument("--cursor", help="continue after the previous page (the command under a page prints it)")
    p.add_argument("--json", action="store_true",
                   help="machine-readable output: {accounts, total, next_cursor}")
    p.set_defaults(handler=cmd_accounts_list)

    p = acc_sub.add_parser("add-key", help="add an API-key account (key from stdin or a hidden prompt), "
                                           "or many from a file of JSON lines")
    p.add_argument("provider")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--label", help="a name unique within the provider, e.g. 'work'")
    source.add_argument("--from-file", metavar="FILE",
                        help='add one account per line of FILE (- for stdin), each {"label": "...", "key": "..."}: '
                             "all of them, or none if any line is wrong")
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
        ("unlink", cmd_unlink, "stop keeping an imported login in step with its tool's file (import --link)"),
    ):
        p = acc_sub.add_parser(name, help=text)
        p.add_argument("account", help="account id or provider/label")
        p.set_defaults(handler=fn)


def cmd_accounts_list(args: argparse.Namespace) -> int:
    """``accounts list``: a page of accounts as a table (or ``--json``), the commands that fix dead logins on
    it, and the command that shows the next page."""
    pool = Pool.open()
    now = time.time()
    page = page_accounts(pool.store.read(), provider=args.provider, namespace=args.namespace,
                         state=args.state, limit=args.limit, cursor=args.cursor, now=now)
    accounts = page.accounts
    if args.json:
        print(json.dumps({"accounts": [account_view(a, now) for a in accounts], "total": page.total,
                          "next_cursor": page.next_cursor}, indent=2))
        return 0
    if not accounts:
        filters = _filters(args)
        if filters or args.cursor:
            where = f" {' '.join(filters)}" if filters else ""
            after = f" after this cursor ({page.total} match in all)" if args.cursor else ""
            print(f"no accounts match{where}{after}")
        else:
            print(f"no accounts in {pool.home.path}; add one with `authpool accounts add-key PROVIDER --label NAME`")
        return 0
    rows = [["ID", "ACCOUNT", "KIND", "STATE", "TOKEN EXPIRES", "LAST USED", "REQUESTS", "429s"]]
    windows = any(a.windows for a in accounts)
    if windows:
        rows[0].append("USAGE WINDOWS")
    linked = any(a.link is not None for a in accounts)
    if linked:
        rows[0].append("LINKED TO")
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
            *([describe_windows(account_view(a, now), now) or "-"] if windows else []),
            *([a.link.path if a.link is not None else "-"] if linked else []),
        ])
    print_table(rows)
    fixes = [(a.name, cmd) for a in accounts if (cmd := fix_command(a))]
    if fixes:
        print("\nneeds re-auth; to fix:")
        for name, cmd in fixes:
            print(f"  {name}: {cmd}")
    if page.next_cursor is not None:
        command = ["authpool", "accounts", "list", *_filters(args)]
        if args.limit != DEFAULT_LIMIT:
            command += ["--limit", str(args.limit)]
        command += ["--cursor", page.next_cursor]
        print(f"\nshowed {len(accounts)} ({page.total} match in all); next page: {shlex.join(command)}")
    return 0


def _filters(args: argparse.Namespace) -> list[str]:
    """The filter options of an ``accounts list`` command line, to repeat them."""
    out = []
    for flag in ("provider", "namespace", "state"):
        value = getattr(args, flag)
        if value is not None:
            out += [f"--{flag}", value]
    return out


def cmd_add_key(args: argparse.Namespace) -> int:
    """``accounts add-key``: an API key from stdin or a hidden prompt; ``--from-file``: many, all or none."""
    if args.from_file is not None:
        return _add_keys_from_file(args.provider, args.from_file, args.namespace)
    key = read_secret_input(f"API key for {args.provider}/{args.label}: ")
    acc = Pool.open().add_api_key(args.provider, args.label, key, namespace=args.namespace)
    print(f"added {acc.name} (id {acc.id})")
    return 0


def _add_keys_from_file(provider: str, source: str, namespace: str) -> int:
    """``add-key --from-file``: one account per JSON line. A wrong line is named by its number, never shown."""
    where = "stdin" if source == "-" else source
    entries, lines = read_key_lines(source)
    names = [f"line {n}" for n in lines]
    try:
        KeyBatch.check(entries, names=names)  # the library checks again; here, to name lines in every message
        added = Pool.open().add_api_keys(provider, entries, namespace=namespace)
    except InvalidInput as e:
        if e.entry is None:
            raise
        raise type(e)(f"{where} {names[e.entry - 1]}: {e.problem}; nothing was added") from None
    except PoolError as e:
        # The credential store or the metadata store failed: the batch is all or nothing, so say which.
        print(f"authpool: error: {e}; nothing was added", file=sys.stderr)
        return EXIT_ERROR
    into = provider if namespace == "default" else f"{provider} (namespace {namespace})"
    print(f"added {len(added)} API-key account{'s' if len(added) != 1 else ''} to {into}")
    return 0


def read_key_lines(source: str) -> tuple[list[tuple[str, str]], list[int]]:
    """The ``(label, key)`` entries of a JSON-lines file (``-``: stdin) and the line each came from.

    Blank lines are skipped. A line that is not ``{"label": "...", "key": "..."}`` is an error naming
    its number only: the line may hold a key.

    Raises:
        InvalidInput: unreadable, not UTF-8, a bad line, or no entries at all.
        UsageError: ``-`` with a terminal on stdin (keys typed there would show on the screen).
    """
    where = "stdin" if source == "-" else source
    if source == "-":
        if sys.stdin.isatty():
            raise UsageError("--from-file - reads JSON lines on stdin; pipe or redirect them in (`< keys.jsonl`)")
        data = sys.stdin.buffer.read()
    else:
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as e:
            raise InvalidInput(f"cannot read {source}: {e.strerror or type(e).__name__}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        bad_line = data[:e.start].count(b"\n") + 1
        raise InvalidInput(f"{where} line {bad_line}: not UTF-8 text; nothing was added") from None
    entries: list[tuple[str, str]] = []
    lines: list[int] = []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): line numbers as editors count them
        if not line.strip():
            continue
        entry = _key_entry(line)
        if isinstance(entry, str):
            raise InvalidInput(f"{where} line {n}: {entry}; nothing was added")
        entries.append(entry)
        lines.append(n)
    if not entries:
        raise InvalidInput(f'{where} has no entries: one {{"label": "...", "key": "..."}} per line')
    return entries, lines


def _key_entry(line: str) -> tuple[str, str] | str:
    """The ``(label, key)`` of one JSON line, or what is wrong with it (never its content)."""
    try:
        doc = json.loads(line)
    except json.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        return 'not a JSON object such as {"label": "...", "key": "..."}'
    if set(doc) != {"label", "key"}:
        return 'an entry has exactly two fields, "label" and "key"'
    label, key = doc["label"], doc["key"]
    if not isinstance(label, str) or not isinstance(key, str):
        return '"label" and "key" must be strings'
    return label, key


def cmd_add_oauth(args: argparse.Namespace) -> int:
    """``accounts add-oauth``: a JSON token set on stdin."""
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
    """``accounts remove``: the account and its secret."""
    acc = Pool.open().remove(args.account)
    print(f"removed {acc.name} (id {acc.id}) and its secret")
    return 0


def cmd_enable(args: argparse.Namespace) -> int:
    """``accounts enable``: back into rotation."""
    acc = Pool.open().set_enabled(args.account, True)
    print(f"enabled {acc.name}")
    return 0


def cmd_disable(args: argparse.Namespace) -> int:
    """``accounts disable``: kept, never used."""
    acc = Pool.open().set_enabled(args.account, False)
    print(f"disabled {acc.name}")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    """``accounts reset``: cooldowns, needs-reauth and the last error cleared."""
    acc = Pool.open().reset(args.account)
    print(f"reset {acc.name}: cooldowns, needs-reauth and last error cleared")
    return 0


def cmd_unlink(args: argparse.Namespace) -> int:
    """``accounts unlink``: the login stays in both places, no longer kept in step."""
    pool = Pool.open()
    before = pool.get(args.account)
    if before.link is None:
        print(f"{before.name} is not linked to a tool's file; nothing to do")
        return 0
    acc = pool.unlink(args.account)
    print(f"unlinked {acc.name} from {before.link.path}: from now on, when either authpool or "
          f"{before.link.source} renews the login, the other's copy may be revoked")
    return 0


def read_secret_input(prompt: str) -> str:
    """A secret from stdin (piped) or a hidden prompt on the terminal — never from argv."""
    value = getpass.getpass(prompt) if sys.stdin.isatty() else sys.stdin.read()
    if not value.strip():
        raise InvalidInput("no secret given on stdin")
    return value.strip()
