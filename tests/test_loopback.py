"""Tests for the loopback provider: it must behave like a real provider or other tests lie."""

from __future__ import annotations

import contextlib
import email.utils
import json
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest

from authpool.server.loopback import LoopbackProvider, ManualClock
from authpool.server.loopback.ratelimit import go_duration

ROOT = Path(__file__).resolve().parent.parent
TOKEN_RE = re.compile(r"^(lpat|lprt|lpk)-[A-Za-z0-9_-]{32,}$")
# One TLS context for every client: building one per client (CA bundle load) costs ~50 ms.
_TLS = ssl.create_default_context()


def new_client(base_url: str = "", timeout: float = 5.0) -> httpx2.Client:
    """A client that ignores proxy environment variables (they must not reach the loopback)."""
    return httpx2.Client(base_url=base_url, trust_env=False, timeout=timeout, verify=_TLS)


@pytest.fixture
def provider() -> Iterator[LoopbackProvider]:
    with LoopbackProvider() as p:
        yield p


@pytest.fixture
def client(provider: LoopbackProvider) -> Iterator[httpx2.Client]:
    with new_client(provider.base_url, timeout=5.0) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refresh(client: httpx2.Client, refresh_token: str) -> httpx2.Response:
    return client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": "authpool-test"},
    )


def message(client: httpx2.Client, headers: dict[str, str], **body: Any) -> httpx2.Response:
    return client.post("/v1/messages", json={"model": "claude-test", **body}, headers=headers)


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


# ---- OAuth ---------------------------------------------------------------------------------


def test_tokens_are_opaque_with_recognisable_prefixes(provider: LoopbackProvider) -> None:
    """Access, refresh and API-key secrets carry greppable prefixes and enough randomness."""
    tokens = provider.add_oauth_account("a@example.com")
    key = provider.add_api_key("a@example.com")
    assert tokens["access_token"].startswith("lpat-")
    assert tokens["refresh_token"].startswith("lprt-")
    assert key.startswith("lpk-")
    for secret in (tokens["access_token"], tokens["refresh_token"], key):
        assert TOKEN_RE.match(secret)
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 3600


def test_refresh_rotates_both_tokens_and_old_access_token_keeps_working(
    provider: LoopbackProvider, client: httpx2.Client
) -> None:
    """A refresh returns a new access and refresh token; the previous access token stays valid."""
    first = provider.add_oauth_account("a@example.com")
    r = refresh(client, first["refresh_token"])
    assert r.status_code == 200
    second = r.json()
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert second["subject"] == "a@example.com"
    assert second["token_type"] == "Bearer"
    assert {"expires_in", "scope"} <= second.keys()
    assert r.headers["cache-control"] == "no-store"
    for access in (first["access_token"], second["access_token"]):
        assert message(client, bearer(access)).json()["subject"] == "a@example.com"
    assert provider.stats.refresh_calls == 1
    assert provider.stats.token_calls == 1


def test_token_endpoint_accepts_json_bodies_as_well_as_forms(provider: LoopbackProvider, client: httpx2.Client) -> None:
    """Clients may send the refresh request as JSON instead of form-urlencoded."""
    tokens = provider.add_oauth_account("a@example.com")
    r = client.post("/oauth/token", json={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert r.status_code == 200
    assert r.json()["refresh_token"].startswith("lprt-")


def test_reusing_a_used_refresh_token_revokes_the_whole_family(
    provider: LoopbackProvider, client: httpx2.Client
) -> None:
    """Reuse looks like theft: every token of that login dies, other logins are unaffected."""
    first = provider.add_oauth_account("a@example.com")
    other_login = provider.add_oauth_account("a@example.com")
    other_user = provider.add_oauth_account("b@example.com")
    second = refresh(client, first["refresh_token"]).json()

    reuse = refresh(client, first["refresh_token"])
    assert reuse.status_code == 400
    assert reuse.json() == {"error": "invalid_grant", "error_description": "refresh token reuse detected"}
    assert provider.stats.reuse_detected_count == 1

    assert refresh(client, second["refresh_token"]).json()["error"] == "invalid_grant"
    assert message(client, bearer(first["access_token"])).status_code == 401
    assert message(client, bearer(second["access_token"])).status_code == 401
    assert message(client, bearer(other_login["access_token"])).status_code == 200
    assert message(client, bearer(other_user["access_token"])).status_code == 200
    assert refresh(client, other_login["refresh_token"]).status_code == 200
    assert provider.stats.invalid_grant_count == 2


def test_concurrent_refreshes_with_one_token_succeed_exactly_once(
    provider: LoopbackProvider, client: httpx2.Client
) -> None:
    """Racing refreshes of the same token: one wins, the rest are invalid_grant (the lock holds)."""
    tokens = provider.add_oauth_account("a@example.com")
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        statuses.append(refresh(client, tokens["refresh_token"]).status_code)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] + [400] * 7
    assert provider.stats.reuse_detected_count == 1  # later attempts hit an already revoked family
    assert provider.stats.invalid_grant_count == 7


def test_unknown_refresh_token_wrong_client_and_unknown_grant_are_rejected(
    provider: LoopbackProvider, client: httpx2.Client
) -> None:
    """Bad token -> invalid_grant, bad client_id -> invalid_client, bad grant -> unsupported."""
    tokens = provider.add_oauth_account("a@example.com")
    unknown = refresh(client, "lprt-" + "x" * 43)
    assert (unknown.status_code, unknown.json()["error"]) == (400, "invalid_grant")
    assert "lprt-" not in unknown.text
    wrong_client = client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": "other"},
    )
    assert (wrong_client.status_code, wrong_client.json()["error"]) == (401, "invalid_client")
    grant = client.post("/oauth/token", data={"grant_type": "password"})
    assert (grant.status_code, grant.json()["error"]) == (400, "unsupported_grant_type")
    missing = client.post("/oauth/token", data={"grant_type": "refresh_token"})
    assert (missing.status_code, missing.json()["error"]) == (400, "invalid_request")
    # The rejected client_id must not have consumed the refresh token.
    assert refresh(client, tokens["refresh_token"]).status_code == 200
    assert provider.stats.invalid_grant_count == 1


def test_revoked_refresh_tokens_answer_invalid_grant(provider: LoopbackProvider, client: httpx2.Client) -> None:
    """revoke_refresh_tokens models the user revoking the app: refresh fails, access lives on."""
    tokens = provider.add_oauth_account("a@example.com")
    provider.revoke_refresh_tokens("a@example.com")
    assert refresh(client, tokens["refresh_token"]).json()["error"] == "invalid_grant"
    assert message(client, bearer(tokens["access_token"])).status_code == 200


def test_token_endpoint_down_and_garbage_modes(provider: LoopbackProvider, client: httpx2.Client) -> None:
    """down answers a 500 JSON error; garbage answers 200 with an HTML body."""
    tokens = provider.add_oauth_account("a@example.com")
    provider.set_token_endpoint_mode("down")
    down = refresh(client, tokens["refresh_token"])
    assert down.status_code == 500
    assert down.json()["error"] == "server_error"
    provider.set_token_endpoint_mode("garbage")
    garbage = refresh(client, tokens["refresh_token"])
    assert garbage.status_code == 200
    assert garbage.headers["content-type"].startswith("text/html")
    assert garbage.text == "<html>oops</html>"
    provider.set_token_endpoint_mode("ok")
    assert refresh(client, tokens["refresh_token"]).status_code == 200
    assert provider.stats.token_calls == 3
    assert provider.stats.refresh_calls == 1
    with pytest.raises(ValueError):
        provider.set_token_endpoint_mode("sideways")


def test_token_endpoint_hang_mode_trips_client_timeouts(provider: LoopbackProvider) -> None:
    """hang stalls the token endpoint long enough for any client timeout to fire."""
    tokens = provider.add_oauth_account("a@example.com")
    provider.set_token_endpoint_mode("hang")
    with (
        new_client(provider.base_url, timeout=0.2) as c,
        pytest.raises(httpx2.ReadTimeout),
    ):
        refresh(c, tokens["refresh_token"])


# ---- API authentication ----------------------------------------------------------------------


def test_expired_access_tokens_get_401_without_echoing_the_token(
    provider: LoopbackProvider, client: httpx2.Client
) -> None:
    """expire_access_tokens makes the access token fail; the refresh token still works."""
    tokens = provider.add_oauth_account("a@example.com")
    other = provider.add_oauth_account("b@example.com")
    provider.expire_access_tokens("a@example.com")
    r = message(client, bearer(tokens["access_token"]))
    assert r.status_code == 401
    assert r.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
    }
    assert tokens["access_token"] not in r.text
    assert message(client, bearer(other["access_token"])).status_code == 200
    fresh = refresh(client, tokens["refresh_token"]).json()
    assert message(client, bearer(fresh["access_token"])).status_code == 200


def test_access_tokens_expire_after_their_ttl() -> None:
    """Once the provider's clock passes access_ttl the token stops working on its own, as on a real provider."""
    clock = ManualClock()
    with LoopbackProvider(access_ttl=0.1, clock=clock) as p, new_client(p.base_url) as c:
        tokens = p.add_oauth_account("a@example.com")
        assert tokens["expires_in"] == 0.1
        assert message(c, bearer(tokens["access_token"])).status_code == 200
        clock.advance(0.09)
        assert message(c, bearer(tokens["access_token"])).status_code == 200
        clock.advance(0.02)
        assert message(c, bearer(tokens["access_token"])).status_code == 401


def test_each_endpoint_accepts_its_providers_credential_styles(
    provider: LoopbackProvider, client: httpx2.Client
) -> None:
    """Anthropic: x-api-key or OAuth bearer; OpenAI: bearer API key or token; wrong slots fail."""
    tokens = provider.add_oauth_account("oauth@example.com")
    key = provider.add_api_key("key@example.com")
    assert message(client, {"x-api-key": key}).json()["subject"] == "key@example.com"
    assert message(client, bearer(tokens["access_token"])).json()["subject"] == "oauth@example.com"
    assert message(client, {"x-api-key": tokens["access_token"]}).status_code == 401
    assert message(client, bearer(key)).status_code == 401

    chat = client.post("/v1/chat/completions", json={"model": "gpt-test", "messages": []}, headers=bearer(key))
    assert chat.status_code == 200
    assert chat.json()["model"] == "gpt-test"
    assert chat.json()["subject"] == "key@example.com"
    assert chat.json()["choices"][0]["message"]["role"] == "assistant"
    models = client.get("/v1/models", headers=bearer(tokens["access_token"]))
    assert models.json()["subject"] == "oauth@example.com"
    assert models.json()["data"]

    body = message(client, {"x-api-key": key}).json()
    assert body["model"] == "claude-test"
    assert body["content"][0]["type"] == "text"


def test_missing_or_malformed_credentials_get_401(provider: LoopbackProvider, client: httpx2.Client) -> None:
    """No credential, an unknown key, or a non-bearer scheme are all authentication errors."""
    for headers in ({}, {"x-api-key": "lpk-nope"}, {"Authorization": "Basic Zm9vOmJhcg=="}):
        r = message(client, headers)
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
    assert provider.stats.api_calls == 3
    assert provider.stats.api_calls_by_subject == {}


# ---- rate limits and injected faults -----------------------------------------------------------


@pytest.mark.parametrize(
    "style",
    ["retry-after-seconds", "retry-after-date", "retry-after-ms", "anthropic", "openai", "none"],
)
def test_each_rate_limit_style_sends_its_reset_headers(
    provider: LoopbackProvider, client: httpx2.Client, style: str
) -> None:
    """After N successes the subject gets 429 with the style's reset header (and only that)."""
    key = provider.add_api_key("a@example.com")
    provider.set_rate_limit("a@example.com", after=1, style=style, retry_after=90.0)
    assert message(client, {"x-api-key": key}).status_code == 200
    r = message(client, {"x-api-key": key})
    assert r.status_code == 429
    assert r.json()["error"]["type"] == "rate_limit_error"
    now = time.time()
    h = r.headers
    reset_names = {
        "retry-after",
        "retry-after-ms",
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-tokens-reset",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
    }
    present = reset_names & {name.lower() for name in h}
    if style == "retry-after-seconds":
        assert present == {"retry-after"}
        assert 88 <= int(h["retry-after"]) <= 90
    elif style == "retry-after-date":
        assert present == {"retry-after"}
        assert h["retry-after"].endswith(" GMT")
        assert 88 <= email.utils.parsedate_to_datetime(h["retry-after"]).timestamp() - now <= 91
    elif style == "retry-after-ms":
        assert present == {"retry-after-ms"}
        assert 88_000 <= int(h["retry-after-ms"]) <= 90_000
    elif style == "anthropic":
        assert present == {"anthropic-ratelimit-requests-reset", "anthropic-ratelimit-tokens-reset"}
        stamp = h["anthropic-ratelimit-requests-reset"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)
        assert datetime.fromisoformat(stamp).tzinfo == UTC
        assert 88 <= datetime.fromisoformat(stamp).timestamp() - now <= 91
    elif style == "openai":
        assert present == {"x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"}
        assert re.fullmatch(r"1m(2\d|30)(\.\d+)?s", h["x-ratelimit-reset-requests"])
    else:
        assert present == set()


def test_go_duration_matches_openai_header_format() -> None:
    """Reset durations look like OpenAI's: 20ms, 1s, 6m0s, 1h1m1.5s (rounded up)."""
    assert go_duration(0.02) == "20ms"
    assert go_duration(1) == "1s"
    assert go_duration(360) == "6m0s"
    assert go_duration(3661.5) == "1h1m1.5s"
    assert go_duration(0.0001) == "1ms"


def test_rate_limit_resets_after_retry_after_and_is_per_subject() -> None:
    """The window ends retry_after seconds (provider clock) after the first 429; other subjects are untouched."""
    clock = ManualClock()
    with LoopbackProvider(clock=clock) as provider, new_client(provider.base_url) as client:
        a = provider.add_api_key("a@example.com")
        b = provider.add_api_key("b@example.com")
        provider.set_rate_limit("a@example.com", after=1, retry_after=0.2)
        assert message(client, {"x-api-key": a}).status_code == 200
        assert message(client, {"x-api-key": a}).status_code == 429
        assert message(client, {"x-api-key": b}).status_code == 200
        clock.advance(0.25)
        assert message(client, {"x-api-key": a}).status_code == 200
        assert message(client, {"x-api-key": a}).status_code == 429
        provider.clear_rate_limit("a@example.com")
        assert message(client, {"x-api-key": a}).status_code == 200
        assert provider.stats.api_calls_by_subject == {"a@example.com": 5, "b@example.com": 1}
        assert provider.stats.statuses[429] == 2


def test_constructor_rate_limit_applies_to_every_subject() -> None:
    """rate_limit=0 in the constructor limits everyone from the first request."""
    with (
        LoopbackProvider(rate_limit=0, rate_limit_style="retry-after-ms", retry_after=5) as p,
        new_client(p.base_url) as c,
    ):
        key = p.add_api_key("a@example.com")
        r = message(c, {"x-api-key": key})
        assert r.status_code == 429
        assert int(r.headers["retry-after-ms"]) <= 5000
        p.clear_rate_limit("a@example.com")
        assert message(c, {"x-api-key": key}).status_code == 200
    with pytest.raises(ValueError):
        LoopbackProvider(rate_limit_style="sometimes")


def test_injected_failures_hit_the_next_n_requests(provider: LoopbackProvider, client: httpx2.Client) -> None:
    """set_failures makes exactly the next n API requests fail with the given status."""
    key = provider.add_api_key("a@example.com")
    provider.set_failures(2, status=529)
    first = message(client, {"x-api-key": key})
    assert first.status_code == 529
    assert first.json()["error"]["type"] == "overloaded_error"
    assert message(client, {"x-api-key": key}).status_code == 529
    assert message(client, {"x-api-key": key}).status_code == 200


def test_set_hang_delays_api_requests_until_turned_off(provider: LoopbackProvider) -> None:
    """A hanging provider trips the client's timeout; set_hang(0) restores service."""
    key = provider.add_api_key("a@example.com")
    provider.set_hang(100)
    with new_client(provider.base_url, timeout=0.2) as c:
        with pytest.raises(httpx2.ReadTimeout):
            message(c, {"x-api-key": key})
        provider.set_hang(0)
        assert message(c, {"x-api-key": key}).status_code == 200


def test_held_api_requests_wait_at_the_gate_until_released_in_arrival_order(provider: LoopbackProvider) -> None:
    """hold_api_requests: requests wait (counted) until released, the oldest first; releasing all stops holding."""
    key = provider.add_api_key("a@example.com")
    provider.hold_api_requests()
    statuses: list[tuple[int, int]] = []

    def call(n: int) -> None:
        with new_client(provider.base_url, timeout=60) as c:
            statuses.append((n, message(c, {"x-api-key": key}).status_code))

    first = threading.Thread(target=call, args=(1,))
    first.start()
    assert provider.wait_for_held_requests(1)
    second = threading.Thread(target=call, args=(2,))
    second.start()
    assert provider.wait_for_held_requests(2) and provider.wait_for_api_calls(2)
    assert statuses == [] and provider.held_requests() == 2
    provider.release_api_requests(1)
    first.join(timeout=30)
    assert statuses == [(1, 200)] and provider.held_requests() == 1
    provider.release_api_requests()
    second.join(timeout=30)
    assert statuses == [(1, 200), (2, 200)] and provider.held_requests() == 0
    with new_client(provider.base_url) as c:
        assert message(c, {"x-api-key": key}).status_code == 200  # no longer holding
    assert provider.snapshot()["api_calls"] == 3


def _read_events_in_background(provider: LoopbackProvider, key: str, events: list[str]) -> threading.Thread:
    """Stream /v1/messages in a thread, appending each event name as it arrives."""

    def run() -> None:
        with new_client(provider.base_url, timeout=60) as c, c.stream(
                "POST", "/v1/messages", json={"model": "m", "stream": True}, headers={"x-api-key": key}) as r:
            for line in r.iter_lines():
                if line.startswith("event: "):
                    events.append(line.removeprefix("event: "))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_set_stream_length_makes_streams_carry_that_many_deltas(provider: LoopbackProvider,
                                                                 client: httpx2.Client) -> None:
    """set_stream_length(200): a chat stream has 200 text deltas (plus role, stop and [DONE]); None restores it."""
    key = provider.add_api_key("a@example.com")
    provider.set_stream_length(200)
    r = client.post("/v1/chat/completions", json={"model": "m", "stream": True}, headers=bearer(key))
    data = [line for line in r.text.splitlines() if line.startswith("data: ")]
    assert len(data) == 203 and data[-1] == "data: [DONE]" and '"t199 "' in data[-3]
    provider.set_stream_length(None)
    assert "Hello" in message(client, {"x-api-key": key}, stream=True).text


def test_held_streams_send_one_event_per_release(provider: LoopbackProvider) -> None:
    """hold_streams: a stream sends its first event, then one more per release; releasing all finishes it."""
    key = provider.add_api_key("a@example.com")
    provider.hold_streams()
    events: list[str] = []
    thread = _read_events_in_background(provider, key, events)
    assert provider.wait_for_held_streams(1)
    _wait(lambda: events == ["message_start"], "the first event")
    provider.release_streams(1)
    _wait(lambda: len(events) == 2, "the second event")
    assert provider.wait_for_held_streams(1) and events == ["message_start", "content_block_start"]
    provider.release_streams()
    thread.join(timeout=30)
    assert events[-1] == "message_stop" and provider.held_streams() == 0
    assert provider.wait_for_streams(started=1, finished=1)
    assert provider.snapshot()["streams_cut"] == 0


def test_a_held_stream_whose_client_hangs_up_is_counted_as_cut_at_once(provider: LoopbackProvider) -> None:
    """A client that closes its connection while its stream waits at the gate is seen without a release."""
    key = provider.add_api_key("a@example.com")
    provider.hold_streams()
    body = json.dumps({"model": "m", "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", provider.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: " + key.encode()
                     + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        received = b""
        while b"message_start" not in received:
            received += sock.recv(65536)
        assert provider.wait_for_held_streams(1)
    assert provider.wait_for_streams(cut=1)
    snap = provider.snapshot()
    assert (snap["streams_started"], snap["streams_finished"], snap["streams_cut"]) == (1, 0, 1)
    assert provider.held_streams() == 0


# ---- helper endpoints --------------------------------------------------------------------------


def test_echo_request_names_what_arrived_without_any_value(client: httpx2.Client) -> None:
    """/echo-request reports method, path, query and header names and the body size: never a value."""
    r = client.post("/echo-request", params={"key": "secret-value", "q": "1"}, headers={"x-api-key": "hidden"},
                    content=b"12345")
    doc = r.json()
    assert (doc["method"], doc["path"], doc["query"], doc["body_bytes"]) == ("POST", "/echo-request", ["key", "q"], 5)
    assert "x-api-key" in doc["headers"]
    assert "secret-value" not in r.text and "hidden" not in r.text


def test_redirect_answers_the_requested_status_and_location(client: httpx2.Client) -> None:
    """/redirect answers a bare redirect so clients' redirect policies can be tested."""
    r = client.get("/redirect", params={"to": "http://127.0.0.1:9/elsewhere", "status": "308"})
    assert r.status_code == 308
    assert r.headers["location"] == "http://127.0.0.1:9/elsewhere"
    assert client.get("/redirect", params={"status": "307"}).status_code == 400


def test_cross_origin_redirect_lets_tests_see_which_credentials_travel(
    provider: LoopbackProvider, client: httpx2.Client
) -> None:
    """A second provider is another origin; echo-auth-present reports presence, never values."""
    same = client.get("/echo-auth-present", headers={"Authorization": "Bearer lpat-secret", "x-api-key": "lpk-s"})
    assert same.json() == {"authorization": True, "x_api_key": True, "cookie": False}
    assert "secret" not in same.text
    with LoopbackProvider() as other:
        target = other.base_url + "/echo-auth-present"
        r = client.get(
            "/redirect",
            params={"to": target, "status": "307"},
            headers={"Authorization": "Bearer lpat-secret"},
            follow_redirects=True,
        )
        assert r.status_code == 200
        assert r.json()["authorization"] is False
        assert other.stats.calls_by_path == {"/echo-auth-present": 1}


def test_slow_endpoint_answers_after_the_requested_delay(provider: LoopbackProvider, client: httpx2.Client) -> None:
    """/slow?seconds=S sleeps S seconds and then answers 200; a client that gives up sooner times out."""
    r = client.get("/slow", params={"seconds": "0.1"})
    assert r.status_code == 200 and r.json() == {"slept": 0.1}
    with new_client(provider.base_url, timeout=0.2) as impatient, pytest.raises(httpx2.ReadTimeout):
        impatient.get("/slow", params={"seconds": "100"})
    assert client.get("/slow", params={"seconds": "nan"}).status_code == 400


def test_unknown_paths_and_methods_get_json_errors(client: httpx2.Client) -> None:
    """Unknown paths are 404 and wrong methods 405, both as JSON error bodies."""
    assert client.get("/nope").json()["error"]["type"] == "not_found_error"
    assert client.get("/v1/messages").status_code == 405


def test_request_framing_chunked_bodies_oversize_and_garbage(provider: LoopbackProvider) -> None:
    """Chunked request bodies work; oversize or malformed requests get an error and a closed socket."""
    key = provider.add_api_key("a@example.com")

    def exchange(raw: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", provider.port), timeout=5) as sock:
            sock.sendall(raw)
            data = b""
            while chunk := sock.recv(65536):  # the server must close, or this times out
                data += chunk
            return data

    chunked = (
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\nx-api-key: " + key.encode() + b"\r\n"
        b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"mod\r\nb\r\nel": "c1"}\r\n0\r\n\r\n'
    )
    answer = exchange(chunked)
    assert answer.startswith(b"HTTP/1.1 200")
    assert b'"model": "c1"' in answer
    oversize = b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n{"
    assert exchange(oversize).startswith(b"HTTP/1.1 413")
    bad_length = b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n"
    assert exchange(bad_length).startswith(b"HTTP/1.1 400")
    # A nonsense request line is answered by the stdlib (HTTP/0.9-style, no status line) and closed.
    assert b"400" in exchange(b"garbage\r\n\r\n")
    assert provider.stats.handler_errors == 0


# ---- streaming -------------------------------------------------------------------------------


def test_streaming_messages_follow_anthropics_event_sequence(provider: LoopbackProvider, client: httpx2.Client) -> None:
    """stream=true yields text/event-stream with message_start, 3 deltas and message_stop."""
    tokens = provider.add_oauth_account("a@example.com")
    with client.stream(
        "POST", "/v1/messages", json={"model": "m", "stream": True}, headers=bearer(tokens["access_token"])
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(r.read().decode())
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[-1] == "message_stop"
    assert names.count("content_block_delta") == 3
    assert events[0][1]["message"]["subject"] == "a@example.com"
    text = "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta")
    assert text == "Hello from a@example.com."


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("error-first", ["error"]),
        ("error-after-content", ["message_start", "content_block_start", "content_block_delta", "error"]),
    ],
)
def test_stream_errors_arrive_as_sse_error_events_inside_a_200(
    provider: LoopbackProvider, client: httpx2.Client, mode: str, expected: list[str]
) -> None:
    """set_stream_error puts an error event first, or after one content delta."""
    key = provider.add_api_key("a@example.com")
    provider.set_stream_error("a@example.com", mode)
    r = message(client, {"x-api-key": key}, stream=True)
    assert r.status_code == 200
    events = parse_sse(r.text)
    assert [name for name, _ in events] == expected
    assert events[-1][1]["error"]["type"] == "rate_limit_error"
    provider.set_stream_error("a@example.com", None)
    assert parse_sse(message(client, {"x-api-key": key}, stream=True).text)[-1][0] == "message_stop"


def test_stream_uses_valid_chunked_framing_and_keeps_the_connection_alive(provider: LoopbackProvider) -> None:
    """Raw socket check: chunked body ends with 0-chunk and the connection serves another request."""
    key = provider.add_api_key("a@example.com")
    body = json.dumps({"model": "m", "stream": True}).encode()
    request = (
        f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", provider.port), timeout=5) as sock:
        sock.sendall(request)
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"HTTP/1.1 200")
        headers = {}
        while (line := reader.readline()) != b"\r\n":
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        assert headers["transfer-encoding"] == "chunked"
        assert "content-length" not in headers
        payload = b""
        while size := int(reader.readline().strip(), 16):
            payload += reader.read(size)
            assert reader.read(2) == b"\r\n"
        assert reader.read(2) == b"\r\n"
        assert parse_sse(payload.decode())[-1][0] == "message_stop"

        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: " + key.encode() + b"\r\n\r\n")
        assert reader.readline().startswith(b"HTTP/1.1 200")
    assert provider.stats.connections == 1


# ---- lifecycle, stats, discipline --------------------------------------------------------------


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll until ``condition()`` holds; fail naming ``what`` if it never does within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_stop_interrupts_hung_requests_and_idle_keepalive(provider: LoopbackProvider) -> None:
    """stop() cuts a hung token request, a slow request and pooled connections short: they end, without answers."""
    provider.set_token_endpoint_mode("hang")
    idle = new_client(provider.base_url)
    assert idle.get("/echo-auth-present").status_code == 200  # leaves a pooled keep-alive socket
    outcomes: list[object] = []

    def call(method: str, path: str) -> None:
        try:
            outcomes.append(idle.request(method, path, timeout=10))
        except httpx2.HTTPError as exc:
            outcomes.append(exc)

    threads = [
        threading.Thread(target=call, args=("POST", "/oauth/token"), daemon=True),
        threading.Thread(target=call, args=("GET", "/slow?seconds=100"), daemon=True),
    ]
    for t in threads:
        t.start()
    wait_for(lambda: {"/oauth/token", "/slow"} <= set(provider.snapshot()["calls_by_path"]), "both requests to arrive")
    provider.stop()
    # The hang lasts 30 s and /slow 100 s: threads that end well before that were cut short.
    for t in threads:
        t.join(timeout=20)
        assert not t.is_alive()
    # Interrupted requests are dropped without an answer, like a server going away.
    assert len(outcomes) == 2
    assert all(isinstance(o, httpx2.TransportError) for o in outcomes)
    with pytest.raises(httpx2.TransportError):
        idle.get("/echo-auth-present")
    with pytest.raises(httpx2.ConnectError):  # the URL stays known, nobody listens any more
        idle.get(provider.base_url + "/echo-auth-present")
    idle.close()


def test_snapshot_is_json_serialisable_and_counts_every_path(provider: LoopbackProvider, client: httpx2.Client) -> None:
    """snapshot() is a plain-JSON copy of the counters, keyed by path and status."""
    key = provider.add_api_key("a@example.com")
    message(client, {"x-api-key": key})
    client.get("/echo-auth-present")
    client.get("/nope")
    snap = json.loads(json.dumps(provider.snapshot()))
    assert snap["calls_by_path"] == {"/v1/messages": 1, "/echo-auth-present": 1, "/nope": 1}
    assert snap["statuses"] == {"200": 2, "404": 1}
    assert snap["api_calls"] == 1
    assert snap["handler_errors"] == 0
    snap["api_calls"] = 99
    assert provider.stats.api_calls == 1
    provider.reset_stats()
    assert provider.snapshot()["calls_by_path"] == {}


def test_server_binds_loopback_only_and_writes_nothing_to_stdout_or_stderr(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The provider listens on 127.0.0.1 and never logs requests or client hang-ups."""
    with LoopbackProvider() as p:
        assert p.base_url == f"http://127.0.0.1:{p.port}"
        assert p.token_url == p.base_url + "/oauth/token"
        with new_client(p.base_url) as c:
            c.get("/nope")
            c.post("/v1/messages", content=b"{not json")
        with socket.create_connection(("127.0.0.1", p.port)) as sock:
            sock.sendall(b"POST /v1/messages HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
        with socket.create_connection(("127.0.0.1", p.port)) as sock:
            sock.sendall(b"garbage\r\n\r\n")
            sock.recv(1024)
        # Every request has been handled (the cut-off POST too) before the output is checked; the
        # garbage line was answered by the HTTP plumbing itself (recv above), so it is not counted.
        wait_for(lambda: sum(p.snapshot()["statuses"].values()) == 3, "three answers")
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    with pytest.raises(RuntimeError):
        p.start()


def test_cli_prints_connection_details_and_exits_on_sigterm() -> None:
    """python -m authpool.server.loopback prints JSON with base_url and tokens, and stops on SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "authpool.server.loopback", "--port", "0", "--accounts", "2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["base_url"].startswith("http://127.0.0.1:")
        assert len(info["accounts"]) == 2
        access = info["accounts"][0]["access_token"]
        with new_client(info["base_url"]) as c:
            r = c.post("/v1/messages", json={}, headers=bearer(access))
        assert r.json()["subject"] == info["accounts"][0]["subject"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert proc.stderr is not None
        assert proc.stderr.read() == ""
    finally:
        proc.kill()
        proc.wait()


def test_big_endpoint_answers_exactly_the_requested_number_of_bytes(client: httpx2.Client) -> None:
    """/big?bytes=N answers N bytes of ASCII text; bad or out-of-range sizes get a 400."""
    for size in (0, 1, 100, 300_001):
        r = client.get("/big", params={"bytes": str(size)})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        assert len(r.content) == size
        assert r.content.isascii()
    assert client.get("/big", params={"bytes": "lots"}).status_code == 400
    assert client.get("/big", params={"bytes": "-1"}).status_code == 400
    assert client.get("/big", params={"bytes": str(1 << 30)}).status_code == 400


# ---- logins: /authorize + authorization_code (PKCE), /oauth/device + device_code -------------

import base64  # noqa: E402 - appended section: its imports stay with it
import hashlib  # noqa: E402
import urllib.parse  # noqa: E402

REDIRECT = "http://127.0.0.1:9/callback"


def pkce_pair() -> tuple[str, str]:
    verifier = base64.urlsafe_b64encode(b"v" * 48).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize(client: httpx2.Client, **override: str) -> httpx2.Response:
    params = {"response_type": "code", "client_id": "authpool-test", "redirect_uri": REDIRECT, "state": "st-1",
              "code_challenge": pkce_pair()[1], "code_challenge_method": "S256", **override}
    return client.get("/authorize", params={k: v for k, v in params.items() if v != "-"})


def redirected(r: httpx2.Response) -> dict[str, str]:
    assert r.status_code == 302, r.text
    location = r.headers["location"]
    assert location.startswith(REDIRECT + "?")
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


def redeem(client: httpx2.Client, code: str, verifier: str, redirect_uri: str = REDIRECT) -> httpx2.Response:
    return client.post("/oauth/token", data={"grant_type": "authorization_code", "code": code,
                                             "client_id": "authpool-test", "redirect_uri": redirect_uri,
                                             "code_verifier": verifier})


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_authorize_redirects_back_with_a_one_time_code_bound_to_pkce(
    provider: LoopbackProvider, client: httpx2.Client
) -> None:
    """/authorize approves the configured user; the code needs the verifier and redirect_uri, and works once."""
    provider.set_login("carol@example.com")
    verifier, _ = pkce_pair()
    back = redirected(authorize(client))
    assert back["state"] == "st-1" and back["code"].startswith("lpac-")
    assert redeem(client, back["code"], "wrong-verifier-" + "x" * 40).json()["error"] == "invalid_grant"
    back = redirected(authorize(client))
    assert redeem(client, back["code"], verifier, "http://127.0.0.1:10/callback").json()["error"] == "invalid_grant"
    back = redirected(authorize(client))
    ok = redeem(client, back["code"], verifier)
    assert ok.status_code == 200
    tokens = ok.json()
    assert jwt_claims(tokens["id_token"])["email"] == "carol@example.com"
    assert message(client, bearer(tokens["access_token"])).json()["subject"] == "carol@example.com"
    replay = redeem(client, back["code"], verifier)
    assert replay.json() == {"error": "invalid_grant", "error_description": "authorization code was already used"}
    # A replayed code revokes what it issued, as RFC 6749 asks.
    assert message(client, bearer(tokens["access_token"])).status_code == 401


def test_login_tokens_rotate_like_any_other_account(provider: LoopbackProvider, client: httpx2.Client) -> None:
    """Tokens from a login refresh with rotation, and identity=False leaves the user out of the answer."""
    provider.set_login("dan@example.com", identity=False)
    verifier, _ = pkce_pair()
    tokens = redeem(client, redirected(authorize(client))["code"], verifier).json()
    assert "id_token" not in tokens and "subject" not in tokens
    renewed = refresh(client, tokens["refresh_token"])
    assert renewed.status_code == 200
    assert refresh(client, tokens["refresh_token"]).json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": "-"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"state": "-"}, "invalid_request"),
    ],
)
def test_authorize_redirects_malformed_requests_back_with_an_error(
    client: httpx2.Client, override: dict[str, str], error: str
) -> None:
    """Missing PKCE S256, a wrong response_type or no state come back as OAuth errors, never a code."""
    back = redirected(authorize(client, **override))
    assert back["error"] == error
    assert "code" not in back


@pytest.mark.parametrize(
    "override",
    [{"client_id": "someone-else"}, {"redirect_uri": "https://evil.example/cb"},
     {"redirect_uri": "http://localhost:9/callback"}, {"redirect_uri": "-"}],
)
def test_authorize_never_redirects_to_an_unvalidated_uri(client: httpx2.Client, override: dict[str, str]) -> None:
    """An unknown client or a redirect_uri off 127.0.0.1 is answered with a 400, not a redirect."""
    r = authorize(client, **override)
    assert r.status_code == 400
    assert "location" not in r.headers


def test_authorize_can_be_told_to_deny(provider: LoopbackProvider, client: httpx2.Client) -> None:
    """set_login(deny=True) sends the user back with error=access_denied and the state."""
    provider.set_login(deny=True)
    back = redirected(authorize(client))
    assert back["error"] == "access_denied" and back["state"] == "st-1"


def device_start(client: httpx2.Client) -> dict[str, Any]:
    r = client.post("/oauth/device", data={"client_id": "authpool-test", "scope": "x"})
    assert r.status_code == 200
    return dict(r.json())


def device_poll(client: httpx2.Client, device_code: str) -> httpx2.Response:
    return client.post("/oauth/token", data={"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                                             "device_code": device_code, "client_id": "authpool-test"})


def test_device_flow_answers_pending_then_tokens_once() -> None:
    """A device code is pending until approved, then yields tokens exactly once."""
    clock = ManualClock()
    with LoopbackProvider(device_interval=0.05, clock=clock) as p, new_client(p.base_url) as c:
        grant = device_start(c)
        assert grant["verification_uri"] == p.base_url + "/device"
        assert grant["verification_uri_complete"].endswith(grant["user_code"])
        assert grant["interval"] == 0.05 and p.pending_user_codes() == [grant["user_code"]]
        clock.advance(0.06)
        assert device_poll(c, grant["device_code"]).json()["error"] == "authorization_pending"
        p.approve_device(grant["user_code"], "erin@example.com")
        clock.advance(0.06)
        tokens = device_poll(c, grant["device_code"]).json()
        assert jwt_claims(tokens["id_token"])["sub"] == "erin@example.com"
        assert message(c, bearer(tokens["access_token"])).json()["subject"] == "erin@example.com"
        clock.advance(0.06)
        assert device_poll(c, grant["device_code"]).json()["error"] == "invalid_grant"
        assert p.device_answers(grant["user_code"]) == ["authorization_pending", "tokens"]
        assert grant["device_code"] in p.issued_login_secrets()


def test_device_flow_polled_too_fast_answers_slow_down_with_a_longer_interval() -> None:
    """Polling before the interval has passed gets slow_down, and the interval grows by the step."""
    clock = ManualClock()
    with LoopbackProvider(device_interval=0.2, clock=clock) as p, new_client(p.base_url) as c:
        p.slow_down_step = 0.5
        grant = device_start(c)
        r = device_poll(c, grant["device_code"])
        assert r.status_code == 400 and r.json() == {"error": "slow_down", "interval": 0.7}
        clock.advance(0.6)
        assert device_poll(c, grant["device_code"]).json() == {"error": "slow_down", "interval": 1.2}
        clock.advance(1.2)
        assert device_poll(c, grant["device_code"]).json()["error"] == "authorization_pending"


def test_device_flow_expires_and_can_be_denied() -> None:
    """An unapproved code expires (expired_token); a denied one answers access_denied."""
    clock = ManualClock()
    with LoopbackProvider(device_interval=0.01, device_ttl=0.2, clock=clock) as p, new_client(p.base_url) as c:
        late, denied = device_start(c), device_start(c)
        p.deny_device(denied["user_code"])
        clock.advance(0.05)
        assert device_poll(c, denied["device_code"]).json()["error"] == "access_denied"
        with pytest.raises(KeyError):
            p.approve_device(denied["user_code"])
        clock.advance(0.2)
        assert device_poll(c, late["device_code"]).json()["error"] == "expired_token"


def test_device_page_lets_a_person_approve_by_url(provider: LoopbackProvider, client: httpx2.Client) -> None:
    """GET /device?user_code=…&action=approve approves, as a person at verification_uri would."""
    grant = device_start(client)
    assert client.get("/device", params={"user_code": grant["user_code"], "action": "approve"}).status_code == 200
    assert provider.pending_user_codes() == []
    assert client.get("/device", params={"user_code": "NOPE-NOPE", "action": "deny"}).status_code == 404


# ---- rate limits as bodies say them, per-model limits, OpenAI streams, slow and broken subjects ----------


def chat(client: httpx2.Client, key: str, **body: Any) -> httpx2.Response:
    return client.post("/v1/chat/completions", json={"model": "gpt-test", **body}, headers=bearer(key))


def data_chunks(text: str) -> list[str]:
    """The ``data:`` payloads of an event stream without event names (OpenAI style)."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        assert all(line.startswith("data: ") for line in lines), block
        out.append("\n".join(line[6:] for line in lines))
    return out


@pytest.mark.parametrize("style", ["codex-resets-at", "codex-resets-in", "google-retry-info", "google-quota-reset"])
def test_body_rate_limit_styles_carry_the_deadline_in_the_body_only(
    provider: LoopbackProvider, client: httpx2.Client, style: str
) -> None:
    """Codex usage limits and Google RESOURCE_EXHAUSTED put the reset in the 429 body, with no reset header."""
    key = provider.add_api_key("b@example.com")
    provider.set_rate_limit("b@example.com", after=0, style=style, retry_after=754.5)
    r = chat(client, key)
    now = time.time()
    assert r.status_code == 429
    assert not {n for n in r.headers if "retry-after" in n.lower() or "ratelimit" in n.lower()}
    error = r.json()["error"]
    if style.startswith("codex"):
        assert (error["type"], error["plan_type"]) == ("usage_limit_reached", "plus")
        if style == "codex-resets-at":
            assert "resets_in_seconds" not in error and isinstance(error["resets_at"], int)
            assert 753 <= error["resets_at"] - now <= 756
        else:
            assert "resets_at" not in error and error["resets_in_seconds"] == 755
        return
    assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
    by_type = {d["@type"].rsplit(".", 1)[1]: d for d in error["details"]}
    assert by_type["QuotaFailure"]["violations"][0]["quotaDimensions"] == {"location": "global"}
    if style == "google-retry-info":
        assert set(by_type) == {"QuotaFailure", "RetryInfo"}
        assert by_type["RetryInfo"]["retryDelay"] == "755s"
    else:
        assert set(by_type) == {"QuotaFailure", "ErrorInfo"}
        assert by_type["ErrorInfo"]["metadata"]["quotaResetDelay"] == "12m34.5s"


def test_anthropic_unified_style_sends_both_windows_with_the_rejecting_one_latest(
    provider: LoopbackProvider, client: httpx2.Client
) -> None:
    """Unified limits: epoch-second resets for the 5h window (allowed, sooner) and the 7d window (rejected, later)."""
    key = provider.add_api_key("u@example.com")
    provider.set_rate_limit("u@example.com", after=0, style="anthropic-unified", retry_after=800.0)
    r = message(client, {"x-api-key": key})
    now = time.time()
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
    h = r.headers
    assert (h["anthropic-ratelimit-unified-status"], h["anthropic-ratelimit-unified-7d-status"]) == (
        "rejected", "rejected")
    assert h["anthropic-ratelimit-unified-5h-status"] == "allowed"
    assert 199 <= int(h["anthropic-ratelimit-unified-5h-reset"]) - now <= 201
    assert 799 <= int(h["anthropic-ratelimit-unified-7d-reset"]) - now <= 801


def test_a_per_model_limit_refuses_only_that_model_and_names_it(
    provider: LoopbackProvider, client: httpx2.Client
) -> None:
    """set_rate_limit(model=…): that model gets 429 naming it (OpenAI message, Google quotaDimensions); others pass."""
    key = provider.add_api_key("m@example.com")
    provider.set_rate_limit("m@example.com", after=1, retry_after=60.0, model="gpt-x")
    assert chat(client, key, model="gpt-x").status_code == 200
    limited = chat(client, key, model="gpt-x")
    assert limited.status_code == 429 and 59 <= int(limited.headers["retry-after"]) <= 60
    error = limited.json()["error"]
    assert error["message"].startswith("Rate limit reached for gpt-x in organization org-loopback on requests")
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert chat(client, key, model="gpt-y").status_code == 200

    provider.set_rate_limit("m@example.com", after=0, style="google-retry-info", retry_after=30.0,
                            model="gemini-x")
    r = client.post("/v1beta/models/gemini-x:generateContent", json={"contents": []}, headers=bearer(key))
    assert r.status_code == 429
    violation = r.json()["error"]["details"][0]["violations"][0]
    assert violation["quotaDimensions"] == {"location": "global", "model": "gemini-x"}
    provider.clear_rate_limit("m@example.com")
    assert chat(client, key, model="gpt-x").status_code == 200


def test_gemini_generate_content_answers_for_the_model_in_the_path(
    provider: LoopbackProvider, client: httpx2.Client
) -> None:
    """POST /v1beta/models/<model>:generateContent answers a candidate naming the subject; other methods are 404."""
    key = provider.add_api_key("g@example.com")
    r = client.post("/v1beta/models/gemini-2.5-flash:generateContent", json={"contents": []}, headers=bearer(key))
    assert r.status_code == 200
    doc = r.json()
    assert doc["modelVersion"] == "gemini-2.5-flash" and doc["subject"] == "g@example.com"
    assert doc["candidates"][0]["content"]["parts"][0]["text"] == "Hello from g@example.com."
    assert provider.snapshot()["calls_by_path"]["/v1beta/models/gemini-2.5-flash:generateContent"] == 1
    assert client.post("/v1beta/models/x:generateContent", json={}).status_code == 401
    assert client.get("/v1beta/models/x:generateContent").status_code == 404


def test_streamed_chat_completions_send_openai_chunks_and_break_like_openai(
    provider: LoopbackProvider, client: httpx2.Client
) -> None:
    """stream: true on /v1/chat/completions: chunks then [DONE]; errors arrive as bare `data: {"error": …}` chunks."""
    key = provider.add_api_key("o@example.com")
    r = chat(client, key, stream=True)
    assert r.headers["content-type"].startswith("text/event-stream")
    chunks = data_chunks(r.text)
    assert chunks[-1] == "[DONE]"
    docs = [json.loads(c) for c in chunks[:-1]]
    assert {d["object"] for d in docs} == {"chat.completion.chunk"}
    assert "".join(d["choices"][0]["delta"].get("content") or "" for d in docs) == "Hello from o@example.com."
    assert docs[-1]["choices"][0]["finish_reason"] == "stop"

    provider.set_stream_error("o@example.com", "error-first")
    first = [json.loads(c) for c in data_chunks(chat(client, key, stream=True).text)]
    assert len(first) == 1 and (first[0]["error"]["type"], first[0]["error"]["code"]) == (
        "tokens", "rate_limit_exceeded")
    assert "Rate limit reached for gpt-test in organization" in first[0]["error"]["message"]

    provider.set_stream_error("o@example.com", "error-after-content")
    after = [json.loads(c) for c in data_chunks(chat(client, key, stream=True).text)]
    assert [d["choices"][0]["delta"].get("content") for d in after[:-1]] == ["", "Hello"]
    assert after[-1]["error"]["code"] == "rate_limit_exceeded"

    provider.set_stream_error("o@example.com", "overloaded-first")
    over = [json.loads(c) for c in data_chunks(chat(client, key, stream=True).text)]
    assert over == [{"error": {"message": "The server is overloaded. Please try again later.",
                               "type": "server_error", "param": None, "code": None}}]
    assert chat(client, key).json()["object"] == "chat.completion"  # unstreamed calls are unaffected


def test_overloaded_first_streams_open_with_an_overloaded_error_event(
    provider: LoopbackProvider, client: httpx2.Client
) -> None:
    """overloaded-first on /v1/messages: one `event: error` with overloaded_error inside a 200."""
    key = provider.add_api_key("v@example.com")
    provider.set_stream_error("v@example.com", "overloaded-first")
    r = message(client, {"x-api-key": key}, stream=True)
    assert r.status_code == 200
    assert parse_sse(r.text) == [("error", {"type": "error", "error": {"type": "overloaded_error",
                                                                       "message": "Overloaded"}})]


def test_stream_delay_paces_the_events_of_a_stream(provider: LoopbackProvider, client: httpx2.Client) -> None:
    """set_stream_delay: the first event arrives at once and the next waits (stop() breaks it off); short pauses
    still deliver all 8 events."""
    key = provider.add_api_key("p@example.com")
    provider.set_stream_delay(0.01)
    with client.stream("POST", "/v1/messages", json={"model": "m", "stream": True},
                       headers={"x-api-key": key}) as r:
        text = "".join(r.iter_text())
    assert len(parse_sse(text)) == 8
    provider.set_stream_delay(100)  # a pause no test run outlasts: what arrives came before it
    with client.stream("POST", "/v1/messages", json={"model": "m", "stream": True},
                       headers={"x-api-key": key}) as r:
        chunks = r.iter_raw()
        received = b""
        while b"\n\n" not in received:
            received += next(chunks)
        provider.stop()  # cuts the pause short: the stream ends there instead of going on
        with contextlib.suppress(httpx2.RemoteProtocolError, httpx2.ReadError):
            for chunk in chunks:
                received += chunk
    assert [name for name, _ in parse_sse(received.decode())] == ["message_start"]


def test_an_always_failing_subject_gets_its_status_or_a_dropped_connection(
    provider: LoopbackProvider, client: httpx2.Client
) -> None:
    """set_always_failing: that subject's calls answer the status (0: no answer at all); others are served."""
    bad, good = provider.add_api_key("bad@example.com"), provider.add_api_key("good@example.com")
    provider.set_always_failing("bad@example.com", 503)
    r = chat(client, bad)
    assert r.status_code == 503 and r.json()["error"]["message"] == "injected failure"
    assert chat(client, good).status_code == 200
    provider.set_always_failing("bad@example.com", 0)
    with pytest.raises(httpx2.RemoteProtocolError):
        chat(client, bad)
    assert chat(client, good).status_code == 200
    provider.set_always_failing("bad@example.com", None)
    assert chat(client, bad).status_code == 200
    assert provider.snapshot()["api_calls_by_subject"]["bad@example.com"] == 3


@pytest.mark.parametrize("style", ["anthropic-unified", "anthropic", "openai"])
def test_a_quota_window_puts_its_reset_on_every_successful_answer(
    provider: LoopbackProvider, client: httpx2.Client, style: str
) -> None:
    """set_quota_window: successes carry the current window's end in the style's header; 429s keep their own."""
    key = provider.add_api_key("w@example.com")
    provider.set_quota_window("w@example.com", 600, style)
    r = chat(client, key)
    now = time.time()
    assert r.status_code == 200
    h = r.headers
    if style == "anthropic-unified":
        assert 598 <= int(h["anthropic-ratelimit-unified-5h-reset"]) - now <= 601
    elif style == "anthropic":
        assert 598 <= datetime.fromisoformat(h["anthropic-ratelimit-requests-reset"]).timestamp() - now <= 601
    else:
        assert re.fullmatch(r"(9|10)m\d+(\.\d+)?s", h["x-ratelimit-reset-requests"])
    provider.set_quota_window("w@example.com", None)
    assert not {n for n in chat(client, key).headers if "ratelimit" in n.lower()}
    with pytest.raises(ValueError, match="unknown quota window style"):
        provider.set_quota_window("w@example.com", 60, "nope")
