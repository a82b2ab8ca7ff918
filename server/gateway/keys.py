"""The gateway key: what a client presents to use the gateway, and where it is kept.

``AUTHPOOL_GATEWAY_KEY``, when set, is the key (scripts, CI, a service manager's environment);
it is never stored. Otherwise the key is generated on first use and kept in the pool's own
credential store (the same one that holds the accounts' secrets, under the pool secret
``gateway-key``), so every process of the pool — the gateway, ``authpool gateway key`` — sees
the same one, and ``authpool secrets move`` takes it along. It never appears in the metadata store,
argv, a log line or a response.

A running gateway re-reads the stored key every few seconds and at once when a client presents
a key it does not know (at most once a second), so ``authpool gateway key --rotate`` takes effect
without a restart: the new key works at once, the old one stops working within
:data:`RELOAD_EVERY` seconds. Keys are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable

from authpool import Pool, PoolError
from authpool.server.gateway.errors import GatewayError

__all__ = ["ENV_KEY", "POOL_SECRET", "RELOAD_EVERY", "GatewayKey", "new_key"]

log = logging.getLogger("authpool")

ENV_KEY = "AUTHPOOL_GATEWAY_KEY"
POOL_SECRET = "gateway-key"
#: Seconds between re-reads of the stored key by a running gateway (a rotation takes effect within this).
RELOAD_EVERY = 5.0
#: A presented key the gateway does not know triggers a re-read at most this often.
_MISS_RELOAD_EVERY = 1.0
_KEY_FORMAT = re.compile(r"[\x21-\x7e]{16,512}")  # it travels in headers and query strings


def new_key() -> str:
    """A fresh random key (256 bits), recognisable in a config file."""
    return "authpool-gw-" + secrets.token_urlsafe(32)


class GatewayKey:
    """The key of one pool's gateway: from the environment, or stored in the pool's credential store.

    Example:
        >>> key = GatewayKey(Pool.open())  # doctest: +SKIP
        >>> key.load()  # the key, generated and stored on first use  # doctest: +SKIP
        >>> key.matches(["wrong"])  # doctest: +SKIP
        False
    """

    def __init__(self, pool: Pool, *, environ: dict[str, str] | None = None) -> None:
        self.pool = pool
        env = os.environ if environ is None else environ
        self.from_env: str | None = env.get(ENV_KEY) or None
        self._value: bytes | None = None
        self._session_secret = secrets.token_bytes(32)  # signs dashboard sessions; never leaves the process
        self._loaded_at = 0.0
        self._guard = threading.Lock()

    @property
    def source(self) -> str:
        """Where the key comes from, for people (never the key itself)."""
        return f"${ENV_KEY}" if self.from_env is not None else "the pool's credential store"

    def load(self) -> str:
        """The key: the environment's, else the stored one, generated and stored on first use.

        Raises:
            GatewayError: ``AUTHPOOL_GATEWAY_KEY`` is not a usable key.
            SecretError: the credential store failed.
        """
        if self.from_env is not None:
            if not _KEY_FORMAT.fullmatch(self.from_env):
                raise GatewayError(f"{ENV_KEY} must be 16 to 512 printable ASCII characters without spaces "
                                   "(it travels in HTTP headers)")
            value = self.from_env
        else:
            value = self.pool.pool_secret(POOL_SECRET) or self._create()
        self._remember(value)
        return value

    def rotate(self) -> str:
        """Replace the stored key with a new one and return it.

        Raises:
            GatewayError: ``AUTHPOOL_GATEWAY_KEY`` is set (that key is yours to change).
        """
        if self.from_env is not None:
            raise GatewayError(f"{ENV_KEY} is set, so the gateway uses that key and not the stored one; "
                               f"change {ENV_KEY} instead (or unset it to use the stored key)")
        value = new_key()
        with self.pool.pool_secret_lock(POOL_SECRET):
            self.pool.set_pool_secret(POOL_SECRET, value)
        self._remember(value)
        return value

    def matches(self, presented: Iterable[str]) -> bool:
        """Whether any of the ``presented`` values is the key (each compared in constant time)."""
        current = self._value
        if current is None:
            return False
        found = False
        for value in presented:
            # Every candidate is compared (no early exit), so timing says nothing about which matched.
            found |= hmac.compare_digest(value.encode("utf-8", "surrogateescape"), current)
        return found

    def sign(self, message: bytes) -> str | None:
        """An HMAC-SHA256 (hex) of the current key's digest and ``message`` under a secret of this
        process, or None before the key is loaded.

        The dashboard's session cookie is such a signature: replacing the key, or restarting the
        gateway, ends every session, and a cookie gives no way to test guesses of the key offline
        (the MAC's key is random, not the gateway key).
        """
        current = self._value
        if current is None:
            return None
        return hmac.new(self._session_secret, hashlib.sha256(current).digest() + message, "sha256").hexdigest()

    def reload(self) -> None:
        """Re-read the stored key (a running gateway calls this periodically); keeps the last one on failure."""
        if self.from_env is not None:
            return
        try:
            value = self.pool.pool_secret(POOL_SECRET)
        except PoolError as e:
            log.warning("could not re-read the gateway key (%s); still using the one read before", e)
            return
        if value is not None:
            self._remember(value)

    def reload_after_miss(self) -> bool:
        """Re-read after a key did not match, at most once a second; True if a re-read happened."""
        if self.from_env is not None:
            return False
        with self._guard:
            if time.monotonic() - self._loaded_at < _MISS_RELOAD_EVERY:
                return False
            self._loaded_at = time.monotonic()  # claimed: concurrent misses do not all re-read
        self.reload()
        return True

    def _create(self) -> str:
        with self.pool.pool_secret_lock(POOL_SECRET):
            existing = self.pool.pool_secret(POOL_SECRET)  # another process may have created it meanwhile
            if existing is not None:
                return existing
            value = new_key()
            self.pool.set_pool_secret(POOL_SECRET, value)
            log.info("created the gateway key (kept in %s)", self.pool.secrets.name)
            return value

    def _remember(self, value: str) -> None:
        with self._guard:
            self._value = value.encode("utf-8", "surrogateescape")
            self._loaded_at = time.monotonic()
