"""`authpool gateway` as a process: its key, its address, and how it stops.

Each test starts its own gateway on a fresh home (provider ``acme`` on a real LoopbackProvider).
SIGTERM arrives while streams or a token refresh are in flight, held at the provider until the
test lets them go; the gateway must finish them, write its counters and exit 0. No test measures
time: every wait is for an event, with a generous deadline.
"""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path
from typing import Any

import httpx2
import pytest

from authpool import Pool
from authpool.storage.vault import VaultKeyring
from tests.conftest import LoopbackPool, assert_no_secrets, home_texts, raw_pool, run_cli
from tests.gateway_support import DEADLINE, Gateway, wait_until

MESSAGE = {"model": "loopback-small", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": "loopback-small", "messages": [{"role": "user", "content": "hi"}]}


def gateway_key(home: Path, **env: str) -> str:
    r = run_cli("gateway", "key", env={"AUTHPOOL_HOME": str(home), **env})
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def post(gw: Gateway, key: str, path: str = "/acme/v1/messages", body: dict[str, Any] | None = None,
         **kw: Any) -> httpx2.Response:
    return httpx2.post(f"{gw.url}{path}", json=body or MESSAGE, headers={"x-api-key": key}, timeout=DEADLINE, **kw)


def one_line_error(r: Any) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return str(lines[0])


# -- stopping ------------------------------------------------------------------------------------------


def test_sigterm_lets_streams_in_flight_finish_then_writes_the_counters_and_exits_0(acme: LoopbackPool,
                                                                                  tmp_path: Path) -> None:
    """SIGTERM with three streams held mid-way: no new connection is accepted, the three finish, counters land."""
    acme.add_oauth("a")
    gw = Gateway(acme.home, tmp_path / "run")
    key = gateway_key(acme.home)
    acme.lp.hold_streams()
    texts: list[str] = []

    def stream() -> None:
        with httpx2.stream("POST", f"{gw.url}/acme/v1/chat/completions", json={**CHAT, "stream": True},
                           headers={"x-api-key": key}, timeout=DEADLINE) as r:
            texts.append(r.read().decode())

    threads = [threading.Thread(target=stream) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        assert acme.lp.wait_for_held_streams(3, DEADLINE)
        gw.signal(signal.SIGTERM)
        wait_until(gw.refuses_connections, "the gateway to stop accepting connections")
        wait_until(lambda: "stops accepting; waiting up to 60s for 3 response(s)" in gw.stderr(), "the notice")
        assert texts == [] and gw.proc.poll() is None  # still serving the three
    finally:
        acme.lp.release_streams()
    for t in threads:
        t.join(timeout=DEADLINE)
    assert gw.wait() == 0
    assert len(texts) == 3 and all(t.rstrip().endswith("data: [DONE]") and '"content": "a."' in t for t in texts)
    assert acme.account_json("a")["counters"]["requests"] == 3  # flushed before the exit
    err = gw.stderr()
    assert "gateway stopped" in err and "Traceback" not in err
    assert not gw.port_file.exists()
    assert_no_secrets([err, *texts], [*acme.secrets(), key])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup"])
def test_sigterm_waits_for_a_token_refresh_in_flight_so_the_login_survives(acme: LoopbackPool, tmp_path: Path,
                                                                          sig: signal.Signals) -> None:
    """SIGTERM, or SIGHUP (the terminal it ran in closed), while the token endpoint is answering a
    refresh: the gateway stores it, answers, and exits 0."""
    acme.add_oauth("a")
    gw = Gateway(acme.home, tmp_path / "run")
    key = gateway_key(acme.home)
    acme.lp.expire_access_tokens("a")
    acme.lp.set_token_delay(3.0)  # the provider is slow; the test waits for the call itself
    answers: list[httpx2.Response] = []
    t = threading.Thread(target=lambda: answers.append(post(gw, key)))
    t.start()
    assert acme.lp.wait_for_token_calls(1, DEADLINE)
    gw.signal(sig)
    t.join(timeout=DEADLINE)
    assert gw.wait() == 0
    assert f"{sig.name}: the gateway stops accepting" in gw.stderr()
    assert answers[0].status_code == 200 and answers[0].json()["subject"] == "a"
    a = acme.account_json("a")
    assert (a["secret_generation"], a["refresh_journal"], a["needs_reauth"]) == (2, None, False)
    stats = acme.lp.snapshot()
    assert (stats["token_calls"], stats["reuse_detected_count"], stats["invalid_grant_count"]) == (1, 0, 0)
    assert_no_secrets(gw.stderr(), [*acme.secrets(), key])


def test_ctrl_c_stops_the_gateway_like_sigterm(acme: LoopbackPool, tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) with nothing in flight: the gateway says so, removes its port file and exits 0."""
    gw = Gateway(acme.home, tmp_path / "run")
    gw.signal(signal.SIGINT)
    assert gw.wait() == 0
    assert "SIGINT: the gateway stops accepting; no response in flight" in gw.stderr()
    assert not gw.port_file.exists()


# -- where it listens ------------------------------------------------------------------------------------


def test_a_host_other_machines_can_reach_needs_allow_remote(acme: LoopbackPool, tmp_path: Path) -> None:
    """--host 0.0.0.0 alone is one clear error; with --allow-remote it warns once and still wants the key."""
    r = run_cli("gateway", "--host", "0.0.0.0", "--port", "0")
    assert r.returncode == 1 and "--allow-remote" in one_line_error(r)
    acme.add_oauth("a")
    gw = Gateway(acme.home, tmp_path / "run", "--host", "0.0.0.0", "--allow-remote")
    try:
        key = gateway_key(acme.home)
        assert httpx2.post(f"{gw.url}/acme/v1/messages", json=MESSAGE, timeout=DEADLINE).status_code == 401
        assert post(gw, key).status_code == 200
        assert gw.stderr().count("reachable from other machines") == 1
    finally:
        assert gw.stop() == 0


def test_a_port_in_use_is_one_clear_line(acme: LoopbackPool) -> None:
    """Another program holds the port: exit 1 and one line naming the address, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_cli("gateway", "--port", str(port))
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in one_line_error(r)


def test_a_bad_port_or_grace_is_a_usage_error(acme: LoopbackPool) -> None:
    """--port 70000 or --grace soon: argparse's one-line usage error, exit 2."""
    for args in (["--port", "70000"], ["--grace", "soon"]):
        r = run_cli("gateway", *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr


# -- the key -------------------------------------------------------------------------------------------------


def test_the_key_from_the_environment_is_used_and_never_stored_or_shown(acme: LoopbackPool, tmp_path: Path) -> None:
    """AUTHPOOL_GATEWAY_KEY: the gateway accepts it, stores nothing, and it is in no argv, file or log line."""
    acme.add_oauth("a")
    env_key = "ci-gateway-key-0123456789abcdef"
    gw = Gateway(acme.home, tmp_path / "run", env={"AUTHPOOL_GATEWAY_KEY": env_key})
    try:
        assert post(gw, env_key).status_code == 200
        assert "$AUTHPOOL_GATEWAY_KEY" in gw.stderr()
        cmdline = Path(f"/proc/{gw.proc.pid}/cmdline").read_bytes()
        assert env_key.encode() not in cmdline
    finally:
        assert gw.stop() == 0
    assert Pool.open(acme.home).pool_secret("gateway-key") is None
    assert_no_secrets([gw.stderr(), *home_texts(acme.home)], [env_key, *acme.secrets()])
    r = run_cli("gateway", "key", "--rotate", env={"AUTHPOOL_GATEWAY_KEY": env_key})
    assert r.returncode == 1 and "change AUTHPOOL_GATEWAY_KEY instead" in one_line_error(r)
    r = run_cli("gateway", "--port", "0", env={"AUTHPOOL_GATEWAY_KEY": "short"})
    assert r.returncode == 1 and "16 to 512 printable ASCII" in one_line_error(r)


def test_a_rotated_key_works_at_once_and_the_old_one_stops_working(acme: LoopbackPool, tmp_path: Path) -> None:
    """`authpool gateway key --rotate` while the gateway runs: the new key is accepted at once, the old one refused."""
    acme.add_oauth("a")
    gw = Gateway(acme.home, tmp_path / "run")
    try:
        old = gateway_key(acme.home)
        assert old.startswith("authpool-gw-") and gateway_key(acme.home) == old  # created once, then the same
        assert post(gw, old).status_code == 200
        r = run_cli("gateway", "key", "--rotate")
        assert r.returncode == 0 and "update your clients" in r.stderr
        new = r.stdout.strip()
        assert new != old and gateway_key(acme.home) == new
        assert post(gw, new).status_code == 200
        wait_until(lambda: post(gw, old).status_code == 401, "the old key to be refused")
        assert_no_secrets([gw.stderr(), *home_texts(acme.home)], [old, new, *acme.secrets()])
    finally:
        assert gw.stop() == 0


def test_the_stored_key_moves_with_the_accounts_to_another_credential_store(
        acme: LoopbackPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`authpool secrets move`: the gateway key goes along, so clients keep working; none is left behind."""
    acme.add_oauth("a")
    key = gateway_key(acme.home)
    monkeypatch.setenv("TEST_KEYRING_FILE", str(tmp_path / "limited-keyring.json"))
    r = run_cli("secrets", "move", "tests.keyrings.FileLimitedKeyring")
    assert r.returncode == 0, r.stderr
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "tests.keyrings.FileLimitedKeyring")
    assert gateway_key(acme.home) == key  # read from the new store
    assert raw_pool(acme.home)["secret_backend"] == "tests.keyrings.FileLimitedKeyring"
    assert VaultKeyring(acme.home).get_password("authpool", "pool:gateway-key") is None  # none left behind
