"""A refresh that reached the token endpoint always lands: interruptions, slow and failing endpoints.

The loopback provider rotates refresh tokens and revokes the whole login when a used one comes
back, and its token endpoint can be made slow: each interruption is reproduced by waiting until
the provider has *received* the token call, then interrupting the process that sent it. After
each, the refresh must have been stored (the next request succeeds on that account) and the
provider must have counted no reuse. Only SIGKILL can still lose a rotation; the journal then
says what happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from authpool import RequestFailed
from authpool.auth import drain
from authpool.auth.journal import describe_interrupted, new_record, owner_alive
from authpool.auth.refresh import refresh_backoff
from authpool.providers.builtin import BUILTIN_PROVIDERS
from tests.conftest import REPO, Follow, LoopbackPool, assert_no_secrets, home_texts, run_cli
from tests.mcp_support import RawServer

CHAT = "/v1/chat/completions"
BODY = {"model": "loopback-small", "messages": []}
DELAY = 3.0  # seconds the token endpoint takes: long enough to interrupt the caller mid-call


def trail(response: httpx2.Response) -> list[tuple[str, int | None, str]]:
    return [(a.account.split("/")[1], a.status, a.outcome) for a in response.extensions["authpool"].attempts]


def start_cli(*args: str) -> subprocess.Popen[str]:
    """`authpool ARGS` as a real process (signals reach it, not the test)."""
    return subprocess.Popen([sys.executable, "-m", "authpool.server.cli", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ), cwd=REPO)


def cli_request_args(*extra: str) -> list[str]:
    return ["request", "acme", "POST", CHAT, "--json", json.dumps(BODY), *extra]


def wait_until(condition: Any, what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after a generous deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def assert_refresh_landed(acme: LoopbackPool, label: str = "a") -> None:
    """Generation 2, no journal entry left, and the next request on the account needs no token call."""
    a = acme.account_json(label)
    assert (a["secret_generation"], a["refresh_journal"], a["needs_reauth"]) == (2, None, False), a
    calls = acme.lp.snapshot()["token_calls"]
    with acme.pool.sync_client("acme", account=f"acme/{label}") as client:
        r = client.post(CHAT, json=BODY)
    assert (r.status_code, trail(r)) == (200, [(label, 200, "ok")])
    stats = acme.lp.snapshot()
    assert stats["token_calls"] == calls
    assert (stats["reuse_detected_count"], stats["invalid_grant_count"], stats["handler_errors"]) == (0, 0, 0)


# -- interrupting the process that sent the refresh -----------------------------------------------


@pytest.mark.parametrize(("sig", "status", "said"), [(signal.SIGINT, 130, "interrupted"),
                                                     (signal.SIGTERM, 143, "terminated"),
                                                     (signal.SIGHUP, 129, "terminated (SIGHUP)")])
def test_interrupting_the_cli_mid_refresh_waits_for_the_refresh_to_land(
    acme: LoopbackPool, sig: signal.Signals, status: int, said: str
) -> None:
    """Ctrl-C, SIGTERM or SIGHUP (the terminal closed) while `authpool request` refreshes: it says so,
    stores the rotation, and exits."""
    acme.add_oauth("a", expires_in=-60)
    acme.lp.set_token_delay(DELAY)
    cli = start_cli(*cli_request_args())
    try:
        assert acme.lp.wait_for_token_calls(1), cli.communicate()[1]
        cli.send_signal(sig)
        out, err = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == status, err
    assert f"authpool: {said}" in err
    assert "finishing a token refresh (acme/a) before exiting" in err
    assert "Traceback" not in err
    assert_refresh_landed(acme)
    assert_no_secrets([out, err, *home_texts(acme.home)], acme.secrets())


def test_a_cli_command_under_nohup_keeps_running_when_its_terminal_hangs_up(acme: LoopbackPool) -> None:
    """`nohup` ignores SIGHUP so that a command outlives its terminal: authpool leaves an ignored SIGHUP
    ignored, and the command finishes its request."""
    acme.add_oauth("a", expires_in=-60)
    acme.lp.set_token_delay(120)  # held until the hangup has been sent
    cli = subprocess.Popen(["nohup", sys.executable, "-m", "authpool.server.cli", *cli_request_args()],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ), cwd=REPO)
    try:
        assert acme.lp.wait_for_token_calls(1), cli.communicate()[1]
        cli.send_signal(signal.SIGHUP)
        acme.lp.set_token_delay(0)
        out, err = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, err
    assert "terminated" not in err and "HTTP 200 from acme/a" in err
    assert_refresh_landed(acme)


_LIBRARY_APP = f"""
from authpool import Pool
pool = Pool.open()  # a program that uses authpool as a library, with Python's default signal handling
with pool.sync_client("acme") as client:
    print("answered", client.post({CHAT!r}, json={BODY!r}).status_code, flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup"])
def test_a_program_using_the_library_told_to_stop_mid_refresh_stores_the_rotation_before_it_ends(
    acme: LoopbackPool, sig: signal.Signals
) -> None:
    """`docker stop`, systemd or a closed terminal while a library program's refresh is at the token
    endpoint: by default the signal would end the process at once and lose the rotation. The process
    still ends by the signal, once the rotation is stored. The token endpoint holds its answer until
    the program has said it is waiting for it."""
    acme.add_oauth("a", expires_in=-60)
    acme.lp.set_token_delay(120)  # held: released below, once the program waits for it
    app = subprocess.Popen([sys.executable, "-c", _LIBRARY_APP], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=dict(os.environ), cwd=REPO)
    err = Follow(app.stderr, "finishing a token refresh (acme/a) before exiting")
    try:
        assert acme.lp.wait_for_token_calls(1), err.text()
        app.send_signal(sig)
        assert err.seen.wait(120), err.text()
        assert app.poll() is None  # still there, waiting for the answer
        acme.lp.set_token_delay(0)
        app.wait(timeout=120)
    finally:
        if app.poll() is None:
            app.kill()
    said = err.finish()
    assert app.returncode == -sig, said  # ended by the signal itself, as by default
    assert f"{sig.name}: finishing a token refresh (acme/a) before exiting" in said
    assert_refresh_landed(acme)
    out = app.stdout.read() if app.stdout is not None else ""
    assert_no_secrets([out, said, *home_texts(acme.home)], acme.secrets())


_IDLE_APP = """
import sys
from authpool import Pool
pool = Pool.open()
print("ready", flush=True)
sys.stdin.read()
"""


def test_a_program_using_the_library_with_no_refresh_in_flight_ends_on_sigterm_as_it_always_did(
    acme: LoopbackPool,
) -> None:
    app = subprocess.Popen([sys.executable, "-c", _IDLE_APP], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=dict(os.environ), cwd=REPO)
    try:
        assert app.stdout is not None and app.stdout.readline().strip() == "ready"
        app.send_signal(signal.SIGTERM)
        app.wait(timeout=60)
    finally:
        if app.poll() is None:
            app.kill()
    assert app.returncode == -signal.SIGTERM  # ended by the signal itself, as with the default action


def test_a_signal_handler_the_program_set_is_left_alone(acme: LoopbackPool) -> None:
    script = (
        "import signal\n"
        "def mine(signum, frame): pass\n"
        "signal.signal(signal.SIGTERM, mine)\n"
        "from authpool import Pool\n"
        "Pool.open()\n"
        "print(signal.getsignal(signal.SIGTERM) is mine, signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ),
                          cwd=REPO, timeout=60)
    assert done.stdout.split() == ["True", "True"], done.stderr


@pytest.mark.parametrize("how", ["sigterm", "stdin-eof"])
def test_ending_serve_mid_refresh_waits_for_the_refresh_to_land(acme: LoopbackPool, how: str) -> None:
    """SIGTERM (an editor quitting) or stdin closing while proxy_request refreshes: stored, then exit 0."""
    acme.add_oauth("a", expires_in=-60)
    acme.lp.set_token_delay(DELAY)
    server = RawServer(acme.home)
    try:
        server.initialize()
        server.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "proxy_request", "arguments": {"provider": "acme", "method": "POST", "path": CHAT, "json": BODY}}})
        assert acme.lp.wait_for_token_calls(1), server.stderr()
        if how == "sigterm":
            server.proc.send_signal(signal.SIGTERM)
        else:
            assert server.proc.stdin is not None
            server.proc.stdin.close()
        assert server.wait(timeout=120) == 0
    finally:
        server.kill()
    err = server.stderr()
    assert "Traceback" not in err
    assert "finishing a token refresh (acme/a) before exiting" in err
    for line in server.stdout_lines():
        assert json.loads(line)["jsonrpc"] == "2.0"
    assert_refresh_landed(acme)
    assert_no_secrets([err, *(line.decode() for line in server.stdout_lines()), *home_texts(acme.home)],
                      acme.secrets())


def test_a_library_request_cancelled_mid_refresh_leaves_the_refresh_running_to_completion(
    acme: LoopbackPool,
) -> None:
    """An asyncio task cancelled while its refresh is at the token endpoint: the refresh still lands."""
    acme.add_oauth("a", expires_in=-60)
    acme.lp.set_token_delay(DELAY)

    async def go() -> None:
        async with acme.pool.client("acme") as client:
            task = asyncio.create_task(client.post(CHAT, json=BODY))
            assert await asyncio.to_thread(acme.lp.wait_for_token_calls, 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(go())
    assert acme.account_json("a")["refresh_journal"] is not None  # sent, not answered yet
    assert drain(timeout=60, final=False)
    assert_refresh_landed(acme)


def test_a_request_that_stops_waiting_moves_on_and_the_refresh_lands_later(acme: LoopbackPool) -> None:
    """The token endpoint answers after the caller's token timeout: the request rotates to the next
    account at once, and the late answer is still stored."""
    acme.configure("acme", token_timeout=1.0)
    acme.add_oauth("a", expires_in=-60)
    acme.add_oauth("b")
    acme.lp.set_token_delay(DELAY)
    with acme.pool.sync_client("acme") as client:
        r = client.post(CHAT, json=BODY)
    assert (r.status_code, r.json()["subject"]) == (200, "b")
    assert trail(r) == [("a", None, "refresh_pending"), ("b", 200, "ok")]
    detail = r.extensions["authpool"].attempts[0].detail
    assert "goes on in the background and its result will be stored" in detail
    assert drain(timeout=60, final=False)
    assert_refresh_landed(acme)


def test_a_request_whose_deadline_ends_mid_refresh_gives_up_and_the_refresh_lands_later(acme: LoopbackPool) -> None:
    """The request's own deadline (timeout plus wait budget) passes while its refresh is out: it fails
    with that reason, and the refresh is stored when the answer comes."""
    acme.configure("acme", timeout=1.0)
    acme.add_oauth("a", expires_in=-60)
    acme.add_oauth("b")
    acme.lp.set_token_delay(DELAY)
    with acme.pool.sync_client("acme", wait_budget=0.5) as client, pytest.raises(RequestFailed) as info:
        client.post(CHAT, json=BODY)
    assert "the request deadline passed" in str(info.value)
    assert "goes on in the background" in str(info.value)
    assert [a.outcome for a in info.value.attempts] == ["refresh_pending"]
    assert drain(timeout=60, final=False)
    assert_refresh_landed(acme)


def test_a_request_with_no_other_account_fails_clearly_while_its_refresh_lands(acme: LoopbackPool) -> None:
    """Only one account and a token endpoint slower than the token timeout: one clear error, then it lands."""
    acme.configure("acme", token_timeout=1.0)
    acme.add_oauth("a", expires_in=-60)
    acme.lp.set_token_delay(DELAY)
    with acme.pool.sync_client("acme") as client, pytest.raises(RequestFailed) as info:
        client.post(CHAT, json=BODY)
    assert "the token endpoint of acme has not answered within 1.0s" in str(info.value)
    assert [a.outcome for a in info.value.attempts] == ["refresh_pending"]
    assert drain(timeout=60, final=False)
    assert_refresh_landed(acme)


_HOLD_VAULT = """
import sys
from authpool.home import Home
from authpool.storage.lock import Lock
with Lock(Home.open().lock_file("vault"), timeout=60):
    print("holding", flush=True)
    sys.stdin.read()
"""


def test_a_rotated_token_the_vault_cannot_take_yet_is_stored_once_it_can(acme: LoopbackPool) -> None:
    """Another process holds the vault's lock past the lock timeout while a refresh is at the token
    endpoint. The provider has spent the old refresh token, so the new one is not dropped: the store is
    tried again, holding the account's refresh lock, until the vault takes it."""
    acme.add_oauth("a", expires_in=-60)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_VAULT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ))
    cli: subprocess.Popen[str] | None = None
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        cli = subprocess.Popen([sys.executable, "-m", "authpool.server.cli", *cli_request_args()],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "AUTHPOOL_LOCK_TIMEOUT": "1"}, cwd=REPO)
        said = Follow(cli.stderr, "the renewed token could not be stored")
        assert said.seen.wait(120), said.text()
        assert acme.lp.snapshot()["refresh_calls"] == 1  # the login is rotated: the old token is spent
        assert holder.stdin is not None
        holder.stdin.close()  # the vault is free again
        out = cli.stdout.read() if cli.stdout is not None else ""
        assert cli.wait(timeout=120) == 0, said.text()
    finally:
        for proc in (holder, cli):
            if proc is not None and proc.poll() is None:
                proc.kill()
    err = said.finish()
    assert "trying again for up to 300s, holding the account's refresh lock meanwhile" in err
    assert "the renewed token was stored after" in err
    assert "Traceback" not in err
    assert_refresh_landed(acme)
    assert_no_secrets([out, err, *home_texts(acme.home)], acme.secrets())


def test_sigkill_mid_refresh_is_explained_by_the_journal_when_the_provider_revokes_the_login(
    acme: LoopbackPool,
) -> None:
    """SIGKILL while the token call is out loses the rotation: once the killed call can no longer reach
    the provider, the next refresh is refused, and the account's error names the killed process
    instead of a bare needs-reauth."""
    acme.configure("acme", token_call_limit=2.0)  # the killed call settles 4 s after it started
    acme.add_oauth("a", expires_in=-60)
    acme.add_api_key("b")
    acme.lp.set_token_delay(DELAY)
    cli = start_cli(*cli_request_args())
    try:
        assert acme.lp.wait_for_token_calls(1), cli.communicate()[1]
        cli.kill()
        cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
    journal = acme.account_json("a")["refresh_journal"]
    assert (journal["pid"], journal["from_generation"], journal["command"]) == (cli.pid, 1, "authpool request")
    # The provider finishes the grant it was sent: the login is rotated, and the answer is lost.
    wait_until(lambda: acme.lp.snapshot()["refresh_calls"] == 1, "the provider to rotate the login")
    acme.lp.set_token_delay(0)
    after = run_cli(*cli_request_args())
    assert after.returncode == 0, after.stderr
    assert "HTTP 200 from acme/b" in after.stderr
    # Pinned to a, a request waits out the killed call, then tries the stored token: refused.
    pinned = run_cli(*cli_request_args("--account", "acme/a", "--wait", "60"))
    assert pinned.returncode == 1, pinned.stderr
    a = acme.account_json("a")
    assert a["needs_reauth"] is True
    assert f"a refresh was interrupted when process {cli.pid} (authpool request) was killed" in a["last_error"]
    assert "the provider then revoked the login" in a["last_error"]
    assert a["refresh_journal"] is None
    said = after.stderr + pinned.stderr
    assert f"process {cli.pid} (authpool request) was killed" in said
    assert "`authpool login acme --label a`" in said
    assert acme.lp.snapshot()["reuse_detected_count"] == 1
    assert_no_secrets([after.stdout, after.stderr, pinned.stdout, pinned.stderr, *home_texts(acme.home)],
                      acme.secrets())


def _leftover(acme: LoopbackPool, account_id: str, *, settles_in: float) -> None:
    """A journal record of a process that is gone, whose request settles ``settles_in`` seconds from now."""

    def leave(pool: Any) -> None:
        record = new_record(1)
        record.pid, record.process_start = 2**22 + 1, None
        record.deadline = time.time() + settles_in
        pool.find(account_id).refresh_journal = record

    acme.pool.store.update(leave)


def test_a_journal_entry_whose_token_is_still_good_is_renewed_normally(acme: LoopbackPool) -> None:
    """A process killed before the provider rotated: once its call has settled, the stored refresh token
    still works and nothing is lost."""
    (acc,) = acme.add_oauth("a", expires_in=-60)
    _leftover(acme, acc.id, settles_in=-1)
    with acme.pool.sync_client("acme") as client:
        r = client.post(CHAT, json=BODY)
    assert (r.status_code, trail(r)) == (200, [("a", 200, "ok")])
    a = acme.account_json("a")
    assert (a["secret_generation"], a["refresh_journal"], a["needs_reauth"]) == (2, None, False)


def test_a_killed_refresh_whose_request_may_still_land_is_waited_out_before_the_token_is_sent_again(
    acme: LoopbackPool,
) -> None:
    """Sent before the killed call settles, the same refresh token could be overtaken by it and the login
    revoked behind a good rotation: renewal waits (shared backoff, no token call), the next account serves."""
    (acc,) = acme.add_oauth("a", expires_in=-60)
    acme.add_api_key("b")
    _leftover(acme, acc.id, settles_in=600)
    with acme.pool.sync_client("acme") as client:
        r = client.post(CHAT, json=BODY)
        r2 = client.post(CHAT, json=BODY)
    assert trail(r) == [("a", None, "refresh_failed"), ("b", 200, "ok")]
    assert "its request may still reach the provider" in r.extensions["authpool"].attempts[0].detail
    assert trail(r2) == [("b", 200, "ok")]  # skipped up front now, like a cooling account
    assert acme.lp.snapshot()["token_calls"] == 0
    failing = acme.account_json("a")["refresh_failing"]
    assert failing["reason"] == "an interrupted refresh may still reach the provider"
    assert failing["next_try_at"] > time.time() + 500


# -- how often tokens are renewed -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("ttl", "lifetimes"), [(3.0, 5), (30.0, 2)])
def test_short_lived_tokens_under_load_are_renewed_at_most_about_twice_per_lifetime(
    acme: LoopbackPool, ttl: float, lifetimes: int
) -> None:
    """Tokens living less than the proactive windows (300 s / 60 s): 8 concurrent requesters renew them
    about once per lifetime, not on every wave of requests."""
    acme.lp.access_ttl = ttl
    acme.add_oauth("a")
    stop = threading.Event()
    statuses: list[int] = []
    errors: list[str] = []

    def requester() -> None:
        with acme.pool.sync_client("acme") as client:
            while not stop.is_set():
                try:
                    statuses.append(client.post(CHAT, json=BODY).status_code)
                except RequestFailed as e:
                    errors.append(str(e))
                time.sleep(0.02)

    threads = [threading.Thread(target=requester) for _ in range(8)]
    start = time.monotonic()
    for t in threads:
        t.start()
    stop.wait(ttl * lifetimes)
    stop.set()
    for t in threads:
        t.join()
    lifetimes_passed = (time.monotonic() - start) / ttl
    stats = acme.lp.snapshot()
    assert errors == []
    assert len(statuses) > 8 and set(statuses) == {200}
    assert stats["reuse_detected_count"] == 0
    assert 1 <= stats["refresh_calls"] <= 2 * lifetimes_passed + 1, (stats["refresh_calls"], lifetimes_passed)


def test_the_proactive_windows_shrink_with_the_issued_lifetime() -> None:
    """At most a third and a tenth of the lifetime; the configured windows stay the upper bound."""
    anthropic = BUILTIN_PROVIDERS["anthropic"]
    assert anthropic.refresh_windows(None) == (300.0, 60.0)
    assert anthropic.refresh_windows(3600.0) == (300.0, 60.0)
    assert anthropic.refresh_windows(300.0) == pytest.approx((100.0, 30.0))
    assert anthropic.refresh_windows(3.0) == pytest.approx((1.0, 0.3))


# -- a token endpoint that is down ----------------------------------------------------------------


def test_a_failing_token_endpoint_backs_off_between_one_and_about_sixty_seconds() -> None:
    """The backoff grows from about a second, doubles, is jittered, and stops growing at about a minute."""
    for failures, low, high in [(1, 0.75, 1.25), (2, 1.5, 2.5), (3, 3.0, 5.0), (7, 45.0, 75.0), (30, 45.0, 75.0)]:
        values = [refresh_backoff(failures) for _ in range(50)]
        assert all(low <= v <= high for v in values), (failures, min(values), max(values))
        assert len(set(values)) > 1  # jittered: processes do not retry in lockstep


@pytest.mark.slow
def test_a_token_endpoint_down_for_ten_seconds_costs_a_handful_of_calls_and_the_account_heals(
    acme: LoopbackPool,
) -> None:
    """40 requests over a 10 s outage: every one served by the healthy account, a few token calls in all,
    the failing account shown as such (never ready, never needs-reauth), and healed once the endpoint is back."""
    acme.add_oauth("a", expires_in=-60)
    acme.add_api_key("b")
    acme.lp.set_token_endpoint_mode("down")
    served: list[str] = []
    outage_end = time.monotonic() + 10.0
    with acme.pool.sync_client("acme") as client:
        while len(served) < 40 or time.monotonic() < outage_end:
            r = client.post(CHAT, json=BODY)
            assert r.status_code == 200
            served.append(r.json()["subject"])
            time.sleep(max(0.0, min(0.25, outage_end - time.monotonic())))
        calls = acme.lp.snapshot()["token_calls"]
        listed = run_cli("accounts", "list")
        status = run_cli("status", "--json")
        acme.lp.set_token_endpoint_mode("ok")
        healed = time.monotonic() + 60
        while served[-1] != "a":
            assert time.monotonic() < healed, "account a did not heal after the token endpoint came back"
            time.sleep(0.1)
            served.append(client.post(CHAT, json=BODY).json()["subject"])
    assert set(served[:40]) == {"b"}
    assert 1 <= calls <= 6, calls
    assert "refresh failing since" in listed.stdout and "(HTTP 500), next try at" in listed.stdout
    a_view = next(a for p in json.loads(status.stdout)["providers"] for a in p["attention"] if a["name"] == "acme/a")
    assert a_view["state"] == "refresh-failing" and "refresh failing since" in a_view["detail"]
    a = acme.account_json("a")
    assert (a["needs_reauth"], a["refresh_failing"], a["secret_generation"]) == (False, None, 2)
    assert acme.lp.snapshot()["invalid_grant_count"] == 0


def test_the_backoff_is_shared_by_every_process(acme: LoopbackPool) -> None:
    """One process's failed refresh keeps another process from calling the token endpoint before the next try."""
    acme.add_oauth("a", expires_in=-60)
    acme.add_api_key("b")
    acme.lp.set_token_endpoint_mode("down")
    first = run_cli(*cli_request_args())
    assert first.returncode == 0, first.stderr
    assert acme.lp.snapshot()["token_calls"] == 1
    failing = acme.account_json("a")["refresh_failing"]
    assert failing is not None and failing["failures"] == 1
    with acme.pool.sync_client("acme") as client:
        r = client.post(CHAT, json=BODY)
    assert trail(r) == [("b", 200, "ok")]  # a is skipped: no token call, no request with its dead token
    assert acme.lp.snapshot()["token_calls"] == 1
    assert "a" not in acme.lp.snapshot()["api_calls_by_subject"]


# -- the journal record -----------------------------------------------------------------------------


def test_a_journal_record_names_a_program_run_with_python_c_or_m_as_such_not_as_authpool(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__main__.py").write_text("from authpool.auth.journal import _command\nprint(_command())\n")
    ran_c = subprocess.run([sys.executable, "-c", "from authpool.auth.journal import _command; print(_command())"],
                           capture_output=True, text=True, timeout=60)
    ran_m = subprocess.run([sys.executable, "-m", "app"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert (ran_c.stdout.strip(), ran_m.stdout.strip()) == ("python -c", "python -m app"), ran_c.stderr + ran_m.stderr


def test_a_journal_record_names_this_process_and_holds_no_secret(tmp_path: Path) -> None:
    """pid, host, command and start time; a live owner is alive, a finished process is not."""
    record = new_record(7)
    assert (record.pid, record.from_generation, record.outcome_unknown) == (os.getpid(), 7, False)
    assert owner_alive(record) is True
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    gone = new_record(7)
    gone.pid = int(done.stdout)
    assert owner_alive(gone) is False
    assert f"process {gone.pid}" in describe_interrupted(gone)
    assert "was killed" in describe_interrupted(gone)
    gone.outcome_unknown = True
    record.outcome_unknown = True
    assert "got no answer from the token endpoint" in describe_interrupted(record)


@pytest.mark.parametrize(("status", "unanswered"), [(500, False), (503, False), (502, True), (504, True)])
def test_a_gateway_that_gave_up_counts_as_no_answer(status: int, unanswered: bool) -> None:
    """502 and 504 come from a gateway that stopped waiting: the endpoint may have rotated the login."""
    from authpool.auth.oauth import parse_token_response
    from authpool.errors import RefreshError, RefreshUnanswered

    with pytest.raises(RefreshError) as info:
        parse_token_response(BUILTIN_PROVIDERS["anthropic"], status, "application/json", b'{"error": "x"}')
    assert isinstance(info.value, RefreshUnanswered) is unanswered
    assert info.value.reason == f"HTTP {status}"


def test_an_explanation_names_the_interrupted_refresh_a_later_one_superseded_first() -> None:
    """A refresh killed after it replaced an interrupted one's record: both are named, the earlier first."""
    first = new_record(1)
    first.pid, first.process_start, first.command = 2**22 + 3, None, "authpool request"
    second = new_record(1, earlier=first)
    second.pid, second.process_start, second.command = 2**22 + 5, None, "authpool serve"
    text = describe_interrupted(second)
    assert text.index(f"process {first.pid}") < text.index(f"process {second.pid}")
    assert second.earlier is not None and second.earlier.earlier is None
