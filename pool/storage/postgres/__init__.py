"""The team store: pool metadata and sealed secrets in a PostgreSQL database shared by a team's machines.

Selected with ``AUTHPOOL_STORE=postgresql://...`` or ``[store] url`` in ``config.toml``; needs the
optional extra ``authpool[postgres]`` (psycopg 3 with its connection pool).

- :mod:`.store`: :class:`PostgresStore`, the ``MetadataStore`` (row locks, NOTIFY, a read cache)
- :mod:`.lease`: named locks as lease rows that expire when their holder dies
- :mod:`.listener`: LISTEN, the poll fallback and the database's clock
- :mod:`.secrets`: :class:`TeamSecrets`, the ``SecretBackend`` (sealed under the team key; compare-and-swap)
- :mod:`.schema`: the tables, created and migrated automatically
- :mod:`.connection`: the connection pool, addresses without passwords, errors in one line
"""

from __future__ import annotations

from authpool.storage.postgres.schema import SCHEMA_VERSION, TEAM_BACKEND
from authpool.storage.postgres.secrets import TeamSecrets, copy_in, team_sealer
from authpool.storage.postgres.store import PostgresStore, ServerInfo

__all__ = ["SCHEMA_VERSION", "TEAM_BACKEND", "PostgresStore", "ServerInfo", "TeamSecrets", "copy_in", "team_sealer"]
