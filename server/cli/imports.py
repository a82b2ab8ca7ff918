"""``authpool import SOURCE [PATH]``: bring in logins the user already has in other tools.

A thin shell over :mod:`authpool.importers`. stdout gets one line per entry of the source
(imported, would import, already imported, skipped); stderr gets the warning that an imported
OAuth login shares its refresh token with the tool it came from. Never a secret, anywhere.

The source is read and checked before the pool is opened, so a missing or malformed file
leaves the home exactly as it was; ``--dry-run`` reads the pool but never writes it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from authpool import Home, InvalidInput, NotFound, Pool, resolve_home
from authpool.accounts import validate_provider_id
from authpool.importers import (
    LINKABLE,
    SOURCES,
    TOOL_NAMES,
    Candidate,
    Step,
    default_path,
    env_variables,
    import_candidates,
    plan_import,
    scan_source,
    select,
)
from authpool.providers import Providers
from authpool.server.cli.format import relative
from authpool.storage.selection import open_store

__all__ = ["add_parser", "cmd_import"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``import`` command to the CLI's subcommands."""
    p = sub.add_parser(
        "import",
        help="import logins you already have (opencode, claude-code, codex, gemini, env); no retyping",
        description="Import existing logins. OAuth logins keep sharing their refresh token with the tool they "
        "came from; a fresh `authpool login` gives authpool a login of its own.",
    )
    p.add_argument("source", choices=SOURCES, help="where the logins are")
    p.add_argument("path", nargs="?", help="the tool's credentials file (default: where the tool keeps it)")
    p.add_argument("--label", help="label for the account (only when exactly one account is imported)")
    p.add_argument("--provider", help="import only this provider's logins")
    p.add_argument("--kind", choices=["oauth", "api_key"], help="import only OAuth logins or only API keys")
    p.add_argument("--namespace", default="default", help="sub-pool within the provider (default: default)")
    p.add_argument("--link", action="store_true",
                   help="keep each OAuth login in step with the tool's file: whichever of the two renews it, "
                   "the other adopts the new tokens, so neither logs the other out")
    p.add_argument("--dry-run", action="store_true",
                   help="show what would be imported (provider, label, kind, expiry) and change nothing")
    p.set_defaults(handler=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    """Run ``authpool import``; returns the exit status (errors are raised as PoolError)."""
    home_path = resolve_home()
    config = home_path / "config.toml"
    providers = Providers.load(config if config.exists() else None)
    path = Path(args.path).expanduser() if args.path else None
    if args.link and args.source not in LINKABLE:
        raise InvalidInput(f"--link keeps a tool's credential file in step; {args.source} has none "
                           f"(linkable: {', '.join(LINKABLE)})")
    scan = scan_source(args.source, path, provider_ids=providers.ids())
    link = (path if path is not None else default_path(args.source)).resolve() if args.link else None
    provider = providers.get(validate_provider_id(args.provider)).id if args.provider else None
    candidates = select(scan.candidates, provider=provider, kind=args.kind)

    print(f"{scan.where}:")
    for skipped in scan.skipped:
        print(f"  skipped {skipped.origin}: {skipped.reason}")
    if not candidates:
        wanted = " ".join(x for x in (provider, {"api_key": "API-key", "oauth": "OAuth"}.get(args.kind or "")) if x)
        looked = ""
        if args.source == "env":
            looked = f" (looked for {', '.join(var for var, _ in env_variables(providers.ids()))})"
        raise NotFound(f"no {wanted + ' ' if wanted else ''}login to import in {scan.where}{looked}")

    # Plan against the pool as it is, without writing: a refused --label must leave the home
    # exactly as it was (not even created). The real run plans again under the import lock.
    steps = plan_import(_pool_for_reading(home_path), candidates, label=args.label)
    if args.dry_run:
        for step in steps:
            print("  " + _describe(step, dry_run=True))
            _warn_shared(step, providers, dry_run=True, link=link)
        print("dry run: nothing was changed")
        return 0

    pool = Pool.open(home_path)
    for step, account in import_candidates(pool, candidates, label=args.label, namespace=args.namespace,
                                           link=link):
        print("  " + _describe(step, dry_run=False), flush=True)
        if account.link is not None:
            print(f"  linked {account.name} to {account.link.path}", flush=True)
        _warn_shared(step, providers, dry_run=False, link=link)
    return 0


def _pool_for_reading(home_path: Path) -> Pool | None:
    """The pool, opened without writing anything (None when there is no home yet)."""
    if not home_path.is_dir():
        return None  # nothing to match against; the home is created only when an account is added
    home = Home.open(home_path, repair=False)
    return Pool(home, open_store(home))


def _describe(step: Step, *, dry_run: bool) -> str:
    if step.existing is not None:
        # The source's expiry says nothing about the stored copy, so only the kind is shown.
        kept = "oauth; its stored tokens were left as they are" if step.existing.kind == "oauth" else "API key"
        return f"already imported as {step.name} ({kept}) [{step.candidate.origin}]"
    what = _kind_text(step.candidate)
    verb = "would import" if dry_run else "imported"
    return f"{verb} {step.name}: {what} [{step.candidate.origin}]"


def _kind_text(c: Candidate) -> str:
    if c.kind == "api_key":
        text = "API key"
    else:
        now = time.time()
        exp = c.expires_at
        if exp is None:
            text = "oauth, access token expiry unknown"
        elif exp > now:
            text = f"oauth, access token expires {relative(exp, now)}"
        else:
            text = f"oauth, access token expired {relative(exp, now)}"
    return f"{text}, {c.detail}" if c.detail else text


def _warn_shared(step: Step, providers: Providers, *, dry_run: bool, link: Path | None) -> None:
    """Say plainly, for a new unlinked OAuth account, that its refresh token is shared with another tool."""
    c = step.candidate
    if c.kind != "oauth" or step.existing is not None or link is not None:
        return
    tool = TOOL_NAMES.get(c.source, c.source)
    shares = "would share" if dry_run else "shares"
    print(
        f"authpool: warning: {step.name} {shares} its refresh token with {tool}: when either one refreshes "
        f"it, the provider can revoke the other's copy and log that side out. `authpool import {c.source} --link` "
        f"keeps the two in step; for a login of authpool's own, run `authpool login {c.provider}` instead.",
        file=sys.stderr,
        flush=True,
    )
    settings = providers.get(c.provider).oauth
    if c.tokens is not None and c.tokens.refresh_token and (settings is None or not settings.client_id):
        print(
            f"authpool: note: refreshing {step.name} needs the OAuth client id its tokens were issued to "
            f"(set [providers.{c.provider}.oauth] client_id in config.toml); until then it works only until "
            "its access token expires.",
            file=sys.stderr,
            flush=True,
        )
