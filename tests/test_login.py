"""Logging in: `authpool login` (browser + PKCE, --paste, --device) and the start/finish_login MCP tools.

Everything runs for real: the provider is a LoopbackProvider socket server, the CLI is a
subprocess whose stderr the test reads like a person would (the URL, the code), the test plays
the browser with an HTTP client, and the MCP tools are called through the official client on
the server in memory. Every test ends by scanning what was printed and written for the
tokens, codes and id_tokens the loopback issued.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from authpool import Pool
from authpool.auth.login import read_login_tokens
from authpool.auth.redirect import RedirectListener
from authpool.providers.provider import Provider
from authpool.server.loopback import LoopbackProvider
from tests.conftest import REPO, assert_no_secrets, home_texts, raw_pool, run_cli, write_config
from tests.mcp_support import ServerLog, memory_session

URL_RE = r"(http://127\.0\.0\.1:\d+/authorize\?\S+)"
CODE_RE = r"code: (\S+)"


@pytest.fixture
def lp() -> Iterator[LoopbackProvider]:
    """A loopback provider whose device codes may be polled every 50 ms."""
    with LoopbackProvider(device_interval=0.05, device_ttl=30) as p:
        yield p


@pytest.fixture
def acme(home: Path, lp: LoopbackProvider) -> Path:
    """The test home with provider ``acme`` on the loopback, every login endpoint configured."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_config(home, {"acme": {
        "base_url": lp.base_url,
        "oauth": {"token_url": lp.token_url, "authorize_url": lp.base_url + "/authorize",
                  "device_authorization_url": lp.base_url + "/oauth/device", "client_id": lp.client_id},
    }})
    return home


class Login:
    """`authpool login ARGS` running as a subprocess; stderr is read as it arrives."""

    def __init__(self, *args: str, stdin: bool = False) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "authpool.server.cli", "login", *args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env, cwd=REPO,
        )
        self._lines: list[str] = []
        self._eof = False
        self._cond = threading.Condition()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()  # raw reads: a prompt has no newline to wait for
        while chunk := os.read(fd, 65536):
            with self._cond:
                self._lines.append(chunk.decode(errors="replace"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def expect(self, pattern: str, timeout: float = 15) -> str:
        """The first group of ``pattern`` once it shows up on stderr."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = re.search(pattern, "".join(self._lines))
                if m:
                    return m.group(1)
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    self.proc.kill()
                    raise AssertionError(f"{pattern!r} never appeared on stderr: {''.join(self._lines)!r}")
                self._cond.wait(left)

    def stderr_so_far(self) -> str:
        """What the login printed on stderr up to now."""
        with self._cond:
            return "".join(self._lines)

    def finish(self, paste: str | None = None, timeout: float = 15) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) once the process ends."""
        if paste is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(paste)
            self.proc.stdin.close()
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._pump.join(5)
        assert self.proc.stdout is not None
        return rc, self.proc.stdout.read(), "".join(self._lines)


def browser() -> httpx2.Client:
    """The test's stand-in for a browser (no proxies from the environment)."""
    return httpx2.Client(trust_env=False, timeout=10)


def browser_login(*args: str) -> tuple[int, str, str, httpx2.Response]:
    """Run a browser login to the end: read the URL, follow /authorize back to the CLI's listener."""
    login = Login("acme", "--no-browser", *args)
    url = login.expect(URL_RE)
    with browser() as b:
        page = b.get(url, follow_redirects=True)
    return (*login.finish(), page)


def accounts(home: Path) -> list[dict[str, Any]]:
    return list(raw_pool(home)["accounts"]) if (home / "pool.db").exists() else []


def leaked(lp: LoopbackProvider) -> list[str]:
    return [*lp.issued_secrets(), *lp.issued_login_secrets()]


def assert_clean(lp: LoopbackProvider, home: Path, *outputs: str) -> None:
    """No token, refresh token, code or id_token the loopback issued is in the outputs or home files."""
    assert_no_secrets([*outputs, *home_texts(home)], leaked(lp))


def one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("authpool: error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    return errors[0]


def request_subject(home: Path, label: str) -> str:
    """Send one API request through the pool pinned to ``acme/label``; the subject that served it."""
    pool = Pool.open(home)
    try:
        with pool.sync_client("acme", account=f"acme/{label}") as client:
            r = client.get("/v1/models")
        assert r.status_code == 200
        return str(r.json()["subject"])
    finally:
        pool.close()


# -- authorization code + PKCE -------------------------------------------------------------------


def test_a_browser_login_adds_an_account_that_serves_requests(acme: Path, lp: LoopbackProvider) -> None:
    """The redirect comes back to 127.0.0.1, the account is labelled by the id_token's email and works."""
    lp.set_login("alice@example.com")
    rc, out, err, page = browser_login()
    assert rc == 0, err
    assert page.status_code == 200 and "close this window" in page.text
    assert re.fullmatch(r"logged in: added acme/alice@example\.com \(id \w{8}\)\n", out)
    assert "code_challenge_method=S256" in err and "state=" in err
    [acc] = accounts(acme)
    assert (acc["label"], acc["kind"], acc["secret_generation"]) == ("alice@example.com", "oauth", 1)
    assert request_subject(acme, "alice@example.com") == "alice@example.com"
    assert_clean(lp, acme, out, err, page.text)


@pytest.mark.parametrize("form", ["redirect URL", "code#state", "bare code"])
def test_a_paste_login_accepts_the_redirect_url_or_the_code(acme: Path, lp: LoopbackProvider, form: str) -> None:
    """With --paste, the address the browser landed on (or just the code) completes the login."""
    login = Login("acme", "--paste", "--json", stdin=True)
    url = login.expect(URL_RE)
    login.expect(r"(Paste it)")
    with browser() as b:
        location = b.get(url).headers["location"]  # the browser is sent here; nothing listens
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    pasted = {"redirect URL": location, "code#state": f"{params['code']}#{params['state']}",
              "bare code": params["code"]}[form]
    rc, out, err = login.finish(paste=f"  {pasted}\n")
    assert rc == 0, err
    view = json.loads(out)
    assert view == {"id": view["id"], "name": "acme/user@loopback.test", "created": True}
    assert request_subject(acme, "user@loopback.test") == "user@loopback.test"
    assert_clean(lp, acme, err)  # stdout is the JSON above: no secret in it either
    assert_no_secrets(out, leaked(lp))


def test_two_logins_make_two_accounts(acme: Path, lp: LoopbackProvider) -> None:
    """Without a label or an identity from the provider, each login becomes a new account-N."""
    lp.set_login("anon-1", identity=False)
    first = browser_login("--json")
    lp.set_login("anon-2", identity=False)
    second = browser_login("--json")
    assert first[0] == second[0] == 0, (first[2], second[2])
    a, b = json.loads(first[1]), json.loads(second[1])
    assert (a["name"], b["name"]) == ("acme/account-1", "acme/account-2") and a["id"] != b["id"]
    assert a["created"] is b["created"] is True
    assert request_subject(acme, "account-1") == "anon-1"
    assert request_subject(acme, "account-2") == "anon-2"
    assert_clean(lp, acme, *first[1:3], *second[1:3])


def test_logging_in_again_as_an_existing_label_replaces_its_tokens_and_keeps_its_history(
    acme: Path, lp: LoopbackProvider
) -> None:
    """A second login with --label work keeps the account's id and counters and serves as the new login."""
    lp.set_login("old@example.com")
    rc, out, err, _ = browser_login("--label", "work")
    assert rc == 0, err
    assert request_subject(acme, "work") == "old@example.com"
    before = accounts(acme)[0]
    assert before["counters"]["requests"] == 1
    lp.set_login("new@example.com")
    rc, out2, err2, _ = browser_login("--label", "work")
    assert rc == 0, err2
    assert out2 == f"logged in again: new tokens for acme/work (id {before['id']}); its history is kept\n"
    [after] = accounts(acme)
    assert after["id"] == before["id"] and after["created_at"] == before["created_at"]
    assert after["counters"] == before["counters"]
    assert after["secret_generation"] == before["secret_generation"] + 1
    assert request_subject(acme, "work") == "new@example.com"
    assert_clean(lp, acme, out, err, out2, err2)


def test_a_redirect_with_the_wrong_state_is_refused_and_stores_nothing(acme: Path, lp: LoopbackProvider) -> None:
    """A redirect carrying another login's state gets an error page; the CLI fails; the pool file is untouched."""
    lp.set_login("first@example.com")
    assert browser_login()[0] == 0
    pool_file = raw_pool(acme)
    login = Login("acme", "--no-browser")
    url = login.expect(URL_RE)
    with browser() as b:
        location = b.get(url).headers["location"]
        forged = re.sub(r"state=[^&]+", "state=forged-state", location)
        page = b.get(forged)
    rc, out, err = login.finish()
    assert page.status_code == 400 and "state does not match" in page.text
    assert rc == 1 and out == ""
    assert "refused a redirect whose state does not match this login" in one_error_line(err)
    assert "nothing was stored" in err
    assert raw_pool(acme) == pool_file
    assert_clean(lp, acme, out, err, page.text)


def test_access_denied_in_the_browser_cancels_the_login(acme: Path, lp: LoopbackProvider) -> None:
    """error=access_denied on the redirect ends the login with a clear error and no account."""
    lp.set_login(deny=True)
    rc, out, err, page = browser_login()
    assert rc == 1 and out == ""
    assert "the login was denied at acme (access_denied); nothing was stored" in one_error_line(err)
    assert page.status_code == 400
    assert accounts(acme) == []


def test_a_login_that_never_comes_back_times_out_and_stores_nothing(acme: Path, lp: LoopbackProvider) -> None:
    """--timeout bounds the wait for the redirect; the error says how to wait longer."""
    login = Login("acme", "--no-browser", "--timeout", "0.5")
    rc, out, err = login.finish()
    assert rc == 1 and out == ""
    line = one_error_line(err)
    assert "within 0.5s; nothing was stored" in line and "--timeout" in line
    assert accounts(acme) == []


def test_ctrl_c_cancels_a_login_and_stores_nothing(acme: Path, lp: LoopbackProvider) -> None:
    """SIGINT while waiting for the browser exits 130 with one line, and the listener's port is released."""
    login = Login("acme", "--no-browser")
    url = login.expect(URL_RE)
    login.expect(r"(Waiting up to)")
    login.proc.send_signal(signal.SIGINT)
    rc, out, err = login.finish()
    assert rc == 130 and out == ""
    assert "login cancelled; nothing was stored" in one_error_line(err)
    assert accounts(acme) == []
    port = int(re.search(r"127\.0\.0\.1%3A(\d+)", url).group(1))  # type: ignore[union-attr]
    with pytest.raises(httpx2.ConnectError), browser() as b:
        b.get(f"http://127.0.0.1:{port}/callback?code=x&state=y")


def test_the_redirect_listener_answers_only_its_path_on_the_loopback_address() -> None:
    """Other paths get 404, other Host names 400, a request without code/error 400; then one redirect ends it."""
    with RedirectListener[str](port=0, path="/cb") as listener:
        listener.serve(lambda params: params["code"])
        base = listener.redirect_uri.rsplit("/", 1)[0]
        with browser() as b:
            assert b.get(base + "/favicon.ico").status_code == 404
            assert b.get(listener.redirect_uri + "?code=c1", headers={"host": "evil.example"}).status_code == 400
            assert b.get(listener.redirect_uri).status_code == 400
            assert listener.wait(0.01) is None
            assert b.get(listener.redirect_uri + "?code=c1&state=s").status_code == 200
            assert listener.wait(1) == "c1"
            assert b.get(listener.redirect_uri + "?code=c2").status_code == 410


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "flags", "key"),
    [
        ("anthropic", [], "[providers.anthropic.oauth] client_id"),
        ("noclient", [], "[providers.noclient.oauth] client_id"),
        ("noclient", ["--device"], "[providers.noclient.oauth] client_id"),
        ("acme", ["--device"], "[providers.acme.oauth] device_authorization_url"),
        ("plain", [], "[providers.plain.oauth]"),
    ],
)
def test_a_provider_without_login_settings_names_the_config_key_to_set(
    home: Path, lp: LoopbackProvider, provider: str, flags: list[str], key: str
) -> None:
    """authpool ships no client id: the error names the config.toml key, before any browser or network."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_config(home, {
        "acme": {"base_url": lp.base_url, "oauth": {"token_url": lp.token_url, "client_id": lp.client_id,
                                                     "authorize_url": lp.base_url + "/authorize"}},
        "noclient": {"base_url": lp.base_url, "oauth": {"token_url": lp.token_url,
                                                         "device_authorization_url": lp.base_url + "/oauth/device"}},
        "plain": {"base_url": lp.base_url},
    })
    r = run_cli("login", provider, "--no-browser", *flags, timeout=20)
    assert r.returncode == 1 and r.stdout == ""
    assert key in one_error_line(r.stderr)
    assert "config.toml" in r.stderr
    assert lp.snapshot()["calls_by_path"] == {}


# -- device authorization grant -------------------------------------------------------------------


def test_a_device_login_honours_slow_down_and_completes(acme: Path, lp: LoopbackProvider) -> None:
    """Polled faster than it wants, the provider says slow_down; the CLI polls slower and gets the tokens."""
    lp.device_min_interval, lp.slow_down_step = 0.3, 0.3
    login = Login("acme", "--device", "--label", "phone")
    code = login.expect(CODE_RE)
    assert re.search(r"open http://127\.0\.0\.1:\d+/device on any device", login.stderr_so_far())
    lp.approve_device(code, "frank@example.com")
    rc, out, err = login.finish()
    assert rc == 0, err
    assert out.startswith("logged in: added acme/phone (id ")
    assert "poll less often: now every 0.35s" in err
    assert lp.device_answers(code) == ["slow_down", "tokens"]
    assert request_subject(acme, "phone") == "frank@example.com"
    assert_clean(lp, acme, out, err)


@pytest.mark.parametrize(
    ("outcome", "message"),
    [
        ("denied", "the login was denied at acme (access_denied); nothing was stored"),
        ("expired", "expired before the login was approved; nothing was stored"),
        ("timeout", "the login was not approved within the time allowed; nothing was stored"),
    ],
)
def test_a_device_login_that_is_denied_expires_or_times_out_stores_nothing(
    acme: Path, lp: LoopbackProvider, outcome: str, message: str
) -> None:
    """access_denied, expired_token and --timeout each end the login with their own one-line error."""
    if outcome == "expired":
        lp.device_ttl = 0.4
    login = Login("acme", "--device", *(["--timeout", "0.4"] if outcome == "timeout" else []))
    code = login.expect(CODE_RE)
    if outcome == "denied":
        lp.deny_device(code)
    rc, out, err = login.finish()
    assert rc == 1 and out == ""
    assert message in one_error_line(err)
    answers = lp.device_answers(code)
    assert answers[-1] == {"denied": "access_denied", "expired": "expired_token"}.get(outcome, answers[-1])
    assert accounts(acme) == []
    assert_clean(lp, acme, out, err)


# -- MCP: start_login / finish_login (the server in memory) ----------------------------------------


def test_a_device_login_through_the_mcp_tools_reports_progress_and_returns_no_token(
    acme: Path, lp: LoopbackProvider
) -> None:
    """start_login gives URL and code; finish_login waits (progress), stores the account and returns its view."""
    lp.set_login("grace@example.com")
    log = ServerLog()
    results: list[str] = []
    notes: list[tuple[float, float | None, str | None]] = []
    user_code: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append((progress, total, message))
        if len(notes) == 2:  # finish_login is polling and has reported it: now the user approves
            lp.approve_device(user_code[0])

    async def scenario() -> None:
        async with memory_session(acme, log) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"start_login", "finish_login"} <= names
            started = await client.call_tool("start_login", {"provider": "acme"})
            assert not started.is_error, started.content
            s = started.structured_content
            assert s is not None and set(s) == {"login_id", "provider", "verification_uri",
                                                "verification_uri_complete", "user_code", "expires_at",
                                                "interval"}
            assert s["verification_uri"] == lp.base_url + "/device" and s["interval"] == 0.05
            results.append(json.dumps(started.model_dump(mode="json")))

            early = await client.call_tool("finish_login", {"login_id": s["login_id"], "timeout_s": 0.3})
            assert early.is_error and "still waiting" in early.content[0].text  # type: ignore[union-attr]
            assert s["user_code"] in early.content[0].text  # type: ignore[union-attr]

            user_code.append(s["user_code"])
            done = await client.call_tool("finish_login", {"login_id": s["login_id"]}, progress_callback=on_progress)
            assert not done.is_error, done.content
            assert done.structured_content is not None
            view = done.structured_content
            assert view == {"id": view["id"], "name": "acme/grace@example.com", "created": True}
            results.append(json.dumps(done.model_dump(mode="json")))

            again = await client.call_tool("finish_login", {"login_id": s["login_id"]})
            assert again.is_error and "unknown login_id" in again.content[0].text  # type: ignore[union-attr]
            results.append(json.dumps(again.model_dump(mode="json")))

    anyio.run(scenario)
    assert len(notes) >= 2
    assert all("waiting for the user to open" in (m or "") for _, _, m in notes)
    assert [p for p, _, _ in notes] == sorted(p for p, _, _ in notes)
    assert request_subject(acme, "grace@example.com") == "grace@example.com"
    server_log = log.text()
    assert "Traceback" not in server_log
    assert_clean(lp, acme, *results, server_log)


# -- labels ---------------------------------------------------------------------------------------


def _jwt(claims: dict[str, Any]) -> str:
    import base64

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


@pytest.mark.parametrize(
    ("extra", "label"),
    [
        ({"id_token": _jwt({"sub": "u-1", "email": "ann@example.com"})}, "ann@example.com"),
        ({"id_token": _jwt({"sub": "u-1"})}, "u-1"),
        ({"account": {"email_address": "bo@example.com", "uuid": "acc-9"}}, "bo@example.com"),
        ({"account": {"uuid": "acc-9"}}, "acc-9"),
        ({"email": "cy@example.com", "subject": "s-2"}, "cy@example.com"),
        ({"subject": "s-2"}, "s-2"),
        ({"id_token": "not-a-jwt", "subject": "a/b"}, None),
        ({}, None),
    ],
)
def test_the_default_label_is_the_email_or_user_id_the_provider_reports(extra: dict[str, Any],
                                                                        label: str | None) -> None:
    """Emails win over ids; ids that cannot be labels are skipped; id_token and account id are kept as secrets."""
    provider = Provider(id="acme")
    body = json.dumps({"access_token": "at", "refresh_token": "rt", "expires_in": 60, **extra}).encode()
    login = read_login_tokens(provider, httpx2.Response(200, content=body,
                                                        headers={"content-type": "application/json"}))
    assert login.identity == label
    assert login.tokens.access_token == "at"
    if "id_token" in extra:
        assert login.tokens.extra["id_token"] == extra["id_token"]
    if isinstance(extra.get("account"), dict):
        assert login.tokens.extra["account_id"] == "acc-9"
    assert "at" not in repr(login) and "rt" not in repr(login)


def test_a_login_never_takes_over_an_api_key_account(home: Path) -> None:
    """The user's name taken by an API-key account: the login becomes account-1; an explicit label is refused."""
    from authpool import InvalidInput, TokenSet
    from authpool.auth.login import LoginTokens, store_login

    pool = Pool.open(home)
    try:
        key = pool.add_api_key("openai", "ann@example.com", "sk-test-key")
        login = LoginTokens(TokenSet("at-1", "rt-1", None), identity="ann@example.com")
        result = store_login(pool, "openai", login)
        assert (result.account.label, result.created) == ("account-1", True)
        with pytest.raises(InvalidInput, match="API-key account"):
            store_login(pool, "openai", login, label="ann@example.com")
        assert pool.get(key.id).kind == "api_key" and pool.get(key.id).secret_generation == 1
    finally:
        pool.close()
