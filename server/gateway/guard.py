"""Who may use the gateway: the gateway's own address only, no web page, and the gateway key.

Every request passes three checks before it is routed, in this order (each refusal is one JSON
error in the provider's shape, :mod:`authpool.server.gateway.errors`):

1. ``Host`` names this gateway (403 otherwise). A web page can make a browser send requests to
   ``127.0.0.1`` through a name it controls (DNS rebinding); such a request carries the page's
   name in ``Host``. Accepted: ``localhost``, ``127.0.0.1``, ``[::1]``, the ``--host`` address and
   each ``--allow-host`` name, on the gateway's port (on a wildcard address, any IP address too).
2. No web page is asking (403 otherwise): a browser ``Origin`` that is not the gateway's own,
   ``Origin: null``, or ``Sec-Fetch-Site`` other than ``same-origin``/``none``. The gateway never
   answers CORS preflights, so a page cannot read an answer either.
3. The gateway key (401 otherwise), where the client's SDK puts an API key (the dashboard's own
   paths check it themselves, also accepting its session cookie):
   ``Authorization: Bearer KEY``, ``x-api-key``, ``x-goog-api-key`` or ``?key=``. Compared in
   constant time (:class:`~authpool.server.gateway.keys.GatewayKey`); the relay removes it before
   the request goes on.

The MCP endpoint (``/mcp``) makes the same checks itself, in MCP's terms (a foreign ``Host`` is
``421`` there): :mod:`authpool.server.gateway.endpoint`, with :func:`key_refusal` from here.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from authpool import Pool, PoolError
from authpool.providers import Provider
from authpool.server.gateway.errors import Dialect, Refusal, dialect_of
from authpool.server.gateway.keys import GatewayKey

__all__ = ["DASHBOARD_PREFIX", "KEY_HEADERS", "MCP_PATH", "Guard", "Site", "is_dashboard_path", "key_refusal",
           "presented_keys", "send_refusal"]

#: Where the gateway serves MCP (Streamable HTTP); that endpoint makes its own checks.
MCP_PATH = "/mcp"

#: Headers a client's SDK puts an API key in (``Authorization`` as a bearer token).
KEY_HEADERS = (b"authorization", b"x-api-key", b"x-goog-api-key")
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]/@\s]+)(?::(\d{1,5}))?$")
_BROWSER_SITES = frozenset({"same-origin", "none"})  # Sec-Fetch-Site values that are not another site
#: The dashboard's own paths start so; provider ids start with a letter or digit, so no relay route does.
DASHBOARD_PREFIX = "/_dashboard/"


_DASHBOARD_ROUTES = frozenset({("GET", "/"), ("GET", "/metrics"), ("POST", DASHBOARD_PREFIX + "login"),
                               ("POST", DASHBOARD_PREFIX + "logout"), ("GET", DASHBOARD_PREFIX + "state")})


def is_dashboard_path(method: str, path: str) -> bool:
    """The requests the dashboard answers (and authenticates) itself: exactly its routes and
    assets; any other method or path wants the gateway key like every route."""
    assets = DASHBOARD_PREFIX + "static/"
    return (method, path) in _DASHBOARD_ROUTES or (
        method == "GET" and path.startswith(assets) and "/" not in path[len(assets):])


_AS_API_KEY = "as an API key (x-api-key, Authorization: Bearer, x-goog-api-key or ?key=)"


@dataclass(frozen=True)
class Site:
    """The gateway's own address, as clients name it: host names (lower case, IPv6 in brackets) and port."""

    port: int
    hosts: frozenset[str]
    any_ip: bool = False  # bound to a wildcard address: any IP literal names it

    @classmethod
    def of(cls, bind_host: str, port: int, extra: Iterable[str] = ()) -> Site:
        """The names a gateway bound to ``bind_host:port`` answers to, plus ``extra``."""
        names = set(_LOOPBACK_NAMES) | {_bracketed(h.strip().lower()) for h in extra if h.strip()}
        names.add(_bracketed(bind_host.lower()))
        wildcard = bind_host in ("0.0.0.0", "::", "")  # noqa: S104 - naming the wildcard, not binding it
        if wildcard:
            import socket

            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        return cls(port=port, hosts=frozenset(names), any_ip=wildcard)

    def names(self, host: str, port: int | None) -> bool:
        """Whether ``host`` (and ``port``, None meaning HTTP's default 80) is this gateway."""
        if (port if port is not None else 80) != self.port:
            return False
        host = host.lower()
        if host in self.hosts:
            return True
        if self.any_ip:
            try:
                ipaddress.ip_address(host.strip("[]"))
            except ValueError:
                return False
            return True
        return False

    @property
    def origin(self) -> str:
        """How the gateway is reached from this machine, for messages."""
        return f"http://127.0.0.1:{self.port}"


class Guard:
    """ASGI middleware: refuse what is not for this gateway, before any routing (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, pool: Pool, key: GatewayKey, site: Site) -> None:
        self.app = app
        self.pool = pool
        self.key = key
        self.site = site

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            return  # websockets are not served (uvicorn runs without them); nothing to answer
        if scope["path"] == MCP_PATH:
            # The MCP endpoint makes the same checks itself, answering as MCP prescribes
            # (a foreign Host is 421 there): see authpool.server.gateway.endpoint.
            await self.app(scope, receive, send)
            return
        refusal = self.check_caller(scope)
        if refusal is None and is_dashboard_path(scope.get("method", ""), scope.get("path", "")):
            await self.app(scope, receive, send)  # the dashboard takes the key or its session cookie itself
            return
        if refusal is None:
            refusal = await key_refusal(self.key, scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        await send_refusal(send, refusal, self._dialect(scope))

    def check_caller(self, scope: Scope) -> Refusal | None:
        """Refuse a request that names another host or comes from a web page (None: it may go on)."""
        host = origin = fetch_site = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"sec-fetch-site":
                fetch_site = value.decode("latin-1").strip().lower()
        if host is None or not self._is_ours(host):
            return Refusal(403, f"the Host header {host!r} does not name this gateway ({self.site.origin}); a web page "
                                "may be trying to reach it through another name (DNS rebinding). If you reach the "
                                "gateway by that name, start it with --allow-host NAME", "host_refused")
        if origin is not None and not self._is_our_origin(origin):
            return Refusal(403, f"requests from web pages are refused (Origin: {origin[:100]}); the gateway serves "
                                "programs on this machine, never a browser", "origin_refused")
        if fetch_site is not None and fetch_site not in _BROWSER_SITES:
            return Refusal(403, f"requests from web pages are refused (Sec-Fetch-Site: {fetch_site[:40]})",
                           "origin_refused")
        return None

    def _is_ours(self, hostport: str) -> bool:
        host, port = _split_hostport(hostport.strip())
        return host is not None and self.site.names(host, port)

    def _is_our_origin(self, origin: str) -> bool:
        parts = urllib.parse.urlsplit(origin.strip())
        if parts.scheme != "http" or not parts.netloc or parts.path not in ("", "/"):
            return False
        return self._is_ours(parts.netloc)

    def _dialect(self, scope: Scope) -> Dialect:
        path: str = scope.get("path", "")
        provider_id, _, rest = path.lstrip("/").partition("/")
        return dialect_of(_known_provider(self.pool, provider_id), rest)


async def key_refusal(key: GatewayKey, scope: Scope, *, send_it: str = _AS_API_KEY) -> Refusal | None:
    """The 401 for a request that does not present ``key`` (None: it does), compared in constant time.

    A key the gateway does not know makes it re-read the stored key (at most once a second), so
    a key rotated by another process works at once. ``send_it`` says where the key goes.
    """
    keys = presented_keys(scope)
    if not keys:
        return Refusal(401, f"this server needs the gateway key: send it {send_it}; "
                            "`authpool gateway key` prints it", "gateway_key_missing")
    if not key.matches(keys) and not (await anyio.to_thread.run_sync(key.reload_after_miss) and key.matches(keys)):
        return Refusal(401, "wrong gateway key (`authpool gateway key` prints the right one)", "gateway_key_invalid")
    return None


def presented_keys(scope: Scope, *, query: bool = True) -> list[str]:
    """Every value the request offers as a key: bearer token, ``x-api-key``, ``x-goog-api-key``, and
    ``?key=`` unless ``query`` is false (the dashboard keeps keys out of URLs)."""
    found: list[str] = []
    for name, value in scope["headers"]:
        if name in KEY_HEADERS:
            text = value.decode("latin-1").strip()
            if name == b"authorization":
                scheme, _, token = text.partition(" ")
                text = token.strip() if scheme.lower() == "bearer" else text
            if text:
                found.append(text)
    raw: bytes = scope.get("query_string", b"")
    if query and b"key=" in raw:
        found += [v for k, v in urllib.parse.parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
                  if k == "key" and v]
    return found


async def send_refusal(send: Send, refusal: Refusal, dialect: Dialect) -> None:
    """Answer with ``refusal`` as one JSON error in ``dialect``'s shape."""
    body = refusal.body(dialect)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in refusal.headers.items()]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _known_provider(pool: Pool, provider_id: str) -> Provider | None:
    try:
        return pool.provider(provider_id)
    except PoolError:
        return None


def _split_hostport(value: str) -> tuple[str | None, int | None]:
    """``host[:port]`` (IPv6 in brackets) as (host, port); (None, None) when malformed."""
    m = _HOSTPORT.match(value)
    if m is None:
        return None, None
    return m.group(1), int(m.group(2)) if m.group(2) else None


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
