"""Talking to a provider's OAuth token endpoint.

Building the token request and reading the answer are plain functions; sending it is done
with httpx2, synchronously or asynchronously, by the caller's flavour. Token endpoints get the
refresh token, so requests to them never follow redirects, and every failure becomes a
:class:`~pool.errors.RefreshError` or :class:`InvalidGrant` whose message holds no token.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx2

from authpool.accounts.secret import TokenSet
from authpool.errors import ConfigError, InvalidGrant, RefreshError, RefreshUnanswered
from authpool.providers.provider import Provider

__all__ = ["TOKEN_TIMEOUT", "build_token_request", "call_timeouts", "describe_transport_error", "exchange_request",
           "parse_exchange_response", "parse_token_response", "refresh_request"]

TOKEN_TIMEOUT = httpx2.Timeout(30.0, connect=10.0)

# Gateways answer these when they gave up waiting for the endpoint, which may still have done
# the work: like a timeout, the refresh's outcome is unknown (the login may have rotated).
_GATEWAY_GAVE_UP = frozenset({502, 504})


def call_timeouts(limit: float) -> dict[str, float]:
    """Per-operation timeouts (httpx's request extension) for a token call allowed ``limit`` seconds in all."""
    return {"connect": min(10.0, limit), "write": min(30.0, limit), "read": limit, "pool": min(10.0, limit)}


def build_token_request(provider: Provider, params: dict[str, str]) -> httpx2.Request:
    """A POST to the provider's token endpoint with ``params`` plus client credentials.

    Raises:
        ConfigError: the provider has no OAuth settings or no client id.
    """
    oauth = provider.oauth
    if oauth is None:
        raise ConfigError(f"provider {provider.id} has no [providers.{provider.id}.oauth] settings")
    if not oauth.client_id:
        raise ConfigError(
            f"provider {provider.id} has no OAuth client id: set [providers.{provider.id}.oauth] client_id "
            "in config.toml (authpool ships no other application's client id)"
        )
    body = {**params, "client_id": oauth.client_id}
    if oauth.client_secret:
        body["client_secret"] = oauth.client_secret
    headers = {"accept": "application/json"}
    if oauth.token_request == "json":
        return httpx2.Request("POST", oauth.token_url, json=body, headers=headers)
    return httpx2.Request("POST", oauth.token_url, data=body, headers=headers)


def refresh_request(provider: Provider, refresh_token: str) -> httpx2.Request:
    """The refresh-token grant request."""
    params = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if provider.oauth and provider.oauth.scopes:
        params["scope"] = " ".join(provider.oauth.scopes)
    return build_token_request(provider, params)


def exchange_request(provider: Provider, token: str) -> httpx2.Request:
    """The token exchange request (GitHub Copilot): the login's token for a short-lived API token.

    Raises:
        ConfigError: the provider declares no token exchange.
    """
    exchange = provider.token_exchange
    if exchange is None:
        raise ConfigError(f"provider {provider.id} declares no token exchange")
    headers = {"accept": "application/json", **exchange.headers, "authorization": f"{exchange.scheme} {token}"}
    return httpx2.Request(exchange.method, exchange.url, headers=headers)


def parse_exchange_response(provider: Provider, status: int, content_type: str, body: bytes,
                            now: float | None = None) -> TokenSet:
    """Read a token exchange's answer: ``{token, expires_at, refresh_in, endpoints: {api}}``.

    The token is renewed at ``refresh_in`` (the expiry recorded is that point, so the usual
    refresh windows apply), and ``endpoints.api`` is kept as the account's ``api_base``.

    Raises:
        InvalidGrant: the exchange refused the login's token (401/403): the login is dead.
        RefreshError: any other failure.
    """
    where = f"the token exchange of {provider.id}"
    now = time.time() if now is None else now
    if status in (401, 403):
        raise InvalidGrant(f"{where} refused the login (HTTP {status}); log in again")
    if status >= 400:
        failure = RefreshUnanswered if status in _GATEWAY_GAVE_UP else RefreshError
        raise failure(f"{where} answered HTTP {status}", reason=f"HTTP {status}")
    try:
        doc = json.loads(body)
        token = doc["token"]
        if not isinstance(token, str) or not token:
            raise ValueError("token")
        refresh_in = float(doc.get("refresh_in") or 0)
        expires_at = float(doc.get("expires_at") or 0)
    except (ValueError, KeyError, TypeError):
        kind = content_type.split(";", maxsplit=1)[0].strip() or "no content type"
        raise RefreshError(f"{where} answered without a usable token ({kind})", reason="no usable token") from None
    renew_at = now + refresh_in if refresh_in > 0 else expires_at
    endpoints = doc.get("endpoints")
    api = endpoints.get("api") if isinstance(endpoints, dict) else None
    extra = {"api_base": api} if isinstance(api, str) and api else {}  # checked against the origins on use
    lifetime = renew_at - now if renew_at > now else None
    return TokenSet(access_token=token, refresh_token=None, expires_at=renew_at or None, extra=extra,
                    lifetime=lifetime)


def parse_token_response(provider: Provider, status: int, content_type: str, body: bytes,
                         now: float | None = None) -> TokenSet:
    """Read a token endpoint's answer.

    Raises:
        InvalidGrant: the grant was rejected (``invalid_grant``): the login is dead or was rotated.
        RefreshError: any other failure (5xx, non-JSON, missing fields).
    """
    where = f"the token endpoint of {provider.id}"
    doc: Any = None
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        doc = None
    if status >= 400:
        error = doc.get("error") if isinstance(doc, dict) else None
        if error == "invalid_grant":
            raise InvalidGrant(f"{where} rejected the refresh token (invalid_grant); log in again")
        failure = RefreshUnanswered if status in _GATEWAY_GAVE_UP else RefreshError
        if isinstance(error, str) and error.isprintable() and len(error) < 80:
            raise failure(f"{where} answered HTTP {status} ({error})", reason=f"HTTP {status}")
        raise failure(f"{where} answered HTTP {status}", reason=f"HTTP {status}")
    if not isinstance(doc, dict):
        kind = content_type.split(";", maxsplit=1)[0].strip() or "no content type"
        raise RefreshError(f"{where} answered HTTP {status} with a non-JSON body ({kind})",
                           reason=f"HTTP {status}, not JSON")
    if isinstance(doc.get("error"), str):  # GitHub answers errors with 200
        if doc["error"] == "invalid_grant" or doc["error"] == "bad_refresh_token":
            raise InvalidGrant(f"{where} rejected the refresh token ({doc['error']}); log in again")
        raise RefreshError(f"{where} answered an error ({doc['error'][:60]})", reason="an error answer")
    try:
        return TokenSet.parse(doc, now=time.time() if now is None else now)
    except Exception as e:  # noqa: BLE001 - any shape problem is the endpoint's fault
        raise RefreshError(f"{where} answered without a usable token ({type(e).__name__})",
                           reason="no usable token") from None


# Failures that happen before any byte of the request reaches the endpoint: nothing was rotated.
_NOT_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout, httpx2.UnsupportedProtocol)


def describe_transport_error(provider: Provider, e: Exception) -> RefreshError:
    """A RefreshError for a network failure reaching the token endpoint.

    :class:`RefreshUnanswered` when the request may have reached the endpoint (it timed out
    waiting for the answer, or the connection broke): the provider may have rotated the login.
    """
    kind = "timed out" if isinstance(e, httpx2.TimeoutException) else f"failed ({type(e).__name__})"
    message = f"reaching the token endpoint of {provider.id} {kind}"
    reason = "timed out" if isinstance(e, httpx2.TimeoutException) else type(e).__name__
    if isinstance(e, _NOT_SENT):
        return RefreshError(message, reason=reason)
    return RefreshUnanswered(message, reason=reason)
