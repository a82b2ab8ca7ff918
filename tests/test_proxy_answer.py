"""What proxy_request does with a request and an answer besides sending: the URL it resolves, the
headers it adds, and the credential it scrubs from an answer that echoes it."""

from __future__ import annotations

import json

import pytest

from authpool import InvalidInput, OriginRefused
from authpool.providers.provider import Provider
from authpool.server.mcp.proxy import ProxyCall, _scrub, run_proxy
from tests.conftest import LoopbackPool

KEY = "sk-test/echo+key=="  # a slash, a plus and padding: the characters encoders escape


# -- resolving a path ---------------------------------------------------------------------------


def test_a_path_resolves_against_the_provider_s_current_base_url() -> None:
    old = Provider(id="acme", base_url="https://api.acme.test/v1")
    new = Provider(id="acme", base_url="https://eu.acme.test/v1")
    assert old.resolve_url("/messages") == "https://api.acme.test/v1/messages"
    # The same id and path with another configuration is another answer, never the kept one.
    assert new.resolve_url("/messages") == "https://eu.acme.test/v1/messages"
    assert old.resolve_url("/messages") == "https://api.acme.test/v1/messages"


def test_an_origin_added_in_the_configuration_is_accepted_at_once() -> None:
    before = Provider(id="acme", base_url="https://api.acme.test")
    with pytest.raises(OriginRefused):
        before.resolve_url("https://files.acme.test/upload")
    after = Provider(id="acme", base_url="https://api.acme.test", origins=["https://files.acme.test:443"])
    assert after.resolve_url("https://files.acme.test/upload") == "https://files.acme.test/upload"
    with pytest.raises(OriginRefused):  # and the first configuration still refuses it
        before.resolve_url("https://files.acme.test/upload")


def test_a_refused_path_is_refused_every_time() -> None:
    provider = Provider(id="acme", base_url="https://api.acme.test/v1")
    for _ in range(3):
        with pytest.raises(OriginRefused):
            provider.resolve_url("/../admin")
        with pytest.raises(InvalidInput):
            provider.resolve_url("/v1/x\r\nHost: evil")


def test_a_long_path_is_checked_without_being_kept() -> None:
    provider = Provider(id="acme", base_url="https://api.acme.test/v1")
    long_path = "/files/" + "a" * 2000
    assert provider.resolve_url(long_path) == "https://api.acme.test/v1" + long_path
    with pytest.raises(OriginRefused):
        provider.resolve_url("/%2e%2e/" + "a" * 2000)


# -- what the request carries -----------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_proxy_request_sends_an_agent_and_the_encodings_it_reads(acme: LoopbackPool) -> None:
    acme.add_api_key("k")
    outcome = await run_proxy(acme.pool, ProxyCall(provider="acme", method="GET", path="/echo-request",
                                                   headers={"x-note": "hi"}))
    assert outcome.status == 200, outcome.body
    seen = [name.lower() for name in outcome.body["headers"]]
    assert {"user-agent", "accept", "accept-encoding", "x-note", "authorization"} <= set(seen), seen


@pytest.mark.anyio
async def test_a_caller_s_own_user_agent_replaces_authpool_s(acme: LoopbackPool) -> None:
    acme.add_api_key("k")
    outcome = await run_proxy(acme.pool, ProxyCall(provider="acme", method="GET", path="/echo-request",
                                                   headers={"User-Agent": "my-editor/2"}))
    assert [name.lower() for name in outcome.body["headers"]].count("user-agent") == 1, outcome.body


# -- scrubbing an echoed credential ---------------------------------------------------------------


@pytest.fixture
def keyed(acme: LoopbackPool) -> tuple[LoopbackPool, str]:
    return acme, acme.add_api_key("k", KEY).id


@pytest.mark.parametrize("wire", [
    KEY,  # as it is
    json.dumps(KEY)[1:-1].replace("/", "\\/"),  # slashes escaped, as PHP and some JSON encoders write them
    "".join(f"\\u{ord(c):04x}" for c in KEY),  # every character \u-escaped
], ids=["plain", "escaped-slashes", "unicode-escapes"])
def test_an_echoed_key_is_redacted_however_the_json_spells_it(keyed: tuple[LoopbackPool, str], wire: str) -> None:
    acme, account_id = keyed
    raw = ('{"error": {"message": "bad key ' + wire + '"}}').encode()
    scrubbed = _scrub(json.loads(raw), raw, acme.pool, account_id)
    assert KEY not in json.dumps(scrubbed, ensure_ascii=False)
    assert "<redacted>" in scrubbed["error"]["message"]


def test_an_echoed_key_in_a_text_answer_is_redacted(keyed: tuple[LoopbackPool, str]) -> None:
    acme, account_id = keyed
    raw = f"invalid key {KEY}".encode()
    assert _scrub(raw.decode(), raw, acme.pool, account_id) == "invalid key <redacted>"


def test_an_answer_without_the_key_is_returned_as_it_is(keyed: tuple[LoopbackPool, str]) -> None:
    acme, account_id = keyed
    raw = b'{"content": [{"type": "text", "text": "sk-test/echo is only part of it"}]}'
    body = json.loads(raw)
    assert _scrub(body, raw, acme.pool, account_id) is body
