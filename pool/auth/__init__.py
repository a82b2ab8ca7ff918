"""Auth: renewing tokens without ever losing a rotation, and new logins (loaded on first use)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from authpool.auth.flight import Flight, RefreshMode, Renewal, drain, in_flight
from authpool.auth.refresh import Keeper, Refresher
from authpool.lazy import lazy_names

if TYPE_CHECKING:  # the lazy names below, as type checkers must see them
    from authpool.auth.device import DeviceEvent, DeviceFlow, device_login
    from authpool.auth.login import LoginResult, LoginTokens, browser_login, paste_login, store_login
    from authpool.auth.oauth import TOKEN_TIMEOUT

__all__ = [
    "TOKEN_TIMEOUT",
    "DeviceEvent",
    "DeviceFlow",
    "Flight",
    "Keeper",
    "LoginResult",
    "LoginTokens",
    "RefreshMode",
    "Refresher",
    "Renewal",
    "browser_login",
    "device_login",
    "drain",
    "in_flight",
    "paste_login",
    "store_login",
]

# The login flows pull in an HTTP server, PKCE and the device flow: load them on first use.
_LAZY = {
    "TOKEN_TIMEOUT": "authpool.auth.oauth",
    "DeviceEvent": "authpool.auth.device",
    "DeviceFlow": "authpool.auth.device",
    "device_login": "authpool.auth.device",
    "LoginResult": "authpool.auth.login",
    "LoginTokens": "authpool.auth.login",
    "browser_login": "authpool.auth.login",
    "paste_login": "authpool.auth.login",
    "store_login": "authpool.auth.login",
}


__getattr__ = lazy_names(__name__, _LAZY)
