"""The roster picks exactly what a full scan picks, however the pool changed since the last pick.

:func:`authpool.rotation.candidates.select` looks at every account and is obviously right; the
roster keeps heaps between requests and follows the store change by change. These tests drive
both over the same random pools (every strategy, with and without a reserve, cooldowns for the
whole account and for one model, needs-reauth, disabled accounts, renewals backing off, usage
windows resetting, session preferences, accounts added and removed) and demand the same answer
at every step: the same accounts in the same order (the roster offers the first few), and the
same ``soonest`` when nothing is ready. Pure functions; seeded, so a failure names its seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from authpool.accounts.model import (
    WHOLE_ACCOUNT,
    Account,
    ChangeLog,
    Cooldown,
    Counters,
    PoolFile,
    QuotaWindow,
    RefreshFailing,
)
from authpool.providers.provider import Provider
from authpool.rotation.candidates import select
from authpool.rotation.roster import Roster, Rosters
from authpool.rotation.strategy import STRATEGIES, UsageView

MODELS = ("small", "large")
T0 = 1_000_000.0


@dataclass
class World:
    """A pool's history as a store would hand it out, this process's usage views, and the time."""

    rng: random.Random
    provider: Provider
    pool: PoolFile
    history: ChangeLog = field(default_factory=ChangeLog)
    views: dict[str, UsageView] = field(default_factory=dict)
    now: float = T0
    revision: int = 1
    serial: int = 0

    def usage(self, a: Account) -> UsageView:
        return self.views.get(a.id, UsageView(last_used=0.0))

    def new_account(self) -> Account:
        self.serial += 1
        label = f"k{self.serial:05d}"
        return random_account(self.rng, f"id-{label}", label, self.now, self.provider.id)

    def commit(self, changed: list[Account], gone: list[str]) -> None:
        """One store change: a snapshot derived from the last, as the stores derive theirs."""
        self.revision += 1
        self.pool = self.pool.derive(self.revision, self.history, {a.id: a for a in changed}, gone, {}, ())


def random_account(rng: random.Random, account_id: str, label: str, now: float, provider: str) -> Account:
    cooldowns: dict[str, Cooldown] = {}
    if rng.random() < 0.25:
        cooldowns[WHOLE_ACCOUNT] = Cooldown(until=now + rng.choice((-5.0, 3.0, 40.0, 400.0)), reason="429", set_at=now)
    if rng.random() < 0.25:
        cooldowns[rng.choice(MODELS)] = Cooldown(until=now + rng.choice((-5.0, 7.0, 90.0)), reason="429", set_at=now)
    failing = None
    if rng.random() < 0.1:
        failing = RefreshFailing(since=now, next_try_at=now + rng.choice((-1.0, 20.0, 200.0)), reason="503",
                                 generation=0, token_refused=rng.random() < 0.5)
    return Account(
        id=account_id, provider=provider, label=label, kind=rng.choice(("oauth", "api_key")),
        enabled=rng.random() > 0.1, needs_reauth=rng.random() < 0.05, order=rng.randrange(5),
        cooldowns=cooldowns, counters=Counters(requests=rng.randrange(20)), refresh_failing=failing,
        # Expiring inside the mandatory window now, soon (time moves it in), or far away.
        access_expires_at=now + rng.choice((30.0, 90.0, 5000.0)),
    )


def random_view(rng: random.Random, now: float) -> UsageView:
    windows = {}
    if rng.random() < 0.5:
        windows["5h"] = QuotaWindow(used=rng.choice((0.1, 0.5, 0.95)), resets_at=now + rng.choice((4.0, 60.0, 900.0)),
                                    seen_at=now)
    return UsageView(last_used=now - rng.randrange(100), weight=rng.choice((1.0, 2.0)), unrecorded=rng.randrange(3),
                     quota_resets_at=now + rng.choice((10.0, 300.0)) if rng.random() < 0.5 else None,
                     windows=windows)


def world(seed: int, strategy: str, reserve: float | None, size: int) -> World:
    rng = random.Random(seed)
    provider = Provider(id="acme", strategy=strategy, reserve=reserve)  # type: ignore[arg-type]
    w = World(rng, provider, PoolFile())
    accounts = [w.new_account() for _ in range(size)]
    # A stray account of another provider: never in the roster.
    other = random_account(rng, "id-other", "other", T0, "elsewhere")
    w.pool = PoolFile(accounts=[*accounts, other]).freeze(w.revision, w.history)
    for a in accounts:
        if rng.random() < 0.7:
            w.views[a.id] = random_view(rng, T0)
    return w


def expected(w: World, *, exclude: set[str], model: str | None, prefer: str | None) -> tuple[list[str], float | None]:
    scope = [a for a in w.pool.accounts if a.provider == w.provider.id]
    sel = select(scope, w.provider, now=w.now, exclude=exclude, model=model, usage=w.usage)
    ids = [a.id for a in sel.ready]
    if prefer is not None and prefer in ids:
        ids = [prefer] + [i for i in ids if i != prefer]
    return ids, sel.soonest


def step(w: World, roster: Roster) -> None:
    """Change the world a little, as requests, other processes and time do."""
    rng = w.rng
    roll = rng.random()
    ids = [a.id for a in w.pool.for_provider("acme")]
    if roll < 0.45 and ids:  # another process changed some accounts (cooled, re-enabled, counted)
        changed = []
        for account_id in rng.sample(ids, min(len(ids), rng.randrange(1, 4))):
            fresh = random_account(rng, account_id, w.pool.get(account_id).label, w.now, "acme")  # type: ignore[union-attr]
            changed.append(fresh)
        w.commit(changed, [])
    elif roll < 0.55:  # an account added
        w.commit([w.new_account()], [])
    elif roll < 0.62 and ids:  # an account removed
        w.commit([], [rng.choice(ids)])
    elif roll < 0.8 and ids:  # this process used an account (its view changed; the usage log touches it)
        account_id = rng.choice(ids)
        w.views[account_id] = random_view(rng, w.now)
        roster.touch((account_id,))
    else:  # time passes: cooldowns end, windows reset, tokens enter their mandatory window
        w.now += rng.choice((1.0, 5.0, 45.0, 100.0, 500.0))


CASES = [(strategy, reserve) for strategy in STRATEGIES for reserve in (None, 50.0)]


@pytest.mark.parametrize(("strategy", "reserve"), CASES, ids=[f"{s}-reserve-{r}" for s, r in CASES])
def test_the_roster_offers_what_a_full_scan_would_choose_at_every_step(strategy: str, reserve: float | None) -> None:
    """400 steps of random change per seed: the offered accounts are the scan's first ones, in order."""
    for seed in range(6):
        w = world(seed, strategy, reserve, size=w_size(seed))
        roster = Roster(w.provider, None)
        for n in range(400):
            step(w, roster)
            ids = [a.id for a in w.pool.for_provider("acme")]
            exclude = set(w.rng.sample(ids, min(len(ids), w.rng.randrange(3))))
            model = w.rng.choice((None, *MODELS))
            prefer = w.rng.choice(ids) if ids and w.rng.random() < 0.3 else None
            offered = w.rng.choice((1, 3, 8))
            got = roster.select(w.pool, now=w.now, exclude=exclude, model=model, usage=w.usage, prefer=prefer,
                                offered=offered)
            want, soonest = expected(w, exclude=exclude, model=model, prefer=prefer)
            where = f"seed {seed}, step {n}"
            assert [a.id for a in got.ready] == want[:offered], where
            assert got.considered == len(ids), where
            if not want:
                assert got.soonest == soonest, where


def w_size(seed: int) -> int:
    return (3, 12, 40, 1, 0, 25)[seed % 6]


def test_a_snapshot_from_outside_the_history_rebuilds_the_roster() -> None:
    """A pool read afresh (another history) is not derived from the last: the roster starts over and agrees."""
    w = world(7, "least-used", None, size=30)
    roster = Roster(w.provider, None)
    roster.select(w.pool, now=w.now, exclude=set(), model=None, usage=w.usage)
    fresh = [random_account(w.rng, a.id, a.label, w.now, "acme") for a in w.pool.for_provider("acme")][:20]
    w.pool = PoolFile(accounts=fresh).freeze(1, ChangeLog())
    got = roster.select(w.pool, now=w.now, exclude=set(), model=None, usage=w.usage, offered=50)
    assert [a.id for a in got.ready] == expected(w, exclude=set(), model=None, prefer=None)[0]
    assert got.considered == 20


def test_a_namespace_roster_sees_only_its_namespace() -> None:
    """Accounts of another namespace are neither offered nor counted."""
    accounts = [Account(id=f"id-{n}", provider="acme", label=f"l{n}", kind="api_key", order=n,
                        namespace="team" if n % 2 else "default") for n in range(6)]
    pool = PoolFile(accounts=accounts).freeze(1, ChangeLog())
    roster = Roster(Provider(id="acme"), "team")
    got = roster.select(pool, now=T0, exclude=set(), model=None, usage=lambda a: UsageView(last_used=0.0))
    assert [a.id for a in got.ready] == ["id-1", "id-3", "id-5"]
    assert got.considered == 3


def test_stale_heap_entries_do_not_pile_up_when_one_account_is_used_over_and_over() -> None:
    """Each use re-places the account (a new heap entry); the heaps stay proportional to the pool."""
    accounts = [Account(id=f"id-{n}", provider="acme", label=f"l{n}", kind="api_key") for n in range(10)]
    pool = PoolFile(accounts=accounts).freeze(1, ChangeLog())
    roster = Roster(Provider(id="acme", strategy="round-robin"), None)
    last_used: dict[str, float] = {}
    for n in range(5000):
        got = roster.select(pool, now=T0 + n, exclude=set(), model=None,
                            usage=lambda a: UsageView(last_used=last_used.get(a.id, 0.0)), offered=1)
        last_used[got.ready[0].id] = T0 + n
        roster.touch((got.ready[0].id,))
    assert roster.heap_sizes()[0] <= 4 * len(accounts) + 64
    # Round robin: every account served its share.
    assert sorted(last_used) == [a.id for a in accounts]


def test_rosters_start_over_when_the_providers_settings_change() -> None:
    """A provider re-read with another strategy gets a new roster; the same settings keep theirs."""
    rosters = Rosters()
    first = Provider(id="acme")
    kept = rosters.get(first, None)
    assert rosters.get(first, None) is kept
    changed = rosters.get(first.model_copy(update={"strategy": "round-robin"}), None)
    assert changed is not kept and changed.provider.strategy == "round-robin"
    assert rosters.get(first, "team") is not rosters.get(first, None)  # one roster per namespace
