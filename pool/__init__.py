"""authpool's library: a pool of LLM-provider accounts shared safely by many processes.

No MCP import happens here; the MCP server and CLI in ``server/`` are thin shells over this.
"""

from __future__ import annotations

from .device import device_login
from .errors import (
    AccountNotFound,
    AllAccountsCooling,
    AuthError,
    BodyNotReplayable,
    ConfigError,
    DuplicateLabel,
    InvalidInput,
    LockTimeout,
    NoAccounts,
    NotFound,
    OriginRefused,
    PoolError,
    ProviderNotFound,
    ReauthRequired,
    RefreshError,
    RequestFailed,
    SecretBackendLocked,
    SecretBackendUnavailable,
    SecretError,
    SecretMissing,
    StoreCorrupt,
    StoreError,
    StoreVersionError,
    StoreWriteError,
)
from .home import Home, resolve_home
from .lock import Lock
from .login import (
    LoginCancelled,
    LoginError,
    LoginExpired,
    LoginResult,
    LoginTimeout,
    StateMismatch,
    browser_login,
    paste_login,
    store_login,
)
from .models import Account, Cooldown, Counters, PoolFile
from .pool import Pool
from .secret import Secret, TokenSet
from .secretstore import SecretStore
from .store import Store

__all__ = [
    "Account",
    "AccountNotFound",
    "AllAccountsCooling",
    "AuthError",
    "BodyNotReplayable",
    "ConfigError",
    "Cooldown",
    "Counters",
    "DuplicateLabel",
    "Home",
    "InvalidInput",
    "Lock",
    "LockTimeout",
    "LoginCancelled",
    "LoginError",
    "LoginExpired",
    "LoginResult",
    "LoginTimeout",
    "NoAccounts",
    "NotFound",
    "OriginRefused",
    "Pool",
    "PoolError",
    "PoolFile",
    "ProviderNotFound",
    "ReauthRequired",
    "RefreshError",
    "RequestFailed",
    "Secret",
    "SecretBackendLocked",
    "SecretBackendUnavailable",
    "SecretError",
    "SecretMissing",
    "SecretStore",
    "StateMismatch",
    "Store",
    "StoreCorrupt",
    "StoreError",
    "StoreVersionError",
    "StoreWriteError",
    "TokenSet",
    "browser_login",
    "device_login",
    "paste_login",
    "resolve_home",
    "store_login",
]
