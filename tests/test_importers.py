"""`authpool import`: logins from opencode, Claude Code, Codex, Gemini CLI and the environment.

Fixture files under tests/fixtures/import/ have the shapes those tools write, with fake tokens.
The main paths run through the real CLI in a subprocess with HOME pointing at a fake user home.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from authpool import InvalidInput, NotFound, Pool, Secret
from authpool.importers import (
    Candidate,
    apply_import,
    env_variables,
    jwt_claims,
    plan_import,
    read_env,
    scan_source,
)
from tests.conftest import REPO, assert_no_secrets, home_texts, run_cli, write_config

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "import"
FAR_FUTURE = 4102444800.0  # 2100-01-01, the expiry written (in ms) into the fixture files

# Where each tool keeps its file, relative to the user's home directory.
DEFAULT_PLACES = {
    "opencode": ".local/share/opencode/auth.json",
    "claude-code": ".claude/.credentials.json",
    "codex": ".codex/auth.json",
    "gemini": ".gemini/oauth_creds.json",
}
FIXTURE_FILES = {
    "opencode": "opencode/auth.json",
    "claude-code": "claude-code/.credentials.json",
    "gemini": "gemini/oauth_creds.json",
}
SECRET_KEYS = {"access", "refresh", "key", "token", "accessToken", "refreshToken", "access_token",
               "refresh_token", "id_token", "OPENAI_API_KEY"}


# -- helpers --------------------------------------------------------------------------------


def unsigned_jwt(claims: dict[str, Any]) -> str:
    """A JWT with alg "none" and an empty signature, as a test stand-in for a provider's token."""
    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def secrets_in(doc: object) -> list[str]:
    """Every token-like value in a parsed credentials document."""
    out: list[str] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k in SECRET_KEYS and isinstance(v, str):
                out.append(v)
            else:
                out.extend(secrets_in(v))
    elif isinstance(doc, list):
        for v in doc:
            out.extend(secrets_in(v))
    return out


def all_fixture_secrets() -> list[str]:
    out: list[str] = []
    for p in FIXTURES.rglob("*.json"):
        try:
            out.extend(secrets_in(json.loads(p.read_text())))
        except (ValueError, UnicodeDecodeError):
            continue
    return out + ["sk-ant-oat01-FAKE-truncated-0001"]


def codex_doc(*, api_key: str | None = None, exp: float | None = None) -> dict[str, Any]:
    """A Codex CLI auth.json for a ChatGPT login whose access token expires at ``exp``."""
    exp = time.time() + 10 * 86400 if exp is None else exp
    profile = {"email": "codex.dev@example.com"}
    access = unsigned_jwt({"exp": int(exp), "https://api.openai.com/profile": profile,
                           "https://api.openai.com/auth": {"chatgpt_account_id": "acct-FAKE-0001"}})
    id_token = unsigned_jwt({"email": "codex.dev@example.com", "exp": int(time.time()) + 3600})
    return {
        "OPENAI_API_KEY": api_key,
        "auth_mode": "chatgpt",
        "tokens": {"id_token": id_token, "access_token": access,
                   "refresh_token": "rt_FAKE-codex-refresh-0001", "account_id": "acct-FAKE-0001"},
        "last_refresh": "2025-06-01T12:00:00Z",
    }


def install(user: Path, source: str, doc: dict[str, Any] | None = None) -> Path:
    """Put a source's fixture (or ``doc``) where the tool keeps it under the fake user home."""
    dest = user / DEFAULT_PLACES[source]
    dest.parent.mkdir(parents=True, exist_ok=True)
    if doc is not None:
        dest.write_text(json.dumps(doc, indent=2))
    else:
        shutil.copyfile(FIXTURES / FIXTURE_FILES[source], dest)
    os.chmod(dest, 0o600)
    return dest


def fingerprint(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns, stat.S_IMODE(st.st_mode)


def tree(root: Path) -> dict[str, tuple[bytes, int] | str]:
    """Every entry under ``root`` with its bytes and mtime (files) or a marker (directories)."""
    if not root.exists():
        return {}
    out: dict[str, tuple[bytes, int] | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else (p.read_bytes(), p.stat().st_mtime_ns)
    return out


def accounts(home: Path) -> dict[str, str]:
    """``provider/label`` -> kind, as the pool holds them now."""
    return {a.name: a.kind for a in Pool.open(home).accounts()}


def secret(home: Path, name: str) -> Secret:
    pool = Pool.open(home)
    return pool.secret_of(pool.get(name))


def assert_clean(home: Path, *outputs: str, extra: list[str] | None = None) -> None:
    """No fixture token (nor ``extra``) in any output or any readable home file."""
    assert_no_secrets([*outputs, *home_texts(home)], all_fixture_secrets() + (extra or []))


@pytest.fixture
def user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: Path) -> Path:
    """A fake user home (HOME) with no tool overrides and no provider API keys in the environment."""
    u = tmp_path / "user"
    u.mkdir()
    monkeypatch.setenv("HOME", str(u))
    for var in ("XDG_DATA_HOME", "CLAUDE_CONFIG_DIR", "CODEX_HOME", "AUTHPOOL_DEBUG", "MISTRAL_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    for var, _ in env_variables():
        monkeypatch.delenv(var, raising=False)
    return u


# -- reading each source ----------------------------------------------------------------------


def test_opencode_entries_map_to_our_providers_and_the_rest_are_skipped_with_a_reason() -> None:
    """anthropic/openai/google/github-copilot entries become candidates; unknown and wellknown are skipped."""
    scan = scan_source("opencode", FIXTURES / "opencode" / "auth.json")
    got = {(c.provider, c.kind, c.label) for c in scan.candidates}
    assert got == {("anthropic", "oauth", "opencode"), ("openai", "api_key", "opencode"),
                   ("gemini", "api_key", "opencode"), ("github-copilot", "oauth", "opencode")}
    by_provider = {c.provider: c for c in scan.candidates}
    assert by_provider["anthropic"].expires_at == FAR_FUTURE  # milliseconds in the file
    assert by_provider["github-copilot"].expires_at is None  # opencode writes 0 for "unknown"
    skipped = {s.origin: s.reason for s in scan.skipped}
    assert "no provider 'mistral'" in skipped["entry 'mistral'"]
    assert "[providers.mistral]" in skipped["entry 'mistral'"]
    assert "well-known" in skipped["entry 'https://ai.example.com'"]


def test_an_opencode_entry_for_a_configured_provider_is_imported() -> None:
    """An opencode id that is not built in is imported when config.toml defines that provider."""
    scan = scan_source("opencode", FIXTURES / "opencode" / "auth.json",
                       provider_ids=["anthropic", "openai", "gemini", "github-copilot", "mistral"])
    mistral = [c for c in scan.candidates if c.provider == "mistral"]
    assert len(mistral) == 1
    assert mistral[0].api_key == "FAKE-opencode-mistral-key-0001"


def test_claude_code_credentials_become_one_anthropic_oauth_login() -> None:
    """claudeAiOauth gives access and refresh token, expiry from milliseconds, and the plan as detail."""
    scan = scan_source("claude-code", FIXTURES / "claude-code" / ".credentials.json")
    (c,) = scan.candidates
    assert (c.provider, c.kind, c.label) == ("anthropic", "oauth", "claude-code")
    assert c.tokens is not None
    assert c.tokens.access_token == "sk-ant-oat01-FAKE-claude-code-access-0001"
    assert c.tokens.refresh_token == "sk-ant-ort01-FAKE-claude-code-refresh-0001"
    assert c.expires_at == FAR_FUTURE
    assert c.detail == "subscription: max"


def test_codex_tokens_keep_id_token_and_account_id_and_expire_at_the_access_token_exp(tmp_path: Path) -> None:
    """The ChatGPT login keeps id_token/account_id as extras; expiry is the JWT exp; the label has the email."""
    doc = codex_doc(api_key="sk-proj-FAKE-codex-both-0001", exp=1_900_000_000)
    path = tmp_path / "auth.json"
    path.write_text(json.dumps(doc))
    scan = scan_source("codex", path)
    oauth, key = scan.candidates
    # A ChatGPT-plan login is not an API key: it goes to the chatgpt provider (the Codex backend).
    assert (oauth.provider, oauth.kind, oauth.label) == ("chatgpt", "oauth", "codex-codex.dev@example.com")
    assert oauth.tokens is not None
    assert oauth.tokens.expires_at == 1_900_000_000
    assert oauth.tokens.extra == {"id_token": doc["tokens"]["id_token"], "account_id": "acct-FAKE-0001"}
    assert oauth.tokens.refresh_token == "rt_FAKE-codex-refresh-0001"
    assert (key.provider, key.kind, key.label, key.api_key) == ("openai", "api_key", "codex-key",
                                                                "sk-proj-FAKE-codex-both-0001")


def test_a_codex_file_with_only_an_api_key_gives_one_api_key_login() -> None:
    """auth_mode apikey with null tokens imports just the key."""
    scan = scan_source("codex", FIXTURES / "codex" / "auth-api-key-only.json")
    assert [(c.provider, c.kind) for c in scan.candidates] == [("openai", "api_key")]


def test_gemini_credentials_are_labelled_with_the_id_token_email() -> None:
    """oauth_creds.json: expiry_date in ms, label gemini-<email>; the id_token itself is not kept."""
    (c,) = scan_source("gemini", FIXTURES / "gemini" / "oauth_creds.json").candidates
    assert (c.provider, c.kind, c.label) == ("gemini", "oauth", "gemini-gemini.dev@example.com")
    assert c.expires_at == FAR_FUTURE
    assert c.tokens is not None
    assert c.tokens.extra == {}


def test_env_reads_provider_api_key_variables_and_google_api_key() -> None:
    """<PROVIDER>_API_KEY for every known provider plus GOOGLE_API_KEY; duplicates and junk are skipped."""
    environ = {
        "OPENAI_API_KEY": "sk-proj-FAKE-env-0001",
        "ANTHROPIC_API_KEY": "  sk-ant-api03-FAKE-env-0001\n",
        "GEMINI_API_KEY": "AIzaSyFAKE-env-0001",
        "GOOGLE_API_KEY": "AIzaSyFAKE-env-0001",  # the same key twice: imported once
        "GROQ_API_KEY": "gsk_FAKE-env-0001",  # only read once a provider groq is configured
        "GITHUB_COPILOT_API_KEY": "two words",
        "AUTHPOOL_KEY_OPENAI": "sk-proj-FAKE-not-a-convention",
    }
    builtin = read_env(environ)
    assert {(c.provider, c.api_key) for c in builtin.candidates} == {
        ("openai", "sk-proj-FAKE-env-0001"), ("anthropic", "sk-ant-api03-FAKE-env-0001"),
        ("gemini", "AIzaSyFAKE-env-0001")}
    reasons = {s.origin: s.reason for s in builtin.skipped}
    assert reasons == {"$GOOGLE_API_KEY": "the same key as $GEMINI_API_KEY",
                       "$GITHUB_COPILOT_API_KEY": "the value contains whitespace; not a single API key"}
    configured = read_env(environ, ["openai", "groq"])
    assert {c.provider for c in configured.candidates} == {"openai", "groq"}
    assert_no_secrets([repr(c) for c in builtin.candidates] + [s.reason for s in builtin.skipped],
                      list(environ.values()))


def test_a_candidate_shows_no_secret_in_repr_or_str() -> None:
    """Candidates hold tokens; repr and str show metadata only."""
    scan = scan_source("claude-code", FIXTURES / "claude-code" / ".credentials.json")
    c = scan.candidates[0]
    assert_no_secrets([repr(c), str(c), repr(scan), repr(c.tokens)], c.secret_values())
    assert "anthropic" in repr(c)


def test_jwt_claims_are_decoded_without_verification_and_garbage_gives_nothing() -> None:
    """An unsigned JWT's claims are read; opaque tokens and broken JWTs give no claims."""
    assert jwt_claims(unsigned_jwt({"exp": 123, "email": "a@b.c"})) == {"exp": 123, "email": "a@b.c"}
    for junk in ("sk-ant-oat01-FAKE", "a.b.c", "a.!!!.c", "", unsigned_jwt({"x": 1})[:-3] + "x.y"):
        assert isinstance(jwt_claims(junk), dict)
    assert jwt_claims("a.b.c") == {}


# -- bad files -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "fixture", "message"),
    [
        ("claude-code", "not-json.json", "is not valid JSON (line 2 column 1)"),
        ("claude-code", "empty.json", "is empty"),
        ("gemini", "whitespace-only.json", "is empty"),
        ("codex", "not-utf8.json", "is not UTF-8 text"),
        ("opencode", "top-level-array.json", "the top level must be a JSON object, not an array"),
        ("claude-code", "top-level-array.json", "the top level must be a JSON object, not an array"),
        ("claude-code", "claude-access-token-number.json",
         "'claudeAiOauth.accessToken' must be a string, not a number"),
        ("claude-code", "claude-missing-access-token.json", "'claudeAiOauth.accessToken' is missing"),
        ("claude-code", "claude-no-oauth-section.json", "'claudeAiOauth' is missing"),
        ("claude-code", "claude-expires-string.json", "'claudeAiOauth.expiresAt' must be a number, not a string"),
        ("opencode", "opencode-entry-string.json", "'anthropic' must be a JSON object, not a string"),
        ("opencode", "opencode-oauth-without-access.json", "'anthropic.access' is missing"),
        ("codex", "codex-tokens-array.json", "'tokens' must be a JSON object, not an array"),
        ("codex", "codex-key-number.json", "'OPENAI_API_KEY' must be a string, not a number"),
        ("gemini", "gemini-refresh-object.json", "'refresh_token' must be a string, not an object"),
    ],
)
def test_a_malformed_file_is_a_clear_error_naming_the_file_and_no_value(source: str, fixture: str,
                                                                         message: str) -> None:
    """Bad JSON, wrong shapes, wrong types and missing keys: InvalidInput naming file and key, no token."""
    path = FIXTURES / "malformed" / fixture
    with pytest.raises(InvalidInput) as err:
        scan_source(source, path)
    text = str(err.value)
    assert text.startswith(str(path))
    assert message in text
    assert "\n" not in text
    assert_no_secrets(text, all_fixture_secrets())


def test_a_missing_file_is_not_found_with_a_hint(user: Path) -> None:
    """A missing default file says where it looked and what to do."""
    with pytest.raises(NotFound) as err:
        scan_source("codex")
    assert str(user / ".codex" / "auth.json") in str(err.value)
    assert "log in with the Codex CLI first, or give the file's path" in str(err.value)


def test_a_tool_s_own_environment_override_moves_the_default_file(user: Path, tmp_path: Path) -> None:
    """CODEX_HOME, CLAUDE_CONFIG_DIR and XDG_DATA_HOME are honoured as the tools honour them."""
    env = {"HOME": str(user), "CODEX_HOME": str(tmp_path / "cx"), "CLAUDE_CONFIG_DIR": str(tmp_path / "cl"),
           "XDG_DATA_HOME": str(tmp_path / "xdg")}
    from authpool.importers import default_path

    assert default_path("codex", env) == tmp_path / "cx" / "auth.json"
    assert default_path("claude-code", env) == tmp_path / "cl" / ".credentials.json"
    assert default_path("opencode", env) == tmp_path / "xdg" / "opencode" / "auth.json"
    assert default_path("gemini", env) == user / ".gemini" / "oauth_creds.json"


def test_a_directory_instead_of_a_file_is_refused(tmp_path: Path) -> None:
    """A directory at the path is named as such."""
    with pytest.raises(InvalidInput, match=r"is a directory, not a credentials file"):
        scan_source("gemini", tmp_path)


def test_an_unreadable_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mode-000 file gives 'permission denied' naming the file."""
    path = tmp_path / "oauth_creds.json"
    shutil.copyfile(FIXTURES / "gemini" / "oauth_creds.json", path)
    os.chmod(path, 0)
    if os.access(path, os.R_OK):  # root reads anything: let the OS call answer as it would for a user
        real_open = os.open

        def denying_open(p: Any, flags: int, *args: Any, **kw: Any) -> int:
            if Path(p) == path:
                raise PermissionError(13, "Permission denied", str(p))
            return real_open(p, flags, *args, **kw)

        monkeypatch.setattr(os, "open", denying_open)
    try:
        with pytest.raises(InvalidInput, match=r"cannot read .*oauth_creds.json: permission denied"):
            scan_source("gemini", path)
    finally:
        os.chmod(path, 0o600)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_at_the_path_is_refused_without_hanging(tmp_path: Path) -> None:
    """Opening a named pipe would block forever; it is refused at once instead."""
    fifo = tmp_path / "auth.json"
    os.mkfifo(fifo)
    result: list[BaseException] = []

    def read() -> None:
        try:
            scan_source("codex", fifo)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            result.append(e)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "reading a FIFO hung"
    assert isinstance(result[0], InvalidInput)
    assert "is not a regular file" in str(result[0])


def test_env_takes_no_path() -> None:
    """`import env PATH` is refused: the env source reads no file."""
    with pytest.raises(InvalidInput, match="takes no PATH"):
        scan_source("env", Path("/nonexistent"))


# -- planning ------------------------------------------------------------------------------------


def test_default_labels_are_made_unique_within_the_provider(home: Path) -> None:
    """A taken suggested label gets -2, then -3 (case-insensitively)."""
    pool = Pool.open(home)
    pool.add_api_key("anthropic", "Claude-Code", "sk-ant-api03-FAKE-taken-0001")
    pool.add_api_key("anthropic", "claude-code-2", "sk-ant-api03-FAKE-taken-0002")
    scan = scan_source("claude-code", FIXTURES / "claude-code" / ".credentials.json")
    (step,) = plan_import(pool, scan.candidates)
    assert (step.action, step.name) == ("add", "anthropic/claude-code-3")
    (_, account), = list(apply_import(pool, [step]))
    assert account.name == "anthropic/claude-code-3"


def test_a_label_is_refused_when_more_than_one_account_would_be_imported(home: Path) -> None:
    """--label names one account; with several candidates it is an error that changes nothing."""
    scan = scan_source("opencode", FIXTURES / "opencode" / "auth.json")
    with pytest.raises(InvalidInput, match=r"--label names one account, but 4 were found"):
        plan_import(Pool.open(home), scan.candidates, label="work")
    assert not (home / "pool.json").exists()


def test_two_sources_with_the_same_label_base_in_one_provider_get_distinct_labels() -> None:
    """Labels chosen within one run do not collide with each other either."""
    key = scan_source("codex", FIXTURES / "codex" / "auth-api-key-only.json").candidates[0]
    twin = Candidate("codex", "other", "openai", "api_key", key.label, api_key="sk-proj-FAKE-other-0001")
    steps = plan_import(None, [key, twin])
    assert [s.label for s in steps] == ["codex-key", "codex-key-2"]


# -- the command ------------------------------------------------------------------------------


def test_importing_claude_code_adds_an_oauth_account_and_warns_about_the_shared_refresh_token(
        user: Path, home: Path) -> None:
    """Default path, one oauth account, the secret stored whole, the shared-token warning on stderr."""
    install(user, "claude-code")
    r = run_cli("import", "claude-code")
    assert r.returncode == 0, r.stderr
    assert "imported anthropic/claude-code: oauth, access token expires in" in r.stdout
    assert "shares its refresh token with Claude Code" in r.stderr
    assert "authpool login anthropic" in r.stderr
    assert "client_id" in r.stderr  # refreshing needs the client id the token was issued to
    assert accounts(home) == {"anthropic/claude-code": "oauth"}
    s = secret(home, "anthropic/claude-code")
    assert s.access_token == "sk-ant-oat01-FAKE-claude-code-access-0001"
    assert s.refresh_token == "sk-ant-ort01-FAKE-claude-code-refresh-0001"
    assert s.expires_at == FAR_FUTURE
    assert Pool.open(home).get("anthropic/claude-code").access_expires_at == FAR_FUTURE
    assert_clean(home, r.stdout, r.stderr)


def test_importing_opencode_takes_every_known_provider_and_says_what_it_skipped(user: Path, home: Path) -> None:
    """Known and configured providers are imported; the rest are listed as skipped; a rerun adds nothing."""
    install(user, "opencode")
    home.mkdir(mode=0o700)
    write_config(home, {"mistral": {"base_url": "https://api.mistral.ai", "auth": "bearer"}})
    r = run_cli("import", "opencode")
    assert r.returncode == 0, r.stderr
    assert accounts(home) == {"anthropic/opencode": "oauth", "openai/opencode": "api_key",
                              "gemini/opencode": "api_key", "github-copilot/opencode": "oauth",
                              "mistral/opencode": "api_key"}
    assert "skipped entry 'https://ai.example.com': a login to a self-hosted well-known server" in r.stdout
    assert r.stderr.count("authpool: warning:") == 2  # the two OAuth logins
    assert secret(home, "gemini/opencode").api_key == "AIzaSyFAKE-opencode-google-key-0001"

    again = run_cli("import", "opencode")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already imported as") == 5
    assert "already imported as anthropic/opencode (oauth; its stored tokens were left as they are)" in again.stdout
    assert "warning" not in again.stderr
    assert len(accounts(home)) == 5
    assert_clean(home, r.stdout, r.stderr, again.stdout, again.stderr)


def test_importing_codex_brings_the_chatgpt_login_and_the_api_key(user: Path, home: Path) -> None:
    """Both credentials of a Codex file arrive; the OAuth one keeps id_token and account_id."""
    doc = codex_doc(api_key="sk-proj-FAKE-codex-both-0001")
    install(user, "codex", doc)
    first = run_cli("import", "codex", "--kind", "api_key", "--label", "personal")
    assert first.returncode == 0, first.stderr
    assert accounts(home) == {"openai/personal": "api_key"}
    r = run_cli("import", "codex")
    assert r.returncode == 0, r.stderr
    assert "already imported as openai/personal (API key) [OPENAI_API_KEY]" in r.stdout
    assert accounts(home) == {"chatgpt/codex-codex.dev@example.com": "oauth", "openai/personal": "api_key"}
    s = secret(home, "chatgpt/codex-codex.dev@example.com")
    assert s.extra == {"id_token": doc["tokens"]["id_token"], "account_id": "acct-FAKE-0001"}
    assert s.expires_at is not None and abs(s.expires_at - (time.time() + 10 * 86400)) < 60
    assert "shares its refresh token with the Codex CLI" in r.stderr
    assert_clean(home, first.stdout, first.stderr, r.stdout, r.stderr,
                 extra=[doc["tokens"]["access_token"], doc["tokens"]["id_token"]])


def test_importing_twice_leaves_a_refreshed_login_alone(user: Path, home: Path) -> None:
    """After authpool refreshed the access token, importing the file's older copy again changes nothing."""
    install(user, "gemini")
    assert run_cli("import", "gemini").returncode == 0
    pool = Pool.open(home)
    before = pool.get("gemini/gemini-gemini.dev@example.com")
    # What a refresh with a provider that keeps refresh tokens (Google does) leaves behind.
    refreshed = pool.secret_of(before).with_tokens("ya29.FAKE-gemini-refreshed-0002", None, time.time() + 3600)
    pool.set_secret(before.id, refreshed)
    generation = pool.get(before.id).secret_generation

    r = run_cli("import", "gemini")
    assert r.returncode == 0, r.stderr
    assert "already imported as gemini/gemini-gemini.dev@example.com" in r.stdout
    after = Pool.open(home)
    assert [a.name for a in after.accounts()] == ["gemini/gemini-gemini.dev@example.com"]
    assert after.get(before.id).secret_generation == generation
    assert after.secret_of(after.get(before.id)).access_token == "ya29.FAKE-gemini-refreshed-0002"


def test_concurrent_imports_of_one_file_add_the_login_once(user: Path, home: Path) -> None:
    """Three `authpool import` processes started together end with one account, not three."""
    install(user, "claude-code")
    Pool.open(home)  # the home exists, so the processes race on the pool, not on creating it
    procs = [subprocess.Popen([sys.executable, "-m", "authpool.server.cli", "import", "claude-code"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert accounts(home) == {"anthropic/claude-code": "oauth"}
    assert sum("already imported as anthropic/claude-code" in out for out, _ in outputs) == 2


def test_the_source_file_is_never_modified(user: Path, home: Path) -> None:
    """Import, re-import and dry run leave the tool's file byte-for-byte, mtime and mode as they were."""
    path = install(user, "codex", codex_doc(api_key="sk-proj-FAKE-codex-both-0001"))
    old = time.time_ns() - 3_600_000_000_000
    os.utime(path, ns=(old, old))
    before = fingerprint(path)
    for args in (("import", "codex", "--dry-run"), ("import", "codex"), ("import", "codex")):
        r = run_cli(*args)
        assert r.returncode == 0, r.stderr
        assert fingerprint(path) == before


def test_dry_run_shows_provider_label_kind_and_expiry_and_changes_nothing(user: Path, home: Path) -> None:
    """--dry-run lists what would happen, never a secret, and leaves every home file untouched."""
    install(user, "claude-code")
    install(user, "opencode")
    assert run_cli("import", "claude-code").returncode == 0
    snapshot = tree(home)
    r = run_cli("import", "opencode", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "would import anthropic/opencode: oauth, access token expires in" in r.stdout
    assert "would import openai/opencode: API key [entry 'openai']" in r.stdout
    assert "would import github-copilot/opencode: oauth, access token expiry unknown" in r.stdout
    assert r.stdout.rstrip().endswith("dry run: nothing was changed")
    assert "would share its refresh token with opencode" in r.stderr
    assert tree(home) == snapshot
    assert_clean(home, r.stdout, r.stderr)


def test_dry_run_without_a_home_does_not_create_one(user: Path, home: Path) -> None:
    """A first-ever dry run reports and leaves no home directory behind."""
    install(user, "gemini")
    r = run_cli("import", "gemini", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "would import gemini/gemini-gemini.dev@example.com" in r.stdout
    assert not home.exists()


def test_env_import_reads_the_child_s_environment(user: Path, home: Path) -> None:
    """Keys come from the environment of the `authpool import env` process itself."""
    env = {"OPENAI_API_KEY": "sk-proj-FAKE-child-env-0001", "GOOGLE_API_KEY": "AIzaSyFAKE-child-env-0001"}
    assert "OPENAI_API_KEY" not in os.environ
    r = run_cli("import", "env", env=env)
    assert r.returncode == 0, r.stderr
    assert accounts(home) == {"openai/env": "api_key", "gemini/env": "api_key"}
    assert "imported gemini/env: API key [$GOOGLE_API_KEY]" in r.stdout
    assert "warning" not in r.stderr  # API keys share nothing that rotates
    again = run_cli("import", "env", env=env)
    assert again.stdout.count("already imported as") == 2
    assert_clean(home, r.stdout, r.stderr, again.stdout, again.stderr, extra=list(env.values()))


def test_env_import_with_no_key_set_says_which_variables_it_read(user: Path, home: Path) -> None:
    """Nothing to import is a one-line error listing the variables looked for."""
    r = run_cli("import", "env")
    assert r.returncode == 1
    assert r.stderr.startswith("authpool: error: no login to import in the environment (looked for ")
    assert "OPENAI_API_KEY" in r.stderr
    assert "GOOGLE_API_KEY" in r.stderr


def test_label_and_provider_pick_one_account_out_of_many(user: Path, home: Path) -> None:
    """--label needs one account: refused for a whole opencode file, accepted with --provider."""
    install(user, "opencode")
    refused = run_cli("import", "opencode", "--label", "mine")
    assert refused.returncode == 1
    assert "--label names one account, but 4 were found" in refused.stderr
    assert not home.exists()

    r = run_cli("import", "opencode", "--provider", "anthropic", "--label", "mine")
    assert r.returncode == 0, r.stderr
    assert accounts(home) == {"anthropic/mine": "oauth"}

    unknown = run_cli("import", "opencode", "--provider", "nope")
    assert unknown.returncode == 1
    assert "unknown provider 'nope'" in unknown.stderr


def test_a_label_that_is_taken_is_refused(user: Path, home: Path) -> None:
    """--label colliding with another account of the provider is a clear error that adds nothing."""
    Pool.open(home).add_api_key("anthropic", "work", "sk-ant-api03-FAKE-taken-0003")
    install(user, "claude-code")
    r = run_cli("import", "claude-code", "--label", "Work")
    assert r.returncode == 1
    assert "anthropic/Work already exists; choose another --label" in r.stderr
    assert accounts(home) == {"anthropic/work": "api_key"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("claude-code", "{fixtures}/malformed/not-json.json"), "not-json.json is not valid JSON"),
        (("codex", "{fixtures}/malformed/codex-tokens-array.json"), "'tokens' must be a JSON object, not an array"),
        (("opencode", "{fixtures}/malformed/opencode-oauth-without-access.json"), "'anthropic.access' is missing"),
        (("gemini", "{fixtures}/malformed/empty.json"), "empty.json is empty"),
        (("gemini", "{fixtures}"), "is a directory, not a credentials file"),
        (("claude-code",), "/.claude/.credentials.json does not exist"),
        (("env", "{fixtures}/opencode/auth.json"), "takes no PATH"),
    ],
)
def test_a_bad_source_is_one_line_on_stderr_and_the_store_is_untouched(
        user: Path, home: Path, args: tuple[str, ...], message: str) -> None:
    """Missing, malformed or wrong-kind sources: exit 1, one stderr line naming the file, no pool change."""
    pool = Pool.open(home)
    pool.add_api_key("openai", "existing", "sk-proj-FAKE-existing-0001")
    pool.close()  # its event ("added") is written by now, not while the tree is compared
    snapshot = tree(home)
    r = run_cli("import", *(a.format(fixtures=FIXTURES) for a in args))
    assert r.returncode == 1
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("authpool: error: ")
    assert message in lines[0]
    assert "Traceback" not in r.stderr
    assert tree(home) == snapshot
    assert_no_secrets([r.stdout, r.stderr], all_fixture_secrets())


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_an_unreadable_source_via_the_cli_is_one_line(user: Path, home: Path) -> None:
    """A mode-000 credentials file gives one error line (skipped where root can read it anyway)."""
    path = install(user, "claude-code")
    os.chmod(path, 0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: a mode-000 file is still readable")
        r = run_cli("import", "claude-code")
        assert r.returncode == 1
        assert r.stderr.strip() == f"authpool: error: cannot read {path}: permission denied"
        assert not home.exists()
    finally:
        os.chmod(path, 0o600)
