"""Subscription usage windows: read from every answer's headers, kept per account, shown, used to choose.

Anthropic's subscription logins report 5-hour and 7-day windows in
``anthropic-ratelimit-unified-*`` headers; the Codex backend reports ``x-codex-primary-*`` and
``x-codex-secondary-*``. The loopback provider sends either (``set_usage_windows``).
"""

from __future__ import annotations

import json
import time

import pytest

from authpool.providers.windows import read_windows
from tests.conftest import LoopbackPool, run_cli

CHAT = "/v1/chat/completions"
BODY = {"model": "loopback-small", "messages": []}
NOW = 1_800_000_000.0


def test_anthropic_unified_headers_read_as_5h_and_7d_windows() -> None:
    """Utilization is a fraction, reset epoch seconds; the status word is kept."""
    windows = read_windows({
        "Anthropic-Ratelimit-Unified-5h-Utilization": "0.42", "anthropic-ratelimit-unified-5h-reset": str(NOW + 600),
        "anthropic-ratelimit-unified-5h-status": "allowed_warning",
        "anthropic-ratelimit-unified-7d-utilization": "0.18", "anthropic-ratelimit-unified-7d-reset": "oops",
    }, NOW)
    assert sorted(windows) == ["5h", "7d"]
    assert (windows["5h"].used, windows["5h"].resets_at, windows["5h"].status) == (0.42, NOW + 600, "allowed_warning")
    assert (windows["7d"].used, windows["7d"].resets_at, windows["7d"].window_seconds) == (0.18, None, 7 * 86400)


def test_codex_headers_read_as_windows_named_by_their_length() -> None:
    """Percent becomes a share; 300 minutes is 5h, 10080 is 7d; reset-at or reset-after-seconds."""
    windows = read_windows({
        "x-codex-primary-used-percent": "12.5", "x-codex-primary-window-minutes": "300",
        "x-codex-primary-reset-after-seconds": "900",
        "x-codex-secondary-used-percent": "77", "x-codex-secondary-window-minutes": "10080",
        "x-codex-secondary-reset-at": str(int(NOW + 86400)),
    }, NOW)
    assert sorted(windows) == ["5h", "7d"]
    assert (windows["5h"].used, windows["5h"].resets_at) == (0.125, NOW + 900)
    assert (windows["7d"].used, windows["7d"].resets_at) == (0.77, NOW + 86400)


@pytest.mark.parametrize("headers", [{}, {"x-codex-primary-used-percent": "nan"},
                                     {"anthropic-ratelimit-unified-5h-utilization": "lots"}])
def test_answers_without_usable_window_headers_report_no_window(headers: dict[str, str]) -> None:
    """Absent or unreadable values are no window, never an error."""
    assert read_windows(headers, NOW) == {}


@pytest.mark.parametrize("style", ["anthropic-unified", "codex"])
def test_windows_of_served_requests_are_kept_shown_and_listed(acme: LoopbackPool, style: str) -> None:
    """After a request, the account holds its windows; accounts list (table and --json) shows them."""
    acme.add_oauth("a")
    acme.lp.set_usage_windows("a", {"5h": (0.42, 3600), "7d": (0.18, 5 * 86400)}, style)
    with acme.pool.sync_client("acme") as client:
        assert client.post(CHAT, json=BODY).status_code == 200
    acme.pool.flush()
    stored = acme.account_json("a")["windows"]
    assert sorted(stored) == ["5h", "7d"]
    assert stored["5h"]["used"] == pytest.approx(0.42)
    assert stored["5h"]["resets_at"] == pytest.approx(time.time() + 3600, abs=120)
    listed = run_cli("accounts", "list")
    assert "5h 42% (resets in" in listed.stdout and "7d 18%" in listed.stdout, listed.stdout
    listed = json.loads(run_cli("accounts", "list", "--json").stdout)
    view = listed["accounts"][0]["windows"]
    assert (view["5h"]["used_percent"], view["7d"]["used_percent"]) == (42.0, 18.0)


def test_a_429_records_its_windows_with_the_cooldown(acme: LoopbackPool) -> None:
    """The windows a rate-limited answer reports are written with its cooldown, not left to the next flush."""
    acme.add_oauth_accounts(2)
    acme.lp.set_usage_windows("a", {"5h": (1.0, 1200)})
    acme.lp.set_rate_limit("a", 0, "retry-after-seconds", 1200)
    with acme.pool.sync_client("acme") as client:
        assert client.post(CHAT, json=BODY).json()["subject"] == "b"
    a = acme.account_json("a")
    assert a["windows"]["5h"]["used"] == 1.0 and a["windows"]["5h"]["status"] == "rejected"


def test_a_reserve_keeps_a_busy_account_out_while_another_is_below_it(acme: LoopbackPool) -> None:
    """reserve = 80: a (first in order) at 90% of its 5h window is passed over for b at 10%, until b
    is at 80% too; then a serves again."""
    acme.configure("acme", reserve=80)
    acme.add_oauth_accounts(2)
    acme.lp.set_usage_windows("a", {"5h": (0.9, 3600)})
    acme.lp.set_usage_windows("b", {"5h": (0.1, 3600)})
    with acme.pool.sync_client("acme") as client:
        first = client.post(CHAT, json=BODY).json()["subject"]  # nothing known yet: a, first in order
        served = [client.post(CHAT, json=BODY).json()["subject"] for _ in range(3)]
        assert first == "a"
        assert served == ["b", "b", "b"]  # once a's 90% is known, b (below the reserve) serves
        acme.lp.set_usage_windows("b", {"5h": (0.85, 3600)})
        client.post(CHAT, json=BODY)  # b reports 85%: now every account is at the reserve
        assert client.post(CHAT, json=BODY).json()["subject"] == "a"


def test_drain_soonest_reset_uses_the_window_that_resets_first(acme: LoopbackPool) -> None:
    """a's 5h window resets in 50 minutes, b's in 10: b is drained first while both have quota left."""
    acme.configure("acme", strategy="drain-soonest-reset")
    acme.add_oauth_accounts(2)
    acme.lp.set_usage_windows("a", {"5h": (0.3, 3000)})
    acme.lp.set_usage_windows("b", {"5h": (0.6, 600)})
    with acme.pool.sync_client("acme", account="acme/a") as client:
        client.post(CHAT, json=BODY)
    with acme.pool.sync_client("acme", account="acme/b") as client:
        client.post(CHAT, json=BODY)
    with acme.pool.sync_client("acme") as client:
        assert [client.post(CHAT, json=BODY).json()["subject"] for _ in range(3)] == ["b", "b", "b"]
