"""Rotation under real traffic: streams, per-model limits, body deadlines, probation, sessions, migration.

Every request is real HTTP to a LoopbackProvider on 127.0.0.1 through the pool's own transport.
"Another process" is a real one: the ``authpool request`` CLI or a worker from ``tests/workers.py``;
the MCP tools run in memory, called by the official MCP client. Nothing of ours is patched;
waits poll for a state (never assert on elapsed time).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from authpool import Pool
from authpool.events import EventFilter, read_events
from authpool.providers.builtin import BUILTIN_PROVIDERS
from authpool.server.loopback import LoopbackProvider, LoopbackRequest, LoopbackResponse
from tests.conftest import LoopbackPool, assert_no_secrets, home_texts, raw_pool, run_cli, start_worker
from tests.mcp_support import Lab, Session, assert_tool_error, lab_session, pool_env

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
BODY = {"model": "loopback-small", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**BODY, "stream": True}


def trail(response: httpx2.Response) -> list[tuple[str, int | None, str]]:
    """(account label, status, outcome) per attempt of a served response."""
    return [(a.account.split("/")[1], a.status, a.outcome) for a in response.extensions["authpool"].attempts]


def events_of(text: str) -> list[tuple[str, str]]:
    """(event name, data) per server-sent event; written here, independently of pool.sse."""
    out = []
    for block in text.replace("\r\n", "\n").strip().split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        out.append((name, "\n".join(data)))
    return out


def text_of_stream(text: str) -> str:
    """The generated text: Anthropic text deltas or OpenAI chat-completion chunk deltas."""
    out = []
    for _, data in events_of(text):
        doc = json.loads(data) if data.startswith("{") else {}
        if doc.get("type") == "content_block_delta":
            out.append(doc["delta"]["text"])
        for choice in doc.get("choices") or []:
            out.append(choice["delta"].get("content") or "")
    return "".join(out)


def stream_sync(acme: LoopbackPool, path: str, body: dict[str, Any]) -> tuple[httpx2.Response, str]:
    """POST through pool.sync_client with send(stream=True); the response and its whole text."""
    with acme.pool.sync_client("acme") as client:
        response = client.send(client.build_request("POST", path, json=body), stream=True)
        try:
            text = "".join(response.iter_text())
        finally:
            response.close()
    return response, text


def stream_async(acme: LoopbackPool, path: str, body: dict[str, Any]) -> tuple[httpx2.Response, str]:
    """POST through pool.client(...).stream(...); the response and its whole text."""

    async def go() -> tuple[httpx2.Response, str]:
        async with acme.pool.client("acme") as client, client.stream("POST", path, json=body) as response:
            return response, "".join([chunk async for chunk in response.aiter_text()])

    return asyncio.run(go())


STREAMERS = {"sync-send": stream_sync, "async-stream": stream_async}


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll until ``condition()`` holds; fail naming ``what`` if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextlib.contextmanager
def held_together(lp: LoopbackProvider, n: int) -> Iterator[list[bool]]:
    """Hold API requests at the provider until ``n`` wait there together, then let them all go.

    Requests that must race (one picks while another is in flight) are then in flight together
    for sure, however busy the machine. Yields a list that ends up holding whether they met.
    """
    met: list[bool] = []

    def release_when_all_arrived() -> None:
        met.append(lp.wait_for_held_requests(n, 60.0))
        lp.release_api_requests()

    lp.hold_api_requests()
    releaser = threading.Thread(target=release_when_all_arrived, daemon=True)
    releaser.start()
    try:
        yield met
    finally:
        lp.release_api_requests()
        releaser.join(timeout=60)


def sleep_until(ts: float) -> None:
    while (left := ts - time.time()) > 0:
        time.sleep(left + 0.01)


def calls(lp: LoopbackProvider, subject: str) -> int:
    return int(lp.snapshot()["api_calls_by_subject"].get(subject, 0))


def cli_subject(result: Any) -> str:
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["subject"])


# -- streams that open with an error ----------------------------------------------------------------


@pytest.mark.parametrize("flavour", list(STREAMERS))
def test_a_stream_opening_with_a_rate_limit_event_rotates_invisibly(acme: LoopbackPool, flavour: str) -> None:
    """200 + `event: error` (rate_limit_error) on a: the caller reads only b's stream; a's cooldown is persisted."""
    acme.add_oauth_accounts(2)
    acme.lp.set_stream_error("a", "error-first")
    before = time.time()
    response, text = STREAMERS[flavour](acme, MESSAGES, STREAM)
    assert response.status_code == 200
    assert trail(response) == [("a", 200, "stream_rate_limited"), ("b", 200, "ok")]
    names = [name for name, _ in events_of(text)]
    assert "error" not in names and names[0] == "message_start" and names[-1] == "message_stop"
    assert text_of_stream(text) == "Hello from b."
    assert '"subject": "a"' not in text

    a = acme.account_json("a")  # written before the first byte reached the caller
    cooldown = a["cooldowns"]["*"]
    assert cooldown["until"] - cooldown["set_at"] == pytest.approx(30.0)  # no deadline in the event: the default
    assert before <= cooldown["set_at"] <= time.time()
    assert cooldown["reason"] == "stream (default)"
    assert (a["counters"]["rate_limited"], a["backoff_level"], a["probation"]) == (1, 1, True)
    assert response.extensions["authpool"].attempts[0].cooldown_until == pytest.approx(cooldown["until"])
    stats = acme.lp.snapshot()
    assert stats["api_calls_by_subject"] == {"a": 1, "b": 1}
    # Another process does not try a while it cools.
    cli = run_cli("request", "acme", "POST", MESSAGES, "--json", json.dumps(STREAM))
    assert cli.returncode == 0, cli.stderr
    assert text_of_stream(cli.stdout) == "Hello from b."
    assert calls(acme.lp, "a") == 1
    assert_no_secrets([text, cli.stdout, cli.stderr, *home_texts(acme.home)], acme.secrets())


def test_an_openai_style_stream_opening_with_an_error_chunk_rotates_and_cools_the_model_it_names(
    acme: LoopbackPool,
) -> None:
    """A chat stream opening `data: {"error": rate_limit_exceeded…}`: b streams; a cools for the named model."""
    acme.add_oauth_accounts(2)
    acme.lp.set_stream_error("a", "error-first")
    response, text = stream_async(acme, CHAT, STREAM)
    assert trail(response) == [("a", 200, "stream_rate_limited"), ("b", 200, "ok")]
    assert text_of_stream(text) == "Hello from b."
    assert events_of(text)[-1] == ("message", "[DONE]")
    assert "error" not in text
    a = acme.account_json("a")
    # "Rate limit reached for loopback-small in organization …": only that model's scope cools.
    assert list(a["cooldowns"]) == ["loopback-small"]
    assert response.extensions["authpool"].attempts[0].detail == "default; model loopback-small"
    # The same account still serves another model.
    with acme.pool.sync_client("acme") as client:
        other = client.post(CHAT, json={**BODY, "model": "loopback-large"})
    assert trail(other) == [("a", 200, "ok")]


@pytest.mark.parametrize("path", [MESSAGES, CHAT])
def test_a_stream_opening_with_an_overloaded_error_rotates_without_a_cooldown(acme: LoopbackPool, path: str) -> None:
    """overloaded_error (or an OpenAI server_error chunk) first: the next account serves; a gets no cooldown."""
    acme.add_oauth_accounts(2)
    acme.lp.set_stream_error("a", "overloaded-first")
    response, text = stream_sync(acme, path, STREAM)
    assert trail(response) == [("a", 200, "stream_overloaded"), ("b", 200, "ok")]
    assert text_of_stream(text) == "Hello from b."
    a = acme.account_json("a")
    assert (a["cooldowns"], a["backoff_level"], a["probation"], a["needs_reauth"], a["enabled"]) == (
        {}, 0, False, False, True)
    assert a["counters"]["rate_limited"] == 0
    # Overload is not a limit of the account: the next request starts with a again.
    acme.lp.set_stream_error("a", None)
    response, text = stream_sync(acme, path, STREAM)
    assert trail(response) == [("a", 200, "ok")]


@pytest.mark.parametrize("path", [MESSAGES, CHAT])
@pytest.mark.parametrize("flavour", list(STREAMERS))
def test_a_stream_failing_after_content_surfaces_once_without_duplication(
    acme: LoopbackPool, path: str, flavour: str
) -> None:
    """Content, then an error event: the caller gets the content once and then the error; no other account is tried."""
    acme.add_oauth_accounts(2)
    acme.lp.set_stream_error("a", "error-after-content")
    response, text = STREAMERS[flavour](acme, path, STREAM)
    assert response.status_code == 200
    assert trail(response) == [("a", 200, "ok")]
    assert text_of_stream(text) == "Hello"
    assert text.count('"Hello"') == 1
    last_name, last_data = events_of(text)[-1]
    assert last_name == "error" or last_data.startswith('{"error"')
    assert "rate_limit" in last_data
    assert acme.lp.snapshot()["api_calls_by_subject"] == {"a": 1}
    assert acme.account_json("a")["cooldowns"] == {}  # delivered content is the caller's: nothing to rotate


def test_a_stream_rate_limit_without_a_deadline_backs_off_exponentially_until_a_success(acme: LoopbackPool) -> None:
    """No reset information: the default cooldown, doubled on a repeat; a successful probe resets the level."""
    acme.configure("acme", default_cooldown=0.2, max_cooldown=60.0)
    acme.add_oauth_accounts(2)
    acme.lp.set_stream_error("a", "error-first")
    lasted = []
    for _ in range(2):
        response, _ = stream_sync(acme, MESSAGES, STREAM)
        assert [t[2] for t in trail(response)] == ["stream_rate_limited", "ok"]
        cooldown = acme.account_json("a")["cooldowns"]["*"]
        lasted.append(cooldown["until"] - cooldown["set_at"])
        sleep_until(cooldown["until"])
    assert lasted == pytest.approx([0.2, 0.4])
    assert acme.account_json("a")["backoff_level"] == 2
    acme.lp.set_stream_error("a", None)
    response, text = stream_sync(acme, MESSAGES, STREAM)
    assert trail(response) == [("a", 200, "ok")]
    a = acme.account_json("a")
    assert (a["backoff_level"], a["probation"]) == (0, False)


# -- per-model cooldown scopes ------------------------------------------------------------------------


def test_a_gemini_path_model_limit_cools_only_that_model_of_the_account(acme: LoopbackPool) -> None:
    """A 429 whose QuotaFailure names the path's model cools that scope; another model keeps using the account."""
    acme.add_oauth_accounts(2)
    acme.lp.set_rate_limit("a", 0, "google-retry-info", 120, model="gemini-pro-x")
    content = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    before = time.time()
    with acme.pool.sync_client("acme") as client:
        r = client.post("/v1beta/models/gemini-pro-x:generateContent", json=content)
        assert (r.status_code, r.json()["subject"]) == (200, "b")
        assert trail(r) == [("a", 429, "rate_limited"), ("b", 200, "ok")]
        a = acme.account_json("a")
        assert list(a["cooldowns"]) == ["gemini-pro-x"]
        assert before + 119 <= a["cooldowns"]["gemini-pro-x"]["until"] <= time.time() + 121
        assert "model gemini-pro-x" in a["last_error"]

        other = client.post("/v1beta/models/gemini-flash-x:generateContent", json=content)
        assert trail(other) == [("a", 200, "ok")]
        again = client.post("/v1beta/models/gemini-pro-x:generateContent", json=content)
        assert trail(again) == [("b", 200, "ok")]
    assert calls(acme.lp, "a") == 2


# -- deadlines carried in bodies and unified headers ---------------------------------------------------

RESET = 754.5  # seconds; not a round number, so every rounding path shows


@pytest.mark.parametrize(("style", "source"), [
    ("codex-resets-at", "body"),
    ("codex-resets-in", "body"),
    ("google-retry-info", "body"),
    ("google-quota-reset", "body"),
    # The 5h window (resetting in RESET/4) still has room; the weekly one, the latest, decides.
    ("anthropic-unified", "anthropic-ratelimit-unified-7d-reset"),
])
def test_a_reset_deadline_in_the_body_or_unified_headers_sets_the_persisted_cooldown(
    acme: LoopbackPool, style: str, source: str
) -> None:
    """Each shape of reset information yields a cooldown ending when the provider said (within rounding)."""
    acme.configure("acme", reset_headers=list(BUILTIN_PROVIDERS["anthropic"].reset_headers))
    acme.add_oauth_accounts(2)
    acme.lp.set_rate_limit("a", 0, style, RESET)
    before = time.time()
    with acme.pool.sync_client("acme") as client:
        r = client.post(CHAT, json=BODY)
    after = time.time()
    assert (r.status_code, r.json()["subject"]) == (200, "b")
    assert trail(r) == [("a", 429, "rate_limited"), ("b", 200, "ok")]
    assert r.extensions["authpool"].attempts[0].detail == source
    a = acme.account_json("a")
    assert list(a["cooldowns"]) == ["*"]
    until = a["cooldowns"]["*"]["until"]
    assert before + RESET - 1.5 <= until <= after + RESET + 1.5
    assert a["backoff_level"] == 0  # the provider said when: not the exponential default
    assert a["cooldowns"]["*"]["reason"] == f"429 ({source})"


# -- cooling pools --------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_with_cooling_response_a_cooling_pool_answers_429_with_retry_after_until_the_next_account(
    acme: LoopbackPool, flavour: str
) -> None:
    """cooling_response=True: instead of AllAccountsCooling, a 429 whose Retry-After is the seconds to the next."""
    acme.add_oauth_accounts(2)
    acme.lp.set_rate_limit("a", 0, "retry-after-seconds", 40)
    acme.lp.set_rate_limit("b", 0, "retry-after-seconds", 90)
    transport = acme.pool.transport("acme", cooling_response=True)

    def send_sync() -> httpx2.Response:
        with httpx2.Client(transport=transport, base_url=acme.lp.base_url) as client:
            return client.post(CHAT, json=BODY)

    async def send_async() -> httpx2.Response:
        async with httpx2.AsyncClient(transport=transport, base_url=acme.lp.base_url) as client:
            return await client.post(CHAT, json=BODY)

    send = send_sync if flavour == "sync" else lambda: asyncio.run(send_async())
    for _ in range(2):  # the first tries both accounts; the second finds them cooling and sends nothing
        r = send()
        answered = time.time()
        assert r.status_code == 429
        next_free = acme.account_json("a")["cooldowns"]["*"]["until"]
        assert abs(int(r.headers["retry-after"]) - (next_free - answered)) <= 1.5
        error = r.json()["error"]
        assert error["type"] == "all_accounts_cooling"
        assert error["retry_after_seconds"] == int(r.headers["retry-after"])
        assert "acme/a: cooling until" in error["message"] and "acme/b: cooling until" in error["message"]
    assert acme.lp.snapshot()["api_calls"] == 2
    assert_no_secrets(json.dumps(error), acme.secrets())


# -- probation after a cooldown --------------------------------------------------------------------------


def test_after_a_cooldown_one_request_probes_the_account_while_a_racing_one_uses_another(acme: LoopbackPool) -> None:
    """Two concurrent requests after a's cooldown: exactly one goes to a; after its success a takes full traffic."""
    acme.add_oauth_accounts(2)
    acme.lp.set_rate_limit("a", 0, "retry-after-ms", 0.3)
    with acme.pool.sync_client("acme") as client:
        assert client.post(CHAT, json=BODY).json()["subject"] == "b"
    a = acme.account_json("a")
    assert a["probation"] is True
    acme.lp.clear_rate_limit("a")
    sleep_until(a["cooldowns"]["*"]["until"])

    async def race() -> list[httpx2.Response]:
        async with acme.pool.client("acme") as client:
            return list(await asyncio.gather(client.post(CHAT, json=BODY), client.post(CHAT, json=BODY)))

    before = acme.lp.snapshot()["api_calls_by_subject"]
    with held_together(acme.lp, 2) as met:  # the second request picks while the probe is in flight
        first = asyncio.run(race())
    assert met == [True]
    assert sorted(r.json()["subject"] for r in first) == ["a", "b"]
    assert sorted(trail(r)[0] for r in first) == [("a", 200, "ok"), ("b", 200, "ok")]  # nobody queued behind a
    after = acme.lp.snapshot()["api_calls_by_subject"]
    assert (after["a"] - before["a"], after["b"] - before["b"]) == (1, 1)
    a = acme.account_json("a")
    assert (a["probation"], a["backoff_level"]) == (False, 0)  # cleared in pool.json by the probe's success

    with held_together(acme.lp, 2) as met:
        second = asyncio.run(race())
    assert met == [True]
    assert [r.json()["subject"] for r in second] == ["a", "a"]


def test_a_model_scoped_cooldown_is_probed_for_that_model_only(acme: LoopbackPool) -> None:
    """a cools for model-x only: model-y keeps full traffic on a; when x's cooldown ends, one x request probes a."""
    acme.add_oauth_accounts(2)
    acme.lp.set_rate_limit("a", 0, "retry-after-ms", 0.3, model="model-x")
    x, y = {**BODY, "model": "model-x"}, {**BODY, "model": "model-y"}
    with acme.pool.sync_client("acme") as client:
        assert trail(client.post(CHAT, json=x)) == [("a", 429, "rate_limited"), ("b", 200, "ok")]
    until = acme.account_json("a")["cooldowns"]["model-x"]["until"]
    acme.lp.clear_rate_limit("a")

    async def race(body: dict[str, Any]) -> list[str]:
        # Both requests wait at the provider together: each picks while the other is in flight.
        with held_together(acme.lp, 2) as met:
            async with acme.pool.client("acme") as client:
                responses = await asyncio.gather(client.post(CHAT, json=body), client.post(CHAT, json=body))
        assert met == [True]
        return sorted(r.json()["subject"] for r in responses)

    assert asyncio.run(race(y)) == ["a", "a"]  # model-y never was limited: no probing for it
    sleep_until(until)
    assert asyncio.run(race(x)) == ["a", "b"]  # x's cooldown has ended: one x request at a time probes a
    assert acme.account_json("a")["probation"] is False
    assert asyncio.run(race(x)) == ["a", "a"]


# -- stale processes and transient failures -----------------------------------------------------------------


def test_a_long_lived_process_uses_an_account_again_once_a_cooldown_set_by_another_process_ends(
    acme: LoopbackPool, tmp_path: Path
) -> None:
    """A worker loops on a; the CLI cools a for 5 s: the worker moves to b and comes back to a after the deadline."""

    def limited(request: LoopbackRequest) -> LoopbackResponse:
        # Long enough that a busy machine's worker still sends a request or two to b meanwhile.
        return LoopbackResponse.error(429, "rate limit exceeded", {"retry-after-ms": "5000"})

    acme.lp.routes[("POST", "/v1/limited")] = limited
    acme.add_oauth_accounts(2)
    stop = tmp_path / "stop"
    worker = start_worker("loop", "acme", CHAT, str(stop))
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        wait_for(lambda: calls(acme.lp, "a") >= 3, "the worker to use a")
        cli = run_cli("request", "acme", "POST", "/v1/limited", "--account", "acme/a", "--json", "{}")
        assert cli.returncode == 1
        assert cli.stderr.strip().splitlines()[-1].startswith("authpool: error: all acme accounts are cooling down")
        # The deadline as the CLI set it (its cooldown event): read from the pool, a cooldown that
        # already ended on a slow machine would be gone from the account's view.
        until = next(e.until for e in read_events(acme.home / "events.jsonl",
                                                  EventFilter(account="acme/a", kinds=frozenset({"cooldown"}))))
        assert until is not None
        b_calls = calls(acme.lp, "b")
        wait_for(lambda: calls(acme.lp, "b") > b_calls + 2, "the worker to move to b")
        sleep_until(until)
        a_calls = calls(acme.lp, "a")
        wait_for(lambda: calls(acme.lp, "a") > a_calls + 2, "the worker to come back to a")
    finally:
        stop.touch()
        out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["errors"] == [] and set(summary["statuses"]) == {200}
    runs = [s for i, s in enumerate(summary["subjects"]) if i == 0 or summary["subjects"][i - 1] != s]
    assert runs == ["a", "b", "a"]
    assert "rate_limited" not in summary["outcomes"]  # it never sent to a while a was cooling
    a = acme.account_json("a")
    assert a["probation"] is False and a["needs_reauth"] is False
    assert_no_secrets([out, err, cli.stdout, cli.stderr], acme.secrets())


@pytest.mark.parametrize(("failure", "outcome"), [(500, "server_error"), (503, "server_error"), (0, "network_error")])
def test_transient_failures_never_cool_flag_or_disable_an_account(
    acme: LoopbackPool, failure: int, outcome: str
) -> None:
    """An account that always fails (5xx or dropped connections) is retried, then skipped; nothing is persisted."""
    acme.add_oauth_accounts(2)
    acme.lp.set_always_failing("a", failure)
    status = failure or None
    with acme.pool.sync_client("acme") as client:
        for _ in range(2):
            r = client.post(CHAT, json=BODY)
            assert (r.status_code, r.json()["subject"]) == (200, "b")
            assert trail(r) == [("a", status, outcome)] * 3 + [("b", 200, "ok")]
    cli = run_cli("request", "acme", "POST", CHAT, "--json", json.dumps(BODY))
    assert cli_subject(cli) == "b"  # one bad account does not make the pool unusable
    a = acme.account_json("a")
    assert (a["enabled"], a["needs_reauth"], a["cooldowns"], a["backoff_level"], a["probation"]) == (
        True, False, {}, 0, False)
    assert a["counters"]["rate_limited"] == 0 and a["counters"]["unauthorized"] == 0
    assert_no_secrets([cli.stdout, cli.stderr, *home_texts(acme.home)], acme.secrets())


# -- sessions shared across processes --------------------------------------------------------------------


def test_a_session_stays_on_its_account_across_processes_and_moves_when_that_account_is_rate_limited(
    acme: LoopbackPool,
) -> None:
    """round-robin would spread; session s1 stays on a across CLI processes, moves to b on a 429, then stays on b."""
    acme.configure("acme", strategy="round-robin")
    acme.add_oauth_accounts(3)
    ids = {a.label: a.id for a in acme.pool.accounts("acme")}

    def request(*session: str) -> str:
        return cli_subject(run_cli("request", "acme", "POST", CHAT, "--json", json.dumps(BODY), *session))

    assert request("--session", "s1") == "a"  # process A
    assert request() == "b"  # round-robin without a session: a was just used
    assert request("--session", "s1") == "a"  # process B: the strategy alone would pick c
    assert request("--session", "s2") == "c"  # another session is free to go elsewhere
    sessions = acme.pool_json()["sessions"]
    assert {k: v["account_id"] for k, v in sessions.items()} == {"acme/s1": ids["a"], "acme/s2": ids["c"]}

    acme.lp.set_rate_limit("a", 0, "retry-after-ms", 0.5)
    cli = run_cli("request", "acme", "POST", CHAT, "--json", json.dumps(BODY), "--session", "s1")
    assert cli_subject(cli) == "b"
    assert "acme/a: rate_limited (429)" in cli.stderr
    assert acme.pool_json()["sessions"]["acme/s1"]["account_id"] == ids["b"]

    # a is back (and least recently used), yet s1 stays where it moved, in every process.
    acme.lp.clear_rate_limit("a")
    sleep_until(acme.account_json("a")["cooldowns"]["*"]["until"])
    assert request("--session", "s1") == "b"
    with acme.pool.sync_client("acme", session="s1") as client:
        r = client.post(CHAT, json=BODY)
    assert trail(r) == [("b", 200, "ok")]
    assert request("--session", "s1") == "b"
    assert request("--session", "s2") == "c"
    assert_no_secrets([json.dumps(acme.pool_json()), *home_texts(acme.home)], acme.secrets())


def test_expired_session_bindings_are_ignored_and_pruned(acme: LoopbackPool) -> None:
    """A binding past its TTL no longer pins its session, and the next binding write drops expired ones."""
    acme.configure("acme", strategy="round-robin")
    acme.add_oauth_accounts(3)
    ids = {a.label: a.id for a in acme.pool.accounts("acme")}
    for session, subject in (("s1", "a"), ("s2", "b")):
        with acme.pool.sync_client("acme", session=session, session_ttl=0.3) as client:
            assert client.post(CHAT, json=BODY).json()["subject"] == subject
    sessions = acme.pool_json()["sessions"]
    assert set(sessions) == {"acme/s1", "acme/s2"}
    sleep_until(max(b["expires_at"] for b in sessions.values()))
    with acme.pool.sync_client("acme", session="s1") as client:
        r = client.post(CHAT, json=BODY)
    assert trail(r) == [("c", 200, "ok")]  # not a: the expired binding is ignored, round-robin picks
    assert {k: v["account_id"] for k, v in acme.pool_json()["sessions"].items()} == {"acme/s1": ids["c"]}


# -- schema migration ------------------------------------------------------------------------------------

V1_POOL: dict[str, Any] = {
    "schema_version": 1,
    "secret_backend": "authpool.storage.vault.VaultKeyring",
    "accounts": [
        {
            "id": "k7mq2xpa", "provider": "anthropic", "namespace": "default", "label": "work", "kind": "oauth",
            "enabled": True, "order": 0, "created_at": 1735689600.25, "last_used_at": 1736000000.5,
            "cooldowns": {"*": {"until": 1736000300.0, "reason": "429 (retry-after)", "set_at": 1736000000.5}},
            "backoff_level": 1, "last_status": 429, "last_error": "rate limited until 2025-01-04 14:18:20 UTC",
            "needs_reauth": False, "access_expires_at": 1736003600.0,
            "counters": {"requests": 42, "rate_limited": 3, "unauthorized": 1, "refreshes": 5, "failures": 0},
            "secret_generation": 6,
        },
        {
            "id": "r4tn8wbe", "provider": "openai", "namespace": "team", "label": "personal", "kind": "api_key",
            "enabled": False, "order": 3, "created_at": 1735776000.0, "last_used_at": None, "cooldowns": {},
            "backoff_level": 0, "last_status": None, "last_error": None, "needs_reauth": True,
            "access_expires_at": None,
            "counters": {"requests": 0, "rate_limited": 0, "unauthorized": 2, "refreshes": 0, "failures": 1},
            "secret_generation": 1,
        },
    ],
}


def test_a_version_1_pool_file_is_read_and_upgraded_on_the_first_write_keeping_every_field(home: Path) -> None:
    """A v1 pool.json (authpool 0.1) is readable as is; the first write moves it into pool.db as
    version 2 with every v1 field, and keeps the v1 file as pool.json.moved."""
    home.mkdir(mode=0o700, parents=True)
    v1_bytes = json.dumps(V1_POOL, indent=1).encode()
    (home / "pool.json").write_bytes(v1_bytes)
    os.chmod(home / "pool.json", 0o600)

    listed = run_cli("accounts", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    views = {a["name"]: a for a in json.loads(listed.stdout)["accounts"]}
    assert set(views) == {"anthropic/work", "openai/personal"}
    assert views["openai/personal"]["state"] == "disabled"
    assert (home / "pool.json").read_bytes() == v1_bytes  # reading never rewrites

    wrote = run_cli("accounts", "enable", "anthropic/work")  # already enabled: a write that changes nothing
    assert wrote.returncode == 0, wrote.stderr
    v2 = raw_pool(home)
    assert v2["schema_version"] == 2
    assert v2["secret_backend"] == V1_POOL["secret_backend"]
    assert v2["sessions"] == {}
    for old, new in zip(V1_POOL["accounts"], v2["accounts"], strict=True):
        assert {k: new[k] for k in old} == old
        assert (new["probation"], new["quota_resets_at"]) == (False, None)
    assert (home / "pool.json.moved").read_bytes() == v1_bytes
    assert json.loads((home / "pool.json").read_text())["moved_to"] == "pool.db"  # what an older authpool refuses

    pool = Pool.open(home)
    assert [a.name for a in pool.accounts()] == ["anthropic/work", "openai/personal"]
    assert pool.store.read().schema_version == 2


# -- over MCP: streams, per-model scopes and a cooling pool through the tools (in memory) -------------------------

# One provider id per scenario on one loopback; subjects are unique across them.
MCP_ACCOUNTS = {"strm": ["sx", "sy"], "after": ["ax", "ay"], "model": ["mx", "my"], "allc": ["c1", "c2", "c4"]}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lp = LoopbackProvider().start()
    try:
        lab = Lab(tmp_path_factory.mktemp("traffic") / "home", lp, list(MCP_ACCOUNTS))
        for provider, subjects in MCP_ACCOUNTS.items():
            lab.add_oauth(provider, *subjects)
        lab.add_api_key("allc", "c3")
        yield lab
    finally:
        lp.stop()


@pytest.fixture(scope="module")
async def mcp(lab: Lab) -> AsyncIterator[Session]:
    """The MCP server in memory on the lab's home (its log checked for tracebacks and secrets at the end)."""
    async with lab_session(lab) as session:
        yield session


def mcp_trail(result: dict[str, Any]) -> list[tuple[str, int | None, str]]:
    return [(a["account"], a["status"], a["outcome"]) for a in result["attempts"]]


@contextlib.contextmanager
def stream_delay(lp: LoopbackProvider, seconds: float) -> Iterator[None]:
    lp.set_stream_delay(seconds)
    try:
        yield
    finally:
        lp.set_stream_delay(0)


@pytest.mark.anyio
async def test_proxy_request_stream_rotates_past_a_rate_limited_stream_with_progress(mcp: Session, lab: Lab) -> None:
    """stream=true: sx opens with a rate-limit event; stream_text is sy's; byte/event progress arrives meanwhile."""
    lab.lp.set_stream_error("sx", "error-first")
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    with stream_delay(lab.lp, 0.2):  # ~1.4 s of stream: progress is reported every 0.5 s
        r = await mcp.ok("proxy_request", {"provider": "strm", "method": "POST", "path": MESSAGES, "json": BODY,
                                           "stream": True}, progress_callback=on_progress)
    assert r["status"] == 200
    assert mcp_trail(r) == [("strm/sx", 200, "stream_rate_limited"), ("strm/sy", 200, "ok")]
    assert (r["stream_text"], r["stream_error"], r["stream_events"]) == ("Hello from sy.", None, 8)
    assert r["account"]["name"] == "strm/sy"
    assert progress, "no progress notification arrived while the stream was read"
    assert all(m is not None and re.fullmatch(r"streaming: \d+ bytes, \d+ events received", m) for _, _, m in progress)
    assert [p[0] for p in progress] == sorted(p[0] for p in progress) and progress[-1][0] <= r["body_bytes"]
    sx = await mcp.ok("account_status", {"account": "strm/sx"})
    assert sx["state"] == "cooling" and sx["cooldowns"]["*"]["reason"] == "stream (default)"
    assert lab.lp.snapshot()["api_calls_by_subject"]["sx"] == 1


@pytest.mark.anyio
async def test_proxy_request_stream_failing_after_content_sets_stream_error_without_rotating(
    mcp: Session, lab: Lab
) -> None:
    """ax sends "Hello", then an error: stream_text is "Hello" once, stream_error holds the error; ay untouched."""
    lab.lp.set_stream_error("ax", "error-after-content")
    r = await mcp.ok("proxy_request", {"provider": "after", "method": "POST", "path": MESSAGES, "json": BODY,
                                       "stream": True})
    assert r["status"] == 200 and mcp_trail(r) == [("after/ax", 200, "ok")]
    assert r["stream_text"] == "Hello"
    assert r["stream_error"] == {"type": "rate_limit_error", "message": "rate limit exceeded"}
    assert r["body"].count('"Hello"') == 1
    stats = lab.lp.snapshot()["api_calls_by_subject"]
    assert stats["ax"] == 1 and "ay" not in stats
    ax = await mcp.ok("account_status", {"account": "after/ax"})
    assert ax["cooldowns"] == {} and ax["state"] == "ready"


@pytest.mark.anyio
async def test_a_429_naming_one_model_cools_only_that_model_and_the_account_keeps_serving_others(
    mcp: Session, lab: Lab
) -> None:
    """OpenAI's "Rate limit reached for model-x …": mx cools for model-x only; model-y still goes to mx."""
    lab.lp.set_rate_limit("mx", 0, "retry-after-seconds", 60, model="model-x")

    def chat(model: str) -> dict[str, Any]:
        return {"provider": "model", "method": "POST", "path": CHAT, "json": {**BODY, "model": model}}

    r = await mcp.ok("proxy_request", chat("model-x"))
    assert mcp_trail(r) == [("model/mx", 429, "rate_limited"), ("model/my", 200, "ok")]
    assert r["attempts"][0]["detail"] == "retry-after; model model-x"
    mx = await mcp.ok("account_status", {"account": "model/mx"})
    assert mx["state"] == "ready"  # the account as a whole is not cooling
    assert list(mx["cooldowns"]) == ["model-x"]
    assert 55 <= mx["cooldowns"]["model-x"]["remaining_s"] <= 60
    assert "for model-x" in mx["cooldowns"]["model-x"]["reason"]

    r = await mcp.ok("proxy_request", chat("model-y"))
    assert mcp_trail(r) == [("model/mx", 200, "ok")] and r["body"]["subject"] == "mx"
    r = await mcp.ok("proxy_request", chat("model-x"))
    assert mcp_trail(r) == [("model/my", 200, "ok")]
    assert lab.lp.snapshot()["api_calls_by_subject"]["mx"] == 2


@pytest.mark.anyio
async def test_when_every_account_is_out_the_tool_error_and_the_cli_name_each_state_and_the_next_free_time(
    mcp: Session, lab: Lab
) -> None:
    """c1 cools 30 s, c2 90 s, c3's key is refused, c4 is disabled: one message names all four and c1's end."""
    lab.lp.set_rate_limit("c1", 0, "retry-after-seconds", 30)
    lab.lp.set_rate_limit("c2", 0, "retry-after-seconds", 90)
    lab.lp.set_always_unauthorized("c3")
    with pool_env(lab.home):
        lab.pool.set_enabled("allc/c4", False)
    args = {"provider": "allc", "method": "POST", "path": CHAT, "json": BODY}
    first = assert_tool_error(await mcp.call("proxy_request", args), "all allc accounts are cooling down")
    c1, c2 = (lab.account_json(f"allc/{s}")["cooldowns"]["*"]["until"] for s in ("c1", "c2"))

    def clock(ts: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))

    expected = [f"the next frees up at {clock(c1)}", f"allc/c1: cooling until {clock(c1)}",
                f"allc/c2: cooling until {clock(c2)}", "allc/c3: needs-reauth (replace its key)", "allc/c4: disabled"]
    second = assert_tool_error(await mcp.call("proxy_request", args), *expected)  # nothing left to try: no request
    m = re.search(r"\(in (\d+)s\)", second)
    assert m is not None and 25 <= int(m.group(1)) <= 30
    for fragment in expected:
        assert fragment in first
    cli = lab.cli("request", "allc", "POST", CHAT, "--json", json.dumps(BODY))
    assert cli.returncode == 1 and cli.stdout == ""
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("authpool: error: all allc accounts are cooling down"), cli.stderr
    for fragment in expected:
        assert fragment in lines[0]
    stats = lab.lp.snapshot()["api_calls_by_subject"]
    assert (stats["c1"], stats["c2"], stats["c3"], stats.get("c4", 0)) == (1, 1, 1, 0)
    assert_no_secrets([cli.stdout, cli.stderr], lab.secrets())
