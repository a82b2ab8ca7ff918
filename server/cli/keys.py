"""``authpool team key`` and ``authpool vault key``: the keys that seal secrets, created, exported, imported.

A team key seals a team store's secrets; every member holds it and the database never does. The
vault key seals the local encrypted-file vault. Keys are read from stdin or a hidden prompt (never
from argv), printed only by ``export``, and named everywhere else by their fingerprint.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from authpool import Pool
from authpool.errors import InvalidInput, TeamKeyError
from authpool.server.cli.accounts import read_secret_input
from authpool.server.cli.errors import UsageError

if TYPE_CHECKING:
    from authpool.storage.postgres import PostgresStore
    from authpool.storage.vault import VaultKeyring

__all__ = ["add_parser"]

_KEEP = ("this key unlocks every secret it seals: keep it in a password manager and give it only to the people "
         "who may use those accounts")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``team key ...`` and ``vault key ...`` to the CLI's subcommands."""
    team = sub.add_parser("team", help="the team store's key (AUTHPOOL_STORE=postgresql://...)")
    team_sub = team.add_subparsers(title="team commands", metavar="ACTION")
    key = team_sub.add_parser("key", help="create, export or import the team key")
    key_sub = key.add_subparsers(title="team key commands", metavar="ACTION")
    key_sub.add_parser("create", help="create the team store's key (the first member, once) and keep it here"
                       ).set_defaults(handler=cmd_team_create)
    key_sub.add_parser("export", help="print the team key once, for a password manager or another member"
                       ).set_defaults(handler=cmd_team_export)
    key_sub.add_parser("import", help="keep the team key (from stdin or a hidden prompt) in this machine's "
                                      "credential store").set_defaults(handler=cmd_team_import)

    vault = sub.add_parser("vault", help="the local encrypted-file vault's key")
    vault_sub = vault.add_subparsers(title="vault commands", metavar="ACTION")
    vkey = vault_sub.add_parser("key", help="init, export or import the vault key")
    vkey_sub = vkey.add_subparsers(title="vault key commands", metavar="ACTION")
    vkey_sub.add_parser("init", help="create the vault key file if there is none").set_defaults(handler=cmd_vault_init)
    vkey_sub.add_parser("export", help="print the vault key once, for a password manager"
                        ).set_defaults(handler=cmd_vault_export)
    vkey_sub.add_parser("import", help="make the key from stdin (or a hidden prompt) this home's vault key"
                        ).set_defaults(handler=cmd_vault_import)


def _team_pool() -> tuple[Pool, PostgresStore]:
    from authpool.storage.postgres import PostgresStore

    pool = Pool.open()
    if not isinstance(pool.store, PostgresStore):
        raise UsageError("this home uses the local store; set AUTHPOOL_STORE=postgresql://user@host:port/dbname "
                         '(or [store] url = "..." in config.toml) to use a team store')
    return pool, pool.store


def cmd_team_create(args: argparse.Namespace) -> int:
    """Create a key for a team store that has none yet, keep it here, register its fingerprint in the store."""
    from authpool.storage.postgres import team_sealer
    from authpool.storage.sealing import encode_key, new_key
    from authpool.storage.teamkey import save_member_key

    pool, store = _team_pool()
    existing = store.team_secrets().fingerprint()
    if existing is not None:
        raise TeamKeyError(f"the team store {store.location} has a key already (fingerprint {existing}); get it from "
                           "a member (`authpool team key export`) and `authpool team key import` it")
    text = encode_key(new_key())
    sealer = team_sealer(store, text, source="the new key")
    where = save_member_key(store.location, text)
    print(f"created the team key {sealer.fingerprint} for {store.location} and kept it in {where}")
    print("give it to the other members: `authpool team key export` prints it, `authpool team key import` takes it",
          file=sys.stderr)
    pool.close()
    return 0


def cmd_team_export(args: argparse.Namespace) -> int:
    """Print the team key this member holds (checked against the store first)."""
    from authpool.storage.postgres import team_sealer
    from authpool.storage.sealing import encode_key, key_from_text
    from authpool.storage.teamkey import TEAM_KEY_ENV, member_key

    pool, store = _team_pool()
    text = os.environ.get(TEAM_KEY_ENV) or member_key(store.location)
    if text is None:
        raise TeamKeyError(f"this machine holds no team key for {store.location}; `authpool team key import` it")
    sealer = team_sealer(store, text, register=False)
    salt = store.run(lambda cur: cur.execute("SELECT salt FROM authpool_team WHERE id = 1").fetchone())
    print(encode_key(key_from_text(text, bytes(salt[0]) if salt else b"")))
    print(f"team key {sealer.fingerprint} of {store.location}: {_KEEP}", file=sys.stderr)
    pool.close()
    return 0


def cmd_team_import(args: argparse.Namespace) -> int:
    """Check a team key against the store, then keep it in this machine's credential store."""
    from authpool.storage.postgres import team_sealer
    from authpool.storage.teamkey import save_member_key

    pool, store = _team_pool()
    text = read_secret_input("team key: ").strip()
    if not text:
        raise InvalidInput("no key given (pipe it on stdin or type it at the prompt)")
    sealer = team_sealer(store, text, source="the imported key")
    where = save_member_key(store.location, text)
    print(f"kept the team key {sealer.fingerprint} for {store.location} in {where}")
    pool.close()
    return 0


def _vault() -> VaultKeyring:
    from authpool.storage.vault import VaultKeyring

    return VaultKeyring()


def cmd_vault_init(args: argparse.Namespace) -> int:
    """Create the vault key file if there is none; print its fingerprint."""
    vault = _vault()
    fp, created = vault.init_key()
    print(f"{'created' if created else 'the vault already has'} the key {fp} ({vault.key_file})"
          if not os.environ.get("AUTHPOOL_VAULT_KEY") else f"the vault key comes from AUTHPOOL_VAULT_KEY ({fp})")
    return 0


def cmd_vault_export(args: argparse.Namespace) -> int:
    """Print the vault key (base64)."""
    vault = _vault()
    text = vault.export_key()
    print(text)
    print(f"vault key {vault.key_fingerprint()}: {_KEEP}", file=sys.stderr)
    return 0


def cmd_vault_import(args: argparse.Namespace) -> int:
    """Make the key from stdin this home's vault key file (refused if it does not open the vault)."""
    vault = _vault()
    fp = vault.import_key(read_secret_input("vault key: "))
    print(f"the vault key is now {fp}")
    return 0
