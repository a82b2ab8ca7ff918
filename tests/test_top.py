"""``authpool top``, headless through Textual's own test driver (``App.run_test``) at 80x24.

The cells are pure functions (tested as tables); the app is driven by keys, and what it shows is
read back from the screen. Changes made by another process (a real ``authpool`` subprocess) are
waited for on the screen with a generous deadline, never timed. The screen of a fixed pool at a
fixed time is kept as a snapshot (tests/snapshots/top_80x24.txt); AUTHPOOL_UPDATE_SNAPSHOTS=1
rewrites it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

pytest.importorskip("textual")

from textual.pilot import Pilot  # noqa: E402 - after the skip: textual is an extra

from authpool import Account, Pool  # noqa: E402
from authpool.accounts.model import Cooldown, QuotaWindow, Rows  # noqa: E402
from authpool.events import Activity, Event, EventLog  # noqa: E402
from authpool.server.top.app import TopApp  # noqa: E402
from authpool.server.top.rows import account_cells, bar, countdown, sparkline  # noqa: E402
from tests.conftest import LoopbackPool, run_cli  # noqa: E402

SIZE = (80, 24)
DEADLINE = 60.0
SNAPSHOT = Path(__file__).parent / "snapshots" / "top_80x24.txt"
NOW = float(int(time.time()) // 60 * 60 + 30)  # the middle of a minute: fixed minute buckets


async def until(pilot: Pilot[None], condition: Callable[[], bool], what: str) -> None:
    """Let the app run until ``condition`` holds (the deadline only bounds a failure)."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await pilot.pause(0.05)


def run(app: TopApp, script: Callable[[Pilot[None]], Awaitable[None]]) -> None:
    import asyncio

    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await script(pilot)

    asyncio.run(main())


# -- cells -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "line"), [
    ([0, 0, 0], "   "), ([1, 2, 4, 8], "▁▂▄█"), ([0, 5, 0, 10], " ▄ █"), ([3], "█")])
def test_a_sparkline_scales_to_its_largest_value(values: list[int], line: str) -> None:
    assert sparkline(values) == line


@pytest.mark.parametrize(("used", "cells"), [(0.0, "░░░░░"), (0.62, "███░░"), (1.0, "█████"), (1.4, "█████")])
def test_a_quota_bar_fills_by_the_share_used(used: float, cells: str) -> None:
    assert bar(used) == cells


@pytest.mark.parametrize(("left", "text"), [
    (-1, ""), (42, "42s"), (185, "3m05"), (7800, "2h10"), (3 * 86400 + 5, "3d")])
def test_a_countdown_reads_at_a_glance(left: float, text: str) -> None:
    assert countdown(NOW + left, NOW) == text


def test_a_cooling_subscription_row_shows_its_countdown_quota_and_activity() -> None:
    activity = Activity()
    for minutes_ago, outcome in ((0, "ok"), (0, "rate_limited"), (2, "ok"), (2, "ok")):
        activity.add(Event("attempt", "acme", "acme/a", "id-a", outcome, at=NOW - minutes_ago * 60))
    activity.add(Event("refresh", "acme", "acme/a", "id-a", "renewed", at=NOW - 30))
    acc = Account(id="id-a", provider="acme", label="a", kind="oauth", access_expires_at=NOW + 3000,
                  cooldowns={"*": Cooldown(until=NOW + 42, reason="429", set_at=NOW)},
                  windows={"5h": QuotaWindow(used=0.8, resets_at=NOW + 3600, seen_at=NOW)})
    from authpool.accounts import account_view

    cells = account_cells(account_view(acc, NOW), activity, NOW)
    assert cells == ("acme/a", "cooling", "42s", "5h ████░", "50m00", "       █ █", "1", "1", "")


# -- the app -----------------------------------------------------------------------------------------


def fixed_pool(acme: LoopbackPool) -> Pool:
    """ready (an API key, busy), cooling (42 s left, quota 80% used), a dead login, a disabled key."""
    acme.add_api_key("ready")
    acme.add_api_key("cooling")
    acme.add_oauth("dead")
    acme.add_api_key("off")
    pool = acme.pool
    ids = {a.label: a.id for a in pool.accounts()}

    def shape(rows: Rows) -> None:
        rows.get(ids["cooling"]).cooldowns["*"] = Cooldown(until=NOW + 42, reason="429 Too Many Requests", set_at=NOW)
        rows.get(ids["cooling"]).windows["5h"] = QuotaWindow(used=0.8, resets_at=NOW + 3600, seen_at=NOW)
        dead = rows.get(ids["dead"])
        dead.needs_reauth, dead.last_error = True, "refresh token rejected [/x] (invalid_grant)"
        dead.access_expires_at = NOW - 10
        rows.get(ids["off"]).enabled = False

    pool.store.update_accounts(tuple(ids.values()), shape)
    log = EventLog(acme.home / "events.jsonl")
    for minutes_ago in (0, 0, 1, 3, 3, 3):
        log.emit(Event("attempt", "acme", "acme/ready", ids["ready"], "ok", 200, 3.0, at=NOW - minutes_ago * 60))
    log.emit(Event("attempt", "acme", "acme/cooling", ids["cooling"], "rate_limited", 429, 2.0, at=NOW - 20))
    log.close()
    return pool


def test_the_screen_shows_each_state_at_80x24_as_in_the_snapshot(acme: LoopbackPool) -> None:
    """A fixed pool at a fixed time: the whole 80x24 screen equals the kept snapshot."""
    pool = fixed_pool(acme)
    app = TopApp(pool, clock=lambda: NOW)
    screens: list[str] = []

    async def script(pilot: Pilot[None]) -> None:
        await until(pilot, lambda: "acme/ready" in app.screen_text() and app.feed.wait_loaded(0)
                    and app.feed.activity.total(pool.get("acme/ready").id, "requests", NOW) == 6,
                    "the accounts and their activity on screen")
        app.refresh_view()
        await pilot.pause()
        screens.append(app.screen_text())

    run(app, script)
    screen = screens[0]
    for text in ("acme: 1 ready · 1 cooling (next in 42s) · 1 need re-auth · 1 disabled", "acme/cooling",
                 "42s", "5h ████░", "needs-reauth", "disabled"):
        assert text in screen, text
    if os.environ.get("AUTHPOOL_UPDATE_SNAPSHOTS"):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(screen + "\n")
    assert screen + "\n" == SNAPSHOT.read_text(), "the screen changed (AUTHPOOL_UPDATE_SNAPSHOTS=1 rewrites it)"


def test_keys_disable_enable_and_reset_the_selected_account(acme: LoopbackPool) -> None:
    """d, e and r act on the row under the cursor through the library; the screen follows."""
    pool = fixed_pool(acme)
    app = TopApp(pool)
    ready, cooling = pool.get("acme/ready").id, pool.get("acme/cooling").id

    async def script(pilot: Pilot[None]) -> None:
        await until(pilot, lambda: app.selected_id() is not None, "rows on screen")
        app.query_one("DataTable").move_cursor(row=app._order.index(ready))  # type: ignore[attr-defined]
        await pilot.press("d")
        await until(pilot, lambda: not pool.get(ready).enabled, "the disable stored")
        await until(pilot, lambda: "disabled acme/ready" in app.screen_text(), "the disable said")
        await pilot.press("e")
        await until(pilot, lambda: pool.get(ready).enabled, "the enable stored")
        app.query_one("DataTable").move_cursor(row=app._order.index(cooling))  # type: ignore[attr-defined]
        await pilot.press("r")
        await until(pilot, lambda: pool.get(cooling).state() == "ready", "the reset stored")

    run(app, script)


def test_the_filter_narrows_the_table_and_escape_clears_it(acme: LoopbackPool) -> None:
    """/ then text: only matching rows (typing q does not quit); Esc: every row again; q quits."""
    pool = fixed_pool(acme)
    app = TopApp(pool)

    async def script(pilot: Pilot[None]) -> None:
        await until(pilot, lambda: len(app._order) == 4, "four rows")
        await pilot.press("slash", "c", "o", "o", "l")
        await until(pilot, lambda: len(app._order) == 1, "one row left")
        assert app._order == [pool.get("acme/cooling").id]
        await pilot.press("escape")
        await until(pilot, lambda: len(app._order) == 4, "four rows again")
        await pilot.press("slash", "q")
        await until(pilot, lambda: app.filter_text == "q", "q typed into the filter")
        assert app.is_running
        await pilot.press("escape", "q")
        await until(pilot, lambda: not app.is_running, "q quits")

    run(app, script)


def test_another_process_s_change_and_requests_appear_on_screen(acme: LoopbackPool) -> None:
    """A CLI disable and a CLI request (its attempt in the log) show up on the running screen."""
    acme.add_api_key("a")
    app = TopApp(acme.pool, poll=0.2)
    account_id = acme.pool.get("acme/a").id

    async def script(pilot: Pilot[None]) -> None:
        await until(pilot, lambda: app.selected_id() == account_id, "the account on screen")
        assert run_cli("accounts", "disable", "acme/a").returncode == 0
        await until(pilot, lambda: app._cells[account_id][1] == "disabled", "the disable on screen")
        assert run_cli("accounts", "enable", "acme/a").returncode == 0
        r = run_cli("request", "acme", "POST", "/v1/chat/completions", "--json",
                    '{"model": "loopback-small", "messages": [{"role": "user", "content": "hi"}]}')
        assert r.returncode == 0, r.stderr
        await until(pilot, lambda: app._cells[account_id][5].strip() != "", "the request in the sparkline")

    run(app, script)


def test_ten_thousand_accounts_are_listed_in_part_attention_first_and_the_filter_finds_any(
        acme: LoopbackPool) -> None:
    """10,000 rows would be built twice a second: 200 are listed (the dead and cooling ones among
    them, wherever they are in the pool), the summary says so, the table scrolls, / finds any other."""
    pool = acme.pool

    def add(rows: Rows) -> None:
        for n in range(10_000):
            rows.add(Account(id=f"id{n:05d}", provider="acme", label=f"key-{n:05d}", kind="api_key", order=n))
        rows.get("id09000").needs_reauth = True
        rows.get("id07000").cooldowns["*"] = Cooldown(until=time.time() + 3600, reason="429")

    pool.store.update_accounts((), add)
    app = TopApp(pool, poll=0.2)

    async def script(pilot: Pilot[None]) -> None:
        await until(pilot, lambda: len(app._order) == 200, "200 rows")
        assert {"id09000", "id07000"} <= set(app._order)
        assert app._order == sorted(app._order)  # in the pool's order
        assert "listing 200 of 10000 accounts" in app.screen_text()
        await pilot.press("ctrl+end")
        await until(pilot, lambda: "acme/key-09000" in app.screen_text(), "the last row on screen")
        assert app.selected_id() == "id09000"
        await pilot.press("pageup")
        await until(pilot, lambda: "acme/key-09000" not in app.screen_text(), "a page up")
        await pilot.press("slash", *"key-05555")
        await until(pilot, lambda: app._order == ["id05555"], "the filter finds an account not listed before")
        seen = app.refreshes
        await until(pilot, lambda: app.refreshes >= seen + 3, "redraws going on")

    run(app, script)
