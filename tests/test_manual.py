"""What the README promises a newcomer: the fix for a dead login, a loopback that mints keys, tidy output."""

from __future__ import annotations

from pathlib import Path

from pool import Pool, PoolFile, TokenSet
from tests.conftest import run_cli


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
