"""Every wrong turn gets one clear line: unknown providers, bad config, an empty pool, escaping paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authpool import Pool, ProviderNotFound, TokenSet
from tests.conftest import LoopbackPool, assert_no_secrets, run_cli


def test_adding_an_account_for_an_unknown_provider_is_refused_listing_the_known_ones(home: Path) -> None:
    """add-key, add-oauth and the library's add paths refuse a provider authpool does not know; nothing is stored."""
    r = run_cli("accounts", "add-key", "nosuchprov", "--label", "x", input="sk-test-unknown-provider")
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1
    assert "unknown provider 'nosuchprov'" in r.stderr and "known providers" in r.stderr and "anthropic" in r.stderr
    tokens = {"access_token": "at-unknown-provider", "refresh_token": "rt-unknown-provider", "expires_in": 600}
    r2 = run_cli("accounts", "add-oauth", "nosuchprov", "--label", "x", input=json.dumps(tokens))
    assert r2.returncode == 1 and "unknown provider 'nosuchprov'" in r2.stderr, r2.stderr
    assert_no_secrets([r.stdout, r.stderr, r2.stdout, r2.stderr],
                      ["sk-test-unknown-provider", tokens["access_token"], tokens["refresh_token"]])
    pool = Pool.open(home)
    with pytest.raises(ProviderNotFound, match="known providers"):
        pool.add_api_key("nosuchprov", "x", "sk-test-unknown-provider")
    with pytest.raises(ProviderNotFound):
        pool.add_oauth("nosuchprov", "x", TokenSet.parse(tokens))
    with pytest.raises(ProviderNotFound):
        pool.save_login("nosuchprov", "x", TokenSet.parse(tokens))
    assert pool.accounts() == []
    assert not (home / "vault.db").exists()  # refused before any secret was stored
    # An account whose provider has gone from config.toml (or was added before this check):
    # doctor does not call it healthy.
    _write_config(home, '[providers.gone]\nbase_url = "http://127.0.0.1:9"\n')
    pool.add_api_key("gone", "k", "sk-test-unknown-provider")
    (home / "config.toml").unlink()
    r = run_cli("doctor")
    assert r.returncode == 1, r.stdout
    assert "[ fail] account: gone/k" in r.stdout and "unknown provider 'gone'" in r.stdout, r.stdout
    assert_no_secrets([r.stdout, r.stderr], ["sk-test-unknown-provider"])


def _write_config(home: Path, text: str) -> Path:
    home.mkdir(mode=0o700, exist_ok=True)
    path = home / "config.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(("text", "fragments"), [
    ('[providers.x]\nbase_url = "http://127.0.0.1:9"\nauht = "bearer"\n',
     ["line 3", "unknown key 'auht' in [providers.x]", "did you mean 'auth'"]),
    ('[provider.x]\nbase_url = "http://127.0.0.1:9"\n',
     ["line 1", "unknown table [provider]", "did you mean [providers]"]),
    ('[providers.x]\nbase_url = "http://127.0.0.1:9"\n\n[providers.x.oauth]\ntokn_url = "http://127.0.0.1:9/t"\n',
     ["line 5", "unknown key 'tokn_url' in [providers.x.oauth]", "did you mean 'token_url'"]),
    ('[providers.x]\nbase_url = "http://127.0.0.1:9"\n[providers.x.oauht]\ntoken_url = "http://127.0.0.1:9/t"\n',
     ["line 3", "unknown key 'oauht' in [providers.x]", "did you mean 'oauth'"]),
    ('defaults = 1\n', ["line 1", "unknown key 'defaults'", "config.toml has only [providers.ID] tables"]),
], ids=["key", "table", "oauth-key", "sub-table", "top-level-key"])
def test_unknown_keys_and_tables_in_config_toml_are_errors_naming_file_line_and_closest_name(
        home: Path, text: str, fragments: list[str]) -> None:
    """A misspelt key or table fails `doctor` and every command that reads providers, naming file, line and the fix."""
    path = _write_config(home, text)
    r = run_cli("doctor")
    assert r.returncode == 1, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("[ fail] config"))
    assert str(path) in line
    for fragment in fragments:
        assert fragment in line, line
    r = run_cli("accounts", "add-key", "x", "--label", "k", input="sk-test-config")
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert_no_secrets([r.stdout, r.stderr], ["sk-test-config"])
    assert str(path) in r.stderr and fragments[0] in r.stderr and fragments[1] in r.stderr


def test_doctor_reports_a_good_config_toml_and_its_providers(home: Path) -> None:
    """`doctor` loads config.toml: a good one is reported ok with the providers it defines."""
    _write_config(home, '[providers.acme]\nbase_url = "http://127.0.0.1:9"\n'
                        '[providers.openai.oauth]\nclient_id = "c"\n')
    r = run_cli("doctor")
    assert r.returncode == 0, r.stdout + r.stderr
    assert any(x.startswith("[   ok] config") and "acme, openai" in x for x in r.stdout.splitlines()), r.stdout


@pytest.mark.parametrize("path", [
    "../admin/stats", "/../admin/stats", "models/../../admin/stats", "%2e%2e/admin/stats", "%2E%2e/admin/stats",
    ".%2e/admin/stats", "x/..%2f..%2fadmin/stats", "x%2f..%2f..%2fadmin/stats", "%252e%252e/admin/stats", "..",
])
def test_a_path_cannot_leave_the_base_url_path_of_its_provider(acme: LoopbackPool, path: str) -> None:
    """With base URL .../v1, a path escaping /v1 (dot segments, also percent-encoded) is refused; nothing is sent."""
    acme.configure("acme", base_url=f"{acme.lp.base_url}/v1")
    acme.add_api_key("k")
    r = run_cli("request", "acme", "GET", path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and "outside the base path /v1 of provider acme" in r.stderr, r.stderr
    assert acme.lp.snapshot()["calls_by_path"] == {}
    assert_no_secrets([r.stdout, r.stderr], acme.secrets())


def test_paths_under_the_base_url_path_still_reach_the_provider_there(acme: LoopbackPool) -> None:
    """With base URL .../v1, "models", "/models" and a harmless "a/../models" all go to /v1/models."""
    acme.configure("acme", base_url=f"{acme.lp.base_url}/v1")
    acme.add_api_key("k")
    for path in ("models", "/models", "a/../models"):
        r = run_cli("request", "acme", "GET", path)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["subject"] == "k"
    assert acme.lp.snapshot()["calls_by_path"] == {"/v1/models": 3}


def test_add_oauth_warns_that_a_token_set_without_a_refresh_token_cannot_be_renewed(home: Path) -> None:
    """add-oauth with no refresh_token adds the account but warns on stderr that it will need a new login."""
    tokens = {"access_token": "at-no-refresh-0123456789", "expires_in": 3600}
    r = run_cli("accounts", "add-oauth", "openai", "--label", "short", input=json.dumps(tokens))
    assert r.returncode == 0, r.stderr
    assert "added openai/short" in r.stdout
    assert "no refresh token" in r.stderr and "cannot be renewed" in r.stderr
    assert "authpool login openai --label short" in r.stderr
    assert_no_secrets([r.stdout, r.stderr], [tokens["access_token"]])
    with_refresh = {**tokens, "refresh_token": "rt-present-0123456789"}
    r = run_cli("accounts", "add-oauth", "openai", "--label", "long", input=json.dumps(with_refresh))
    assert r.returncode == 0 and r.stderr == "", r.stderr


@pytest.mark.parametrize(("args", "fragment"), [
    (["-H", "bad name: 1"], "header name 'bad name' is not a valid HTTP header name"),
    (["-H", "x-note: café"], "the value of header 'x-note' contains characters an HTTP header cannot carry"),
    (["-H", "Host: elsewhere.example"], "header 'host' is set by authpool's HTTP client, not by callers"),
    (["-H", "Content-Length: 5"], "header 'content-length' is set by authpool's HTTP client"),
    (["-H", "x-api-key: sk-caller-chosen"], "header 'x-api-key' carries credentials"),
    (["-H", "no colon here"], "bad header 'no colon here': use 'Name: value'"),
    (["--method-instead", "FETCH"], "unsupported method 'FETCH'; use one of DELETE, GET"),
], ids=["name", "value", "host", "framing", "credential", "syntax", "method"])
def test_authpool_request_refuses_a_bad_header_or_method_in_one_line_like_proxy_request(
        acme: LoopbackPool, args: list[str], fragment: str) -> None:
    """`authpool request` passes the front door MCP uses: a refused header or method is one line; nothing is sent."""
    acme.add_api_key("k")
    method = args[1] if args[0] == "--method-instead" else "GET"
    extra = [] if args[0] == "--method-instead" else args
    r = run_cli("request", "acme", method, "/v1/models", *extra)
    assert r.returncode == 1 and r.stdout == "", r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("authpool: error: "), r.stderr
    assert fragment in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "sk-caller-chosen" not in r.stderr
    assert acme.lp.snapshot()["calls_by_path"] == {}
    assert_no_secrets([r.stdout, r.stderr], acme.secrets())
