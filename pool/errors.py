"""The one exception hierarchy of authpool.

Every error the library raises on purpose is a :class:`PoolError`. Each carries a stable
``code`` (for tool results and ``--json`` output) and a message written for the person who
has to fix it. No message ever contains a token, refresh token or API key: messages are built
from metadata (ids, labels, paths, status codes) only.

::

    PoolError
     ├── ConfigError                       config.toml or a provider definition is wrong
     ├── InvalidInput (ValueError)         a caller's argument is malformed
     │    ├── DuplicateLabel               the label is taken for that provider
     │    └── SharingRefused               a provider's terms keep its logins out of a team store
     ├── NotFound (LookupError)
     │    ├── AccountNotFound
     │    └── ProviderNotFound
     ├── StoreError                        the pool file, or the team store
     │    ├── StoreCorrupt                 unreadable file; names the last good backup
     │    ├── StoreVersionError            written by a newer authpool
     │    ├── StoreUnavailable             the team store's database cannot be reached
     │    ├── StoreWriteError (OSError)    disk full, read-only, permissions
     │    ├── LockTimeout (TimeoutError)   another process holds a lock too long
     │    └── LockLost                     a held lock file was deleted or replaced
     ├── SecretError                       the credential store
     │    ├── SecretBackendUnavailable     no usable keyring / cannot reach it
     │    ├── SecretBackendLocked          the keyring is locked
     │    ├── SecretMissing                metadata exists, the secret does not
     │    └── TeamKeyError                 no team key, or not the key the team store was set up with
     ├── AuthError                         a provider refused or could not renew credentials
     │    ├── RefreshError                 the token endpoint failed (down, garbage, timeout)
     │    │    ├── RefreshUnanswered       sent, but no answer came back: a rotation may be lost
     │    │    ├── RefreshPending          the caller stopped waiting; the refresh goes on
     │    │    └── RefreshBackoff          renewing keeps failing; no token call before a deadline
     │    ├── ReauthRequired               the login is dead; the user must log in again
     │    │    └── InvalidGrant            the token endpoint rejected the refresh token
     │    └── LoginError                   a login did not complete; nothing was stored
     │         ├── LoginCancelled          denied at the provider, or cancelled
     │         ├── LoginExpired            the device code expired
     │         ├── LoginTimeout (TimeoutError)
     │         └── StateMismatch           the redirect's state is not this login's
     └── RequestFailed                     a request could not be served through the pool
          ├── OriginRefused                credentials would go to a foreign origin
          ├── BodyNotReplayable            a retry would resend a half-read stream
          ├── NoAccounts                   the provider has no usable account at all
          └── AllAccountsCooling           every account is rate-limited; says when one frees up
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "AccountNotFound",
    "AllAccountsCooling",
    "AuthError",
    "BodyNotReplayable",
    "ConfigError",
    "DuplicateLabel",
    "InvalidGrant",
    "InvalidInput",
    "LockLost",
    "LockTimeout",
    "LoginCancelled",
    "LoginError",
    "LoginExpired",
    "LoginTimeout",
    "NoAccounts",
    "NotFound",
    "OriginRefused",
    "PoolError",
    "ProviderNotFound",
    "ReauthRequired",
    "RefreshBackoff",
    "RefreshError",
    "RefreshPending",
    "RefreshUnanswered",
    "RequestFailed",
    "SecretBackendLocked",
    "SecretBackendUnavailable",
    "SecretError",
    "SecretMissing",
    "SharingRefused",
    "StateMismatch",
    "StoreCorrupt",
    "StoreError",
    "StoreUnavailable",
    "StoreVersionError",
    "StoreWriteError",
    "TeamKeyError",
]


class PoolError(Exception):
    """Root of every error authpool raises on purpose."""

    code = "pool_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(PoolError):
    """``config.toml`` or a provider definition is invalid."""

    code = "config_error"


class InvalidInput(PoolError, ValueError):
    """A caller passed a malformed argument.

    ``entry`` is set when one entry of a batch is wrong (``Pool.add_api_keys``): its position,
    from 1, so a caller can name it its own way (a file's line number); ``problem`` is the
    message without the position.
    """

    code = "invalid_input"

    def __init__(self, message: str, *, entry: int | None = None) -> None:
        super().__init__(f"entry {entry}: {message}" if entry is not None else message)
        self.entry = entry
        self.problem = message


class DuplicateLabel(InvalidInput):
    """The label is already used by another account of the same provider."""

    code = "duplicate_label"


class SharingRefused(InvalidInput):
    """A provider's terms keep its subscription logins personal: not added to a team store."""

    code = "sharing_refused"


class NotFound(PoolError, LookupError):
    """Something named by the caller does not exist."""

    code = "not_found"


class AccountNotFound(NotFound):
    """No account matches the given id or ``provider/label``."""

    code = "account_not_found"

    def __init__(self, ref: str, message: str | None = None) -> None:
        super().__init__(message or f"no account {ref!r} (give an account id or provider/label; "
                         "`authpool accounts list` shows them)")
        self.ref = ref


class ProviderNotFound(NotFound):
    """No built-in or configured provider has this id."""

    code = "provider_not_found"

    def __init__(self, provider: str, known: list[str] | None = None) -> None:
        hint = f"; known providers: {', '.join(sorted(known))}" if known else ""
        super().__init__(f"unknown provider {provider!r}{hint}")
        self.provider = provider


class StoreError(PoolError):
    """The pool file cannot be read or written."""

    code = "store_error"


class StoreCorrupt(StoreError):
    """The pool file does not parse; it is never overwritten."""

    code = "store_corrupt"

    def __init__(self, path: Path | str, detail: str, backup: Path | None) -> None:
        if backup is not None:
            fix = (f"the last good copy is {backup}; run `authpool doctor --restore` to put it back "
                   "(the damaged file is kept aside)")
        else:
            fix = "no backup exists; move the file away to start an empty pool"
        super().__init__(f"pool file {path} is corrupt ({detail}); it was left untouched; {fix}")
        self.path = path
        self.backup = backup


class StoreVersionError(StoreError):
    """The pool file was written by a newer authpool."""

    code = "store_version"

    def __init__(self, path: Path | str, found: int, supported: int, *, what: str = "pool file") -> None:
        super().__init__(
            f"{what} {path} has schema version {found}, but this authpool understands up to "
            f"{supported}; upgrade authpool (it was left untouched)"
        )
        self.path = path
        self.found = found
        self.supported = supported


class StoreUnavailable(StoreError, ConnectionError):
    """The team store's database cannot be reached (down, refused, wrong address); names host and port."""

    code = "store_unavailable"


class StoreWriteError(StoreError, OSError):
    """Writing failed (disk full, read-only filesystem, permissions); nothing was changed."""

    code = "store_write"


class LockTimeout(StoreError, TimeoutError):
    """A lock was held by another process for longer than the timeout."""

    code = "lock_timeout"

    def __init__(self, lock_file: Path | str, timeout: float, holder: str | None) -> None:
        who = f" by {holder}" if holder else ""
        super().__init__(f"timed out after {timeout:g}s waiting for {lock_file}, held{who}")
        self.lock_file = lock_file
        self.timeout = timeout
        self.holder = holder


class LockLost(StoreError):
    """The lock file was deleted or replaced while this process held it: another process may
    have taken a new lock file meanwhile, so the holder must not write what it read."""

    code = "lock_lost"

    def __init__(self, lock_file: Path) -> None:
        super().__init__(
            f"{lock_file} was deleted or replaced while this process held it, so another process may have "
            "written meanwhile; nothing was written (lock files must never be deleted)"
        )
        self.lock_file = lock_file


class SecretError(PoolError):
    """The credential store failed."""

    code = "secret_error"


class SecretBackendUnavailable(SecretError):
    """No usable credential store, or the recorded one cannot be reached from this process."""

    code = "secret_backend_unavailable"


class SecretBackendLocked(SecretError):
    """The credential store is locked and needs the user to unlock it."""

    code = "secret_backend_locked"


class SecretMissing(SecretError):
    """The account exists but its secret is gone from the credential store."""

    code = "secret_missing"


class TeamKeyError(SecretError):
    """No team key is available, or it is not the key the team store's secrets were sealed with."""

    code = "team_key"


class AuthError(PoolError):
    """A provider refused credentials, or they could not be renewed."""

    code = "auth_error"


class RefreshError(AuthError):
    """The token endpoint could not renew the token (down, garbage, timeout).

    ``reason`` is the short cause shown in an account's state (``HTTP 503``, ``timed out``).
    """

    code = "refresh_failed"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class RefreshUnanswered(RefreshError):
    """The token request was sent but no answer arrived: the provider may have rotated the login."""

    code = "refresh_unanswered"


class RefreshPending(RefreshError):
    """The request stopped waiting for a token call that goes on (and will be stored) in the background."""

    code = "refresh_pending"


class RefreshBackoff(RefreshError):
    """Renewing this account keeps failing; no token call is made before ``next_try_at``."""

    code = "refresh_backoff"


class ReauthRequired(AuthError):
    """The login is no longer valid; the user must log in again."""

    code = "needs_reauth"


class InvalidGrant(ReauthRequired):
    """The token endpoint rejected the refresh token (``invalid_grant``)."""

    code = "invalid_grant"


class LoginError(AuthError):
    """A login did not complete; nothing was stored."""

    code = "login_failed"


class LoginCancelled(LoginError):
    """The user denied the login at the provider (``access_denied``) or cancelled it."""

    code = "login_cancelled"


class LoginExpired(LoginError):
    """The device code expired before the user approved the login."""

    code = "login_expired"


class LoginTimeout(LoginError, TimeoutError):
    """Nothing came back within the time the login was given."""

    code = "login_timeout"


class StateMismatch(LoginError):
    """The redirect's ``state`` is not this login's: a stale browser tab or a forged redirect."""

    code = "state_mismatch"


class RequestFailed(PoolError):
    """A request could not be served through the pool; ``attempts`` is the trail so far."""

    code = "request_failed"

    def __init__(self, message: str, *, attempts: list[Any] | None = None) -> None:
        super().__init__(message)
        self.attempts: list[Any] = list(attempts or [])


class OriginRefused(RequestFailed):
    """The URL is not one of the provider's origins, so no credentials may go there."""

    code = "origin_refused"


class BodyNotReplayable(RequestFailed):
    """A retry would need to resend a streaming body that was already consumed."""

    code = "body_not_replayable"


class NoAccounts(RequestFailed):
    """The provider has no enabled account that can serve requests."""

    code = "no_accounts"

    def in_home(self, home: Path) -> NoAccounts:
        """The same error, naming the pool's home: an empty pool is often another home than meant."""
        return type(self)(f"{self.message} (pool home: {home}; set AUTHPOOL_HOME if your accounts are in "
                          "another home)", attempts=self.attempts)


class AllAccountsCooling(RequestFailed):
    """Every candidate account is cooling down; ``retry_at`` says when the first frees up."""

    code = "all_cooling"

    def __init__(self, message: str, retry_at: float | None, *, attempts: list[Any] | None = None) -> None:
        super().__init__(message, attempts=attempts)
        self.retry_at = retry_at
