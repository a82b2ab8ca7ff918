"""The request front door: the checks every way into the pool makes before a request is sent.

``authpool request`` (:mod:`authpool.server.cli.request`), the MCP tool ``proxy_request``
(:mod:`authpool.server.mcp.proxy`) and the HTTP gateway (:mod:`authpool.server.gateway.relay`)
each take a request from their caller in their own shape and turn it into an :class:`Outgoing`
with :func:`prepare`, so one set of rules holds everywhere:

- the method is one HTTP method authpool sends (``GET``, ``POST``, ...);
- the path resolves, through ``Provider.resolve_url``, to a URL on one of the provider's origins;
- the caller sets no credential header (``Provider.refuse_credential_headers``: the pool attaches
  credentials), no header the HTTP client owns (``Host``, ``Content-Length``, framing), and only
  names and values HTTP can carry;
- the body is JSON or raw bytes, never both, with a content type when it is JSON.

What happens to the answer stays with each door: the CLI streams it to stdout, the MCP tool
collects and shapes it for a tool result, the gateway relays it to its HTTP client as it
arrives. The CLI and MCP name the pool's home when a provider has no accounts
(:func:`naming_the_home`) and report a body that breaks off the same way (:func:`unreadable_body`).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2

from authpool import InvalidInput, NoAccounts, Pool, RequestFailed
from authpool.providers import Provider
from authpool.rotation import RequestResult

__all__ = [
    "METHODS",
    "RESERVED_HEADERS",
    "Outgoing",
    "check_headers",
    "check_method",
    "naming_the_home",
    "prepare",
    "unreadable_body",
]

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
#: Headers the transport owns: framing and routing are computed, credentials are the pool's.
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer",
                              "keep-alive", "proxy-connection"})
# RFC 9110 field names are tokens; values are visible ASCII, spaces and tabs (httpx2 encodes
# header values as ASCII, and CR/LF would split the header).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")


@dataclass(frozen=True)
class Outgoing:
    """A request that passed the front door: ready for ``client.build_request`` on the pool's client."""

    provider: Provider
    method: str
    url: str
    headers: dict[str, str]
    content: bytes | None


def prepare(
    pool: Pool,
    provider: str,
    method: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    json_body: Any = None,
    body: bytes | str | None = None,
    content_type: str | None = None,
    stream: bool = False,
) -> Outgoing:
    """Check a caller's request and build what the pool's client sends.

    Args:
        pool: the pool whose provider serves the request.
        provider: the provider's id.
        method: an HTTP method, any case.
        path: a path relative to the provider's base URL, or an absolute URL on one of its origins.
        headers: the caller's extra headers (never credentials).
        json_body: a JSON document to send (``None``: no JSON body).
        body: raw body bytes or text, instead of ``json_body``.
        content_type: the body's content type unless ``headers`` name one (``application/json``
            for ``json_body`` by default).
        stream: ask for a streamed answer: adds ``"stream": true`` to a JSON object body that does
            not say otherwise (how Anthropic- and OpenAI-style APIs are asked to stream).

    Returns:
        The checked request.

    Raises:
        InvalidInput: an unsupported method, both bodies, a refused or malformed header.
        ProviderNotFound: an unknown provider.
        OriginRefused: a URL off the provider's origins.

    Example:
        >>> out = prepare(pool, "anthropic", "post", "/v1/messages", json_body={"model": "m"})
        >>> out.method, out.url, out.headers["content-type"]
        ('POST', 'https://api.anthropic.com/v1/messages', 'application/json')
    """
    verb = check_method(method)
    if json_body is not None and body is not None:
        raise InvalidInput("give either json or body, not both")
    found = pool.provider(provider)
    url = found.resolve_url(path)
    out_headers = dict(headers or {})
    check_headers(out_headers, found)
    content: bytes | None = None
    if json_body is not None:
        if stream and isinstance(json_body, dict) and "stream" not in json_body:
            json_body = {**json_body, "stream": True}
        content = json.dumps(json_body).encode()
        content_type = content_type or "application/json"
    elif body is not None:
        content = body.encode() if isinstance(body, str) else body
    if content_type and not any(name.strip().lower() == "content-type" for name in out_headers):
        out_headers["content-type"] = content_type
    return Outgoing(provider=found, method=verb, url=url, headers=out_headers, content=content)


def check_method(method: str) -> str:
    """``method`` upper-cased, if authpool sends it.

    Raises:
        InvalidInput: naming the methods it does send.
    """
    verb = method.strip().upper()
    if verb not in METHODS:
        raise InvalidInput(f"unsupported method {method!r}; use one of {', '.join(sorted(METHODS))}")
    return verb


def check_headers(headers: Mapping[str, str], provider: Provider) -> None:
    """Refuse credential and transport-owned headers, and names or values HTTP cannot carry.

    Raises:
        InvalidInput: naming the header (never echoing its value).
    """
    provider.refuse_credential_headers(headers)
    for name, value in headers.items():
        if name.strip().lower() in RESERVED_HEADERS:
            raise InvalidInput(f"header {name!r} is set by authpool's HTTP client, not by callers")
        # Checked here because the HTTP client fails late and unhelpfully: a non-ASCII value
        # raised UnicodeEncodeError (a bare "Error executing tool" plus a traceback on stderr),
        # and a bad name or a CR/LF in a value failed at send time, where it looked like a
        # network error and was retried on every account before failing.
        if not _HEADER_NAME.fullmatch(name):
            raise InvalidInput(f"header name {name!r} is not a valid HTTP header name")
        if not _HEADER_VALUE.fullmatch(value):
            raise InvalidInput(
                f"the value of header {name!r} contains characters an HTTP header cannot carry "
                "(only printable ASCII, spaces and tabs)"
            )


@contextlib.contextmanager
def naming_the_home(pool: Pool) -> Iterator[None]:
    """Re-raise ``NoAccounts`` with the pool's home in the message (an empty pool is usually the wrong home)."""
    try:
        yield
    except NoAccounts as e:
        raise e.in_home(pool.home.path) from None


def unreadable_body(provider: str, response: httpx2.Response, error: httpx2.HTTPError) -> RequestFailed:
    """The error for an answer whose body broke off or is not the encoding it claims.

    The rotation engine only sees the send, so without this the failure escaped as an
    unexpected exception (an internal error, a traceback on a server's stderr).
    """
    served: RequestResult | None = response.extensions.get("authpool")
    reason = str(error) if isinstance(error, httpx2.DecodingError) else type(error).__name__
    via = f" via {served.account}" if served else ""
    return RequestFailed(
        f"{provider} answered HTTP {response.status_code}{via}, but the response body could not be read ({reason})",
        attempts=served.attempts if served else None,
    )
