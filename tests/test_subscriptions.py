"""Subscription logins against the endpoints they really work with: ChatGPT's Codex backend and
GitHub Copilot's token exchange.

The loopback provider plays both: ``/backend-api/codex/responses`` wants the login's
``chatgpt-account-id`` beside its token, and ``/copilot_internal/v2/token`` turns a GitHub login
into short-lived Copilot tokens, the only tokens its API accepts for that login.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest

from authpool import InvalidInput, RequestFailed, TokenSet
from authpool.server.loopback import LoopbackProvider, account_id_of
from tests.conftest import LoopbackPool, assert_no_secrets, home_texts

CHAT = "/v1/chat/completions"
BODY = {"model": "loopback-small", "messages": []}


def trail(response: httpx2.Response) -> list[tuple[str, int | None, str]]:
    return [(a.account.split("/")[1], a.status, a.outcome) for a in response.extensions["authpool"].attempts]


def login(acme: LoopbackPool, subject: str, **extra: str) -> TokenSet:
    """A fresh loopback login of ``subject`` (with ``extra`` kept beside its tokens)."""
    doc = acme.lp.add_oauth_account(subject)
    acme.handed_out += [doc["access_token"], doc["refresh_token"]]
    parsed = TokenSet.parse(doc)
    return TokenSet(parsed.access_token, parsed.refresh_token, parsed.expires_at, extra, parsed.lifetime)


def github_login(acme: LoopbackPool, subject: str) -> TokenSet:
    """What a GitHub device login gives: one long-lived token, no refresh token."""
    tokens = login(acme, subject)
    return TokenSet(tokens.access_token, None, None)


# -- ChatGPT: the Codex backend -----------------------------------------------------------------


@pytest.fixture
def chatgpt(acme: LoopbackPool) -> LoopbackPool:
    """The built-in chatgpt provider, pointed at the loopback's Codex backend."""
    acme.configure("chatgpt", base_url=acme.lp.base_url + "/backend-api/codex")
    return acme


def test_a_chatgpt_login_sends_its_account_id_beside_its_token(chatgpt: LoopbackPool) -> None:
    """The backend answers only when chatgpt-account-id names the same login as the token."""
    chatgpt.pool.add_oauth("chatgpt", "a", login(chatgpt, "a", account_id=account_id_of("a")))
    with chatgpt.pool.sync_client("chatgpt") as client:
        r = client.post("/responses", json={"model": "gpt-5-codex", "input": "hi"})
    assert (r.status_code, r.json()["subject"], trail(r)) == (200, "a", [("a", 200, "ok")])
    assert_no_secrets(home_texts(chatgpt.home), chatgpt.secrets())


def test_a_chatgpt_login_without_its_account_id_gets_the_backend_s_refusal(chatgpt: LoopbackPool) -> None:
    """No account id stored (an old import): no header is made up; the backend's 400 is the answer."""
    chatgpt.pool.add_oauth("chatgpt", "a", login(chatgpt, "a"))
    with chatgpt.pool.sync_client("chatgpt") as client:
        r = client.post("/responses", json={"model": "gpt-5-codex", "input": "hi"})
    assert r.status_code == 400 and "chatgpt-account-id" in r.json()["detail"]


def test_a_caller_cannot_name_another_chatgpt_account(chatgpt: LoopbackPool) -> None:
    """chatgpt-account-id says whose subscription pays: the pool sets it, callers may not."""
    chatgpt.pool.add_oauth("chatgpt", "a", login(chatgpt, "a", account_id=account_id_of("a")))
    with chatgpt.pool.sync_client("chatgpt") as client, pytest.raises(InvalidInput, match="carries credentials"):
        client.post("/responses", json={}, headers={"chatgpt-account-id": "acct-someone-else"})
    assert chatgpt.lp.snapshot()["api_calls"] == 0


# -- GitHub Copilot: the token exchange ------------------------------------------------------------


@pytest.fixture
def copilot(acme: LoopbackPool) -> Iterator[LoopbackPool]:
    """The built-in github-copilot provider, its API and token exchange on the loopback."""
    acme.configure("github-copilot", base_url=acme.lp.base_url,
                   token_exchange={"url": acme.lp.base_url + "/copilot_internal/v2/token"})
    yield acme


def test_a_copilot_login_is_exchanged_once_for_an_api_token_and_reused(copilot: LoopbackPool) -> None:
    """The GitHub token never reaches the API: the first request exchanges it, the next ones reuse the result."""
    copilot.pool.add_oauth("github-copilot", "a", github_login(copilot, "a"))
    with copilot.pool.sync_client("github-copilot") as client:
        first = client.post(CHAT, json=BODY)
        second = client.post(CHAT, json=BODY)
    assert [r.json()["subject"] for r in (first, second)] == ["a", "a"]
    assert trail(first) == trail(second) == [("a", 200, "ok")]
    assert copilot.lp.exchange_stats.calls == 1
    acc = copilot.account_json("a", "github-copilot")
    assert acc["secret_generation"] == 2 and acc["needs_reauth"] is False
    assert_no_secrets(home_texts(copilot.home), copilot.secrets())


def test_an_expired_copilot_token_is_exchanged_again_and_the_request_retried(copilot: LoopbackPool) -> None:
    """A 401 with the Copilot token: one new exchange, the same account serves."""
    copilot.pool.add_oauth("github-copilot", "a", github_login(copilot, "a"))
    with copilot.pool.sync_client("github-copilot") as client:
        client.post(CHAT, json=BODY)
        copilot.lp.expire_copilot_tokens("a")
        r = client.post(CHAT, json=BODY)
    assert trail(r) == [("a", 401, "refreshed"), ("a", 200, "ok")]
    assert copilot.lp.exchange_stats.calls == 2


def test_a_github_login_the_exchange_refuses_needs_a_new_login(copilot: LoopbackPool) -> None:
    """The exchange answers 401 for the GitHub token: the account needs re-auth, the message says so."""
    copilot.pool.add_oauth("github-copilot", "a", github_login(copilot, "a"))
    copilot.lp.expire_access_tokens("a")  # the GitHub login itself is gone
    with copilot.pool.sync_client("github-copilot") as client, pytest.raises(RequestFailed) as info:
        client.post(CHAT, json=BODY)
    assert "the token exchange refused its login" in str(info.value)
    assert "`authpool login github-copilot --label a`" in str(info.value)
    assert copilot.account_json("a", "github-copilot")["needs_reauth"] is True


def test_requests_go_to_the_endpoint_the_exchange_named_when_it_is_one_of_the_provider_s_origins(
    copilot: LoopbackPool,
) -> None:
    """A business plan's token names its own endpoint: requests go there, and only if it is configured."""
    with LoopbackProvider() as business:
        copilot.lp.copilot_api = business.base_url
        copilot.pool.add_oauth("github-copilot", "a", github_login(copilot, "a"))
        with copilot.pool.sync_client("github-copilot") as client, pytest.raises(RequestFailed) as info:
            client.post(CHAT, json=BODY)
        assert f"named the endpoint {business.base_url}, not one of github-copilot's origins" in str(info.value)
        assert business.snapshot()["calls_by_path"] == {}
        copilot.configure("github-copilot", origins=[business.base_url])
        # The business endpoint does not know tokens the loopback minted: it refuses them, but it
        # is where the requests went.
        with copilot.pool.sync_client("github-copilot") as client, pytest.raises(RequestFailed):
            client.post(CHAT, json=BODY)
        assert business.snapshot()["calls_by_path"][CHAT] >= 1
        assert copilot.lp.snapshot()["calls_by_path"].get(CHAT) is None


def test_a_codex_login_without_an_account_id_field_takes_it_from_its_token_s_claim(tmp_path: object) -> None:
    """Older auth.json files have no tokens.account_id: the id token's OpenAI claim names the account."""
    import base64
    import json
    from pathlib import Path

    from authpool.importers import scan_source

    def jwt(claims: dict[str, object]) -> str:
        part = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        return f"eyJhbGciOiJub25lIn0.{part}.FAKE"

    id_token = jwt({"email": "c@example.com", "https://api.openai.com/auth": {"chatgpt_account_id": "acct-FAKE-7"}})
    path = Path(str(tmp_path)) / "auth.json"
    path.write_text(json.dumps({"tokens": {"access_token": jwt({"exp": 1_900_000_000}), "id_token": id_token,
                                           "refresh_token": "FAKE-refresh"}}))
    (candidate,) = scan_source("codex", path).candidates
    assert (candidate.provider, candidate.tokens.extra["account_id"]) == ("chatgpt", "acct-FAKE-7")
