"""Rotation strategies: a table per strategy over pool.strategy.order_accounts, then two end-to-end checks.

The tables use hand-built Account models and UsageView values (pure functions, nothing to fake).
The end-to-end checks configure ``strategy`` in config.toml and send real requests to a
LoopbackProvider, from this process and from ``authpool request`` processes.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from authpool.accounts.model import Account, Counters
from authpool.providers.builtin import BUILTIN_PROVIDERS
from authpool.rotation.strategy import STRATEGIES, UsageView, order_accounts
from tests.conftest import LoopbackPool, assert_no_secrets, home_texts, run_cli

CHAT = "/v1/chat/completions"
BODY = {"model": "loopback-small", "messages": [{"role": "user", "content": "hi"}]}


def account(label: str, order: int = 0, requests: int = 0) -> Account:
    return Account(id=f"id-{label}", provider="acme", label=label, kind="oauth", order=order,
                   counters=Counters(requests=requests))


def ordered_labels(strategy: str, rows: list[tuple[str, int, int, UsageView]]) -> str:
    """Order (label, order, persisted requests, usage view) rows by ``strategy``; the labels as a string."""
    accounts = [account(label, order, requests) for label, order, requests, _ in rows]
    views = {f"id-{label}": view for label, _, _, view in rows}
    return "".join(a.label for a in order_accounts(strategy, accounts, lambda a: views[a.id]))


def U(last_used: float = 0.0, weight: float = 1.0, unrecorded: int = 0,  # noqa: N802 - reads as a table column
      resets: float | None = None) -> UsageView:
    return UsageView(last_used=last_used, weight=weight, unrecorded=unrecorded, quota_resets_at=resets)


def case(why: str, rows: list[tuple[str, int, int, UsageView]], expected: str) -> Any:
    return pytest.param(rows, expected, id=why)


# -- ordered: fill first -------------------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "expected"), [
    case("configured order, whatever the use", [("a", 2, 0, U()), ("b", 0, 90, U(500.0)), ("c", 1, 5, U(100.0))],
         "bca"),
    case("equal orders: least recently used first",
         [("a", 0, 0, U(300.0)), ("b", 0, 0, U(100.0)), ("c", 0, 0, U(200.0))], "bca"),
    case("requests, weights and resets play no part",
         [("a", 0, 99, U(weight=0.1, resets=10.0)), ("b", 1, 0, U(weight=9.0, resets=1.0))], "ab"),
    case("full ties fall back to the id", [("c", 0, 0, U()), ("a", 0, 0, U()), ("b", 0, 0, U())], "abc"),
])
def test_ordered_fills_accounts_in_configured_order(rows: list[tuple[str, int, int, UsageView]], expected: str) -> None:
    """ordered: by configured order; least recently used among equal orders; then the id."""
    assert ordered_labels("ordered", rows) == expected


# -- round-robin: least recently used --------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "expected"), [
    case("never used first, then least recently used",
         [("a", 0, 0, U(300.0)), ("b", 1, 0, U(0.0)), ("c", 2, 0, U(100.0))], "bca"),
    case("configured order breaks ties in last use", [("a", 2, 0, U()), ("b", 0, 0, U()), ("c", 1, 0, U())], "bca"),
    case("request counts and weights play no part",
         [("a", 0, 0, U(200.0, weight=9.0)), ("b", 1, 100, U(100.0, weight=0.1))], "ba"),
    case("the just-used account goes last", [("a", 0, 5, U(1000.0)), ("b", 1, 5, U(999.0))], "ba"),
])
def test_round_robin_prefers_the_least_recently_used_account(
    rows: list[tuple[str, int, int, UsageView]], expected: str
) -> None:
    """round-robin: least recently used first (never used first of all); order, then id, break ties."""
    assert ordered_labels("round-robin", rows) == expected


# -- least-used: fewest requests per unit of weight ------------------------------------------------------


@pytest.mark.parametrize(("rows", "expected"), [
    case("fewest requests first", [("a", 0, 10, U()), ("b", 1, 0, U()), ("c", 2, 5, U())], "bca"),
    case("requests are divided by weight",
         [("a", 0, 30, U(weight=3.0)), ("b", 1, 15, U(weight=1.0)), ("c", 2, 5, U(weight=0.5))], "acb"),
    case("a heavier account takes more before it yields",
         [("a", 0, 20, U(weight=4.0)), ("b", 1, 6, U(weight=1.0))], "ab"),
    case("this process's unrecorded requests count", [("a", 0, 0, U(unrecorded=5)), ("b", 1, 3, U())], "ba"),
    case("equal shares: least recently used, then order",
         [("a", 0, 2, U(50.0)), ("b", 1, 2, U(10.0)), ("c", 2, 4, U(0.0, weight=2.0))], "cba"),
])
def test_least_used_balances_requests_by_weight(rows: list[tuple[str, int, int, UsageView]], expected: str) -> None:
    """least-used: (persisted + unrecorded requests) / weight, smallest first; ties by last use and order."""
    assert ordered_labels("least-used", rows) == expected


# -- drain-soonest-reset ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "expected"), [
    case("soonest reset first",
         [("a", 0, 0, U(resets=3600.0)), ("b", 1, 0, U(resets=600.0)), ("c", 2, 0, U(resets=1800.0))], "bca"),
    case("unknown resets last, in configured order",
         [("a", 0, 0, U()), ("b", 2, 0, U(resets=600.0)), ("c", 1, 0, U())], "bac"),
    case("equal resets: configured order, then last use",
         [("a", 1, 0, U(5.0, resets=900.0)), ("b", 0, 0, U(9.0, resets=900.0)), ("c", 1, 0, U(1.0, resets=900.0))],
         "bca"),
    case("use and weight play no part", [("a", 0, 0, U(resets=100.0)), ("b", 1, 0, U(weight=9.0))], "ab"),
])
def test_drain_soonest_reset_uses_first_the_quota_that_expires_first(
    rows: list[tuple[str, int, int, UsageView]], expected: str
) -> None:
    """drain-soonest-reset: the account whose quota window resets soonest first; no known reset last."""
    assert ordered_labels("drain-soonest-reset", rows) == expected


@pytest.mark.parametrize("name", ["sticky", "no-such-strategy"])
def test_sticky_and_unknown_names_fill_first_like_ordered(name: str) -> None:
    """'sticky' (sessions do the pinning) and unknown names order like 'ordered'."""
    rows = [("a", 1, 0, U(0.0)), ("b", 0, 9, U(100.0)), ("c", 1, 0, U(50.0))]
    assert ordered_labels(name, rows) == ordered_labels("ordered", rows) == "bac"


def test_every_configurable_strategy_has_an_implementation() -> None:
    """Each strategy name config.toml accepts maps to a function."""
    from typing import get_args

    from authpool.providers.provider import Strategy

    assert set(get_args(Strategy)) == set(STRATEGIES)


# -- end to end ------------------------------------------------------------------------------------------


def subject_of(result: Any) -> str:
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["subject"])


def test_round_robin_in_config_spreads_requests_across_accounts_and_processes(acme: LoopbackPool) -> None:
    """strategy = "round-robin": one client cycles a, b, c; separate CLI processes continue the cycle."""
    acme.configure("acme", strategy="round-robin")
    acme.add_oauth_accounts(3)
    with acme.pool.sync_client("acme") as client:
        assert [client.post(CHAT, json=BODY).json()["subject"] for _ in range(3)] == list("abc")
    acme.pool.flush()  # last use is shared through pool.json
    outs = [run_cli("request", "acme", "POST", CHAT, "--json", json.dumps(BODY)) for _ in range(3)]
    assert [subject_of(o) for o in outs] == list("abc")
    assert acme.lp.snapshot()["api_calls_by_subject"] == {"a": 2, "b": 2, "c": 2}
    assert_no_secrets([t for o in outs for t in (o.stdout, o.stderr)], acme.secrets())


def test_drain_soonest_reset_prefers_the_account_whose_window_resets_soonest(acme: LoopbackPool) -> None:
    """Success headers say a resets in 1 h, b in 10 min, c soonest: c, then b once c's reset has passed; CLI agrees."""
    acme.configure("acme", strategy="drain-soonest-reset",
                   reset_headers=list(BUILTIN_PROVIDERS["anthropic"].reset_headers))
    accounts = {a.label: a for a in acme.add_oauth_accounts(3)}
    acme.lp.set_quota_window("a", 3600)
    acme.lp.set_quota_window("b", 600)
    acme.lp.set_quota_window("c", 1.0)
    with acme.pool.sync_client("acme") as client:
        # Nothing known yet: configured order.
        assert client.post(CHAT, json=BODY).json()["subject"] == "a"
    for label in "bc":  # learn the others' windows, as traffic pinned to them would
        with acme.pool.sync_client("acme", account=f"acme/{label}") as client:
            assert client.post(CHAT, json=BODY).json()["subject"] == label
    acme.lp.set_quota_window("c", None)  # c's later answers say nothing new about its window
    resets = {label: acme.pool.usage.quota_resets_at(acc.id, None) for label, acc in accounts.items()}
    now = time.time()
    assert resets["a"] is not None and 3590 < resets["a"] - now <= 3601
    assert resets["b"] is not None and 590 < resets["b"] - now <= 601
    assert resets["c"] is not None and resets["c"] - now <= 2.01  # a 1 s window, its end rounded up to a second

    with acme.pool.sync_client("acme") as client:
        assert client.post(CHAT, json=BODY).json()["subject"] == "c"
        while time.time() <= resets["c"]:
            time.sleep(resets["c"] - time.time() + 0.01)
        # c's window has reset (a fresh quota, its next reset unknown): b's quota is the one about to expire.
        assert [client.post(CHAT, json=BODY).json()["subject"] for _ in range(2)] == ["b", "b"]
    acme.pool.flush()
    persisted = {a["label"]: a["quota_resets_at"] for a in acme.pool_json()["accounts"]}
    assert persisted["a"] == pytest.approx(resets["a"]) and persisted["b"] == pytest.approx(resets["b"])
    cli = run_cli("request", "acme", "POST", CHAT, "--json", json.dumps(BODY))
    assert subject_of(cli) == "b"  # another process reads the resets from pool.json
    assert_no_secrets([cli.stdout, cli.stderr, *home_texts(acme.home)], acme.secrets())
