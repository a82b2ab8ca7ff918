"""OAuth refresh against a real rotating token endpoint: once, never clobbered, never a logout.

The loopback provider rotates refresh tokens and revokes the whole login when a used one is
presented again, exactly as real providers do, so a single clobbered or duplicated refresh
shows up as ``reuse_detected``. Concurrency comes from real processes and real file locks;
child processes never receive a token (they read the pool's own secret store).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest

from authpool import Pool, RequestFailed, Secret
from authpool.server.loopback import LoopbackProvider
from tests.conftest import LoopbackPool, assert_no_secrets, home_texts, run_cli, start_worker

CHAT = "/v1/chat/completions"
BODY = {"model": "loopback-small", "messages": []}


def trail(response: httpx2.Response) -> list[tuple[str, int | None, str]]:
    return [(a.account.split("/")[1], a.status, a.outcome) for a in response.extensions["authpool"].attempts]


def stored(acme: LoopbackPool, label: str) -> tuple[int, Secret]:
    """(secret_generation in pool.json, the secret read straight from the secret store)."""
    acc = acme.pool.get(f"acme/{label}")
    return acc.secret_generation, acme.pool.secrets.load_fresh(acc.id)


def cli_request(*extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("request", "acme", "POST", CHAT, "--json", '{"model": "loopback-small"}', *extra, env=env)


def _finish(procs: list[subprocess.Popen[str]], timeout: float = 120) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append((p.returncode, stdout, stderr))
    return out


def _kill(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate()


# -- single flight across processes ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("expiry", ["provider-side", "stored"])
def test_eight_processes_of_sixteen_concurrent_requests_refresh_an_expired_token_exactly_once(
    acme: LoopbackPool, tmp_path: Path, expiry: str
) -> None:
    """128 overlapping requests (8 processes x 16 async) on one expired account: one token call, 128 successes."""
    if expiry == "stored":
        acme.add_oauth("a", expires_in=-60)  # we know it expired: the mandatory refresh path
    else:
        acme.add_oauth("a")
        acme.lp.expire_access_tokens("a")  # only the provider knows: the 401 -> forced refresh path
    acme.lp.reset_stats()
    go = tmp_path / "go"
    procs = [start_worker("burst", "acme", CHAT, "16", str(go)) for _ in range(8)]
    try:
        for p in procs:  # the barrier: every process is up, with its pool and client open
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.strip() == "ready", p.communicate()[1]
        go.touch()
        results = _finish(procs)
    finally:
        _kill(procs)
    summaries = []
    for rc, stdout, stderr in results:
        assert rc == 0, stderr
        summaries.append(json.loads(stdout))
    statuses = [s for summary in summaries for s in summary["statuses"]]
    errors = [e for summary in summaries for e in summary["errors"]]
    assert errors == []
    assert statuses == [200] * 128
    assert {s for summary in summaries for s in summary["subjects"]} == {"a"}
    stats = acme.lp.snapshot()
    assert stats["refresh_calls"] == 1, stats
    assert (stats["invalid_grant_count"], stats["reuse_detected_count"], stats["handler_errors"]) == (0, 0, 0)
    a = acme.account_json("a")
    assert (a["secret_generation"], a["counters"]["refreshes"], a["needs_reauth"]) == (2, 1, False)
    outcomes = Counter(o for summary in summaries for o in summary["outcomes"])
    assert set(outcomes) <= {"ok", "refreshed"}
    assert outcomes["ok"] == 128
    texts = [t for _, out, err in results for t in (out, err)]
    assert_no_secrets(texts + home_texts(acme.home), acme.secrets())


@pytest.mark.slow
def test_a_long_lived_process_and_fifty_short_lived_clis_across_rotations_are_never_logged_out(
    acme: LoopbackPool, tmp_path: Path
) -> None:
    """A looping process and 50 CLIs a few at a time, tokens rotating: no invalid_grant, no reauth, no failure."""
    # Tokens live 1.5 s and are renewed from 0.6 s before expiry; the test also kills every
    # access token between batches, so rotations happen whatever the machine's speed.
    acme.configure("acme", refresh_advisory=0.6, refresh_mandatory=0.2, strategy="round-robin")
    acme.lp.access_ttl = 1.5
    acme.add_oauth_accounts(2)
    stop = tmp_path / "stop"
    looper = start_worker("loop", "acme", CHAT, str(stop))
    clis: list[subprocess.CompletedProcess[str]] = []
    try:
        assert looper.stdout is not None
        assert looper.stdout.readline().strip() == "ready", looper.communicate()[1]
        # Every other CLI logs at debug level: the secret scan below covers what it logs too.
        envs = [{"AUTHPOOL_LOG": "debug"} if i % 2 else None for i in range(5)]
        with ThreadPoolExecutor(max_workers=5) as ex:
            for _ in range(10):
                clis += list(ex.map(lambda env: cli_request(env=env), envs))
                acme.lp.expire_access_tokens()
        stop.touch()
        out, err = looper.communicate(timeout=60)
    finally:
        _kill([looper])
    assert looper.returncode == 0, err
    loop = json.loads(out)

    assert len(clis) == 50
    for r in clis:
        assert r.returncode == 0, r.stderr
        assert '"subject": "' in r.stdout
    assert loop["errors"] == []
    assert len(loop["statuses"]) > 0 and set(loop["statuses"]) == {200}
    stats = acme.lp.snapshot()
    assert stats["invalid_grant_count"] == 0, stats
    assert stats["reuse_detected_count"] == 0, stats
    assert stats["handler_errors"] == 0
    assert stats["refresh_calls"] >= 3, stats
    for label in "ab":
        acc = acme.account_json(label)
        assert acc["needs_reauth"] is False, acc
        assert acc["secret_generation"] == acc["counters"]["refreshes"] + 1
    assert sum(acme.account_json(label)["counters"]["refreshes"] for label in "ab") == stats["refresh_calls"]
    texts = [out, err] + [t for r in clis for t in (r.stdout, r.stderr)]
    assert_no_secrets(texts + home_texts(acme.home), acme.secrets())


def test_sixteen_coroutines_of_one_process_refresh_once(acme: LoopbackPool) -> None:
    """In-process single flight: 16 concurrent async requests on an expired token make one token call."""
    import asyncio

    acme.add_oauth("a")
    acme.lp.expire_access_tokens("a")

    async def go() -> list[httpx2.Response]:
        async with acme.pool.client("acme") as client:
            return list(await asyncio.gather(*(client.post(CHAT, json=BODY) for _ in range(16))))

    responses = asyncio.run(go())
    assert [r.status_code for r in responses] == [200] * 16
    assert acme.lp.snapshot()["refresh_calls"] == 1
    assert acme.pool.refresher.calls == 1


def test_sixteen_threads_of_one_process_refresh_once(acme: LoopbackPool) -> None:
    """Threads share the sync client: they queue on the account lock and one refreshes."""
    acme.add_oauth("a", expires_in=-1)
    barrier = threading.Barrier(16)
    statuses: list[int] = []
    with acme.pool.sync_client("acme") as client:

        def one() -> None:
            barrier.wait()
            statuses.append(client.post(CHAT, json=BODY).status_code)

        threads = [threading.Thread(target=one) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert statuses == [200] * 16
    assert acme.lp.snapshot()["refresh_calls"] == 1


def test_a_refresh_stores_the_rotated_refresh_token_for_the_next_one(acme: LoopbackPool) -> None:
    """Three refreshes in a row each present the token the previous one returned: no reuse, generation 4."""
    acme.add_oauth("a")
    first = stored(acme, "a")[1]
    with acme.pool.sync_client("acme") as client:
        for _ in range(3):
            acme.lp.expire_access_tokens("a")
            r = client.post(CHAT, json=BODY)
            assert trail(r) == [("a", 401, "refreshed"), ("a", 200, "ok")]
    generation, secret = stored(acme, "a")
    assert generation == 4
    assert secret.refresh_token != first.refresh_token
    assert secret.refresh_token in acme.lp.issued_secrets()
    stats = acme.lp.snapshot()
    assert (stats["refresh_calls"], stats["invalid_grant_count"]) == (3, 0)


def test_another_process_s_refresh_is_picked_up_without_a_token_call(acme: LoopbackPool) -> None:
    """A CLI process refreshes; this process, holding the old generation, uses the new token without a refresh."""
    acme.add_oauth("a")
    with acme.pool.sync_client("acme") as client:
        assert client.post(CHAT, json=BODY).status_code == 200  # caches generation 1
        acme.lp.expire_access_tokens("a")
        cli = cli_request()
        assert cli.returncode == 0, cli.stderr
        assert acme.lp.snapshot()["refresh_calls"] == 1
        r = client.post(CHAT, json=BODY)
    assert trail(r) == [("a", 200, "ok")]  # no 401: it saw the generation move and reloaded
    assert acme.lp.snapshot()["refresh_calls"] == 1


def test_a_refresh_token_replaced_behind_the_pool_s_back_is_the_one_presented(acme: LoopbackPool) -> None:
    """Another tool rotates the login and writes the store without bumping the generation: refresh reads it fresh."""
    (acc,) = acme.add_oauth("a")
    with acme.pool.sync_client("acme") as client:
        assert client.post(CHAT, json=BODY).status_code == 200  # this process now caches generation 1
        old = acme.pool.secrets.load_fresh(acc.id)
        with httpx2.Client(base_url=acme.lp.base_url) as other_tool:
            rotated = other_tool.post("/oauth/token", data={"grant_type": "refresh_token",
                                                           "refresh_token": old.refresh_token}).json()
        other_store = Pool.open(acme.home).secrets
        other_store.save(acc.id, old.with_tokens(rotated["access_token"], rotated["refresh_token"], None), 1)
        acme.lp.expire_access_tokens("a")
        r = client.post(CHAT, json=BODY)
    assert r.status_code == 200
    assert trail(r) == [("a", 401, "refreshed"), ("a", 200, "ok")]
    stats = acme.lp.snapshot()
    assert (stats["refresh_calls"], stats["invalid_grant_count"], stats["reuse_detected_count"]) == (2, 0, 0)


# -- a token endpoint that fails -------------------------------------------------------------------


_ENDPOINT_ERRORS = {
    "down": "the token endpoint of acme answered HTTP 500 (server_error)",
    "garbage": "the token endpoint of acme answered HTTP 200 with a non-JSON body (text/html)",
}


@pytest.mark.parametrize("mode", sorted(_ENDPOINT_ERRORS))
def test_a_failing_token_endpoint_changes_no_stored_token_and_the_request_rotates(
    acme: LoopbackPool, mode: str
) -> None:
    """Refresh after a 401 fails (down / garbage): the next account serves, a's tokens and generation are untouched."""
    acme.add_oauth_accounts(2)
    before = stored(acme, "a")
    acme.lp.expire_access_tokens("a")
    acme.lp.set_token_endpoint_mode(mode)
    with acme.pool.sync_client("acme") as client:
        r = client.post(CHAT, json=BODY)
    assert (r.status_code, r.json()["subject"]) == (200, "b")
    assert trail(r) == [("a", 401, "refresh_failed"), ("b", 200, "ok")]
    assert r.extensions["authpool"].attempts[0].detail == _ENDPOINT_ERRORS[mode]
    after = stored(acme, "a")
    assert after[0] == before[0] == 1
    assert (after[1].access_token, after[1].refresh_token, after[1].expires_at) == (
        before[1].access_token, before[1].refresh_token, before[1].expires_at)
    a = acme.account_json("a")
    assert a["needs_reauth"] is False
    assert a["last_error"] == _ENDPOINT_ERRORS[mode]
    assert a["counters"]["failures"] == 1


@pytest.mark.parametrize("mode", sorted(_ENDPOINT_ERRORS))
def test_a_failing_token_endpoint_is_one_clear_line_from_the_cli(acme: LoopbackPool, mode: str) -> None:
    """With no other account, `authpool request` exits 1 with one line naming the token endpoint's failure."""
    acme.add_oauth_accounts(1)
    before = stored(acme, "a")
    acme.lp.expire_access_tokens("a")
    acme.lp.set_token_endpoint_mode(mode)
    cli = cli_request("--quiet")
    assert cli.returncode == 1
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1, cli.stderr
    assert lines[0].startswith("authpool: error: no account could serve the request")
    assert lines[0].endswith("last error: " + _ENDPOINT_ERRORS[mode])
    assert stored(acme, "a")[0] == 1
    assert stored(acme, "a")[1].refresh_token == before[1].refresh_token
    assert acme.account_json("a")["needs_reauth"] is False
    # The failure put a's renewal on a short backoff, recorded in the store for every process.
    failing = acme.account_json("a")["refresh_failing"]
    assert (failing["failures"], failing["token_refused"]) == (1, True)
    # And once the endpoint is back, the very same login refreshes fine: nothing was burnt. (The
    # request waits for the backoff to end: until then no process calls the token endpoint.)
    acme.lp.set_token_endpoint_mode("ok")
    again = cli_request("--wait", "30")
    assert again.returncode == 0, again.stderr
    assert acme.account_json("a")["refresh_failing"] is None
    assert stored(acme, "a")[0] == 2
    assert acme.lp.snapshot()["invalid_grant_count"] == 0
    assert_no_secrets([cli.stdout, cli.stderr, again.stdout, again.stderr], acme.secrets())


def test_a_token_endpoint_that_hangs_and_drops_the_connection_is_a_refresh_error(acme: LoopbackPool) -> None:
    """The token endpoint stalls, then dies: a refresh error in the trail, tokens unchanged, the next account serves."""
    tokens = LoopbackProvider().start()
    try:
        acme.configure("acme", oauth={"token_url": tokens.token_url, "client_id": "authpool-test"})
        acme.add_oauth_accounts(2)
        before = stored(acme, "a")
        acme.lp.expire_access_tokens("a")
        tokens.set_token_endpoint_mode("hang")

        def kill_when_called() -> None:
            while tokens.snapshot()["token_calls"] == 0:
                time.sleep(0.01)
            tokens.stop()  # the stalled request is cut: what a dying server looks like

        killer = threading.Thread(target=kill_when_called)
        killer.start()
        with acme.pool.sync_client("acme") as client:
            r = client.post(CHAT, json=BODY)
        killer.join()
    finally:
        tokens.stop()
    assert (r.status_code, r.json()["subject"]) == (200, "b")
    assert trail(r) == [("a", 401, "refresh_failed"), ("b", 200, "ok")]
    assert r.extensions["authpool"].attempts[0].detail.startswith("reaching the token endpoint of acme failed")
    assert stored(acme, "a")[0] == before[0]
    assert stored(acme, "a")[1].refresh_token == before[1].refresh_token
    assert acme.account_json("a")["needs_reauth"] is False


# -- invalid_grant ------------------------------------------------------------------------------------


def test_a_revoked_refresh_token_marks_the_account_needs_reauth_and_the_request_rotates(acme: LoopbackPool) -> None:
    """invalid_grant: the account needs a new login (the error says `authpool login ...`); the next account serves."""
    acme.add_oauth_accounts(2)
    acme.lp.revoke_refresh_tokens("a")
    acme.lp.expire_access_tokens("a")
    with acme.pool.sync_client("acme") as client:
        r = client.post(CHAT, json=BODY)
        assert (r.status_code, r.json()["subject"]) == (200, "b")
        assert trail(r) == [("a", 401, "needs_reauth"), ("b", 200, "ok")]
        detail = r.extensions["authpool"].attempts[0].detail
        assert "needs a new login" in detail
        assert "`authpool login acme --label a`" in detail
        a = acme.account_json("a")
        assert a["needs_reauth"] is True
        assert "invalid_grant" in a["last_error"]
        assert a["secret_generation"] == 1
        # The dead login is not retried: one token call, and later requests go straight to b.
        r2 = client.post(CHAT, json=BODY)
    assert trail(r2) == [("b", 200, "ok")]
    stats = acme.lp.snapshot()
    assert (stats["refresh_calls"], stats["invalid_grant_count"]) == (1, 1)
    assert "a" not in stats["api_calls_by_subject"]  # its expired token was refused before any use
    cli = cli_request()
    assert cli.returncode == 0, cli.stderr
    assert acme.lp.snapshot()["refresh_calls"] == 1


def test_a_revoked_login_with_no_other_account_fails_naming_the_login_command(acme: LoopbackPool) -> None:
    """The only account's refresh token is revoked: RequestFailed whose message says how to log in again."""
    acme.add_oauth_accounts(1)
    acme.lp.revoke_refresh_tokens("a")
    acme.lp.expire_access_tokens("a")
    with acme.pool.sync_client("acme") as client, pytest.raises(RequestFailed) as info:
        client.post(CHAT, json=BODY)
    assert "`authpool login acme --label a`" in str(info.value)
    assert acme.account_json("a")["needs_reauth"] is True
    cli = cli_request("--quiet")
    assert cli.returncode == 1
    assert len(cli.stderr.strip().splitlines()) == 1
    assert "acme/a: needs-reauth" in cli.stderr


# -- proactive refresh ------------------------------------------------------------------------------


HOUR = 3600.0  # the tokens below were issued for an hour: the configured windows apply in full


def _windows(acme: LoopbackPool) -> None:
    # Renew from 600 s before expiry; must renew from 200 s. The defaults (300/60) would not
    # put a 400 s token in the advisory window: these tests also show config.toml is honoured.
    acme.configure("acme", refresh_advisory=600.0, refresh_mandatory=200.0)


def test_a_token_inside_the_advisory_window_is_refreshed_before_use(acme: LoopbackPool) -> None:
    """400 s left, advisory 600 s: the token is renewed first and the request goes out with the new one."""
    _windows(acme)
    acme.add_oauth("a", expires_in=400, issued_for=HOUR)
    acme.lp.expire_access_tokens("a")  # had the old token been sent, the provider would answer 401
    with acme.pool.sync_client("acme") as client:
        r = client.post(CHAT, json=BODY)
    assert trail(r) == [("a", 200, "ok")]
    stats = acme.lp.snapshot()
    assert stats["refresh_calls"] == 1
    assert "401" not in stats["statuses"]
    generation, secret = stored(acme, "a")
    assert generation == 2
    assert secret.expires_at is not None and secret.expires_at > time.time() + 3000


def test_a_failed_refresh_in_the_advisory_window_still_sends_the_current_token(acme: LoopbackPool) -> None:
    """Advisory refresh fails (endpoint down): the request goes out with the still-valid token and succeeds."""
    _windows(acme)
    acme.add_oauth("a", expires_in=400, issued_for=HOUR)
    before = stored(acme, "a")
    acme.lp.set_token_endpoint_mode("down")
    with acme.pool.sync_client("acme") as client:
        r = client.post(CHAT, json=BODY)
    assert (r.status_code, trail(r)) == (200, [("a", 200, "ok")])
    assert acme.lp.snapshot()["token_calls"] == 1
    after = stored(acme, "a")
    assert after[0] == before[0] == 1
    assert after[1].refresh_token == before[1].refresh_token
    assert acme.account_json("a")["needs_reauth"] is False


def test_an_advisory_refresh_does_not_wait_for_another_process_holding_the_lock(
    acme: LoopbackPool, tmp_path: Path
) -> None:
    """Another process holds the account's refresh lock: the advisory refresh is skipped and the current token used."""
    _windows(acme)
    (acc,) = acme.add_oauth("a", expires_in=400, issued_for=HOUR)
    release = tmp_path / "release"
    holder = start_worker("hold-lock", acc.id, str(release))
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held", holder.communicate()[1]
        with acme.pool.sync_client("acme") as client:
            r = client.post(CHAT, json=BODY)
        release.touch()
        assert holder.wait(timeout=30) == 0
    finally:
        _kill([holder])
    assert (r.status_code, trail(r)) == (200, [("a", 200, "ok")])
    assert acme.lp.snapshot()["token_calls"] == 0
    assert stored(acme, "a")[0] == 1


def test_a_refresh_that_failed_with_a_timeout_of_its_own_is_not_reported_as_still_running(
        acme: LoopbackPool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A LockTimeout is a TimeoutError, like the one a wait that ran out raises: a flight that ended
    with one has failed, and saying "it goes on in the background and will be stored" would be false."""
    from authpool.errors import LockTimeout, RefreshPending

    acme.add_oauth("a", expires_in=-60)
    account = acme.pool.get("acme/a")

    def fails(provider: object, flight: object) -> None:
        raise LockTimeout(acme.home / "locks" / "vault.lock", 1.0, "pid 1 (elsewhere)")

    monkeypatch.setattr(acme.pool.refresher, "_renew_now", fails)
    with pytest.raises(LockTimeout):
        acme.pool.refresher.renew(acme.pool.provider("acme"), account.id, account.secret_generation, "mandatory",
                                  wait=60)
    slow = threading.Event()
    monkeypatch.setattr(acme.pool.refresher, "_renew_now", lambda provider, flight: slow.wait(60))
    with pytest.raises(RefreshPending, match="goes on in the background"):
        acme.pool.refresher.renew(acme.pool.provider("acme"), account.id, account.secret_generation, "mandatory",
                                  wait=0.05)
    slow.set()


def test_an_account_disabled_while_its_refresh_waited_for_the_lock_makes_no_token_call(acme: LoopbackPool) -> None:
    """`store copy` holds every account's refresh lock, copies, and disables the source's logins, so
    that one pool alone rotates each. A refresh that waited for the lock meanwhile must not rotate
    the login afterwards: that would spend the token the copy holds."""
    from authpool.auth import in_flight
    from authpool.errors import RefreshError

    acme.add_oauth("a", expires_in=-60)
    account = acme.pool.get("acme/a")
    lock = acme.pool.secret_lock(account.id)
    lock.acquire()
    errors: list[BaseException] = []

    def renew() -> None:
        try:
            acme.pool.refresher.renew(acme.pool.provider("acme"), account.id, account.secret_generation, "mandatory",
                                      wait=60)
        except BaseException as e:  # noqa: BLE001 - looked at below
            errors.append(e)

    caller = threading.Thread(target=renew)
    try:
        caller.start()
        deadline = time.monotonic() + 60
        while not in_flight():
            assert time.monotonic() < deadline, "the refresh never started"
            time.sleep(0.01)
        acme.pool.set_enabled(account.id, False)  # what the copy does before it lets go of the locks
    finally:
        lock.release()
    caller.join(60)
    assert len(errors) == 1 and isinstance(errors[0], RefreshError), errors
    assert "is disabled, so it was not renewed" in str(errors[0])
    assert acme.lp.snapshot()["token_calls"] == 0
    assert acme.pool.get(account.id).secret_generation == account.secret_generation


def test_a_failed_refresh_in_the_mandatory_window_rotates_to_the_next_account(acme: LoopbackPool) -> None:
    """100 s left, mandatory 200 s, endpoint down: the account is skipped (not sent), the next account serves."""
    _windows(acme)
    acme.add_oauth("a", expires_in=100, issued_for=HOUR)
    acme.add_oauth("b")
    acme.lp.set_token_endpoint_mode("down")
    with acme.pool.sync_client("acme") as client:
        r = client.post(CHAT, json=BODY)
    assert (r.status_code, r.json()["subject"]) == (200, "b")
    assert trail(r) == [("a", None, "refresh_failed"), ("b", 200, "ok")]
    assert "a" not in acme.lp.snapshot()["api_calls_by_subject"]  # the expiring token was never sent
    assert acme.account_json("a")["needs_reauth"] is False
    assert stored(acme, "a")[0] == 1


def test_a_failed_refresh_in_the_mandatory_window_with_no_other_account_fails_clearly(acme: LoopbackPool) -> None:
    """Mandatory refresh fails and nobody else can serve: RequestFailed naming the token endpoint's failure."""
    _windows(acme)
    acme.add_oauth("a", expires_in=100, issued_for=HOUR)
    acme.lp.set_token_endpoint_mode("garbage")
    with acme.pool.sync_client("acme") as client, pytest.raises(RequestFailed) as info:
        client.post(CHAT, json=BODY)
    assert str(info.value).endswith("last error: " + _ENDPOINT_ERRORS["garbage"])
    assert [(a.account, a.outcome) for a in info.value.attempts] == [("acme/a", "refresh_failed")]
    assert acme.lp.snapshot()["api_calls"] == 0


def test_a_mandatory_refresh_succeeds_before_the_request(acme: LoopbackPool) -> None:
    """100 s left, mandatory 200 s: renewed first, exactly one token call, the request succeeds."""
    _windows(acme)
    acme.add_oauth("a", expires_in=100, issued_for=HOUR)
    with acme.pool.sync_client("acme") as client:
        r = client.post(CHAT, json=BODY)
        r2 = client.post(CHAT, json=BODY)  # the new token is fresh: no second refresh
    assert trail(r) == trail(r2) == [("a", 200, "ok")]
    assert acme.lp.snapshot()["refresh_calls"] == 1


def test_a_refresh_lock_held_too_long_by_another_process_rotates_to_the_next_account(
    acme: LoopbackPool, tmp_path: Path
) -> None:
    """Another process holds a's refresh lock past the lock timeout: the request moves on to b instead of failing."""
    a, _ = acme.add_oauth_accounts(2)
    acme.lp.expire_access_tokens("a")
    release = tmp_path / "release"
    holder = start_worker("hold-lock", a.id, str(release))
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held", holder.communicate()[1]
        cli = run_cli("request", "acme", "POST", CHAT, "--json", "{}", env={"AUTHPOOL_LOCK_TIMEOUT": "1"})
        release.touch()
        assert holder.wait(timeout=30) == 0
    finally:
        _kill([holder])
    assert cli.returncode == 0, cli.stderr
    assert "HTTP 200 from acme/b" in cli.stderr
    assert "acme/a: refresh_failed (401): gave up waiting for another process to renew account" in cli.stderr
    assert acme.account_json("a")["needs_reauth"] is False
    assert stored(acme, "a")[0] == 1
    assert acme.lp.snapshot()["token_calls"] == 0


def test_an_invalid_grant_is_rechecked_against_the_stored_refresh_token_before_marking_reauth(
    acme: LoopbackPool,
) -> None:
    """invalid_grant, but the store holds a newer refresh token (written outside our locks): retried, no reauth."""
    (acc,) = acme.add_oauth("a")
    old = acme.pool.secrets.load_fresh(acc.id)
    other_tool = Pool.open(acme.home)
    original = acme.lp.grant_handlers["refresh_token"]
    presented: list[str] = []

    def racing(params: Any) -> Any:
        presented.append(params["refresh_token"])
        if len(presented) == 1:
            # While our request is in flight another tool, outside authpool's locks, rotates the
            # same login and writes the secret store (without moving the generation)...
            _, rotated = original(params)
            other_tool.secrets.save(acc.id, old.with_tokens(rotated["access_token"], rotated["refresh_token"],
                                                            None), 1)
            # ...and this provider (no reuse detection) answers our now stale token invalid_grant.
            return 400, {"error": "invalid_grant", "error_description": "refresh token already used"}
        return original(params)

    acme.lp.grant_handlers["refresh_token"] = racing
    acme.lp.expire_access_tokens("a")
    with acme.pool.sync_client("acme") as client:
        r = client.post(CHAT, json=BODY)
    assert r.status_code == 200
    assert trail(r) == [("a", 401, "refreshed"), ("a", 200, "ok")]
    assert len(presented) == 2
    assert presented[0] == old.refresh_token
    assert presented[1] != old.refresh_token  # the other tool's token, read back from the store
    generation, secret = stored(acme, "a")
    assert generation == 2
    assert secret.refresh_token not in presented
    a = acme.account_json("a")
    assert (a["needs_reauth"], a["last_error"]) == (False, None)
    other_tool.close()


def test_a_failed_refresh_followed_by_a_wait_never_marks_the_live_login_needs_reauth(acme: LoopbackPool) -> None:
    """a's refresh fails (endpoint down), b is cooling, the request waits: a is not retried and not marked reauth."""
    acme.add_oauth_accounts(2)
    acme.lp.expire_access_tokens("a")
    acme.lp.set_token_endpoint_mode("down")
    acme.lp.set_rate_limit("b", 0, "retry-after-ms", 0.3)

    def lift(waited: float, total: float | None, message: str) -> None:
        acme.lp.clear_rate_limit("b")

    with acme.pool.sync_client("acme", wait_budget=10, on_progress=lift) as client:
        r = client.post(CHAT, json=BODY)
    assert (r.status_code, r.json()["subject"]) == (200, "b")
    assert trail(r) == [("a", 401, "refresh_failed"), ("b", 429, "rate_limited"), ("b", 200, "ok")]
    a = acme.account_json("a")
    assert a["needs_reauth"] is False
    assert stored(acme, "a")[0] == 1
    # When the endpoint is back the same login refreshes: it was never dead. (The request waits
    # for the renewal backoff the failure set: before it ends no process calls the endpoint.)
    acme.lp.set_token_endpoint_mode("ok")
    with acme.pool.sync_client("acme", account="acme/a", wait_budget=30) as client:
        r2 = client.post(CHAT, json=BODY)
    assert trail(r2) == [("a", 401, "refreshed"), ("a", 200, "ok")]


def test_a_token_another_process_minted_and_that_was_revoked_since_earns_a_real_refresh_not_a_reauth(
    acme: LoopbackPool, tmp_path: Path
) -> None:
    """401; another process renews meanwhile; its token is revoked before we use it: we renew ourselves
    (one real refresh) and succeed, instead of marking a live login needs-reauth."""
    import threading

    account = acme.add_oauth("a")[0]
    acme.lp.expire_access_tokens()  # our token (generation 1) is dead
    go, release = tmp_path / "go", tmp_path / "release"
    other = start_worker("refresh-holding-lock", account.id, str(go), str(release))
    result: dict[str, httpx2.Response] = {}
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "held"
        before = acme.lp.snapshot()

        def request() -> None:
            with acme.pool.sync_client("acme") as client:
                result["r"] = client.post(CHAT, json=BODY)

        t = threading.Thread(target=request)
        t.start()
        # Our request got its 401 and now waits for the account's refresh lock, held by the other process.
        while acme.lp.snapshot()["statuses"].get("401", 0) == before["statuses"].get("401", 0):
            time.sleep(0.01)
        go.touch()
        assert other.stdout.readline().strip() == "refreshed"  # generation 2, minted by the other process
        acme.lp.expire_access_tokens()  # ... and revoked before we use it
        calls = acme.lp.snapshot()["refresh_calls"]
        release.touch()
        t.join(timeout=60)
        assert other.wait(timeout=30) == 0
    finally:
        _kill([other])
    response = result["r"]
    assert response.status_code == 200
    assert trail(response) == [("a", 401, "refreshed"), ("a", 401, "refreshed"), ("a", 200, "ok")]
    details = [a.detail for a in response.extensions["authpool"].attempts]
    assert details[0] == "renewed by another process" and details[1] is None
    assert acme.lp.snapshot()["refresh_calls"] == calls + 1  # exactly one refresh of our own
    a = acme.account_json("a")
    assert (a["needs_reauth"], a["secret_generation"]) == (False, 3)
