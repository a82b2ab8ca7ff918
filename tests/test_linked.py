"""Linked logins: an imported login kept in step with the official tool's own credential file.

The tool is played by ``tests/official_cli.py``, a separate process that keeps Claude Code's file
format and does what such tools do: on a 401 it re-reads its file and uses a newer login found
there, else renews the login itself (read, refresh at the rotating loopback provider, write back).
The loopback provider revokes the whole login when a spent refresh token is presented, so a
single clobbered rotation would show as a reuse event and a logged-out side.
"""

from __future__ import annotations

import json
import os
import queue
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from authpool import InvalidInput, Pool, Secret, TokenSet
from authpool.accounts import LinkedFile
from authpool.auth.linked import changed_since, read_login, write_login
from tests.conftest import REPO, LoopbackPool, assert_no_secrets, home_texts, run_cli
from tests.mcp_support import mcp_session, text_of

TOOL = Path(__file__).resolve().parent / "official_cli.py"
MESSAGE = {"model": "loopback-small", "messages": [{"role": "user", "content": "hi"}]}
DEADLINE = 120.0


def claude_file(path: Path, doc: dict[str, Any], *, mode: int = 0o600, **fields: Any) -> Path:
    """Claude Code's credentials file holding the loopback login ``doc`` (expiry in milliseconds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    login = {"accessToken": doc["access_token"], "refreshToken": doc["refresh_token"],
             "expiresAt": int((time.time() + doc["expires_in"]) * 1000), "scopes": ["user:inference"],
             "subscriptionType": "max", **fields}
    path.write_text(json.dumps({"claudeAiOauth": login}, indent=2) + "\n")
    path.chmod(mode)
    return path


def file_login(path: Path) -> dict[str, Any]:
    login: dict[str, Any] = json.loads(path.read_text())["claudeAiOauth"]
    return login


@pytest.fixture
def anthropic(acme: LoopbackPool) -> LoopbackPool:
    """The built-in anthropic provider (where Claude Code logins import to), on the loopback."""
    acme.configure("anthropic")
    return acme


class Tool:
    """The stand-in official CLI, running as its own process, one command at a time."""

    def __init__(self, file: Path, lp_pool: LoopbackPool) -> None:
        lp = lp_pool.lp
        self.proc = subprocess.Popen(
            [sys.executable, str(TOOL), str(file), lp.base_url + "/v1/messages", lp.token_url, lp.client_id],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self._answer() == {"ready": True}

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def _answer(self) -> dict[str, Any]:
        line = self.lines.get(timeout=DEADLINE)
        if not line:
            raise AssertionError(f"the tool exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def do(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> str:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=DEADLINE)
        return self.proc.stderr.read() if self.proc.stderr else ""


def import_linked(lp_pool: LoopbackPool, file: Path) -> str:
    r = run_cli("import", "claude-code", str(file), "--link")
    assert r.returncode == 0, r.stderr
    assert "linked anthropic/" in r.stdout and str(file) in r.stdout, r.stdout
    assert "shares its refresh token" not in r.stderr, "a linked login shares nothing to warn about"
    name: str = json.loads(run_cli("accounts", "list", "--json").stdout)["accounts"][0]["name"]
    return name


# -- beside the tool, across many rotations ----------------------------------------------------------


def test_serve_the_cli_and_the_official_tool_share_a_login_across_sixty_rotations_without_reuse(
        anthropic: LoopbackPool, tmp_path: Path) -> None:
    """Every round the provider expires the access tokens and one side renews the login (serve, the tool,
    or a CLI request): the others adopt it. 60 rotations, one token call each, nobody logged out."""
    doc = anthropic.lp.add_oauth_account("linda")
    anthropic.handed_out += [doc["access_token"], doc["refresh_token"]]
    file = claude_file(tmp_path / "claude" / ".credentials.json", doc)
    name = import_linked(anthropic, file)
    tool = Tool(file, anthropic)
    rounds = 60
    trails: list[tuple[str, list[tuple[int | None, str]]]] = []
    tool_answers: list[tuple[str, dict[str, Any]]] = []
    cli_outputs: list[str] = []
    errlog = tmp_path / "serve-stderr.log"

    def cli_request() -> None:
        r = run_cli("request", "anthropic", "POST", "/v1/messages", "--json", json.dumps(MESSAGE))
        cli_outputs.extend([r.stdout, r.stderr])
        assert r.returncode == 0, r.stderr

    async def scenario() -> None:
        with errlog.open("w") as f:
            async with mcp_session(anthropic.home, errlog=f) as client:

                async def serve_request(after: str) -> None:
                    r = await client.call_tool("proxy_request", {"provider": "anthropic", "method": "POST",
                                                                 "path": "/v1/messages", "json": MESSAGE})
                    assert r.is_error is False, text_of(r)
                    out = r.structured_content
                    assert out is not None and out["status"] == 200, out
                    trails.append((after, [(a["status"], a["outcome"]) for a in out["attempts"]]))

                for i in range(rounds):
                    renewer = "cli" if i % 6 == 5 else ("serve" if i % 2 == 0 else "tool")
                    anthropic.lp.expire_access_tokens("linda")
                    if renewer == "serve":
                        await serve_request("itself")
                    elif renewer == "tool":
                        tool_answers.append(("renews", tool.do("request")))
                    else:
                        await anyio.to_thread.run_sync(cli_request)
                    if renewer != "serve":
                        await serve_request(renewer)
                    if renewer != "tool":
                        tool_answers.append(("adopts", tool.do("request")))
                    if i % 6 == 2:  # the CLI also adopts now and then (it starts fresh each time)
                        await anyio.to_thread.run_sync(cli_request)

    try:
        anyio.run(scenario)
    finally:
        tool_log = tool.close()
    stats = anthropic.lp.snapshot()
    assert (stats["reuse_detected_count"], stats["invalid_grant_count"]) == (0, 0)
    assert stats["refresh_calls"] == rounds, "each rotation is one token call; the other sides adopted it"
    # serve meets a 401 and renews, or adopts what the tool wrote; what another authpool process
    # stored it picks up before sending (the store's generation moved).
    for after, t in trails:
        assert t == ([(200, "ok")] if after == "cli" else [(401, "refreshed"), (200, "ok")]), (after, t)
    for role, answer in tool_answers:
        assert answer["status"] == 200, answer
        assert (answer["renewed"], answer["reloaded"]) == ((True, False) if role == "renews" else (False, True))
    # authpool and the tool end holding the same login, in the tool's own format.
    pool = Pool.open(anthropic.home)
    stored = pool.secret_of(pool.get(name))
    login = file_login(file)
    assert (login["accessToken"], login["refreshToken"]) == (stored.access_token, stored.refresh_token)
    assert login["scopes"] == ["user:inference"] and login["subscriptionType"] == "max"
    assert isinstance(login["expiresAt"], int) and login["expiresAt"] > time.time() * 1000
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    pool.close()
    assert_no_secrets([*home_texts(anthropic.home), errlog.read_text(), tool_log, *cli_outputs],
                      [s for s in anthropic.secrets() if s not in file.read_text()])


# -- deciding which copy is newer -------------------------------------------------------------------


@pytest.fixture
def linked(anthropic: LoopbackPool, tmp_path: Path) -> Iterator[tuple[Pool, str, Path]]:
    """A linked account (``anthropic/linda``) over Claude Code's file, in this process."""
    doc = anthropic.lp.add_oauth_account("linda")
    anthropic.handed_out += [doc["access_token"], doc["refresh_token"]]
    file = claude_file(tmp_path / "claude" / ".credentials.json", doc, mode=0o640)
    pool = anthropic.pool
    acc = pool.add_oauth("anthropic", "linda", TokenSet.parse(doc))
    pool.link(acc.id, LinkedFile(source="claude-code", path=str(file)))
    yield pool, acc.id, file


def request(pool: Pool) -> list[tuple[int | None, str]]:
    with pool.sync_client("anthropic") as client:
        r = client.post("/v1/messages", json=MESSAGE)
    assert r.status_code == 200, r.text
    return [(a.status, a.outcome) for a in r.extensions["authpool"].attempts]


def test_a_renewal_by_authpool_is_written_into_the_file_at_once_keeping_its_format_and_mode(
        linked: tuple[Pool, str, Path], anthropic: LoopbackPool) -> None:
    pool, account_id, file = linked
    before = file.read_text()
    anthropic.lp.expire_access_tokens("linda")
    assert request(pool) == [(401, "refreshed"), (200, "ok")]
    after = json.loads(file.read_text())
    stored = pool.secret_of(pool.get(account_id))
    assert after["claudeAiOauth"]["refreshToken"] == stored.refresh_token != json.loads(before)["claudeAiOauth"][
        "refreshToken"]
    assert after["claudeAiOauth"]["expiresAt"] == int((stored.expires_at or 0) * 1000)
    assert after["claudeAiOauth"]["subscriptionType"] == "max"
    assert stat.S_IMODE(file.stat().st_mode) == 0o640, "the file keeps its mode"
    assert file.read_text().startswith('{\n  "claudeAiOauth"'), "an indented file stays indented"
    assert [p.name for p in file.parent.iterdir()] == [".credentials.json"], "no temp file is left behind"


def test_a_renewal_by_the_tool_is_adopted_before_authpool_would_renew_with_no_token_call(
        linked: tuple[Pool, str, Path], anthropic: LoopbackPool, tmp_path: Path) -> None:
    pool, account_id, file = linked
    anthropic.lp.expire_access_tokens("linda")  # authpool's copy stops working ...
    tool = Tool(file, anthropic)
    try:
        assert tool.do("refresh") == {"ok": True}  # ... and the tool renews the login
    finally:
        tool.close()
    assert tool_login_works(anthropic, file)
    calls = anthropic.lp.snapshot()["refresh_calls"]
    generation = pool.get(account_id).secret_generation
    assert request(pool) == [(401, "refreshed"), (200, "ok")]
    assert anthropic.lp.snapshot()["refresh_calls"] == calls, "the tool's login was adopted, not renewed"
    assert pool.get(account_id).secret_generation == generation + 1
    assert pool.secret_of(pool.get(account_id)).refresh_token == file_login(file)["refreshToken"]


def tool_login_works(lp_pool: LoopbackPool, file: Path) -> bool:
    """The file's access token is accepted by the provider (it is the newest login)."""
    import httpx2

    r = httpx2.post(lp_pool.lp.base_url + "/v1/messages", json=MESSAGE,
                    headers={"authorization": "Bearer " + file_login(file)["accessToken"]})
    return r.status_code == 200


def test_a_login_the_tool_writes_while_authpool_renews_is_kept_and_adopted_not_overwritten(
        linked: tuple[Pool, str, Path], anthropic: LoopbackPool) -> None:
    """The user logs in again in the tool while authpool's token call is out: the file's new login wins."""
    pool, account_id, file = linked
    lp = anthropic.lp
    lp.expire_access_tokens("linda")
    lp.set_token_delay(1.0)
    calls = lp.snapshot()["token_calls"]
    relogin = lp.add_oauth_account("linda")
    anthropic.handed_out += [relogin["access_token"], relogin["refresh_token"]]
    results: list[list[tuple[int | None, str]]] = []
    worker = threading.Thread(target=lambda: results.append(request(pool)))
    worker.start()
    assert lp.wait_for_token_calls(calls + 1, DEADLINE), "authpool never called the token endpoint"
    claude_file(file, relogin, mode=0o640)  # the tool's fresh login lands while the call is out
    worker.join(DEADLINE)
    lp.set_token_delay(0)
    assert results and results[0][-1] == (200, "ok")
    assert file_login(file)["refreshToken"] == relogin["refresh_token"], "the tool's newer login was overwritten"
    assert pool.secret_of(pool.get(account_id)).refresh_token == relogin["refresh_token"]
    assert lp.snapshot()["reuse_detected_count"] == 0


def test_linking_adopts_the_files_login_only_when_it_is_the_newer(
        anthropic: LoopbackPool, tmp_path: Path) -> None:
    older, newer = anthropic.lp.add_oauth_account("olga"), anthropic.lp.add_oauth_account("olga")
    newer["expires_in"] = older["expires_in"] + 600
    pool = anthropic.pool
    acc = pool.add_oauth("anthropic", "olga", TokenSet.parse(older))
    file = claude_file(tmp_path / "a.json", newer)
    pool.link(acc.id, LinkedFile(source="claude-code", path=str(file)))
    assert pool.secret_of(pool.get(acc.id)).refresh_token == newer["refresh_token"]

    acc2 = pool.add_oauth("anthropic", "olga-2", TokenSet.parse(newer))
    file2 = claude_file(tmp_path / "b.json", older)
    pool.link(acc2.id, LinkedFile(source="claude-code", path=str(file2)))
    assert pool.secret_of(pool.get(acc2.id)).refresh_token == newer["refresh_token"], "an older file won"
    assert file_login(file2)["refreshToken"] == older["refresh_token"], "linking alone writes nothing"


def test_a_file_that_only_authpool_wrote_since_is_not_mistaken_for_a_renewal_by_the_tool(
        linked: tuple[Pool, str, Path], anthropic: LoopbackPool) -> None:
    pool, account_id, file = linked
    anthropic.lp.expire_access_tokens("linda")
    request(pool)
    secret = pool.secret_of(pool.get(account_id))
    link = pool.get(account_id).link
    assert link is not None
    assert changed_since(link, secret) is None
    assert write_login(link, secret, read_login(link)) is None, "rewriting the same login is no conflict"


def test_a_write_back_that_fails_never_makes_authpool_adopt_the_spent_token_the_file_still_holds(
        linked: tuple[Pool, str, Path], anthropic: LoopbackPool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The renewed login cannot be written back (a full disk; a file mounted into a container, which
    cannot be replaced): the file keeps the refresh token authpool just spent. Later renewals must not
    take it for a renewal by the tool: presented again, it would revoke the login. The failure is
    simulated (as root, a write cannot be refused without mounts); every token call is real."""
    import authpool.auth.refresh as refresh_module
    from authpool.errors import StoreWriteError

    pool, account_id, file = linked
    spent = file_login(file)["refreshToken"]

    def refused(link: object, secret: object, seen: object) -> None:
        raise StoreWriteError(f"could not write {file}: No space left on device")

    monkeypatch.setattr(refresh_module, "write_login", refused)
    for _ in range(2):  # the second renewal is the one that would have adopted the spent token
        anthropic.lp.expire_access_tokens("linda")
        assert request(pool) == [(401, "refreshed"), (200, "ok")]
        assert file_login(file)["refreshToken"] == spent
    stats = anthropic.lp.snapshot()
    assert (stats["refresh_calls"], stats["reuse_detected_count"], stats["invalid_grant_count"]) == (2, 0, 0)
    assert pool.get(account_id).needs_reauth is False
    monkeypatch.undo()  # the file can be written again: the next renewal puts the login back in step
    anthropic.lp.expire_access_tokens("linda")
    assert request(pool) == [(401, "refreshed"), (200, "ok")]
    assert file_login(file)["refreshToken"] == pool.secret_of(pool.get(account_id)).refresh_token != spent
    assert anthropic.lp.snapshot()["reuse_detected_count"] == 0


def test_a_tool_that_writes_the_spent_token_back_from_its_memory_is_not_followed(
        linked: tuple[Pool, str, Path], anthropic: LoopbackPool) -> None:
    """The tool read the file before authpool renewed and writes that (now spent) login back later:
    authpool keeps its own, newer login instead of adopting the spent one."""
    pool, account_id, file = linked
    stale = file.read_text()
    anthropic.lp.expire_access_tokens("linda")
    assert request(pool) == [(401, "refreshed"), (200, "ok")]
    file.write_text(stale)  # the tool's stale copy lands over authpool's write-back
    anthropic.lp.expire_access_tokens("linda")
    assert request(pool) == [(401, "refreshed"), (200, "ok")]
    stats = anthropic.lp.snapshot()
    assert (stats["refresh_calls"], stats["reuse_detected_count"]) == (2, 0)
    assert pool.get(account_id).needs_reauth is False


def test_a_store_that_took_the_renewal_but_reported_a_failure_still_writes_it_back_to_the_file(
        linked: tuple[Pool, str, Path], anthropic: LoopbackPool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A keyring's D-Bus call can time out after the write went through. The store is tried again and
    finds the renewal already there (an equal copy, read back): that is this renewal, not another
    process's, so the tool's file still gets it (else the tool renews with the spent token). The
    failure is simulated; the store, the file and every token call are real."""
    import authpool.auth.refresh as refresh_module
    from authpool.errors import SecretError

    pool, account_id, file = linked
    monkeypatch.setattr(refresh_module, "_LAND_RETRY_CAP", 0.05)
    spent = file_login(file)["refreshToken"]
    secrets = pool.secrets
    real = secrets.swap
    tries: list[int] = []

    def lands_then_raises(account: str, old: Secret, new: Secret, generation: int) -> Secret:
        tries.append(1)
        stored = real(account, old, new, generation)
        if len(tries) == 1:
            raise SecretError("the credential store failed to write: D-Bus reply timeout")
        return stored

    monkeypatch.setattr(secrets, "swap", lands_then_raises)
    anthropic.lp.expire_access_tokens("linda")
    assert request(pool) == [(401, "refreshed"), (200, "ok")]
    assert len(tries) == 2
    assert file_login(file)["refreshToken"] == pool.secret_of(pool.get(account_id)).refresh_token != spent
    tool = Tool(file, anthropic)
    try:
        anthropic.lp.expire_access_tokens("linda")
        assert tool.do("refresh") == {"ok": True}  # the tool renews from its file, on its own schedule
    finally:
        tool.close()
    assert anthropic.lp.snapshot()["reuse_detected_count"] == 0


def test_a_file_unreadable_during_a_renewal_never_gives_back_the_token_authpool_spent(
        linked: tuple[Pool, str, Path], anthropic: LoopbackPool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file cannot be read (nor written) while authpool renews, so it keeps the token authpool just
    spent; readable again, it must not be taken for a renewal by the tool. authpool remembers the last
    tokens it spent for this login. The unreadable file is simulated (as root, no permission refuses)."""
    import authpool.auth.refresh as refresh_module
    from authpool.errors import InvalidInput

    pool, account_id, file = linked
    anthropic.lp.expire_access_tokens("linda")
    assert request(pool) == [(401, "refreshed"), (200, "ok")]
    in_step = file_login(file)["refreshToken"]

    def unreadable(*args: object) -> None:
        raise InvalidInput(f"cannot read the linked file {file}: Permission denied")

    for name in ("read_login", "changed_since", "write_login"):
        monkeypatch.setattr(refresh_module, name, unreadable)
    anthropic.lp.expire_access_tokens("linda")
    assert request(pool) == [(401, "refreshed"), (200, "ok")]
    assert file_login(file)["refreshToken"] == in_step  # spent now
    monkeypatch.undo()
    anthropic.lp.expire_access_tokens("linda")
    assert request(pool) == [(401, "refreshed"), (200, "ok")]
    assert anthropic.lp.snapshot()["reuse_detected_count"] == 0
    assert pool.get(account_id).needs_reauth is False


def test_unlink_stops_writing_the_file_and_both_keep_their_login(
        linked: tuple[Pool, str, Path], anthropic: LoopbackPool) -> None:
    pool, account_id, file = linked
    r = run_cli("accounts", "unlink", "anthropic/linda")
    assert r.returncode == 0 and "unlinked anthropic/linda" in r.stdout, r.stderr
    before = file.read_text()
    anthropic.lp.expire_access_tokens("linda")
    assert request(pool) == [(401, "refreshed"), (200, "ok")]
    assert file.read_text() == before
    assert pool.get(account_id).link is None


# -- what the commands say ----------------------------------------------------------------------------


def test_accounts_list_and_doctor_show_each_link_and_whether_it_is_in_step(
        linked: tuple[Pool, str, Path], anthropic: LoopbackPool) -> None:
    _pool, _account_id, file = linked
    listing = run_cli("accounts", "list")
    assert "LINKED TO" in listing.stdout and str(file) in listing.stdout, listing.stdout
    view = json.loads(run_cli("accounts", "list", "--json").stdout)["accounts"][0]
    assert view["linked_to"] == f"claude-code: {file}"
    doctor = run_cli("doctor")
    assert f"linked login: anthropic/linda <-> claude-code ({file}): in step" in doctor.stdout, doctor.stdout
    os.rename(file, file.with_suffix(".gone"))
    doctor = run_cli("doctor")
    assert "[ warn] linked login" in doctor.stdout and "is gone" in doctor.stdout, doctor.stdout
    assert_no_secrets([listing.stdout, doctor.stdout, doctor.stderr], anthropic.secrets())


def test_a_file_that_is_gone_never_stops_authpool_renewing_its_own_copy(
        linked: tuple[Pool, str, Path], anthropic: LoopbackPool) -> None:
    pool, _account_id, file = linked
    file.unlink()
    anthropic.lp.expire_access_tokens("linda")
    assert request(pool) == [(401, "refreshed"), (200, "ok")]


def test_import_link_names_what_it_cannot_link(anthropic: LoopbackPool) -> None:
    r = run_cli("import", "env", "--link")
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [
        "authpool: error: --link keeps a tool's credential file in step; env has none "
        "(linkable: claude-code, codex, gemini, opencode)"]


def test_an_api_key_account_is_never_linked(anthropic: LoopbackPool, tmp_path: Path) -> None:
    key = anthropic.add_api_key("kim", provider="anthropic")
    doc = anthropic.lp.add_oauth_account("kim")
    anthropic.handed_out += [doc["access_token"], doc["refresh_token"]]
    file = claude_file(tmp_path / "c.json", doc)
    with pytest.raises(InvalidInput, match="API-key account"):
        anthropic.pool.link(key.id, LinkedFile(source="claude-code", path=str(file)))


def test_a_codex_file_gets_the_new_tokens_and_last_refresh_and_keeps_everything_else(tmp_path: Path) -> None:
    """The Codex CLI keeps no expiry (the token's claim says it) but judges staleness by last_refresh."""
    file = tmp_path / "auth.json"
    file.write_text(json.dumps({"OPENAI_API_KEY": None, "last_refresh": "2026-01-01T00:00:00Z", "tokens": {
        "id_token": "old-id", "access_token": "old-access", "refresh_token": "old-refresh", "account_id": "acct-1"}}))
    file.chmod(0o600)
    link = LinkedFile(source="codex", path=str(file))
    seen = read_login(link)
    renewed = Secret(kind="oauth", access_token="new-access", refresh_token="new-refresh",
                     expires_at=time.time() + 3600, extra={"id_token": "new-id", "account_id": "acct-1"})
    assert write_login(link, renewed, seen) is None
    doc = json.loads(file.read_text())
    assert doc["tokens"] == {"id_token": "new-id", "access_token": "new-access", "refresh_token": "new-refresh",
                             "account_id": "acct-1"}
    assert doc["OPENAI_API_KEY"] is None and doc["last_refresh"] > "2026-01-01T00:00:00Z"
    assert "expires" not in json.dumps(doc), "no field the Codex CLI does not write is added"
