"""The team store's tables, created and migrated automatically, versioned in their own table.

A database whose schema is newer than this authpool knows is refused with a clear message (and
nothing is changed); an older one is migrated in one transaction, under an advisory lock so two
processes starting at once do not both migrate. No table ever holds a secret in plain text:
``authpool_secrets.sealed`` is AES-256-GCM under the team key, which the database never sees.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from authpool.errors import StoreVersionError

__all__ = ["CHANNEL", "SCHEMA_VERSION", "TEAM_BACKEND", "ensure_schema"]

SCHEMA_VERSION = 1
CHANNEL = "authpool"  # NOTIFY channel: one notification per committed change
TEAM_BACKEND = "authpool.storage.postgres.TeamSecrets"  # recorded as the pool's secret backend
_ADVISORY_KEY = 0x61757468706F6F6C  # "authpool": serialises schema creation and migration

_V1 = """
CREATE TABLE authpool_schema (
    id int PRIMARY KEY CHECK (id = 1),
    version int NOT NULL
);
CREATE SEQUENCE authpool_changes;
CREATE TABLE authpool_pool (
    id int PRIMARY KEY CHECK (id = 1),
    doc jsonb NOT NULL,
    changed bigint NOT NULL DEFAULT 0
);
CREATE TABLE authpool_accounts (
    id text PRIMARY KEY,
    provider text NOT NULL,
    label_key text NOT NULL,
    position bigint NOT NULL,
    doc jsonb NOT NULL,
    changed bigint NOT NULL,
    UNIQUE (provider, label_key)
);
CREATE TABLE authpool_sessions (
    key text PRIMARY KEY,
    doc jsonb NOT NULL,
    changed bigint NOT NULL
);
CREATE TABLE authpool_leases (
    name text PRIMARY KEY,
    token text NOT NULL,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE TABLE authpool_secrets (
    account_id text PRIMARY KEY,
    generation bigint NOT NULL,
    sealed bytea NOT NULL,
    key_fingerprint text NOT NULL
);
CREATE TABLE authpool_team (
    id int PRIMARY KEY CHECK (id = 1),
    salt bytea NOT NULL,
    key_check bytea,
    key_fingerprint text
);
"""

# version N -> SQL turning a version-N schema into version N+1. Add an entry (and bump
# SCHEMA_VERSION) for every change.
MIGRATIONS: dict[int, str] = {}


def ensure_schema(conn: psycopg.Connection[Any], where: str) -> int:
    """Create or migrate the schema; returns its version.

    Raises:
        StoreVersionError: the database was set up by a newer authpool (nothing is changed).
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_KEY,))
        row = conn.execute("SELECT to_regclass('authpool_schema') IS NOT NULL").fetchone()
        if not (row and row[0]):
            conn.execute(_V1)
            conn.execute("INSERT INTO authpool_schema (id, version) VALUES (1, 1)")
            conn.execute("INSERT INTO authpool_pool (id, doc) VALUES (1, %s)",
                         (Jsonb({"secret_backend": TEAM_BACKEND}),))
            conn.execute("INSERT INTO authpool_team (id, salt) VALUES (1, %s)", (os.urandom(16),))
        found = conn.execute("SELECT version FROM authpool_schema WHERE id = 1").fetchone()
        version = int(found[0]) if found else 1
        if version > SCHEMA_VERSION:
            raise StoreVersionError(where, version, SCHEMA_VERSION, what="the team store")
        while version < SCHEMA_VERSION:
            conn.execute(MIGRATIONS[version])
            version += 1
            conn.execute("UPDATE authpool_schema SET version = %s WHERE id = 1", (version,))
    return version
