"""Auth: renewing tokens without ever losing a rotation, and new logins (loaded on first use)."""

from __future__ import annotations

import importlib

from authpool.auth.flight import Flight, RefreshMode, Renewal, drain, in_flight
from authpool.auth.refresh import Keeper, Refresher

__all__ = [
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
    "DeviceEvent": "authpool.auth.device",
    "DeviceFlow": "authpool.auth.device",
    "device_login": "authpool.auth.device",
    "LoginResult": "authpool.auth.login",
    "LoginTokens": "authpool.auth.login",
    "browser_login": "authpool.auth.login",
    "paste_login": "authpool.auth.login",
    "store_login": "authpool.auth.login",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'authpool.auth' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
