"""The rotation engine, driven by scripted facts: no sockets, no files, no threads, no real clock.

Each case gives the pool (accounts and their state), the answers the provider would give in
order, and what the engine must do: the attempt trail, the changes it writes, and who serves
the request (or which error ends it). A small in-memory driver performs the effects: the store
is a ``PoolFile`` in memory, secrets a dict, time a fake clock that moves only when the engine
sleeps.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from authpool.accounts.model import Account, Cooldown, PoolFile, Rows, SessionBinding
from authpool.accounts.secret import Secret
from authpool.auth.flight import Renewal
from authpool.errors import AllAccountsCooling, OriginRefused, PoolError, RefreshError, RequestFailed
from authpool.providers.provider import Provider
from authpool.rotation.effects import (
    Answer,
    Drop,
    LoadSecret,
    Peek,
    ReadBody,
    ReadPool,
    Refresh,
    RequestFacts,
    Send,
    Sleep,
    Touch,
    TryProbe,
    Unreachable,
    Write,
)
from authpool.rotation.engine import Engine, Served
from authpool.rotation.result import RotationOptions
from authpool.rotation.sse import StreamVerdict
from authpool.rotation.strategy import UsageView

NOW = 1_800_000_000.0
PROVIDER = Provider(id="acme", base_url="https://api.acme.test", auth="header:x-api-key",
                    reset_headers=["acme-ratelimit-reset"], default_cooldown=30.0, server_error_retries=2)


class FakeClock:
    """Moves only when the engine sleeps."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return NOW + self.t

    def monotonic(self) -> float:
        return self.t


@dataclass
class Reply:
    """One scripted answer: status, headers, body, and for a stream the verdict of peeking at it."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stream: StreamVerdict | None = None


def api_key(label: str, **fields: Any) -> Account:
    return Account(id=f"id-{label}", provider="acme", label=label, kind="api_key", secret_generation=1, **fields)


def oauth(label: str, **fields: Any) -> Account:
    return Account(id=f"id-{label}", provider="acme", label=label, kind="oauth", secret_generation=1, **fields)


@dataclass
class Driver:
    """Performs the engine's effects in memory and records them."""

    pool: PoolFile
    replies: list[Reply | Unreachable]
    refreshes: list[Renewal | PoolError] = field(default_factory=list)
    probes_taken_elsewhere: set[str] = field(default_factory=set)
    expires: dict[str, float | None] = field(default_factory=dict)
    clock: FakeClock = field(default_factory=FakeClock)
    writes: list[str] = field(default_factory=list)
    sent: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)
    current: Reply | None = None

    def secret(self, acc: Account) -> Secret:
        if acc.kind == "api_key":
            return Secret.from_api_key(f"key-of-{acc.label}")
        return Secret(kind="oauth", access_token=f"token-of-{acc.label}-{acc.secret_generation}",
                      refresh_token="r", expires_at=self.expires.get(acc.id, NOW + 3600))

    def perform(self, effect: Any) -> Any:  # noqa: PLR0911 - one branch per effect
        if isinstance(effect, ReadPool):
            return copy.deepcopy(self.pool)  # a snapshot, as a store's read is
        if isinstance(effect, LoadSecret):
            return self.secret(effect.account)
        if isinstance(effect, Touch):
            return None
        if isinstance(effect, TryProbe):
            return effect.account_id not in self.probes_taken_elsewhere
        if isinstance(effect, Send):
            self.sent.append((effect.account.label, dict(effect.headers)))
            reply = self.replies.pop(0)
            if isinstance(reply, Unreachable):
                return reply
            self.current = reply
            return Answer(reply.status, reply.headers, reply.stream is not None)
        if isinstance(effect, ReadBody):
            assert self.current is not None
            return self.current.body
        if isinstance(effect, Drop):
            return None
        if isinstance(effect, Peek):
            assert self.current is not None and self.current.stream is not None
            return self.current.stream
        if isinstance(effect, Sleep):
            self.sleeps.append(effect.seconds)
            self.clock.t += effect.seconds
            return None
        if isinstance(effect, Write):
            self.writes.append(effect.what)
            fresh = copy.deepcopy(self.pool)  # a store applies each change to a fresh read of the rows named
            rows = Rows({a.id: a for a in fresh.accounts if a.id in effect.ids}, fresh.sessions)
            result = effect.change(rows)
            fresh.sessions = rows.sessions
            self.pool = PoolFile.model_validate(fresh.model_dump())
            return result
        if isinstance(effect, Refresh):
            outcome = self.refreshes.pop(0)
            if isinstance(outcome, PoolError):
                raise outcome
            return outcome
        raise AssertionError(f"unexpected effect {effect!r}")

    def run(self, options: RotationOptions | None = None, *, path: str = "/v1/messages",
            body: bytes | None = b'{"model": "m1"}') -> tuple[Served | PoolError, Engine]:
        facts = RequestFacts(method="POST", scheme="https", host="api.acme.test", port=443, path=path,
                             has_userinfo=False, header_names=frozenset({"content-type"}), body=body,
                             replayable=True)
        engine = Engine(PROVIDER, options or RotationOptions(), facts,
                        usage=lambda a, now: UsageView(0.0), clock=self.clock)
        flow = engine.run()
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = flow.throw(error) if error is not None else flow.send(value)
            except StopIteration as stop:
                return stop.value, engine
            except PoolError as e:
                return e, engine
            value, error = None, None
            try:
                value = self.perform(effect)
            except PoolError as e:
                error = e

    def account(self, label: str) -> Account:
        return self.pool.find(f"acme/{label}")


def trail(engine: Engine) -> list[tuple[str, int | None, str]]:
    return [(a.account.split("/")[1], a.status, a.outcome) for a in engine.attempts]


def renewed(label: str, generation: int, *, performed: bool = True) -> Renewal:
    return Renewal(Secret(kind="oauth", access_token=f"token-of-{label}-{generation}", refresh_token="r2",
                          expires_at=NOW + 3600), performed)


@dataclass
class Case:
    accounts: list[Account]
    replies: list[Reply | Unreachable]
    trail: list[tuple[str, int | None, str]]
    served: str | type[PoolError]  # the label that served, or the error that ended the request
    writes: list[str] = field(default_factory=list)
    refreshes: list[Renewal | PoolError] = field(default_factory=list)
    options: RotationOptions = field(default_factory=RotationOptions)
    check: Callable[[Driver], None] | None = None


def _cooled_until(label: str, until: float, scope: str = "*") -> Callable[[Driver], None]:
    def check(d: Driver) -> None:
        assert d.account(label).cooldowns[scope].until == pytest.approx(until)

    return check


CASES: dict[str, Case] = {
    "a 200 is the answer": Case(
        [api_key("a"), api_key("b")], [Reply(200)], [("a", 200, "ok")], "a"),
    "a 429 with Retry-After cools the account for that long and the next one serves": Case(
        [api_key("a"), api_key("b")], [Reply(429, {"retry-after": "30"}), Reply(200)],
        [("a", 429, "rate_limited"), ("b", 200, "ok")], "b", ["cool"], check=_cooled_until("a", NOW + 30)),
    "a 429 with retry-after-ms": Case(
        [api_key("a"), api_key("b")], [Reply(429, {"retry-after-ms": "1500"}), Reply(200)],
        [("a", 429, "rate_limited"), ("b", 200, "ok")], "b", ["cool"], check=_cooled_until("a", NOW + 1.5)),
    "a 429 with the provider's reset header": Case(
        [api_key("a"), api_key("b")], [Reply(429, {"acme-ratelimit-reset": "45s"}), Reply(200)],
        [("a", 429, "rate_limited"), ("b", 200, "ok")], "b", ["cool"], check=_cooled_until("a", NOW + 45)),
    "a 429 whose body names a reset deadline and a model cools only that model": Case(
        [api_key("a"), api_key("b")],
        [Reply(429, body=b'{"error": {"resets_in_seconds": 90, "model": "m1"}}'), Reply(200)],
        [("a", 429, "rate_limited"), ("b", 200, "ok")], "b", ["cool"], check=_cooled_until("a", NOW + 90, "m1")),
    "a 429 with no reset information cools for the exponential default": Case(
        [api_key("a", backoff_level=2), api_key("b")], [Reply(429), Reply(200)],
        [("a", 429, "rate_limited"), ("b", 200, "ok")], "b", ["cool"], check=_cooled_until("a", NOW + 120)),
    "a 401 on an OAuth token refreshes it and retries the same account": Case(
        [oauth("a"), api_key("b")], [Reply(401), Reply(200)],
        [("a", 401, "refreshed"), ("a", 200, "ok")], "a", refreshes=[renewed("a", 2)]),
    "a 401 on a token another process minted earns one real refresh of its own": Case(
        [oauth("a"), api_key("b")], [Reply(401), Reply(401), Reply(200)],
        [("a", 401, "refreshed"), ("a", 401, "refreshed"), ("a", 200, "ok")], "a",
        refreshes=[renewed("a", 2, performed=False), renewed("a", 3)]),
    "a 401 on a token this request minted itself marks the login dead once another account is accepted": Case(
        [oauth("a"), api_key("b")], [Reply(401), Reply(401), Reply(200)],
        [("a", 401, "refreshed"), ("a", 401, "needs_reauth"), ("b", 200, "ok")], "b",
        ["refuse", "confirm-refusals"], refreshes=[renewed("a", 2)]),
    "a refused API key is a suspect until another key is accepted": Case(
        [api_key("a"), api_key("b")], [Reply(401), Reply(200)],
        [("a", 401, "needs_reauth"), ("b", 200, "ok")], "b", ["refuse", "confirm-refusals"],
        check=lambda d: d.account("a").needs_reauth or pytest.fail("a was not marked")),
    "every key refused the same way marks none and points at the configuration": Case(
        [api_key("a"), api_key("b")], [Reply(401), Reply(401)],
        [("a", 401, "unauthorized"), ("b", 401, "unauthorized")], RequestFailed, ["refuse", "refuse"],
        check=lambda d: not d.account("a").needs_reauth or pytest.fail("a was marked")),
    "a 403 moves on without marking the account": Case(
        [api_key("a"), api_key("b")], [Reply(403), Reply(200)],
        [("a", 403, "forbidden"), ("b", 200, "ok")], "b", ["refuse"]),
    "5xx is retried with backoff, then the next account serves": Case(
        [api_key("a"), api_key("b")], [Reply(500), Reply(503), Reply(502), Reply(200)],
        [("a", 500, "server_error"), ("a", 503, "server_error"), ("a", 502, "server_error"), ("b", 200, "ok")],
        "b", check=lambda d: len(d.sleeps) == 2 or pytest.fail(str(d.sleeps))),
    "5xx with nobody left to try is the answer": Case(
        [api_key("a")], [Reply(500), Reply(500), Reply(500)],
        [("a", 500, "server_error")] * 3, "a"),
    "network errors are retried with backoff, then the next account serves": Case(
        [api_key("a"), api_key("b")], [Unreachable("timed out")] * 3 + [Reply(200)],
        [("a", None, "network_error")] * 3 + [("b", 200, "ok")], "b"),
    "every account cooling and no wait budget fails saying when the next frees up": Case(
        [api_key("a", cooldowns={"*": Cooldown(until=NOW + 60, reason="429", set_at=NOW)})], [],
        [], AllAccountsCooling),
    "every account cooling within the wait budget waits for the soonest": Case(
        [api_key("a", cooldowns={"*": Cooldown(until=NOW + 20, reason="429", set_at=NOW)}, probation=True)],
        [Reply(200)], [("a", 200, "ok")], "a", ["success"], options=RotationOptions(wait_budget=60),
        check=lambda d: d.sleeps == [pytest.approx(20.05)] or pytest.fail(str(d.sleeps))),
    "an account on probation is probed, and a success ends its probation": Case(
        [api_key("a", cooldowns={"*": Cooldown(until=NOW - 1, reason="429", set_at=NOW - 60)}, probation=True),
         api_key("b")],
        [Reply(200)], [("a", 200, "ok")], "a", ["success"],
        check=lambda d: (not d.account("a").probation and not d.account("a").cooldowns) or pytest.fail("probing")),
    "a stream that opens with a rate-limit event cools the account and rotates": Case(
        [api_key("a"), api_key("b")],
        [Reply(200, stream=StreamVerdict("rate_limited", {"type": "rate_limit_error"})),
         Reply(200, stream=StreamVerdict("content"))],
        [("a", 200, "stream_rate_limited"), ("b", 200, "ok")], "b", ["cool"]),
    "a stream that opens overloaded moves on without a cooldown": Case(
        [api_key("a"), api_key("b")],
        [Reply(200, stream=StreamVerdict("overloaded", {"type": "overloaded_error"})),
         Reply(200, stream=StreamVerdict("content"))],
        [("a", 200, "stream_overloaded"), ("b", 200, "ok")], "b"),
    "a failed mandatory refresh skips the account before anything is sent": Case(
        [oauth("a", access_expires_at=NOW - 1), api_key("b")], [Reply(200)],
        [("a", None, "refresh_failed"), ("b", 200, "ok")], "b",
        refreshes=[RefreshError("the token endpoint of acme answered HTTP 500")]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_engine_decides(name: str) -> None:
    """Each scripted case: the trail, the writes, and who serves (or how the request ends)."""
    case = CASES[name]
    driver = Driver(PoolFile(accounts=case.accounts), list(case.replies), list(case.refreshes))
    for acc in case.accounts:
        if acc.access_expires_at is not None:
            driver.expires[acc.id] = acc.access_expires_at
    verdict, engine = driver.run(case.options)
    assert trail(engine) == case.trail
    if isinstance(case.served, str):
        assert isinstance(verdict, Served), verdict
        assert verdict.account.label == case.served
    else:
        assert isinstance(verdict, case.served), verdict
    assert driver.writes == case.writes
    assert driver.replies == [], "the engine did not use every scripted answer"
    if case.check is not None:
        case.check(driver)


def test_the_credential_goes_in_the_provider_s_header_and_fixed_headers_fill_only_gaps() -> None:
    """x-api-key carries the key; a provider header the caller did not set is added."""
    provider_headers = PROVIDER.model_copy(update={"headers": {"acme-version": "2", "content-type": "text/plain"}})
    driver = Driver(PoolFile(accounts=[api_key("a")]), [Reply(200)])
    facts = RequestFacts(method="GET", scheme="https", host="api.acme.test", port=443, path="/v1/models",
                         has_userinfo=False, header_names=frozenset({"content-type"}), body=None, replayable=True)
    flow = Engine(provider_headers, RotationOptions(), facts, usage=lambda a, now: UsageView(0.0),
                  clock=driver.clock).run()
    value: Any = None
    while True:
        try:
            effect = flow.send(value)
        except StopIteration:
            break
        value = driver.perform(effect)
    assert driver.sent == [("a", {"acme-version": "2", "x-api-key": "key-of-a"})]


def test_a_session_goes_to_its_bound_account_first_and_a_new_binding_is_written() -> None:
    """b is bound to the session: it serves although a comes first; an unbound session binds."""
    pool = PoolFile(accounts=[api_key("a"), api_key("b")],
                    sessions={"acme/s1": SessionBinding(account_id="id-b", expires_at=NOW + 3000)})
    driver = Driver(pool, [Reply(200), Reply(200)])
    verdict, _ = driver.run(RotationOptions(session="s1"))
    assert isinstance(verdict, Served) and verdict.account.label == "b"
    assert driver.writes == []  # bound, and fresh enough: nothing to write
    verdict, _ = driver.run(RotationOptions(session="s2"))
    assert isinstance(verdict, Served) and verdict.account.label == "a"
    assert driver.writes == ["success"]
    assert driver.pool.sessions["acme/s2"].account_id == "id-a"


def test_a_probe_another_request_holds_sends_this_one_to_the_next_account() -> None:
    """a is on probation and someone else is probing it: b serves, a is not touched."""
    ended = {"*": Cooldown(until=NOW - 1, reason="429", set_at=NOW - 60)}
    driver = Driver(PoolFile(accounts=[api_key("a", cooldowns=ended, probation=True), api_key("b")]),
                    [Reply(200)], probes_taken_elsewhere={"id-a"})
    verdict, engine = driver.run()
    assert isinstance(verdict, Served) and verdict.account.label == "b"
    assert trail(engine) == [("b", 200, "ok")]


def test_a_mandatory_refresh_happens_before_the_request_and_its_token_is_sent() -> None:
    """A token inside the mandatory window is renewed first; the renewed token goes out."""
    driver = Driver(PoolFile(accounts=[oauth("a")]), [Reply(200)], [renewed("a", 2)])
    driver.expires["id-a"] = NOW + 10
    verdict, engine = driver.run()
    assert isinstance(verdict, Served)
    assert driver.sent[0][1]["authorization"] == "Bearer token-of-a-2"
    assert trail(engine) == [("a", 200, "ok")]


def test_a_url_off_the_provider_s_origins_is_refused_before_any_effect() -> None:
    """The origin check is the first decision: nothing is read, sent or written."""
    facts = RequestFacts(method="GET", scheme="https", host="evil.test", port=443, path="/x", has_userinfo=False,
                         header_names=frozenset(), body=None, replayable=True)
    flow = Engine(PROVIDER, RotationOptions(), facts, usage=lambda a, now: UsageView(0.0), clock=FakeClock()).run()
    with pytest.raises(OriginRefused, match="evil.test:443 is not an origin of provider acme"):
        flow.send(None)


def test_a_success_clears_a_cooldown_another_process_recorded_meanwhile_in_its_scope() -> None:
    """A cooldown written after this request picked the account is stale once the account served: it goes."""

    class Racing(Driver):
        def perform(self, effect: Any) -> Any:
            if isinstance(effect, Send):  # another process records a 429 while this request is out
                self.pool.find("acme/a").cooldowns["*"] = Cooldown(until=NOW + 600, reason="429", set_at=NOW)
                self.pool.find("acme/a").backoff_level = 1
            return super().perform(effect)

    driver = Racing(PoolFile(accounts=[api_key("a")]), [Reply(200)])
    verdict, _ = driver.run()
    assert isinstance(verdict, Served)
    assert driver.writes == ["success"]
    assert driver.account("a").cooldowns == {}
