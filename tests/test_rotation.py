"""Same-request rotation against a real loopback provider: 429, 401, 5xx, origins, bodies.

Every test sends real HTTP to a LoopbackProvider on 127.0.0.1 through the pool's own
transport; second processes are the real ``authpool request`` CLI. Nothing of ours is patched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import httpx2
import pytest

from authpool import (
    AllAccountsCooling,
    BodyNotReplayable,
    InvalidInput,
    OriginRefused,
    Pool,
    RequestFailed,
)
from authpool.accounts.model import Account, Counters
from authpool.rotation.strategy import UsageView, order_accounts
from authpool.server.loopback import LoopbackProvider
from tests.conftest import LoopbackPool, assert_no_secrets, home_texts, run_cli

CHAT = "/v1/chat/completions"
BODY = {"model": "loopback-small", "messages": [{"role": "user", "content": "hi"}]}


def trail(response: httpx2.Response) -> list[tuple[str, int | None, str]]:
    """(account label, status, outcome) per attempt of a served response."""
    return [(a.account.split("/")[1], a.status, a.outcome) for a in response.extensions["authpool"].attempts]


def served_by(response: httpx2.Response) -> str:
    return str(response.extensions["authpool"].account)


def cli_request(*extra: str, path: str = CHAT) -> Any:
    return run_cli("request", "acme", "POST", path, "--json", '{"model": "loopback-small"}', *extra)


# -- 429 ---------------------------------------------------------------------------------------


def test_a_rate_limited_account_is_skipped_and_its_cooldown_binds_a_second_process(acme: LoopbackPool) -> None:
    """429 on the first account: served by the second, the 429 is in the trail, and another process skips the first."""
    acme.add_oauth_accounts(3)
    acme.lp.set_rate_limit("a", 0, "retry-after-seconds", 30)
    before = time.time()
    with acme.pool.sync_client("acme") as client:
        r = client.post(CHAT, json=BODY)
    assert r.status_code == 200
    assert r.json()["subject"] == "b"
    assert served_by(r) == "acme/b"
    assert trail(r) == [("a", 429, "rate_limited"), ("b", 200, "ok")]
    first = r.extensions["authpool"].attempts[0]
    assert first.detail == "retry-after"
    assert before + 29 <= first.cooldown_until <= time.time() + 31

    a = acme.account_json("a")  # persisted before the response came back
    cooldown = a["cooldowns"]["*"]
    assert before + 29 <= cooldown["until"] <= time.time() + 31
    assert cooldown["reason"] == "429 (retry-after)"
    assert a["counters"]["rate_limited"] == 1
    assert a["last_status"] == 429

    calls_to_a = acme.lp.snapshot()["api_calls_by_subject"]["a"]
    assert calls_to_a == 1
    cli = cli_request()
    assert cli.returncode == 0, cli.stderr
    assert '"subject": "b"' in cli.stdout or '"subject": "c"' in cli.stdout
    assert "rate_limited" not in cli.stderr  # it never tried acme/a
    stats = acme.lp.snapshot()
    assert stats["api_calls_by_subject"]["a"] == calls_to_a
    assert stats["statuses"]["429"] == 1
    assert_no_secrets([cli.stdout, cli.stderr, *home_texts(acme.home)], acme.secrets())


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_sync_and_async_clients_both_rotate_over_the_pool(acme: LoopbackPool, flavour: str) -> None:
    """pool.sync_client and pool.client serve the same request the same way: 429 on a, 200 from b."""
    acme.add_oauth_accounts(2)
    acme.lp.set_rate_limit("a", 0)
    if flavour == "sync":
        with acme.pool.sync_client("acme") as client:
            r = client.post(CHAT, json=BODY)
    else:

        async def go() -> httpx2.Response:
            async with acme.pool.client("acme") as client:
                response = await client.post(CHAT, json=BODY)
                await response.aread()
                return response

        r = asyncio.run(go())
    assert (r.status_code, r.json()["subject"]) == (200, "b")
    assert trail(r) == [("a", 429, "rate_limited"), ("b", 200, "ok")]


# -- all accounts cooling ----------------------------------------------------------------------


def test_a_cooling_pool_within_the_wait_budget_waits_reports_progress_and_succeeds(acme: LoopbackPool) -> None:
    """Every account 429s with a short Retry-After: the request waits (progress reported), then is served."""
    acme.add_oauth_accounts(2)
    for s in "ab":
        acme.lp.set_rate_limit(s, 0, "retry-after-ms", 0.4)
    progress: list[tuple[float, float | None, str]] = []

    def on_progress(waited: float, total: float | None, message: str) -> None:
        progress.append((waited, total, message))
        # The provider lifts its limit while we wait: the retry after the wait must go through.
        for s in "ab":
            acme.lp.clear_rate_limit(s)

    with acme.pool.sync_client("acme", wait_budget=10, on_progress=on_progress) as client:
        r = client.post(CHAT, json=BODY)
    assert r.status_code == 200
    assert len(progress) == 1
    waited, total, message = progress[0]
    assert (waited, total) == (0.0, 10)
    assert message.startswith("all accounts cooling; waiting ")
    assert [t[2] for t in trail(r)] == ["rate_limited", "rate_limited", "ok"]


def test_an_async_progress_callback_is_awaited_while_waiting(acme: LoopbackPool) -> None:
    """With the async client the progress callback may be a coroutine; the request then succeeds."""
    acme.add_oauth_accounts(1)
    acme.lp.set_rate_limit("a", 0, "retry-after-ms", 0.3)
    seen: list[str] = []

    async def on_progress(waited: float, total: float | None, message: str) -> None:
        seen.append(message)
        acme.lp.clear_rate_limit("a")

    async def go() -> httpx2.Response:
        async with acme.pool.client("acme", wait_budget=5, on_progress=on_progress) as client:
            return await client.post(CHAT, json=BODY)

    r = asyncio.run(go())
    assert r.status_code == 200
    assert len(seen) == 1


def test_a_cooling_pool_without_budget_fails_naming_when_the_next_account_frees_up(acme: LoopbackPool) -> None:
    """No wait budget: AllAccountsCooling says when the next account frees up and lists every account's state."""
    acme.add_oauth_accounts(2)
    acme.lp.set_rate_limit("a", 0, "retry-after-seconds", 30)
    acme.lp.set_rate_limit("b", 0, "retry-after-seconds", 60)
    with acme.pool.sync_client("acme") as client, pytest.raises(AllAccountsCooling) as info:
        client.post(CHAT, json=BODY)
    e = info.value
    text = str(e)
    assert text.startswith("all acme accounts are cooling down; the next frees up at ")
    assert "acme/a: cooling until " in text
    assert "acme/b: cooling until " in text
    assert e.retry_at is not None
    assert e.retry_at == pytest.approx(acme.account_json("a")["cooldowns"]["*"]["until"])
    assert time.time() + 25 < e.retry_at < time.time() + 31
    assert [(a.account, a.outcome) for a in e.attempts] == [("acme/a", "rate_limited"), ("acme/b", "rate_limited")]
    assert e.code == "all_cooling"

    # Another process: nothing to try, one line on stderr, exit status 1.
    cli = cli_request()
    assert cli.returncode == 1
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1, cli.stderr
    assert lines[0].startswith("authpool: error: all acme accounts are cooling down; the next frees up at ")
    assert "acme/a: cooling until" in lines[0] and "acme/b: cooling until" in lines[0]
    assert cli.stdout == ""
    assert acme.lp.snapshot()["api_calls"] == 2  # the CLI sent nothing


def test_a_wait_budget_shorter_than_the_cooldown_fails_at_once(acme: LoopbackPool) -> None:
    """A budget smaller than the soonest cooldown does not wait at all: it fails with AllAccountsCooling."""
    acme.add_oauth_accounts(1)
    acme.lp.set_rate_limit("a", 0, "retry-after-seconds", 30)
    progress: list[str] = []
    with acme.pool.sync_client("acme", wait_budget=5, on_progress=lambda w, t, m: progress.append(m)) as client:
        with pytest.raises(AllAccountsCooling, match="next frees up at"):
            client.post(CHAT, json=BODY)
    assert progress == []


# -- 401 ---------------------------------------------------------------------------------------


def test_an_account_refused_even_after_a_refresh_is_marked_needs_reauth_and_the_request_rotates(
    acme: LoopbackPool,
) -> None:
    """401, refresh succeeds, 401 again: the account is marked needs-reauth and the next account serves."""
    acme.add_oauth_accounts(2)
    acme.lp.set_always_unauthorized("a")
    with acme.pool.sync_client("acme") as client:
        r = client.post(CHAT, json=BODY)
        assert (r.status_code, r.json()["subject"]) == (200, "b")
        assert trail(r) == [("a", 401, "refreshed"), ("a", 401, "needs_reauth"), ("b", 200, "ok")]
        a = acme.account_json("a")
        assert a["needs_reauth"] is True
        assert a["secret_generation"] == 2  # the refresh itself went through and was stored
        assert a["counters"]["unauthorized"] == 1
        stats = acme.lp.snapshot()
        assert stats["refresh_calls"] == 1
        assert stats["api_calls_by_subject"]["a"] == 2

        # Later requests leave acme/a alone: no loop of refreshes against a refusing provider.
        r2 = client.post(CHAT, json=BODY)
    assert trail(r2) == [("b", 200, "ok")]
    stats = acme.lp.snapshot()
    assert (stats["refresh_calls"], stats["api_calls_by_subject"]["a"]) == (1, 2)
    cli = cli_request()
    assert cli.returncode == 0, cli.stderr
    assert acme.lp.snapshot()["api_calls_by_subject"]["a"] == 2


def test_an_api_key_answered_401_is_marked_needs_reauth_and_the_request_rotates(acme: LoopbackPool) -> None:
    """An API key the provider refuses: no refresh is possible, it is marked needs-reauth, the next account serves."""
    acme.add_api_key("k1", key="lpk-not-a-key-the-provider-knows-0123456789abcdef")
    acme.add_api_key("k2")
    with acme.pool.sync_client("acme") as client:
        r = client.post(CHAT, json=BODY)
    assert (r.status_code, r.json()["subject"]) == (200, "k2")
    assert trail(r) == [("k1", 401, "needs_reauth"), ("k2", 200, "ok")]
    k1 = acme.account_json("k1")
    assert k1["needs_reauth"] is True
    assert "401" in k1["last_error"]
    assert acme.lp.snapshot()["token_calls"] == 0
    assert_no_secrets(home_texts(acme.home), acme.secrets())


def test_a_misconfigured_auth_style_refusing_every_key_brands_none_dead_and_names_the_configuration(
    acme: LoopbackPool,
) -> None:
    """auth = "bearer" where the API wants x-api-key: every key is refused, none is marked needs-reauth,
    the error says the configuration is the likely cause; fixed, every key works."""
    acme.configure("acme", auth="bearer")
    for label in ("k1", "k2", "k3"):
        acme.add_api_key(label)
    with acme.pool.sync_client("acme") as client, pytest.raises(RequestFailed) as info:
        client.post("/v1/messages", json=BODY)
    message = str(info.value)
    assert [(a.account, a.status, a.outcome) for a in info.value.attempts] == [
        (f"acme/{k}", 401, "unauthorized") for k in ("k1", "k2", "k3")]
    assert "every acme account tried was refused (401) the same way" in message
    assert "the provider's configuration is the likely cause" in message
    assert "API keys go in the authorization header as a Bearer token" in message
    assert "check `auth` for [providers.acme] in config.toml" in message
    for label in ("k1", "k2", "k3"):
        k = acme.account_json(label)
        assert (k["needs_reauth"], k["last_status"], k["counters"]["unauthorized"]) == (False, 401, 1)
    acme.configure("acme", auth="header:x-api-key")
    with acme.pool.sync_client("acme") as client:
        r = client.post("/v1/messages", json=BODY)
    assert (r.status_code, trail(r)) == (200, [("k1", 200, "ok")])
    assert_no_secrets([message, *home_texts(acme.home)], acme.secrets())


def test_a_refused_key_is_marked_needs_reauth_once_another_key_of_the_provider_is_accepted(
    acme: LoopbackPool,
) -> None:
    """The second opinion: k1 is refused, k2 is accepted in the same request, so k1's key is dead."""
    acme.add_api_key("k1", key="lpk-not-a-key-the-provider-knows-0123456789abcdef")
    acme.add_api_key("k2")
    acme.lp.set_rate_limit("k2", 0, "retry-after-seconds", 30)  # a 429 still means "credentials accepted"
    with acme.pool.sync_client("acme") as client, pytest.raises(RequestFailed):
        client.post(CHAT, json=BODY)
    assert acme.account_json("k1")["needs_reauth"] is True


def test_a_403_rotates_without_marking_the_account_for_reauth(acme: LoopbackPool, loopback: LoopbackProvider) -> None:
    """403 from an API-key account: the request moves on, the account is not marked needs-reauth."""
    from authpool.server.loopback import LoopbackResponse

    def forbidden_for_k1(request: Any) -> Any:
        if request.headers.get("authorization", "").endswith(acme.handed_out[0]):
            return LoopbackResponse.error(403, "forbidden")
        return LoopbackResponse.json(200, {"subject": "k2"})

    loopback.routes[("POST", "/v1/forbidden")] = forbidden_for_k1
    acme.add_api_key("k1")
    acme.add_api_key("k2")
    with acme.pool.sync_client("acme") as client:
        r = client.post("/v1/forbidden", json=BODY)
    assert r.status_code == 200
    assert trail(r) == [("k1", 403, "forbidden"), ("k2", 200, "ok")]
    assert acme.account_json("k1")["needs_reauth"] is False


# -- origins and caller headers --------------------------------------------------------------------


@pytest.fixture
def evil() -> Iterator[LoopbackProvider]:
    """Another loopback server: a foreign origin that must never see a credential."""
    with LoopbackProvider() as lp:
        yield lp


def test_a_url_outside_the_provider_s_origins_is_refused_before_anything_is_sent(
    acme: LoopbackPool, evil: LoopbackProvider
) -> None:
    """An absolute URL on another origin raises OriginRefused; neither server receives a request."""
    acme.add_oauth_accounts(1)
    with acme.pool.sync_client("acme") as client, pytest.raises(OriginRefused) as info:
        client.get(evil.base_url + "/echo-auth-present")
    assert evil.base_url.replace("http://", "") in str(info.value)
    assert acme.lp.snapshot()["calls_by_path"] == {}
    assert evil.snapshot()["calls_by_path"] == {}

    cli = run_cli("request", "acme", "GET", evil.base_url + "/echo-auth-present")
    assert cli.returncode == 1
    assert len(cli.stderr.strip().splitlines()) == 1, cli.stderr
    assert "is not an origin of provider acme" in cli.stderr
    assert evil.snapshot()["calls_by_path"] == {}
    assert acme.lp.snapshot()["calls_by_path"] == {}


def test_the_cli_refuses_an_unparseable_path_or_a_userinfo_url_with_one_clear_line(acme: LoopbackPool) -> None:
    """A CR/LF in the path or a user@host URL is a one-line error from `authpool request`, nothing sent."""
    acme.add_oauth_accounts(1)
    for path, fragment in [("/v1/models\r\nx-injected: 1", "invalid path"),
                           (acme.lp.base_url.replace("http://", "http://user@") + "/v1/models", "user@host")]:
        cli = run_cli("request", "acme", "GET", path)
        assert cli.returncode == 1, cli.stderr
        assert len(cli.stderr.strip().splitlines()) == 1 and fragment in cli.stderr, cli.stderr
        assert "internal error" not in cli.stderr
    assert acme.lp.snapshot()["calls_by_path"] == {}


def test_a_same_origin_redirect_is_not_followed_by_the_default_client(
    acme: LoopbackPool, evil: LoopbackProvider
) -> None:
    """The default client follows no redirect: the 3xx comes back and the foreign origin gets nothing."""
    acme.add_oauth_accounts(1)
    target = evil.base_url + "/echo-auth-present"
    with acme.pool.sync_client("acme") as client:
        r = client.get("/redirect", params={"to": target})
    assert r.status_code == 307
    assert r.headers["location"] == target
    assert acme.lp.snapshot()["calls_by_path"] == {"/redirect": 1}
    assert evil.snapshot()["calls_by_path"] == {}


@pytest.mark.parametrize("status", [302, 307, 308])
def test_a_redirect_to_another_origin_is_refused_even_when_the_client_follows_redirects(
    acme: LoopbackPool, evil: LoopbackProvider, status: int
) -> None:
    """follow_redirects=True on pool.transport: the cross-origin hop raises OriginRefused and reaches nobody."""
    acme.add_oauth_accounts(1)
    acme.add_api_key("key")
    target = evil.base_url + "/echo-auth-present"
    with httpx2.Client(transport=acme.pool.transport("acme"), base_url=acme.lp.base_url,
                       follow_redirects=True) as client:
        with pytest.raises(OriginRefused):
            client.get("/redirect", params={"to": target, "status": str(status)})
        # Same-origin redirects are fine, and carry the credential on the second hop too.
        r = client.get("/redirect", params={"to": acme.lp.base_url + "/echo-auth-present", "status": str(status)})
    assert r.json() == {"authorization": True, "x_api_key": False, "cookie": False}
    assert evil.snapshot()["calls_by_path"] == {}
    assert evil.snapshot()["connections"] == 0


def test_async_clients_refuse_cross_origin_redirects_too(acme: LoopbackPool, evil: LoopbackProvider) -> None:
    """The async transport applies the same origin check to every redirect hop."""
    acme.add_oauth_accounts(1)

    async def go() -> None:
        async with httpx2.AsyncClient(transport=acme.pool.transport("acme"), base_url=acme.lp.base_url,
                                      follow_redirects=True) as client:
            await client.get("/redirect", params={"to": evil.base_url + "/echo-auth-present"})

    with pytest.raises(OriginRefused):
        asyncio.run(go())
    assert evil.snapshot()["calls_by_path"] == {}


@pytest.mark.parametrize("header", ["Authorization", "x-api-key", "X-Api-Key", "Proxy-Authorization", "Cookie"])
def test_a_caller_supplied_credential_header_is_refused(acme: LoopbackPool, header: str) -> None:
    """A caller may not set a credential header: InvalidInput naming it, and nothing is sent."""
    acme.add_oauth_accounts(1)
    with acme.pool.sync_client("acme") as client, pytest.raises(InvalidInput) as info:
        client.post(CHAT, json=BODY, headers={header: "Bearer caller-value"})
    assert f"already has a {header.lower()} header" in str(info.value).lower()
    assert "authpool sets credentials itself" in str(info.value)
    assert acme.lp.snapshot()["calls_by_path"] == {}


def test_the_cli_refuses_a_caller_supplied_authorization_header_in_one_line(acme: LoopbackPool) -> None:
    """`authpool request -H 'Authorization: ...'` exits 1 with one clear line and sends nothing."""
    acme.add_oauth_accounts(1)
    cli = cli_request("-H", "Authorization: Bearer not-a-real-token")
    assert cli.returncode == 1
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("authpool: error: ")
    assert "authorization header" in lines[0]
    assert acme.lp.snapshot()["calls_by_path"] == {}


# -- request bodies --------------------------------------------------------------------------------


def test_a_streaming_body_that_needs_a_retry_fails_with_body_not_replayable(acme: LoopbackPool) -> None:
    """An async-generator body is sent once; when that account 429s the retry refuses instead of resending it."""
    acme.add_oauth_accounts(2)
    acme.lp.set_rate_limit("a", 0)

    async def body() -> AsyncIterator[bytes]:
        yield b'{"model": "loopback-small", '
        yield b'"messages": []}'

    async def go(content: Any) -> httpx2.Response:
        async with acme.pool.client("acme") as client:
            return await client.post(CHAT, content=content, headers={"content-type": "application/json"})

    with pytest.raises(BodyNotReplayable) as info:
        asyncio.run(go(body()))
    assert "cannot be retried on another account" in str(info.value)
    assert [(a.account, a.outcome) for a in info.value.attempts] == [("acme/a", "rate_limited")]
    assert "b" not in acme.lp.snapshot()["api_calls_by_subject"]

    r = asyncio.run(go(b'{"model": "loopback-small", "messages": []}'))
    assert (r.status_code, served_by(r)) == (200, "acme/b")


def test_a_sync_iterator_body_that_needs_a_retry_fails_with_body_not_replayable(acme: LoopbackPool) -> None:
    """The sync client has the same rule for generator bodies."""
    acme.add_oauth_accounts(2)
    acme.lp.set_rate_limit("a", 0)

    def body() -> Iterator[bytes]:
        yield b'{"model": "loopback-small"}'

    with acme.pool.sync_client("acme") as client:
        with pytest.raises(BodyNotReplayable):
            client.post(CHAT, content=body(), headers={"content-type": "application/json"})
        r = client.post(CHAT, content=b'{"model": "loopback-small"}', headers={"content-type": "application/json"})
    assert (r.status_code, served_by(r)) == (200, "acme/b")


def test_a_streaming_body_is_fine_when_no_retry_is_needed(acme: LoopbackPool) -> None:
    """A generator body on a request the first account serves goes through untouched."""
    acme.add_oauth_accounts(1)

    async def body() -> AsyncIterator[bytes]:
        yield b'{"model": "loopback-small"}'

    async def go() -> httpx2.Response:
        async with acme.pool.client("acme") as client:
            return await client.post(CHAT, content=body(), headers={"content-type": "application/json"})

    r = asyncio.run(go())
    assert (r.status_code, r.json()["model"]) == (200, "loopback-small")


# -- 5xx and network errors ----------------------------------------------------------------------


def test_a_few_5xx_are_retried_on_the_same_account(acme: LoopbackPool) -> None:
    """Two 500s then success: the same account is retried (bounded), no rotation needed."""
    acme.add_oauth_accounts(2)
    acme.lp.set_failures(2, 500)
    with acme.pool.sync_client("acme") as client:
        r = client.post(CHAT, json=BODY)
    assert (r.status_code, r.json()["subject"]) == (200, "a")
    assert trail(r) == [("a", 500, "server_error"), ("a", 500, "server_error"), ("a", 200, "ok")]


def test_persistent_5xx_rotate_after_the_bounded_retries(acme: LoopbackPool) -> None:
    """Three 503s exhaust the first account's retries (1 + 2); the second account serves."""
    acme.add_oauth_accounts(2)
    acme.lp.set_failures(3, 503)
    with acme.pool.sync_client("acme") as client:
        r = client.post(CHAT, json=BODY)
    assert (r.status_code, r.json()["subject"]) == (200, "b")
    assert trail(r) == [("a", 503, "server_error")] * 3 + [("b", 200, "ok")]
    a = acme.account_json("a")
    assert a["needs_reauth"] is False and a["cooldowns"] == {}


def test_5xx_on_every_account_returns_the_last_error_response_after_bounded_attempts(acme: LoopbackPool) -> None:
    """Everyone answers 500: each account is tried 1 + 2 times, then the final 500 is the answer (CLI exit 5)."""
    acme.add_oauth_accounts(2)
    acme.lp.set_failures(1000, 500)
    with acme.pool.sync_client("acme") as client:
        r = client.post(CHAT, json=BODY)
    assert r.status_code == 500
    assert r.json()["error"]["message"] == "injected failure"
    assert trail(r) == [("a", 500, "server_error")] * 3 + [("b", 500, "server_error")] * 3
    assert acme.lp.snapshot()["api_calls"] == 6
    cli = cli_request("--quiet")
    assert cli.returncode == 5
    assert "injected failure" in cli.stdout


def test_an_unreachable_provider_fails_with_request_failed_after_bounded_retries(acme: LoopbackPool) -> None:
    """Connection refused: 1 + 2 attempts per account, then RequestFailed saying the provider could not be reached."""
    dead = LoopbackProvider().start()
    dead.stop()  # its port is now closed: connections are refused
    acme.configure("dead", lp=dead)
    acme.add_oauth("x", provider="dead", lp=acme.lp)
    acme.add_oauth("y", provider="dead", lp=acme.lp)
    with acme.pool.sync_client("dead") as client, pytest.raises(RequestFailed) as info:
        client.post(CHAT, json=BODY)
    e = info.value
    assert type(e) is RequestFailed
    assert str(e).startswith("no account could serve the request")
    assert "could not reach dead: ConnectError" in str(e)
    assert [(a.account, a.outcome) for a in e.attempts] == (
        [("dead/x", "network_error")] * 3 + [("dead/y", "network_error")] * 3)
    for label in "xy":
        acc = acme.account_json(label, provider="dead")
        assert acc["needs_reauth"] is False and acc["cooldowns"] == {}

    cli = run_cli("request", "dead", "GET", "/v1/models", "--quiet")
    assert cli.returncode == 1
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("authpool: error: no account could serve the request"), cli.stderr
    assert "could not reach dead: ConnectError" in lines[0]
    assert "Traceback" not in cli.stderr


def test_a_provider_that_dies_mid_session_is_reported_not_hung_on(acme: LoopbackPool) -> None:
    """Stop the server after a served request: pooled connections are cut and the next request fails clearly."""
    acme.add_oauth_accounts(1)
    with acme.pool.sync_client("acme") as client:
        assert client.post(CHAT, json=BODY).status_code == 200
        acme.lp.stop()
        with pytest.raises(RequestFailed, match="could not reach acme"):
            client.post(CHAT, json=BODY)


# -- strategies --------------------------------------------------------------------------------------


def _acc(label: str, order: int, requests: int = 0) -> Account:
    return Account(id=f"id-{label}", provider="acme", label=label, kind="oauth", order=order,
                   counters=Counters(requests=requests))


# (label, order, requests, last_used, weight) per account; then the expected order per strategy.
_TABLE = [
    SimpleNamespace(
        why="distinct orders",
        accounts=[("a", 0, 10, 300.0, 1.0), ("b", 1, 0, 100.0, 1.0), ("c", 2, 5, 0.0, 1.0)],
        expected={"ordered": "abc", "round-robin": "cba", "least-used": "bca"},
    ),
    SimpleNamespace(
        why="equal orders: least recently used first",
        accounts=[("a", 0, 3, 300.0, 1.0), ("b", 0, 3, 100.0, 1.0), ("c", 0, 3, 200.0, 1.0)],
        expected={"ordered": "bca", "round-robin": "bca", "least-used": "bca"},
    ),
    SimpleNamespace(
        why="never used comes first in round-robin",
        accounts=[("a", 0, 0, 50.0, 1.0), ("b", 1, 0, 0.0, 1.0), ("c", 2, 0, 0.0, 1.0)],
        expected={"ordered": "abc", "round-robin": "bca", "least-used": "bca"},
    ),
    SimpleNamespace(
        why="weights give proportional shares",
        accounts=[("a", 0, 30, 0.0, 3.0), ("b", 1, 15, 0.0, 1.0), ("c", 2, 5, 0.0, 0.5)],
        expected={"ordered": "abc", "round-robin": "abc", "least-used": "acb"},
    ),
    SimpleNamespace(
        why="ties everywhere fall back to the id",
        accounts=[("c", 0, 0, 0.0, 1.0), ("a", 0, 0, 0.0, 1.0), ("b", 0, 0, 0.0, 1.0)],
        expected={"ordered": "abc", "round-robin": "abc", "least-used": "abc"},
    ),
]


@pytest.mark.parametrize("strategy", ["ordered", "round-robin", "least-used", "sticky", "unknown-name"])
@pytest.mark.parametrize("case", _TABLE, ids=[c.why for c in _TABLE])
def test_strategies_order_a_table_of_account_states(case: SimpleNamespace, strategy: str) -> None:
    """ordered fills by order (LRU among equals), round-robin is LRU, least-used divides requests by weight."""
    accounts = [_acc(label, order, requests) for label, order, requests, _, _ in case.accounts]
    views = {f"id-{label}": UsageView(last_used, weight) for label, _, _, last_used, weight in case.accounts}
    got = order_accounts(strategy, accounts, lambda a: views[a.id])
    expected = case.expected.get(strategy, case.expected["ordered"])  # sticky and unknown names fill first
    assert "".join(a.label for a in got) == expected


def test_round_robin_spreads_consecutive_requests_over_every_account(acme: LoopbackPool) -> None:
    """strategy = "round-robin" in config.toml: six requests from one client use a, b, c, a, b, c."""
    acme.configure("acme", strategy="round-robin")
    acme.add_oauth_accounts(3)
    with acme.pool.sync_client("acme") as client:
        subjects = [client.post(CHAT, json=BODY).json()["subject"] for _ in range(6)]
    assert subjects == list("abcabc")


def test_the_ordered_strategy_fills_the_first_account_first(acme: LoopbackPool) -> None:
    """The default strategy keeps using the first account while it is healthy."""
    acme.add_oauth_accounts(3)
    with acme.pool.sync_client("acme") as client:
        subjects = [client.post(CHAT, json=BODY).json()["subject"] for _ in range(4)]
    assert subjects == list("aaaa")


def test_a_pinned_account_is_the_only_one_used(acme: LoopbackPool) -> None:
    """account= pins a request to one account: when it is cooling the request fails instead of rotating."""
    acme.add_oauth_accounts(2)
    acme.lp.set_rate_limit("b", 0)
    with acme.pool.sync_client("acme", account="acme/b") as client, pytest.raises(AllAccountsCooling):
        client.post(CHAT, json=BODY)
    assert "a" not in acme.lp.snapshot()["api_calls_by_subject"]


def test_the_pool_is_usable_from_a_fresh_pool_object_per_request(acme: LoopbackPool) -> None:
    """A second Pool on the same home sees accounts and cooldowns written by the first."""
    acme.add_oauth_accounts(2)
    acme.lp.set_rate_limit("a", 0)
    with acme.pool.sync_client("acme") as client:
        assert client.post(CHAT, json=BODY).json()["subject"] == "b"
    other = Pool.open(acme.home)
    try:
        with other.sync_client("acme") as client:
            r = client.post(CHAT, json=BODY)
    finally:
        other.close()
    assert trail(r) == [("b", 200, "ok")]


def test_max_attempts_bounds_how_many_accounts_one_request_tries(acme: LoopbackPool) -> None:
    """max_attempts = 2: with a, b and c rate-limited, the request stops after a and b; c and d are never contacted."""
    acme.configure("acme", max_attempts=2)
    acme.add_oauth_accounts(4)
    for s in "abc":
        acme.lp.set_rate_limit(s, 0)
    with acme.pool.sync_client("acme") as client, pytest.raises(RequestFailed) as info:
        client.post(CHAT, json=BODY)
    assert "max_attempts" in str(info.value)
    assert [(a.account, a.outcome) for a in info.value.attempts] == [
        ("acme/a", "rate_limited"), ("acme/b", "rate_limited")]
    assert set(acme.lp.snapshot()["api_calls_by_subject"]) == {"a", "b"}
    # The cooldowns stick, so the next request starts with the accounts not yet tried.
    with acme.pool.sync_client("acme") as client:
        r = client.post(CHAT, json=BODY)
    assert trail(r) == [("c", 429, "rate_limited"), ("d", 200, "ok")]


def test_max_attempts_of_one_returns_the_first_account_s_final_5xx(acme: LoopbackPool) -> None:
    """max_attempts = 1: 5xx retries stay on the one account, whose last error response is the answer."""
    acme.configure("acme", max_attempts=1)
    acme.add_oauth_accounts(2)
    acme.lp.set_failures(3, 502)
    with acme.pool.sync_client("acme") as client:
        r = client.post(CHAT, json=BODY)
    assert r.status_code == 502
    assert trail(r) == [("a", 502, "server_error")] * 3


def _retry_after_zero_route(acme: LoopbackPool, limited_calls: int) -> list[str]:
    """POST /v1/zero answers 429 with Retry-After: 0 to its first ``limited_calls`` calls, then 200."""
    from authpool.server.loopback import LoopbackResponse

    seen: list[str] = []

    def route(request: Any) -> Any:
        seen.append(request.headers.get("authorization", "")[-6:])
        if len(seen) <= limited_calls:
            return LoopbackResponse.error(429, "slow down", {"Retry-After": "0"})
        return LoopbackResponse.json(200, {"calls": len(seen)})

    acme.lp.routes[("POST", "/v1/zero")] = route
    return seen


def test_retry_after_zero_retries_the_account_at_once_instead_of_failing(acme: LoopbackPool) -> None:
    """A 429 saying Retry-After: 0 on the only account: it is tried again right away, without any wait budget."""
    acme.add_oauth_accounts(1)
    seen = _retry_after_zero_route(acme, limited_calls=1)
    with acme.pool.sync_client("acme") as client:
        r = client.post("/v1/zero", json=BODY)
    assert (r.status_code, len(seen)) == (200, 2)
    assert trail(r) == [("a", 429, "rate_limited"), ("a", 200, "ok")]


def test_a_provider_that_keeps_saying_retry_after_zero_is_given_up_on_after_max_attempts(acme: LoopbackPool) -> None:
    """Retry-After: 0 forever: the request stops after max_attempts tries with a clear error, never spins."""
    acme.configure("acme", max_attempts=4)
    acme.add_oauth_accounts(1)
    seen = _retry_after_zero_route(acme, limited_calls=10**6)
    with acme.pool.sync_client("acme") as client, pytest.raises(RequestFailed) as info:
        client.post("/v1/zero", json=BODY)
    assert len(seen) == 4
    assert "max_attempts = 4" in str(info.value)


@pytest.mark.parametrize("shape", ["userinfo", "userinfo-backslash", "fragment-at", "other-port", "other-host"])
def test_urls_crafted_to_look_like_the_provider_s_origin_are_refused(
    acme: LoopbackPool, evil: LoopbackProvider, shape: str
) -> None:
    """user@host tricks, fragments and look-alike hosts never carry a credential to the foreign server."""
    acme.add_oauth_accounts(1)
    ours = acme.lp.base_url.removeprefix("http://")
    theirs = f"127.0.0.1:{evil.port}"
    url = {
        "userinfo": f"http://{ours}@{theirs}/echo-auth-present",
        "userinfo-backslash": f"http://{ours}\\@{theirs}/echo-auth-present",
        "fragment-at": f"http://{theirs}#@{ours}/echo-auth-present",
        "other-port": f"http://{theirs}/echo-auth-present",
        "other-host": f"http://localhost:{acme.lp.port}/echo-auth-present",
    }[shape]
    with acme.pool.sync_client("acme") as client, pytest.raises(OriginRefused):
        client.get(url)
    assert evil.snapshot()["calls_by_path"] == {}
    assert evil.snapshot()["connections"] == 0
    assert acme.lp.snapshot()["calls_by_path"] == {}


def test_least_used_counts_this_process_s_requests_not_yet_written_to_the_pool_file() -> None:
    """Unrecorded (batched) requests count for least-used: 5 unflushed beat 3 persisted."""
    a, b = _acc("a", 0, requests=0), _acc("b", 1, requests=3)
    views = {"id-a": UsageView(0.0, 1.0, unrecorded=5), "id-b": UsageView(0.0, 1.0)}
    assert [x.label for x in order_accounts("least-used", [a, b], lambda x: views[x.id])] == ["b", "a"]


def test_least_used_with_weights_gives_proportional_shares_within_one_process(acme: LoopbackPool) -> None:
    """strategy = "least-used", weights a = 3, b = 1: forty requests from one client split 30 / 10."""
    acme.configure("acme", strategy="least-used", weights={"a": 3.0, "b": 1.0})
    acme.add_oauth_accounts(2)
    with acme.pool.sync_client("acme") as client:
        subjects = [client.post(CHAT, json=BODY).json()["subject"] for _ in range(40)]
    assert (subjects.count("a"), subjects.count("b")) == (30, 10)


def test_a_namespace_keeps_rotation_inside_its_sub_pool(acme: LoopbackPool) -> None:
    """namespace="team": only that sub-pool's accounts are tried, even when they are all rate-limited."""
    from authpool import TokenSet

    acme.add_oauth_accounts(1)  # acme/a in the default namespace
    for subject in ("t1", "t2"):
        doc = acme.lp.add_oauth_account(subject)
        acme.pool.add_oauth("acme", subject, TokenSet.parse(doc), namespace="team")
    acme.lp.set_rate_limit("t1", 0)
    with acme.pool.sync_client("acme", namespace="team") as client:
        r = client.post(CHAT, json=BODY)
        assert trail(r) == [("t1", 429, "rate_limited"), ("t2", 200, "ok")]
        acme.lp.set_rate_limit("t2", 0)
        with pytest.raises(AllAccountsCooling) as info:
            client.post(CHAT, json=BODY)
    assert "acme/a" not in str(info.value)
    assert "a" not in acme.lp.snapshot()["api_calls_by_subject"]


def test_a_disabled_account_is_never_used(acme: LoopbackPool) -> None:
    """A disabled account is skipped by this process and by a CLI process alike."""
    acme.add_oauth_accounts(2)
    acme.pool.set_enabled("acme/a", False)
    with acme.pool.sync_client("acme") as client:
        assert trail(client.post(CHAT, json=BODY)) == [("b", 200, "ok")]
    cli = cli_request()
    assert cli.returncode == 0, cli.stderr
    assert "a" not in acme.lp.snapshot()["api_calls_by_subject"]


@pytest.mark.parametrize("path", ["../admin/stats", "/v1/%2e%2e/admin", "http://127.0.0.1:{port}/admin"])
def test_a_library_request_cannot_leave_the_provider_s_base_path(acme: LoopbackPool, path: str) -> None:
    """With a base URL that has a path, a library client's request outside it (a relative ``..``, an
    encoded one, an absolute URL on the same origin) is refused before anything is sent."""
    acme.configure("acme", base_url=acme.lp.base_url + "/v1")
    acme.add_api_key("k")
    with acme.pool.sync_client("acme") as client, pytest.raises(OriginRefused) as info:
        client.get(path.format(port=acme.lp.port))
    assert "leads outside the base path /v1 of provider acme" in str(info.value)
    assert acme.lp.snapshot()["calls_by_path"] == {}


@pytest.mark.parametrize(("sent", "arrives"), [
    pytest.param(None, "oauth-2025-04-20", id="the caller sends none: the provider's"),
    pytest.param("claude-code-20250219, interleaved-thinking-2025-05-14",
                 "claude-code-20250219,interleaved-thinking-2025-05-14,oauth-2025-04-20",
                 id="the caller's flags first, the login's appended"),
    pytest.param("oauth-2025-04-20,claude-code-20250219", "oauth-2025-04-20,claude-code-20250219",
                 id="already there: not repeated"),
])
def test_an_oauth_login_s_beta_flag_joins_the_flags_the_caller_sends(
        acme: LoopbackPool, sent: str | None, arrives: str) -> None:
    """Claude Code sends its own anthropic-beta; the login's required flag is added to it, not dropped."""
    acme.configure(oauth_headers={"anthropic-beta": "oauth-2025-04-20"})
    acme.add_oauth("a")
    headers = {"anthropic-beta": sent} if sent is not None else {}
    with acme.pool.sync_client("acme") as client:
        r = client.get("/echo-request", headers=headers)
    assert r.status_code == 200 and r.json()["anthropic_beta"] == arrives


def test_an_api_key_leaves_the_caller_s_beta_flags_as_they_are(acme: LoopbackPool) -> None:
    """The login's flag belongs to OAuth logins only: an API key's request carries the caller's flags unchanged."""
    acme.configure(oauth_headers={"anthropic-beta": "oauth-2025-04-20"})
    acme.add_api_key("k")
    with acme.pool.sync_client("acme") as client:
        r = client.get("/echo-request", headers={"anthropic-beta": "claude-code-20250219"})
    assert r.status_code == 200 and r.json()["anthropic_beta"] == "claude-code-20250219"
