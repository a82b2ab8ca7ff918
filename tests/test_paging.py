"""Large pools page: list_accounts, the accounts resource and `accounts list` a page at a time, status a summary.

The paging decision is a pure function (``authpool.accounts.page_accounts``), tested on its own with
tables of accounts; the MCP tool through the official client in memory; the CLI as a subprocess.
"""

from __future__ import annotations

import json
import secrets
import shlex
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from authpool import Account, InvalidInput, Pool
from authpool.accounts import page_accounts, pool_status, shown_accounts, transitions
from authpool.accounts.model import Cooldown
from authpool.accounts.listing import MAX_LIMIT, encode_cursor, listing_key
from tests.conftest import assert_no_secrets, run_cli
from tests.mcp_support import assert_tool_error, memory_session, pool_env, text_of

NOW = 1_800_000_000.0


def make(provider: str, label: str, *, namespace: str = "default", order: int = 0, created_at: float = NOW,
         account_id: str | None = None, **fields: Any) -> Account:
    return Account(id=account_id or f"{provider[:2]}{label}"[:8].ljust(8, "0"), provider=provider,
                   namespace=namespace, label=label, kind="api_key", order=order, created_at=created_at, **fields)


def table() -> list[Account]:
    """Accounts whose listing order needs every part of the key: provider, namespace, order, creation, id."""
    return [
        make("openai", "late", order=2, created_at=NOW + 5, account_id="oa000005"),
        make("openai", "tie-b", order=1, created_at=NOW + 1, account_id="oa00000b"),
        make("openai", "tie-a", order=1, created_at=NOW + 1, account_id="oa00000a"),
        make("openai", "first", order=0, account_id="oa000001"),
        make("openai", "team", namespace="team", order=0, account_id="oa0000t1"),
        make("anthropic", "one", order=7, account_id="an000001"),
        make("openai", "early", order=1, created_at=NOW - 9, account_id="oa000009"),
    ]


ORDER = ["an000001", "oa000001", "oa000009", "oa00000a", "oa00000b", "oa000005", "oa0000t1"]


def walk(accounts: list[Account], limit: int, **filters: Any) -> tuple[list[str], list[int]]:
    """Every page from the first to the last: the ids in order, and each page's total."""
    ids: list[str] = []
    totals: list[int] = []
    cursor = None
    while True:
        page = page_accounts(accounts, limit=limit, cursor=cursor, now=NOW, **filters)
        ids += [a.id for a in page.accounts]
        totals.append(page.total)
        if page.next_cursor is None:
            return ids, totals
        assert len(page.accounts) == limit
        cursor = page.next_cursor


# -- the decision, on its own --------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 100, MAX_LIMIT])
def test_pages_list_every_account_once_in_provider_namespace_order_creation_id_order(limit: int) -> None:
    """Whatever the page size, the pages together are every account exactly once, in one stable order."""
    ids, totals = walk(table(), limit)
    assert ids == ORDER
    assert set(totals) == {len(ORDER)}


@pytest.mark.parametrize(("filters", "expected"), [
    ({"provider": "openai"}, ["oa000001", "oa000009", "oa00000a", "oa00000b", "oa000005", "oa0000t1"]),
    ({"provider": "openai", "namespace": "team"}, ["oa0000t1"]),
    ({"namespace": "default"}, ["an000001", "oa000001", "oa000009", "oa00000a", "oa00000b", "oa000005"]),
    ({"state": "disabled"}, ["oa00000a"]),
    ({"state": "needs-reauth"}, ["oa000005"]),
    ({"state": "cooling"}, ["an000001"]),
    ({"state": "ready", "provider": "openai"}, ["oa000001", "oa000009", "oa00000b", "oa0000t1"]),
    ({"provider": "gemini"}, []),
])
def test_filters_select_by_provider_namespace_and_state_and_total_counts_the_matches(
        filters: dict[str, str], expected: list[str]) -> None:
    """Filters combine; total is the number of matches on every page together."""
    accounts = table()
    by_id = {a.id: a for a in accounts}
    transitions.set_enabled(by_id["oa00000a"], False)
    transitions.mark_needs_reauth(by_id["oa000005"], "refused")
    by_id["an000001"].cooldowns["*"] = by_id["an000001"].cooldowns.get("*") or _cooldown(NOW + 60)
    ids, totals = walk(accounts, 2, **filters)
    assert ids == expected
    assert set(totals) == {len(expected)}


def _cooldown(until: float) -> Any:
    from authpool.accounts import Cooldown

    return Cooldown(until=until, reason="429")


def test_a_cursor_stays_valid_while_accounts_are_added_and_removed_elsewhere() -> None:
    """The cursor is the last key shown, not an offset: removals never skip an account, additions after it show up."""
    accounts = table()
    first = page_accounts(accounts, limit=3, now=NOW)
    assert [a.id for a in first.accounts] == ORDER[:3]
    assert first.next_cursor is not None
    # Meanwhile: the account the cursor names is removed, so is one on the next page, and two are added:
    # one before the cursor's position (on no later page) and one after it.
    accounts = [a for a in accounts if a.id not in {"oa000009", "oa00000b"}]
    accounts += [make("anthropic", "new-early", account_id="an000000"),
                 make("openai", "new-late", order=9, account_id="oa000099")]
    second = page_accounts(accounts, limit=3, cursor=first.next_cursor, now=NOW)
    assert [a.id for a in second.accounts] == ["oa00000a", "oa000005", "oa000099"]
    third = page_accounts(accounts, limit=3, cursor=second.next_cursor, now=NOW)
    assert [a.id for a in third.accounts] == ["oa0000t1"] and third.next_cursor is None
    assert third.total == len(accounts)


BAD_CURSORS = [
    "", "garbage", "c1.", "c1.!!!!", "c2." + encode_cursor(listing_key(table()[0]))[3:],
    "c1." + "A" * 3000,
    "c1.bm90IGpzb24",  # "not json"
    "c1.WzEsMiwzXQ",  # [1,2,3]
    "c1.WyJhIiwiYiIsImMiLDEuMCwiZCJd",  # ["a","b","c",1.0,"d"]: order is not an integer
    "c1.WyJhIiwiYiIsMSxOYU4sImQiXQ",  # ["a","b",1,NaN,"d"]
    "c1.WyJhIiwiYiIsdHJ1ZSwxLjAsImQiXQ",  # ["a","b",true,1.0,"d"]
    "c1." + "\u00e9\u00e9",
]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
def test_a_cursor_no_listing_handed_out_is_one_clear_error_that_does_not_repeat_it(cursor: str) -> None:
    """A damaged or invented cursor is InvalidInput saying to start over; the message never echoes the cursor."""
    with pytest.raises(InvalidInput) as e:
        page_accounts(table(), cursor=cursor, now=NOW)
    assert str(e.value) == "the cursor is not one a listing handed out; list again without it to start over"


@pytest.mark.parametrize(("arguments", "message"), [
    ({"state": "asleep"}, "state must be one of ready, cooling, needs-reauth, refresh-failing, disabled"),
    ({"state": "Ready"}, "state must be one of"),
    ({"limit": 0}, f"limit must be between 1 and {MAX_LIMIT}"),
    ({"limit": MAX_LIMIT + 1}, f"limit must be between 1 and {MAX_LIMIT}"),
])
def test_a_bad_state_or_limit_is_invalid_input(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        page_accounts(table(), now=NOW, **arguments)


def test_pool_status_is_a_summary_whose_size_does_not_grow_with_the_pool() -> None:
    """Counts per state, the soonest next free, at most 20 accounts needing attention (dead logins first)."""
    def pool_of(n: int) -> list[Account]:
        accounts = [make("openai", f"k{i:05d}", order=i, account_id=f"k{i:07d}") for i in range(n)]
        for a in accounts[: n // 10]:
            transitions.mark_needs_reauth(a, "refused")
        for a in accounts[n // 10: n // 10 + 3]:
            a.cooldowns["*"] = _cooldown(NOW + 60 + a.order)
        return accounts

    small, large = pool_status(pool_of(300), NOW), pool_status(pool_of(30_000), NOW)
    openai = large["providers"][0]
    assert (openai["total"], openai["needs_reauth"], openai["cooling"]) == (30_000, 3000, 3)
    assert openai["ready"] == 30_000 - 3003 and openai["next_free_at"] == NOW + 60 + 3000
    assert len(openai["attention"]) == 20 and openai["attention_more"] == 2980
    assert openai["attention"][0] == {
        "id": "k0000000", "name": "openai/k00000", "state": "needs-reauth", "detail": "refused",
        "fix": "authpool accounts remove k0000000 && authpool accounts add-key openai --label k00000"}
    assert len(json.dumps(large)) < len(json.dumps(small)) + 100  # only the counts' digits differ


# -- the listing a store's snapshots keep ------------------------------------------------------------


FILTERS: list[dict[str, Any]] = [
    {}, {"provider": "openai"}, {"namespace": "team"}, {"provider": "openai", "namespace": "team"},
    {"state": "ready"}, {"state": "disabled"}, {"state": "needs-reauth"}, {"state": "cooling"},
    {"provider": "anthropic", "state": "ready"},
]


def pages(source: Any, limit: int, now: float, **filters: Any) -> list[tuple[list[str], int]]:
    """Every page of ``source`` (a Listing, a snapshot or a list): each page's ids and total."""
    from authpool.accounts.listing import Listing

    out: list[tuple[list[str], int]] = []
    cursor = None
    while True:
        page = (source.page(limit=limit, cursor=cursor, now=now, **filters) if isinstance(source, Listing)
                else page_accounts(source, limit=limit, cursor=cursor, now=now, **filters))
        out.append(([a.id for a in page.accounts], page.total))
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


def test_a_listing_kept_change_by_change_pages_exactly_like_one_sorted_afresh(home: Path) -> None:
    """Across adds, removals, state changes, reordering and namespace moves, the listing derived from
    the previous snapshot's pages every filter exactly as a listing built from the snapshot by sorting."""
    import random
    import time

    from authpool.accounts.listing import Listing

    rng = random.Random(15)
    pool = Pool.open(home)
    pool.add_api_keys("openai", [(f"o{i:03d}", f"sk-o-{i:03d}") for i in range(150)])
    pool.add_api_keys("openai", [(f"t{i:03d}", f"sk-t-{i:03d}") for i in range(40)], namespace="team")
    pool.add_api_keys("anthropic", [(f"a{i:03d}", f"sk-a-{i:03d}") for i in range(60)])
    previous = pool.store.read()
    kept = Listing.of(previous.accounts)
    for step in range(40):
        ids = [a.id for a in previous.accounts]
        picked = rng.sample(ids, 3)
        kind = step % 5
        if kind == 0:
            pool.add_api_keys(rng.choice(["openai", "anthropic"]),
                              [(f"n{step}-{j}", f"sk-n-{step}-{j}") for j in range(rng.randrange(1, 4))],
                              namespace=rng.choice(["default", "team"]))
        elif kind == 1:
            pool.remove(picked[0])
        else:
            def change(rows: Any, kind: int = kind, picked: list[str] = picked) -> None:
                for account_id in picked:
                    acc = rows.get(account_id)
                    if kind == 2:
                        transitions.set_enabled(acc, not acc.enabled)
                    elif kind == 3:
                        transitions.mark_needs_reauth(acc, "refused")
                        acc.cooldowns["*"] = _cooldown(time.time() + 600)
                    else:
                        acc.order = rng.randrange(0, 200)
                        acc.namespace = rng.choice(["default", "team"])

            pool.store.update_accounts(picked, change)
        snapshot = pool.store.read()
        changed = snapshot.changed_since(previous)
        assert changed is not None
        derived = kept.evolved(previous, snapshot, changed)
        assert derived is not None
        now = time.time()
        for filters in FILTERS:
            limit = rng.choice([1, 7, 50])
            afresh = pages(list(snapshot.accounts), limit, now, **filters)
            assert pages(derived, limit, now, **filters) == afresh
            assert pages(snapshot, limit, now, **filters) == afresh  # through the process's kept listing
        previous, kept = snapshot, derived


def test_pages_walked_while_another_process_adds_and_removes_show_every_other_account_once_in_order(
        home: Path, tmp_path: Path) -> None:
    """Between every two pages another process adds accounts (before and after the cursor) and removes
    some: the accounts that stay are each shown once, and the pages never go back in the order."""
    from tests.conftest import start_worker
    from tests.test_lock_queue import DEADLINE

    pool = Pool.open(home)
    stable = {a.id for a in pool.add_api_keys("openai", [(f"s{i:03d}", f"sk-s-{i:03d}") for i in range(120)])}
    count, stop = tmp_path / "rounds", tmp_path / "stop"
    churn = start_worker("churn", "openai", str(count), str(stop))

    def rounds() -> int:
        try:
            return int(count.read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def wait_past(n: int) -> int:
        import time

        deadline = time.monotonic() + DEADLINE
        while rounds() <= n:
            assert churn.poll() is None, churn.stderr.read() if churn.stderr else ""
            assert time.monotonic() < deadline, "the other process stopped changing the pool"
            time.sleep(0.005)
        return rounds()

    try:
        seen: list[Account] = []
        cursor = None
        done = wait_past(0)
        while True:
            page = page_accounts(pool.store.read(), provider="openai", limit=7, cursor=cursor)
            seen += page.accounts
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
            done = wait_past(done)  # the pool changes between every two pages
    finally:
        stop.touch()
        out, err = churn.communicate(timeout=DEADLINE)
    assert churn.returncode == 0, err
    assert json.loads(out)["rounds"] >= 17
    ids = [a.id for a in seen]
    assert len(ids) == len(set(ids))
    assert stable <= set(ids)
    keys = [listing_key(a) for a in seen]
    assert keys == sorted(keys)


# -- the MCP tool and resource ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


class Big:
    """A home with 250 openai keys (12 in namespace 'team', 30 with dead logins) and 3 anthropic keys."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.keys = [f"sk-page-{secrets.token_hex(12)}" for _ in range(253)]
        with pool_env(home):
            pool = Pool.open(home)
            pool.add_api_keys("openai", [(f"k{i:03d}", k) for i, k in enumerate(self.keys[:238])])
            pool.add_api_keys("openai", [(f"t{i:03d}", k) for i, k in enumerate(self.keys[238:250])],
                              namespace="team")
            pool.add_api_keys("anthropic", [(f"a{i}", k) for i, k in enumerate(self.keys[250:])])
            dead = [a.id for a in pool.accounts("openai")[:30]]
            pool.store.update_accounts(dead, lambda rows: [transitions.mark_needs_reauth(rows.get(i), "refused")
                                                           for i in dead])
            pool.close()


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Big:
    return Big(tmp_path_factory.mktemp("paging") / "home")


@pytest.fixture
async def client(big: Big) -> AsyncIterator[Any]:
    async with memory_session(big.home) as c:
        yield c


async def call(client: Any, big: Big, tool: str, args: dict[str, Any]) -> Any:
    result = await client.call_tool(tool, args)
    assert_no_secrets(result.model_dump_json(by_alias=True), big.keys)
    return result


async def ok(client: Any, big: Big, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await call(client, big, tool, args)
    assert result.is_error is False, text_of(result)
    out: dict[str, Any] = result.structured_content
    return out


@pytest.mark.anyio
async def test_list_accounts_pages_through_a_large_pool_with_next_cursor(client: Any, big: Big) -> None:
    """Default pages of 100: every account once, in order, total on each page, next_cursor null at the end."""
    pages, cursor = [], ""
    while True:
        page = await ok(client, big, "list_accounts", {"cursor": cursor} if cursor else {})
        pages.append(page)
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert [len(p["accounts"]) for p in pages] == [100, 100, 53]
    assert {p["total"] for p in pages} == {253}
    names = [a["name"] for p in pages for a in p["accounts"]]
    assert len(set(names)) == 253
    assert names[:3] == ["anthropic/a0", "anthropic/a1", "anthropic/a2"] and names[-1] == "openai/t011"


@pytest.mark.anyio
async def test_list_accounts_filters_by_provider_namespace_and_state(client: Any, big: Big) -> None:
    """total counts the matches; a filtered page carries only matching accounts."""
    team = await ok(client, big, "list_accounts", {"provider": "openai", "namespace": "team", "limit": 5})
    assert team["total"] == 12 and [a["name"] for a in team["accounts"]] == [f"openai/t{i:03d}" for i in range(5)]
    rest = await ok(client, big, "list_accounts", {"provider": "openai", "namespace": "team", "limit": 5,
                                                    "cursor": team["next_cursor"]})
    assert [a["name"] for a in rest["accounts"]] == [f"openai/t{i:03d}" for i in range(5, 10)]
    dead = await ok(client, big, "list_accounts", {"state": "needs-reauth", "limit": 1000})
    assert dead["total"] == 30 and dead["next_cursor"] is None
    assert {a["state"] for a in dead["accounts"]} == {"needs-reauth"}


@pytest.mark.anyio
@pytest.mark.parametrize(("args", "fragments"), [
    ({"cursor": "c1.garbage"}, ["the cursor is not one a listing handed out"]),
    ({"state": "sleepy"}, ["state must be one of ready, cooling"]),
    ({"limit": 0}, ["limit must be at least 1"]),
    ({"limit": 5000}, ["limit must be at most 1000"]),
    ({"limit": "many"}, ["limit must be an integer"]),
    ({"provider": "nope"}, ["unknown provider 'nope'"]),
])
async def test_a_bad_cursor_state_or_limit_is_a_one_line_tool_error(
        client: Any, big: Big, args: dict[str, Any], fragments: list[str]) -> None:
    text = assert_tool_error(await call(client, big, "list_accounts", args), *fragments)
    assert "\n" not in text.split(":\n", 1)[-1]
    assert "garbage" not in text


@pytest.mark.anyio
async def test_list_accounts_output_schema_is_strict_about_its_fields(client: Any) -> None:
    """The page's schema names accounts, total and next_cursor, all required, and allows nothing else."""
    tool = next(t for t in (await client.list_tools()).tools if t.name == "list_accounts")
    schema = tool.output_schema
    assert set(schema["required"]) == {"accounts", "total", "next_cursor"}
    assert schema["additionalProperties"] is False
    assert set(tool.input_schema["properties"]) == {"provider", "namespace", "state", "limit", "cursor"}
    status = next(t for t in (await client.list_tools()).tools if t.name == "pool_status").output_schema
    summary = status["$defs"]["ProviderSummary"]
    assert summary["additionalProperties"] is False and "accounts" not in summary["properties"]
    assert set(summary["required"]) >= {"total", "ready", "cooling", "needs_reauth", "attention", "attention_more"}


@pytest.mark.anyio
async def test_pool_status_stays_a_summary_and_lists_dead_logins_up_to_a_cap(client: Any, big: Big) -> None:
    """Counts per provider; at most 20 accounts that need attention, with the command that fixes each."""
    status = await ok(client, big, "pool_status", {})
    openai = next(p for p in status["providers"] if p["provider"] == "openai")
    assert (openai["total"], openai["ready"], openai["needs_reauth"]) == (250, 220, 30)
    assert len(openai["attention"]) == 20 and openai["attention_more"] == 10
    assert all(a["state"] == "needs-reauth" and a["fix"].startswith("authpool accounts remove")
               for a in openai["attention"])
    assert len(json.dumps(status)) < 10_000


@pytest.mark.anyio
async def test_the_accounts_resource_shows_the_first_page_and_says_how_to_see_the_rest(client: Any, big: Big) -> None:
    """authpool://accounts never grows with the pool: the first 100, the total, and a note naming list_accounts."""
    text = (await client.read_resource("authpool://accounts")).contents[0].text
    assert_no_secrets(text, big.keys)
    doc = json.loads(text)
    assert len(doc["accounts"]) == 100 and doc["total"] == 253 and doc["next_cursor"]
    assert "first 100 of 253" in doc["note"] and "list_accounts" in doc["note"]


# -- the CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def big_env(big: Big) -> Iterator[dict[str, str]]:
    yield {"AUTHPOOL_HOME": str(big.home), "PYTHON_KEYRING_BACKEND": "authpool.storage.vault.VaultKeyring"}


def test_accounts_list_prints_the_command_for_the_next_page_until_the_last(
        big: Big, big_env: dict[str, str]) -> None:
    """Following each printed next-page command walks the filtered accounts once; the last page prints none."""
    argv = ["accounts", "list", "--provider", "openai", "--namespace", "team", "--limit", "5"]
    seen: list[str] = []
    outputs: list[str] = []
    for _ in range(10):
        r = run_cli(*argv, env=big_env)
        assert r.returncode == 0, r.stderr
        outputs += [r.stdout, r.stderr]
        seen += [line.split()[1] for line in r.stdout.splitlines() if "openai/t" in line]
        nxt = [line for line in r.stdout.splitlines() if "next page:" in line]
        if not nxt:
            break
        assert "(12 match in all)" in nxt[0]
        argv = shlex.split(nxt[0].split("next page: ", 1)[1])[1:]  # without the leading `authpool`
    assert seen == [f"openai/t{i:03d}" for i in range(12)]
    assert_no_secrets(outputs, big.keys)
    listed = json.loads(run_cli("accounts", "list", "--state", "needs-reauth", "--json", "--limit", "1000",
                                env=big_env).stdout)
    assert listed["total"] == 30 and listed["next_cursor"] is None and len(listed["accounts"]) == 30


@pytest.mark.parametrize(("args", "message"), [
    (["--cursor", "c1.garbage"], "the cursor is not one a listing handed out"),
    (["--state", "sleepy"], "state must be one of"),
    (["--limit", "0"], "limit must be between 1 and 1000"),
])
def test_accounts_list_with_a_bad_cursor_state_or_limit_is_one_line(
        big_env: dict[str, str], args: list[str], message: str) -> None:
    r = run_cli("accounts", "list", *args, env=big_env)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.stderr


def test_status_stays_a_summary_with_the_accounts_that_need_attention_capped(
        big: Big, big_env: dict[str, str]) -> None:
    """`authpool status` prints a line per provider and at most 20 accounts needing attention, then how to see all."""
    r = run_cli("status", env=big_env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("anthropic: 3 ready") and "(3 accounts)" in lines[0]
    assert lines[1].startswith("openai: 220 ready, 0 cooling, 30 need re-auth") and "(250 accounts)" in lines[1]
    assert len(lines) == 2 + 20 + 1
    assert "... and 10 more: authpool accounts list --provider openai --state needs-reauth" in lines[-1]
    assert_no_secrets([r.stdout, r.stderr], big.keys)
    doc = json.loads(run_cli("status", "--json", env=big_env).stdout)
    assert [p["total"] for p in doc["providers"]] == [3, 250]


def test_a_live_view_lists_those_needing_a_person_first_in_pool_order_and_counts_the_rest() -> None:
    """The dashboard and `authpool top` refresh every second: past the limit they keep the dead
    login, then the cooling account, then ready ones by pool order (disabled last), shown in pool order."""
    accounts = table()
    by_id = {a.id: a for a in accounts}
    by_id["oa000001"].enabled = False
    by_id["oa00000a"].cooldowns["*"] = Cooldown(until=NOW + 60, reason="429")
    by_id["oa000005"].needs_reauth = True
    shown, matching = shown_accounts(accounts, NOW, limit=3)
    assert [a.id for a in shown] == ["an000001", "oa00000a", "oa000005"] and matching == 7
    shown, matching = shown_accounts(accounts, NOW, limit=6)
    assert [a.id for a in shown] == [i for i in ORDER if i != "oa000001"] and matching == 7  # disabled last
    assert [a.id for a in shown_accounts(accounts, NOW)[0]] == ORDER  # a small pool: whole, in order
    assert [a.id for a in shown_accounts(accounts, NOW, needle="TIE")[0]] == ["oa00000a", "oa00000b"]
    assert shown_accounts(accounts, NOW, needle="cool") == ([by_id["oa00000a"]], 1)  # a state matches too
    assert shown_accounts(accounts, NOW, needle="openai", limit=0) == ([], 6)
