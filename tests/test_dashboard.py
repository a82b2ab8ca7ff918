"""The gateway's dashboard and /metrics: a real ``authpool gateway`` process, a real HTTP client, and a
real browser (Debian's Chromium driven by Playwright).

The pool has a ready key, a cooling key and a dead login. The browser logs in through the form,
sees the cooling account's countdown move and the dead login, and a wrong key sees nothing of the
pool. Everything the gateway sent (pages, JSON, metrics) and everything it logged is scanned for
every secret the test minted and for the gateway key. No timing is asserted: the browser waits for
what it expects with generous deadlines.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from authpool.accounts.model import Cooldown, Rows
from tests.conftest import REPO, LoopbackPool, assert_no_secrets, home_texts, run_cli
from tests.gateway_support import DEADLINE, Gateway

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = REPO / "docs" / "dashboard.png"


@pytest.fixture
def pool_with_trouble(acme: LoopbackPool) -> LoopbackPool:
    """acme/ready (a key), acme/cooling (cooling for 10 minutes), acme/dead (a login that needs re-auth)."""
    acme.add_api_key("ready")
    acme.add_api_key("cooling")
    acme.add_oauth("dead")
    ids = {a.label: a.id for a in acme.pool.accounts()}
    until = time.time() + 600

    def trouble(rows: Rows) -> None:
        rows.get(ids["cooling"]).cooldowns["*"] = Cooldown(until=until, reason="429 Too Many Requests")
        dead = rows.get(ids["dead"])
        dead.needs_reauth, dead.last_error = True, "refresh token rejected (invalid_grant)"

    acme.pool.store.update_accounts(tuple(ids.values()), trouble)
    # One request through the pool, so the activity charts have something to show.
    with acme.pool.sync_client("acme") as client:
        assert client.post("/v1/chat/completions",
                           json={"model": "loopback-small", "messages": [{"role": "user", "content": "hi"}]}
                           ).status_code == 200
    acme.pool.flush()  # the request's counters
    acme.pool.events.flush()
    return acme


@pytest.fixture
def gateway(pool_with_trouble: LoopbackPool, tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(pool_with_trouble.home, tmp_path / "gw")
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def key(gateway: Gateway) -> str:
    r = run_cli("gateway", "key")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def secrets_of(acme: LoopbackPool, key: str) -> list[str]:
    return [*acme.secrets(), key]


@contextlib.contextmanager
def login(gateway: Gateway, key: str) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=gateway.url, timeout=DEADLINE, follow_redirects=False) as client:
        r = client.post("/_dashboard/login", data={"key": key})
        assert r.status_code == 303 and r.headers["location"] == "/"
        yield client


# -- over HTTP ----------------------------------------------------------------------------------------


def test_without_the_key_the_dashboard_shows_a_login_form_and_nothing_of_the_pool(
        gateway: Gateway, key: str, pool_with_trouble: LoopbackPool) -> None:
    with httpx2.Client(base_url=gateway.url, timeout=DEADLINE) as c:
        page = c.get("/")
        assert page.status_code == 200 and 'action="/_dashboard/login"' in page.text
        assert "acme/" not in page.text
        assert c.get("/_dashboard/state").status_code == 401
        assert c.get("/metrics").status_code == 401
        wrong = c.post("/_dashboard/login", data={"key": "authpool-gw-not-the-key-at-all"})
        assert wrong.status_code == 401 and "wrong key" in wrong.text and "acme/" not in wrong.text
        assert "set-cookie" not in wrong.headers
        name = f"authpool_dashboard_{gateway.port}"
        for cookie in (f"{name}=9999999999.forged", f"{name}={int(time.time()) - 10}.{'0' * 64}",
                       f"{name}={'9' * 5000}.x"):
            assert c.get("/_dashboard/state", headers={"cookie": cookie}).status_code == 401, cookie[:40]
    # A digit that is not ASCII ("²", one byte in latin-1) is no expiry: a 401, not a 500.
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=DEADLINE) as sock:
        sock.sendall(f"GET /_dashboard/state HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n"
                     f"Cookie: {name}=\u00b2.x\r\nConnection: close\r\n\r\n".encode("latin-1"))
        assert sock.recv(64).startswith(b"HTTP/1.1 401")
    with httpx2.Client(base_url=gateway.url, timeout=DEADLINE) as c:
        # The key is never taken from a URL here (it would be in logs and the history).
        assert c.get("/_dashboard/state", params={"key": key}).status_code == 401
        assert c.get("/metrics", params={"key": key}).status_code == 401
        # Only the dashboard's exact routes go without the key: nothing else answers, not even a 404.
        for method, path in (("GET", "/_dashboard/login"), ("POST", "/_dashboard/state"), ("GET", "/_dashboard/x"),
                             ("POST", "/"), ("DELETE", "/metrics"), ("GET", "/_dashboard/static/a/b")):
            r = c.request(method, path)
            assert r.status_code == 401, (method, path)
            assert "acme" not in r.text


def test_the_login_form_reads_a_few_kilobytes_at_most(gateway: Gateway) -> None:
    """A huge login body is refused from its length, or while it streams in, before it is read whole."""
    with httpx2.Client(base_url=gateway.url, timeout=DEADLINE) as c:
        r = c.post("/_dashboard/login", content=b"key=" + b"k" * 100_000,
                   headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 413

        def body() -> Iterator[bytes]:
            for _ in range(1000):
                yield b"k" * 1024

        r = c.post("/_dashboard/login", content=body(), headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 413


def test_logging_in_sets_an_httponly_strict_cookie_and_never_puts_the_key_in_a_url(
        gateway: Gateway, key: str, pool_with_trouble: LoopbackPool) -> None:
    with httpx2.Client(base_url=gateway.url, timeout=DEADLINE) as c:
        r = c.post("/_dashboard/login", data={"key": key}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("SameSite=Strict", "SameSite=strict")
        assert key not in cookie
        state = c.get("/_dashboard/state")
        assert state.status_code == 200
        doc = state.json()
        accounts = {a["name"]: a for p in doc["providers"] for a in p["accounts"]}
        assert accounts["acme/cooling"]["state"] == "cooling" and accounts["acme/dead"]["state"] == "needs-reauth"
        assert any(e["kind"] == "attempt" for e in doc["events"])
        assert sum(sum(s["requests"]) for s in doc["series"].values()) >= 1
        assert_no_secrets([state.text, c.get("/").text], secrets_of(pool_with_trouble, key))
        # Logging out ends the session.
        assert c.post("/_dashboard/logout", follow_redirects=False).status_code == 303
        assert c.get("/_dashboard/state").status_code == 401


def test_the_session_cookie_never_drives_the_relay(gateway: Gateway, key: str) -> None:
    """The cookie opens the dashboard only: a provider route still wants the gateway key."""
    with login(gateway, key) as c:
        r = c.post("/acme/v1/chat/completions", json={"model": "loopback-small", "messages": []})
        assert r.status_code == 401


@pytest.mark.parametrize("headers", [
    {"origin": "http://evil.example"}, {"sec-fetch-site": "cross-site"}, {"host": "evil.example"}])
def test_another_site_s_page_cannot_log_in_or_read(gateway: Gateway, key: str, headers: dict[str, str]) -> None:
    with httpx2.Client(base_url=gateway.url, timeout=DEADLINE) as c:
        assert c.post("/_dashboard/login", data={"key": key}, headers=headers).status_code in (403, 421)
        r = c.get("/_dashboard/state", headers={**headers, "authorization": f"Bearer {key}"})
        assert r.status_code in (403, 421)


def test_a_pool_larger_than_the_limit_is_listed_attention_first_and_the_filter_narrows_it(
        gateway: Gateway, key: str, pool_with_trouble: LoopbackPool) -> None:
    """The page polls every second: at most ``limit`` accounts are viewed (the dead and cooling ones
    first, shown in the pool's order), the rest counted; ``q`` filters on the server."""
    ids = {a.name: a.id for a in pool_with_trouble.pool.accounts()}
    with login(gateway, key) as client:
        doc = client.get("/_dashboard/state", params={"limit": "2"}).json()
        assert [a["name"] for p in doc["providers"] for a in p["accounts"]] == ["acme/cooling", "acme/dead"]
        assert doc["listed"] == {"shown": 2, "matching": 3, "total": 3, "filter": "", "limit": 2}
        assert set(doc["series"]) <= {ids["acme/cooling"], ids["acme/dead"]}  # charts for the listed only
        assert doc["providers"][0]["total"] == 3 and doc["providers"][0]["ready"] == 1  # the summary is whole
        doc = client.get("/_dashboard/state", params={"q": "READY"}).json()
        assert [a["name"] for p in doc["providers"] for a in p["accounts"]] == ["acme/ready"]
        assert doc["listed"]["matching"] == 1 and doc["series"] == {ids["acme/ready"]: doc["series"][ids["acme/ready"]]}
        for bad in ("0", "1001", "x", "-1", "²", "١٢", "9" * 5001, " 5"):
            r = client.get("/_dashboard/state", params={"limit": bad})
            assert r.status_code == 400 and r.json() == {"error": "limit must be a whole number from 1 to 1000"}


def test_metrics_are_prometheus_text_per_account_with_no_secret(
        gateway: Gateway, key: str, pool_with_trouble: LoopbackPool) -> None:
    r = httpx2.get(f"{gateway.url}/metrics", headers={"authorization": f"Bearer {key}"}, timeout=DEADLINE)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    sample = re.compile(r'^[a-z_]+(\{([a-z_]+="(?:[^"\\]|\\.)*",?)*\})? -?[0-9.e+]+$')
    for line in r.text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    assert 'authpool_requests_total{provider="acme",account="acme/ready"} 1' in r.text
    cooling = re.search(r'authpool_cooldown_seconds\{provider="acme",account="acme/cooling"\} ([0-9.]+)', r.text)
    assert cooling is not None and float(cooling.group(1)) > 500
    assert 'authpool_account_state{provider="acme",account="acme/dead",state="needs-reauth"} 1' in r.text
    assert 'authpool_accounts{provider="acme",state="cooling"} 1' in r.text
    assert "\nauthpool_events_dropped_total 0\n" in r.text
    assert_no_secrets(r.text, secrets_of(pool_with_trouble, key))


def test_metrics_escape_every_label_value_in_every_line(acme: LoopbackPool) -> None:
    """Each account's labels are escaped once and reused for all of its lines: a quote and a
    backslash in a label, and in a usage window's name, come out escaped everywhere."""
    from authpool.accounts.model import QuotaWindow
    from authpool.server.gateway.dashboard import metrics_text

    acme.add_api_key('we"ird\\x')
    (account,) = acme.pool.accounts()
    now = time.time()

    def windowed(rows: Rows) -> None:
        rows.get(account.id).windows = {'5"h': QuotaWindow(used=0.42, resets_at=now + 3600, seen_at=now)}

    acme.pool.store.update_accounts((account.id,), windowed)
    text = metrics_text(acme.pool, now)
    escaped = 'provider="acme",account="acme/we\\"ird\\\\x"'
    lines = [line for line in text.splitlines() if "ird" in line]
    assert len(lines) == 8, lines  # five counters, the state, the cooldown, the window
    assert all(line.split("{", 1)[1].startswith(escaped) for line in lines), lines
    assert f'authpool_quota_used_ratio{{{escaped},window="5\\"h"}} 0.42' in lines
    assert f'authpool_account_state{{{escaped},state="ready"}} 1' in lines


def test_dashboard_pages_forbid_everything_but_their_own_assets(gateway: Gateway, key: str) -> None:
    """A Content-Security-Policy that allows only the gateway's own scripts and styles; no framing."""
    with login(gateway, key) as c:
        for path in ("/", "/_dashboard/state", "/_dashboard/static/dashboard.js"):
            r = c.get(path)
            assert r.status_code == 200, path
            assert "default-src 'none'" in r.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
            assert r.headers["cache-control"] == "no-store"
        assert c.get("/_dashboard/static/../app.py").status_code in (400, 401, 404)


# -- in a browser -------------------------------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("AUTHPOOL_REQUIRE_BROWSER"):
            pytest.fail("Playwright is required here (AUTHPOOL_REQUIRE_BROWSER) but not installed")
        pytest.skip("Playwright is not installed")
    if CHROMIUM is None:
        if os.environ.get("AUTHPOOL_REQUIRE_BROWSER"):
            pytest.fail("Chromium is required here (AUTHPOOL_REQUIRE_BROWSER) but not installed")
        pytest.skip("Chromium is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def test_a_browser_sees_the_cooling_countdown_move_and_the_dead_login(
        browser: object, gateway: Gateway, key: str, pool_with_trouble: LoopbackPool) -> None:
    from playwright.sync_api import Browser, expect

    assert isinstance(browser, Browser)
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    expect.set_options(timeout=DEADLINE * 1000)

    page.goto(gateway.url + "/")
    # A wrong key sees nothing of the pool.
    page.fill("#key", "authpool-gw-this-is-the-wrong-key")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("wrong key")
    assert "acme/" not in page.content()

    page.fill("#key", key)
    page.click("button[type=submit]")
    cooling = page.locator('tr[data-account="acme/cooling"]')
    expect(cooling.locator("td.state")).to_have_text("cooling")
    countdown = cooling.locator("td.countdown")
    expect(countdown).to_have_text(re.compile(r"^\d+m\d\d$"))
    first = countdown.inner_text()
    expect(countdown).not_to_have_text(first)  # it moves
    dead = page.locator('tr[data-account="acme/dead"]')
    expect(dead.locator("td.state")).to_have_text("needs-reauth")
    expect(dead.locator("td.error")).to_contain_text("invalid_grant")
    expect(page.locator('[data-provider="acme"]')).to_contain_text("1 cooling")
    expect(page.locator("#events li").first).to_be_visible()
    # The filter narrows the list on the server.
    page.fill("#filter", "dead")
    expect(page.locator("#accounts tbody tr")).to_have_count(1)
    expect(page.locator("#listed")).to_have_text("1 of 3 accounts match")
    page.fill("#filter", "")
    expect(page.locator("#accounts tbody tr")).to_have_count(3)

    # The session is an HttpOnly, SameSite=Strict cookie: no script reads it, no other site sends it.
    cookies = context.cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [
        (f"authpool_dashboard_{gateway.port}", True, "Strict")]
    assert page.evaluate("document.cookie") == ""
    # Everything came from the gateway, and the key was never in a URL.
    assert requested and all(url.startswith(gateway.url + "/") for url in requested), requested
    assert not any(key in url for url in requested)
    assert_no_secrets([page.content()], secrets_of(pool_with_trouble, key))
    if os.environ.get("AUTHPOOL_UPDATE_SCREENSHOTS"):
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    context.close()
    assert_no_secrets([gateway.stderr(), *home_texts(pool_with_trouble.home)], secrets_of(pool_with_trouble, key))
