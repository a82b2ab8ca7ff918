"""Providers: where credentials may go, how they are applied, and how a provider signals its limits."""

from __future__ import annotations

from authpool.providers.builtin import BUILTIN_PROVIDERS
from authpool.providers.config import Providers
from authpool.providers.provider import OAuthSettings, Provider, origin_of, url_origin

__all__ = ["BUILTIN_PROVIDERS", "OAuthSettings", "Provider", "Providers", "origin_of", "url_origin"]
