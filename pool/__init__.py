"""authpool's library: a pool of LLM-provider accounts shared safely by many processes.

No MCP import happens here; the MCP server and CLI in ``server/`` are thin shells over this.
"""

from __future__ import annotations

from authpool.accounts.model import Account, Cooldown, Counters, PoolFile
from authpool.accounts.secret import Secret, TokenSet
from authpool.errors import (
    AccountNotFound,
    AllAccountsCooling,
    AuthError,
    BodyNotReplayable,
    ConfigError,
    DuplicateLabel,
    InvalidGrant,
    InvalidInput,
    LockLost,
    LockTimeout,
    LoginCancelled,
    LoginError,
    LoginExpired,
    LoginTimeout,
    NoAccounts,
    NotFound,
    OriginRefused,
    PoolError,
    ProviderNotFound,
    ReauthRequired,
    RefreshBackoff,
    RefreshError,
    RefreshPending,
    RefreshUnanswered,
    RequestFailed,
    SecretBackendLocked,
    SecretBackendUnavailable,
    SecretError,
    SecretMissing,
    SharingRefused,
    StateMismatch,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
    StoreVersionError,
    StoreWriteError,
    TeamKeyError,
)
from authpool.home import Home, resolve_home
from authpool.lazy import lazy_names
from authpool.pool import Pool
from authpool.storage.localstore import Store
from authpool.storage.lock import Lock
from authpool.storage.secrets import SecretStore

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
    "InvalidGrant",
    "InvalidInput",
    "Lock",
    "LockLost",
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
    "RefreshBackoff",
    "RefreshError",
    "RefreshPending",
    "RefreshUnanswered",
    "RequestFailed",
    "Secret",
    "SecretBackendLocked",
    "SecretBackendUnavailable",
    "SecretError",
    "SecretMissing",
    "SecretStore",
    "SharingRefused",
    "StateMismatch",
    "Store",
    "StoreCorrupt",
    "StoreError",
    "StoreUnavailable",
    "StoreVersionError",
    "StoreWriteError",
    "TeamKeyError",
    "TokenSet",
    "browser_login",
    "device_login",
    "paste_login",
    "resolve_home",
    "store_login",
]

# The login flows pull in an HTTP server, PKCE and the device flow: load them on first use so
# ad-hoc commands and `authpool serve` do not pay for them at start-up.
_LAZY = {
    "device_login": "authpool.auth.device",
    "LoginResult": "authpool.auth.login",
    "browser_login": "authpool.auth.login",
    "paste_login": "authpool.auth.login",
    "store_login": "authpool.auth.login",
}


__getattr__ = lazy_names(__name__, _LAZY)
