"""What the README promises a newcomer: the fix for a dead login, a loopback that mints keys, tidy output."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from pool import Pool, PoolFile, TokenSet
from tests.conftest import REPO, assert_no_secrets, home_texts, run_cli, write_config


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
    """`python -m server.loopback --api-keys 2` prints two keys; add-key stores one and `request` is served with it."""
    lp = subprocess.Popen([sys.executable, "-m", "server.loopback", "--api-keys", "2"], stdout=subprocess.PIPE,
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
