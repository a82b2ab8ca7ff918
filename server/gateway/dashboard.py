"""The gateway's dashboard at ``/`` and its Prometheus ``/metrics``.

Who may look: whoever holds the gateway key, either as ``Authorization: Bearer KEY`` (scripts,
Prometheus) or through the login form, which takes the key in a POST body (never a URL, so it is
never in a log or the browser's history) and sets a session cookie: ``HttpOnly`` (no script reads
it), ``SameSite=Strict`` (no other site's page sends it), named for the gateway's port (browsers
share cookies across ports), valid for 12 hours, and signed with a secret of the gateway process
over the key's digest: replacing the key or restarting the gateway ends every session, and a
cookie gives no way to test guesses of the key. The key is never taken from a URL here (``?key=``
works for the relay's SDKs only), and the login form reads at most 4 KB. The
:class:`~authpool.server.gateway.guard.Guard` still runs first: a foreign ``Host`` or a request
from another site's page is refused before any of this, and it lets through without the key only
the dashboard's exact routes. The cookie opens the dashboard's own routes only; the relay always wants the key.

What it shows: the same as ``authpool top`` (per provider and account: state, cooldown, quota
windows, token expiry, last error), requests, 429s and token calls per account and minute over
the last hour, and the latest events, from ``/_dashboard/state`` (polled every second by the
page). A large pool is summed up per provider and listed in part: at most 200 accounts (``limit``),
those that need a person first, narrowed by the page's filter (``q``: name, provider or state).
No secret is in any of it: the accounts' public views and the event log's lines. Every
asset is served from here (no network fetch), under a Content-Security-Policy that allows
nothing else.
"""

from __future__ import annotations

import hmac
import html
import json
import time
import urllib.parse
from collections.abc import Iterable
from importlib import resources
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from authpool import Pool, PoolError
from authpool.accounts import SHOWN_LIMIT, account_view, pool_status, shown_accounts, window_views
from authpool.events import METRICS, Activity
from authpool.server.gateway.guard import DASHBOARD_PREFIX as PREFIX
from authpool.server.gateway.guard import presented_keys
from authpool.server.gateway.keys import GatewayKey

__all__ = ["COOKIE", "dashboard_routes", "metrics_text"]

COOKIE = "authpool_dashboard"  # the session cookie's name, followed by _PORT
SESSION_SECONDS = 12 * 3600
LOGIN_BODY_MAX = 4096
EVENTS_SHOWN = 50
FILTER_MAX = 200  # characters of the page's filter used
MAX_LIMIT = 1000  # accounts one poll may ask for
_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" with the login form,
    # which the guard (rightly) refuses as a page of unknown origin.
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
_TYPES = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}


def _asset(name: str) -> str:
    return resources.files("authpool.server.gateway").joinpath("static", name).read_text(encoding="utf-8")


class Dashboard:
    """The dashboard's routes for one pool, key and activity."""

    def __init__(self, pool: Pool, key: GatewayKey, activity: Activity, port: int) -> None:
        self.pool = pool
        self.key = key
        self.activity = activity
        # Browsers do not keep cookies apart by port: one name per gateway port, so two gateways on
        # one machine do not overwrite each other's session.
        self.cookie = f"{COOKIE}_{port}"

    # -- who is asking ---------------------------------------------------------------------

    def _session_value(self, expires: int) -> str | None:
        mac = self.key.sign(f"dashboard-session:{expires}".encode())
        return None if mac is None else f"{expires}.{mac}"

    async def _authorized(self, request: Request) -> bool:
        """The gateway key in a header (never ``?key=``: a URL is logged), or a live session cookie."""
        keys = presented_keys(request.scope, query=False)
        if keys and (self.key.matches(keys) or (
                await anyio.to_thread.run_sync(self.key.reload_after_miss) and self.key.matches(keys))):
            return True
        cookie = request.cookies.get(self.cookie, "")
        expires_text, _, _ = cookie.partition(".")
        if not (expires_text.isascii() and expires_text.isdigit() and len(expires_text) <= 12):
            return False
        if int(expires_text) < time.time():
            return False
        expected = self._session_value(int(expires_text))
        return expected is not None and hmac.compare_digest(cookie.encode(), expected.encode())

    # -- pages -----------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        if not await self._authorized(request):
            tried = self.cookie in request.cookies or bool(presented_keys(request.scope, query=False))
            return _page(_login_html("wrong or expired key: log in again" if tried else None), 401 if tried else 200)
        return _page(_asset("dashboard.html"))

    async def login(self, request: Request) -> Response:
        # Nobody is known yet: read at most a few kilobytes, whatever the request says it sends.
        if int(request.headers.get("content-length") or 0) > LOGIN_BODY_MAX:
            return _page(_login_html("that is not a gateway key"), 413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > LOGIN_BODY_MAX:
                return _page(_login_html("that is not a gateway key"), 413)
        fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        presented = [v.strip() for v in fields.get("key", []) if v.strip()]
        if not presented or not (self.key.matches(presented) or (
                await anyio.to_thread.run_sync(self.key.reload_after_miss) and self.key.matches(presented))):
            return _page(_login_html("wrong key: `authpool gateway key` prints the right one"), 401)
        expires = int(time.time()) + SESSION_SECONDS
        value = self._session_value(expires)
        response = Response(status_code=303, headers={"location": "/", **_HEADERS})
        response.set_cookie(self.cookie, value or "", max_age=SESSION_SECONDS, path="/", httponly=True,
                            samesite="strict")
        return response

    async def logout(self, request: Request) -> Response:
        response = Response(status_code=303, headers={"location": "/", **_HEADERS})
        response.delete_cookie(self.cookie, path="/", httponly=True, samesite="strict")
        return response

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _TYPES:
            return _json({"error": "not found"}, 404)
        return Response(_asset(name), media_type=_TYPES[name], headers=_HEADERS)

    # -- data ------------------------------------------------------------------------------

    async def state(self, request: Request) -> Response:
        if not await self._authorized(request):
            return _json({"error": "the dashboard needs the gateway key: log in at /"}, 401)
        needle = request.query_params.get("q", "")[:FILTER_MAX]
        raw_limit = request.query_params.get("limit", str(SHOWN_LIMIT))
        # ASCII digits only, and few: str.isdigit() also accepts "²" and other scripts' digits,
        # which int() then refuses or reads, and int() refuses 4,300 digits and more.
        if not (raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 4) or not (
                1 <= int(raw_limit) <= MAX_LIMIT):
            return _json({"error": f"limit must be a whole number from 1 to {MAX_LIMIT}"}, 400)
        try:
            doc = await anyio.to_thread.run_sync(self._state, needle, int(raw_limit))
        except PoolError as e:
            return _json({"error": str(e)}, 503)
        return _json(doc)

    def _state(self, needle: str = "", limit: int = SHOWN_LIMIT) -> dict[str, Any]:
        """The page's data. Polled every second: at most ``limit`` accounts are viewed and charted
        (those that need a person first), so 10,000 accounts cost what a few hundred do."""
        now = time.time()
        accounts = self.pool.accounts()
        status = pool_status(accounts, now)
        shown, matching = shown_accounts(accounts, now, needle=needle, limit=limit)
        views: dict[str, list[dict[str, Any]]] = {}
        for a in shown:
            views.setdefault(a.provider, []).append(account_view(a, now))
        for p in status["providers"]:
            p["accounts"] = views.get(p["provider"], [])
        series: dict[str, dict[str, list[int]]] = {}
        for a in shown:
            lines: dict[str, list[int]] = {m: self.activity.series(a.id, m, now) for m in METRICS}
            if any(any(v) for v in lines.values()):  # idle accounts send nothing
                series[a.id] = lines
        events = [json.loads(e.to_json()) for e in self.activity.latest(EVENTS_SHOWN)]
        return {"now": now, "home": str(self.pool.home.path), "providers": status["providers"], "series": series,
                "events": events,
                "listed": {"shown": len(shown), "matching": matching, "total": len(accounts), "filter": needle,
                           "limit": limit}}

    async def metrics(self, request: Request) -> Response:
        if not await self._authorized(request):
            return Response("the metrics need the gateway key (Authorization: Bearer KEY)\n", status_code=401,
                            media_type="text/plain; charset=utf-8", headers={"www-authenticate": "Bearer"})
        try:
            text = await anyio.to_thread.run_sync(lambda: metrics_text(self.pool, time.time()))
        except PoolError as e:
            return Response(f"cannot read the pool: {e}\n", status_code=503, media_type="text/plain; charset=utf-8")
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8",
                        headers={"cache-control": "no-store"})


def dashboard_routes(pool: Pool, key: GatewayKey, activity: Activity, port: int) -> list[BaseRoute]:
    """The dashboard's routes, to be listed before the relay's."""
    d = Dashboard(pool, key, activity, port)
    return [
        Route("/", d.home, methods=["GET"]),
        Route("/metrics", d.metrics, methods=["GET"]),
        Route(PREFIX + "login", d.login, methods=["POST"]),
        Route(PREFIX + "logout", d.logout, methods=["POST"]),
        Route(PREFIX + "state", d.state, methods=["GET"]),
        Route(PREFIX + "static/{name}", d.asset, methods=["GET"]),
    ]


def metrics_text(pool: Pool, now: float) -> str:
    """The pool in Prometheus' text format: counters and states per account and provider (no secrets).

    At 10,000 accounts a scrape is 70,000 lines: each account's labels are escaped and joined once
    for all of its lines (a dict and three escapes per line made a scrape 0.37 s; now 0.11 s)."""
    accounts = sorted(pool.accounts(), key=lambda a: (a.provider, a.label))
    labels = [f'provider="{_escape(a.provider)}",account="{_escape(a.name)}"' for a in accounts]
    out: list[str] = []

    def family(name: str, kind: str, what: str, rows: Iterable[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {what}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{{{inner}}} {value:g}" if inner else f"{name} {value:g}" for inner, value in rows)

    for counter, what in (("requests", "requests served by the account (all processes)"),
                          ("rate_limited", "429 answers the account got"),
                          ("unauthorized", "401/403 answers the account got"),
                          ("refreshes", "token renewals of the account"),
                          ("failures", "server and network errors of the account")):
        family(f"authpool_{counter}_total", "counter", what,
               zip(labels, (float(getattr(a.counters, counter)) for a in accounts), strict=True))
    family("authpool_account_state", "gauge", "1 for the account's current state",
           ((f'{who},state="{_escape(a.state(now))}"', 1.0) for who, a in zip(labels, accounts, strict=True)))
    family("authpool_cooldown_seconds", "gauge", "seconds until the account may serve again (0: not cooling)",
           zip(labels, (max(0.0, round((a.cooldown_until(now=now) or now) - now, 1)) for a in accounts),
               strict=True))
    status = pool_status(accounts, now)
    rows: list[tuple[str, float]] = []
    for p in status["providers"]:
        for state in ("ready", "cooling", "needs_reauth", "refresh_failing", "disabled"):
            rows.append((f'provider="{_escape(p["provider"])}",state="{state.replace("_", "-")}"', float(p[state])))
    family("authpool_accounts", "gauge", "accounts per provider and state", rows)
    # The windows alone, not a whole view per account (at 10,000 accounts that was most of a scrape's 0.4 s).
    windows = [(f'{who},window="{_escape(name)}"', w["used_percent"] / 100)
               for who, a in zip(labels, accounts, strict=True) for name, w in window_views(a, now).items()]
    family("authpool_quota_used_ratio", "gauge", "share of a subscription usage window used (0..1)", windows)
    family("authpool_events_dropped_total", "counter",
           "events this gateway could not add to the event log (its writer fell behind, or the disk failed)",
           [("", float(pool.events.dropped))])
    return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _json(doc: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(doc, separators=(",", ":")), status_code=status, media_type="application/json",
                    headers=_HEADERS)


def _page(body: str, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="text/html; charset=utf-8", headers=_HEADERS)


def _login_html(error: str | None) -> str:
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return _asset("login.html").replace("<!--message-->", message)
