"""What the gateway answers when it answers itself: one JSON error in the shape the client's SDK reads.

A client of the gateway is an Anthropic, OpenAI or Gemini SDK (or a tool built on one). Each
reads errors in its provider's shape, and its retry logic reads the status and ``Retry-After``;
so every answer the gateway makes up — a refused key, an unknown provider, a body too large, all
accounts cooling — is one JSON document in that shape, never a traceback or a text page:

- ``anthropic``: ``{"type": "error", "error": {"type": "rate_limit_error", "message": ...}}``
- ``openai``: ``{"error": {"message": ..., "type": ..., "param": null, "code": ...}}``
- ``google``: ``{"error": {"code": 429, "message": ..., "status": "RESOURCE_EXHAUSTED"}}``

The shape is chosen by the API the path belongs to (``/v1/messages`` is Anthropic's,
``:generateContent`` Google's, ``/chat/completions`` OpenAI's), else by how the provider takes
API keys (``x-api-key``: Anthropic; ``x-goog-api-key``: Google; a bearer token: OpenAI).
An answer the pool cannot serve at all says so with ``x-should-retry: false``, which the official
SDKs honour instead of retrying a request that cannot succeed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Literal

from authpool import (
    AccountNotFound,
    AllAccountsCooling,
    InvalidInput,
    NoAccounts,
    NotFound,
    OriginRefused,
    PoolError,
    ProviderNotFound,
    RequestFailed,
    SecretError,
    StoreError,
)
from authpool.providers import Provider

__all__ = ["Dialect", "GatewayError", "Refusal", "dialect_of", "error_body", "refusal_of"]

Dialect = Literal["anthropic", "openai", "google"]

_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    503: "overloaded_error"}
_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
                 404: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error"}
_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 502: "UNAVAILABLE",
                  503: "UNAVAILABLE"}
_ANTHROPIC_PATH = re.compile(r"/messages(/|$)|/complete$")
_GOOGLE_PATH = re.compile(r":(stream)?[gG]enerateContent$|:countTokens$|:(batch)?[eE]mbedContents?$|^/?v1beta/")
_OPENAI_PATH = re.compile(r"/(chat/)?completions$|/responses(/|$)|/embeddings$")


class GatewayError(PoolError):
    """The gateway cannot start or serve: a port in use, a key it cannot use, a refused bind address."""

    code = "gateway_error"


def dialect_of(provider: Provider | None, path: str) -> Dialect:
    """The error shape a client of ``path`` on ``provider`` reads (see the module docstring)."""
    if _ANTHROPIC_PATH.search(path):
        return "anthropic"
    if _GOOGLE_PATH.search(path):
        return "google"
    if _OPENAI_PATH.search(path) or provider is None:
        return "openai"
    if provider.auth == "header:x-api-key":
        return "anthropic"
    if provider.auth == "header:x-goog-api-key":
        return "google"
    return "openai"


def error_body(dialect: Dialect, status: int, message: str, code: str) -> bytes:
    """One JSON error document in ``dialect``'s shape; ``code`` is authpool's stable error code."""
    doc: dict[str, object]
    if dialect == "anthropic":
        doc = {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message,
                                          "code": code}}
    elif dialect == "google":
        doc = {"error": {"code": status, "message": message, "status": _GOOGLE_STATUS.get(status, "UNKNOWN"),
                         "reason": code}}
    else:
        doc = {"error": {"message": message, "type": _OPENAI_TYPES.get(status, "api_error"), "param": None,
                         "code": code}}
    return json.dumps(doc).encode()


class Refusal:
    """An error answer: status, message, authpool's code, and the headers it carries."""

    __slots__ = ("code", "headers", "message", "status")

    def __init__(self, status: int, message: str, code: str, headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})

    def body(self, dialect: Dialect) -> bytes:
        return error_body(dialect, self.status, self.message, self.code)


# The first class an error is an instance of decides: (class, status, final). A final answer
# cannot succeed on a retry (nothing to serve it, or the pool itself failing).
_STATUS: tuple[tuple[type[PoolError], int, bool], ...] = (
    (ProviderNotFound, 404, False),
    (AccountNotFound, 400, False),
    (OriginRefused, 400, False),
    (InvalidInput, 400, False),
    (AllAccountsCooling, 429, False),
    (NoAccounts, 503, True),
    (RequestFailed, 502, True),
    (NotFound, 404, False),
    (StoreError, 500, True),
    (SecretError, 500, True),
)


def refusal_of(error: PoolError) -> Refusal:
    """The answer for a ``PoolError`` raised while serving a request (messages never hold a secret)."""
    status, final = next(((status, final) for kind, status, final in _STATUS if isinstance(error, kind)), (502, True))
    message = f"x-authpool-account: {error}" if isinstance(error, AccountNotFound) else str(error)
    return Refusal(status, message, error.code, {"x-should-retry": "false"} if final else None)
