"""Storage: the pool's metadata (the pool file, under locks) and its secrets (keyring or vault)."""

from __future__ import annotations

from authpool.storage.localstore import Store
from authpool.storage.lock import Lock
from authpool.storage.secrets import VAULT_BACKEND, SecretStore, canonical_backend

__all__ = ["VAULT_BACKEND", "Lock", "SecretStore", "Store", "canonical_backend"]
