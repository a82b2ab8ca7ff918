"""Which store a home uses: the local pool file, or a team's PostgreSQL named by URL.

``AUTHPOOL_STORE`` wins; else ``[store] url`` in the home's ``config.toml``; else the local store
(the pool file, the OS keyring or the vault), as always. The team store needs the optional extra
``authpool[postgres]``; it is imported only when selected.
"""

from __future__ import annotations

import os
import tomllib

from authpool.errors import ConfigError
from authpool.home import Home
from authpool.storage.localstore import Store
from authpool.storage.lock import DEFAULT_TIMEOUT
from authpool.storage.protocols import MetadataStore

__all__ = ["STORE_ENV", "open_store", "open_team_store", "store_url"]

STORE_ENV = "AUTHPOOL_STORE"


def store_url(home: Home) -> str | None:
    """The team store's URL for ``home``, or None for the local store.

    Raises:
        ConfigError: ``config.toml`` has a ``[store]`` table that is not ``url = "postgresql://..."``.
    """
    env = os.environ.get(STORE_ENV, "").strip()
    if env:
        return env
    path = home.config_file
    if not path.exists():
        return None
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (tomllib.TOMLDecodeError, RecursionError) as e:
        raise ConfigError(f"{path}: {e}") from None
    section = doc.get("store")
    if section is None:
        return None
    if not isinstance(section, dict) or set(section) - {"url"} or not isinstance(section.get("url"), str):
        raise ConfigError(f'{path}: [store] takes one key, url = "postgresql://user@host:port/dbname"')
    url = str(section["url"]).strip()
    return url or None


def open_store(home: Home) -> MetadataStore:
    """The store ``home`` is configured for (see the module docstring)."""
    url = store_url(home)
    return Store(home) if url is None else open_team_store(url)


def open_team_store(url: str) -> MetadataStore:
    """A team store on the PostgreSQL at ``url``.

    Raises:
        ConfigError: the ``postgres`` extra is not installed.
        InvalidInput: not a PostgreSQL URL.
    """
    try:
        from authpool.storage.postgres import PostgresStore
    except ImportError:
        raise ConfigError(
            "a team store (AUTHPOOL_STORE or [store] url) needs the PostgreSQL driver: "
            "pip install 'authpool[postgres]'") from None
    return PostgresStore(url, lock_timeout=DEFAULT_TIMEOUT)
