"""What the README promises a newcomer: the fix for a dead login, a loopback that mints keys, tidy output."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from authpool import Pool, PoolFile, TokenSet
from authpool.server.loopback import LoopbackRequest, LoopbackResponse
from tests.conftest import REPO, LoopbackPool, assert_no_secrets, home_texts, run_cli, write_config


def test_accounts_list_shows_the_command_that_fixes_each_dead_login(home: Path) -> None:
    """Accounts that need re-auth get a line under the table: `authpool login` for OAuth, a new key for API keys."""
    pool = Pool.open(home)
    tokens = TokenSet.parse({"access_token": "at-dead-login", "refresh_token": "rt-dead-login", "expires_in": 60})
    oauth = pool.add_oauth("openai", "work", tokens)
    key = pool.add_api_key("anthropic", "ci", "sk-ant-test-dead-key")
    pool.add_api_key("openai", "fine", "sk-test-fine-key")

    def kill(p: PoolFile) -> None:
        p.find(oauth.id).needs_reauth = True
        p.find(key.id).needs_reauth = True

    pool.store.update(kill)
    r = run_cli("accounts", "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "authpool login openai --label work" in r.stdout
    assert f"authpool accounts remove {key.id} && authpool accounts add-key anthropic --label ci" in r.stdout
    fixes = [x for x in lines if "authpool login" in x or "add-key" in x]
    assert len(fixes) == 2 and all(x.startswith("  ") for x in fixes)  # under the table, one per dead account
    assert "openai/fine" in r.stdout and not any("fine" in x for x in fixes)


def test_the_loopback_command_mints_api_keys_that_add_key_and_request_accept(home: Path) -> None:
    """`python -m authpool.server.loopback --api-keys 2` prints two keys; add-key stores one, `request` uses it."""
    lp = subprocess.Popen([sys.executable, "-m", "authpool.server.loopback", "--api-keys", "2"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert lp.stdout is not None
        info = json.loads(lp.stdout.readline())
        keys = info["api_keys"]
        assert [k["subject"] for k in keys] == ["key1@loopback.test", "key2@loopback.test"]
        assert len({k["api_key"] for k in keys}) == 2
        home.mkdir(mode=0o700)
        write_config(home, {"loopback": {"base_url": info["base_url"], "auth": "bearer"}})
        added = run_cli("accounts", "add-key", "loopback", "--label", "k1", input=keys[0]["api_key"])
        assert added.returncode == 0, added.stderr
        served = run_cli("request", "loopback", "GET", "/v1/models")
        assert served.returncode == 0, served.stderr
        assert json.loads(served.stdout)["subject"] == "key1@loopback.test"
        assert_no_secrets([added.stdout, added.stderr, served.stdout, served.stderr, *home_texts(home)],
                          [k["api_key"] for k in keys])
    finally:
        lp.send_signal(signal.SIGTERM)
        lp.communicate(timeout=30)
    assert lp.returncode == 0


def _run_on_a_terminal(args: list[str], timeout: float = 60) -> tuple[int, bytes, str]:
    """Run `authpool ARGS` with stdout on a real pseudo-terminal; (status, terminal bytes, stderr)."""
    import os
    import pty
    import select
    import time

    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "authpool.server.cli", *args], stdin=subprocess.DEVNULL,
                            stdout=terminal, stderr=subprocess.PIPE, cwd=REPO)
    os.close(terminal)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's last writer has gone
                break
            if not chunk:
                break
            out += chunk
        assert proc.stderr is not None
        _, err = proc.communicate(timeout=timeout)
    finally:
        os.close(controller)
        proc.kill()
    return proc.returncode, out, err.decode()


def test_request_ends_the_body_with_a_newline_on_a_terminal(acme: LoopbackPool) -> None:
    """On a terminal the body ends its line, also when it breaks off (then one clear error); piped, it is byte-exact."""
    acme.add_api_key("k")

    def broken_off(request: LoopbackRequest) -> LoopbackResponse:
        def chunks() -> Iterator[bytes]:
            yield b'{"partial": '
            raise ConnectionAbortedError("the provider died mid-body")  # the connection is dropped

        return LoopbackResponse(200, headers={"Content-Type": "application/json"}, stream=chunks())

    acme.lp.routes[("GET", "/broken-off")] = broken_off
    code, out, err = _run_on_a_terminal(["request", "acme", "GET", "/v1/models"])
    assert code == 0, err
    assert out.endswith(b"}\r\n"), out[-40:]  # the terminal driver turns "\n" into "\r\n"
    code, broken, err = _run_on_a_terminal(["request", "acme", "GET", "/broken-off"])
    assert code == 1
    assert broken.endswith(b'{"partial": \r\n'), broken[-40:]
    errors = [x for x in err.splitlines() if "error" in x]
    assert errors == ["authpool: error: acme answered HTTP 200 via acme/k, but the response body could not be read "
                      "(RemoteProtocolError)"], err
    piped = run_cli("request", "acme", "GET", "/v1/models")
    assert piped.returncode == 0 and piped.stdout.endswith("}"), piped.stdout[-40:]
    assert_no_secrets([out.decode(), broken.decode(), err, piped.stdout, piped.stderr], acme.secrets())
