"""``authpool doctor``: what is where, and what is wrong with it.

Each check yields one finding (``ok``, ``fixed``, ``warn`` or ``fail``) with a sentence a user
can act on. The exit status is non-zero when any check fails.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

from authpool import Home, Pool, PoolError, Store
from authpool.accounts import Account, PoolFile
from authpool.accounts.secret import Secret
from authpool.auth.linked import changed_since
from authpool.providers import Providers
from authpool.server.cli.errors import UsageError
from authpool.storage.legacy import is_moved_marker
from authpool.storage.protocols import SecretBackend
from authpool.storage.selection import open_team_store, store_url

__all__ = ["Finding", "add_parser", "cmd_doctor", "run_doctor"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``doctor`` to the CLI's subcommands."""
    p = sub.add_parser("doctor", help="check the home directory, file modes, credential store and pool file")
    p.add_argument("--restore", action="store_true", help="replace a corrupt pool file with the last good copy")
    p.add_argument("--force", action="store_true", help="with --restore: restore even over a healthy pool file "
                                                        "(undoes its last write)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Run ``authpool doctor``; ``--force`` goes only with ``--restore``."""
    if args.force and not args.restore:
        raise UsageError("--force only goes with --restore")
    return run_doctor(restore=args.restore, force=args.force, as_json=args.json)


@dataclass
class Finding:
    check: str
    status: str  # ok | fixed | warn | fail
    detail: str


def run_doctor(*, restore: bool = False, force: bool = False, as_json: bool = False) -> int:
    """Run every check, print the findings, return the exit status."""
    findings = list(_checks(restore, force))
    if as_json:
        print(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        for f in findings:
            print(f"[{f.status:>5}] {f.check}: {f.detail}")
    return 1 if any(f.status == "fail" for f in findings) else 0


def _checks(restore: bool, force: bool = False) -> list[Finding]:
    out: list[Finding] = []
    home = Home.open(repair=False)
    out.append(Finding("home", "ok", str(home.path)))
    problems = home.mode_problems()
    if problems:
        Home.open(home.path, repair=True)
        out.extend(Finding("mode", "fixed", str(p)) for p in problems)
    else:
        out.append(Finding("modes", "ok", "directory 0700, files 0600"))

    config, providers = _config(home)
    out.append(config)
    try:
        url = store_url(home)
    except PoolError as e:
        out.append(Finding("store", "fail", str(e)))
        return out
    if url is not None:
        return out + _team_checks(home, url, providers)
    return out + _local_checks(home, providers, restore, force)


def _local_checks(home: Home, providers: Providers | None, restore: bool,
                  force: bool) -> list[Finding]:
    """The local store: the database (or a pool.json not yet moved), its backup, the credential store."""
    out: list[Finding] = []
    out.append(Finding("store", "ok", f"local: {home.pool_db} (set AUTHPOOL_STORE to use a team store)"))
    store = Store(home)
    if restore:
        out.append(_restore(store, force))
    exists = store.path.exists()
    what = "pool database" if exists or not home.pool_file.exists() else "pool file"
    try:
        pool_file = store.read()
    except PoolError as e:
        out.append(Finding(what, "fail", str(e)))
        return out
    problem = store.check()
    if problem is not None:
        out.append(Finding(what, "fail", f"{store.path} is damaged ({problem}); `authpool doctor --restore` "
                                         f"puts back the last good copy"))
        return out
    if exists:
        detail = f"{store.path} ({len(pool_file.accounts)} accounts, change {pool_file.revision})"
    elif what == "pool file":
        detail = f"{home.pool_file} ({len(pool_file.accounts)} accounts; moved into {store.path} on the next change)"
    else:
        detail = f"{store.path} does not exist yet (created on first change)"
    out.append(Finding(what, "ok", detail))
    if exists and home.pool_file.exists() and not is_moved_marker(home.pool_file):
        out.append(Finding("pool file", "warn", f"{home.pool_file} is no longer read (the pool lives in {store.path} "
                                                "now); an older authpool still running may have written it"))
    if providers is not None:
        out.extend(_unknown_providers(pool_file, providers))
    out.append(Finding(
        "backup",
        "ok" if store.backup_path.exists() or not exists else "warn",
        str(store.backup_path) if store.backup_path.exists() else "none yet (taken on the next change)",
    ))

    if pool_file.secret_backend is None:
        out.append(Finding("credential store", "ok", "not chosen yet (chosen when the first secret is stored)"))
        return out
    pool = Pool(home, store)
    try:
        secrets = pool.secrets
    except PoolError as e:
        out.append(Finding("credential store", "fail", str(e)))
        return out
    out.append(Finding("credential store", "ok", secrets.name))
    return out + _secret_checks(pool_file, secrets)


def _secret_checks(pool_file: PoolFile, secrets: SecretBackend) -> list[Finding]:
    """Every account has its secret; every linked login's file is readable."""
    out: list[Finding] = []
    missing = []
    linked: list[Finding] = []
    for acc in pool_file.accounts:
        try:
            secret = secrets.load_fresh(acc.id)
        except PoolError as e:
            missing.append(f"{acc.name} ({acc.id}): {e}")
            continue
        if acc.link is not None:
            linked.append(_linked(acc, secret))
    if missing:
        out.extend(Finding("secret", "fail", m) for m in missing)
    elif pool_file.accounts:
        out.append(Finding("secrets", "ok", f"all {len(pool_file.accounts)} accounts have their secret"))
    return out + linked


def _linked(acc: Account, secret: Secret) -> Finding:
    """Whether a linked login's file is readable and which copy is the newer (no write, no token call)."""
    assert acc.link is not None  # noqa: S101 - the caller checks
    where = f"{acc.name} <-> {acc.link.source} ({acc.link.path})"
    try:
        newer = changed_since(acc.link, secret)
    except PoolError as e:
        return Finding("linked login", "warn", f"{where}: {e}; authpool renews its own copy meanwhile, which "
                                              "leaves the tool's copy spent")
    if newer is not None:
        return Finding("linked login", "ok", f"{where}: the tool renewed the login; authpool adopts it "
                                            "before its own next renewal")
    return Finding("linked login", "ok", f"{where}: in step")


def _team_checks(home: Home, url: str, providers: Providers | None) -> list[Finding]:
    """The team store: where, server and schema version, round trip, the team key, every account's secret."""
    out: list[Finding] = []
    try:
        store = open_team_store(url)
    except PoolError as e:
        return [Finding("store", "fail", str(e))]
    try:
        from authpool.storage.postgres import PostgresStore

        if not isinstance(store, PostgresStore):
            return [Finding("store", "fail", f"{store.location} is not a team store")]
        info = store.server_info()
        out.append(Finding("store", "ok", f"team: {store.location} (PostgreSQL {info.server_version}, schema "
                                          f"{info.schema_version}, round trip {info.round_trip_ms:.2f} ms, "
                                          f"{info.accounts} accounts)"))
        pool_file = store.read()
        if providers is not None:
            out.extend(_unknown_providers(pool_file, providers))
        pool = Pool(home, store)
        try:
            sealer = pool.secrets
            fp = store.team_secrets().sealer().fingerprint
        except PoolError as e:
            out.append(Finding("team key", "fail", str(e)))
            return out
        out.append(Finding("team key", "ok", f"fingerprint {fp}"))
        missing = []
        for acc in pool_file.accounts:
            try:
                sealer.load_fresh(acc.id)
            except PoolError as e:
                missing.append(f"{acc.name} ({acc.id}): {e}")
        out.extend(Finding("secret", "fail", m) for m in missing)
        if pool_file.accounts and not missing:
            out.append(Finding("secrets", "ok", f"all {len(pool_file.accounts)} accounts have their secret"))
    except PoolError as e:
        out.append(Finding("store", "fail", str(e)))
    finally:
        closer = getattr(store, "close", None)
        if callable(closer):
            closer()
    return out


def _restore(store: Store, force: bool) -> Finding:
    try:
        aside = store.restore_backup(force=force)
    except PoolError as e:
        return Finding("restore", "fail", str(e))
    if aside.name.startswith(f"{store.path.name}.replaced-"):  # it was healthy: --force
        return Finding("restore", "warn", f"restored {store.backup_path} over a working database: this undid every "
                                          f"change since the backup was taken; the replaced file is kept as {aside}")
    return Finding("restore", "fixed", f"restored {store.backup_path}; damaged file kept as {aside}")


def _config(home: Home) -> tuple[Finding, Providers | None]:
    path = home.config_file
    if not path.exists():
        return Finding("config", "ok", f"{path} does not exist (built-in providers only)"), Providers.load(None)
    try:
        providers = Providers.load(path)
    except PoolError as e:
        return Finding("config", "fail", str(e)), None
    defined = ", ".join(providers.configured) or "no providers"
    return Finding("config", "ok", f"{path} ({defined})"), providers


def _unknown_providers(pool_file: PoolFile, providers: Providers) -> list[Finding]:
    """Accounts whose provider is gone (added before such accounts were refused, or config.toml changed)."""
    known = set(providers.ids())
    return [
        Finding("account", "fail", f"{a.name} ({a.id}): unknown provider {a.provider!r}, so it can serve no "
                                   f"request; define [providers.{a.provider}] in config.toml or remove the account")
        for a in pool_file.accounts if a.provider not in known
    ]
