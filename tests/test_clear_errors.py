"""Every wrong turn gets one clear line: unknown providers, bad config, an empty pool, escaping paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pool import Pool, ProviderNotFound, TokenSet
from tests.conftest import run_cli


def test_adding_an_account_for_an_unknown_provider_is_refused_listing_the_known_ones(home: Path) -> None:
    """add-key, add-oauth and the library's add paths refuse a provider authpool does not know; nothing is stored."""
    r = run_cli("accounts", "add-key", "nosuchprov", "--label", "x", input="sk-test-unknown-provider")
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1
    assert "unknown provider 'nosuchprov'" in r.stderr and "known providers" in r.stderr and "anthropic" in r.stderr
    tokens = {"access_token": "at-unknown-provider", "refresh_token": "rt-unknown-provider", "expires_in": 600}
    r = run_cli("accounts", "add-oauth", "nosuchprov", "--label", "x", input=json.dumps(tokens))
    assert r.returncode == 1 and "unknown provider 'nosuchprov'" in r.stderr, r.stderr
    pool = Pool.open(home)
    with pytest.raises(ProviderNotFound, match="known providers"):
        pool.add_api_key("nosuchprov", "x", "sk-test-unknown-provider")
    with pytest.raises(ProviderNotFound):
        pool.add_oauth("nosuchprov", "x", TokenSet.parse(tokens))
    with pytest.raises(ProviderNotFound):
        pool.save_login("nosuchprov", "x", TokenSet.parse(tokens))
    assert pool.accounts() == []
    assert not (home / "vault.json").exists()  # refused before any secret was stored
