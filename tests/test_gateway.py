"""`authpool gateway` as clients meet it: the official SDKs, curl and raw HTTP against a real gateway process.

One gateway process serves the whole module, on a home whose providers all live on one
LoopbackProvider; each test uses providers of its own (``oai``, ``ant``, ...) so rate limits and
cooldowns of one test never reach another. Streams that must be "in the middle" are held at the
provider between events (``hold_streams``) until the test releases them; no test measures time.
Every response and every line the gateway logged is scanned for secrets at the end of the module.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator

import anthropic
import httpx2
import openai
import pytest

from authpool import Pool
from authpool.server.loopback import LoopbackProvider
from tests.conftest import assert_no_secrets, home_texts
from tests.gateway_support import DEADLINE, Gateway, Transcript, raw_request, wait_until
from tests.mcp_support import Lab, pool_env

SDK_PROVIDERS = ["oai", "oais", "ant", "ants"]  # each: account X/X-a rate-limited, X/X-b serving
PROVIDERS = [*SDK_PROVIDERS, "curl", "many", "gone", "keys", "web", "size", "esc", "cool", "opts"]
MODEL = "loopback-small"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
MESSAGE = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
TRANSCRIPT = Transcript()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lp = LoopbackProvider().start()
    try:
        lab = Lab(tmp_path_factory.mktemp("gateway") / "home", lp, PROVIDERS)
        for provider in SDK_PROVIDERS:
            lab.add_oauth(provider, f"{provider}-a", f"{provider}-b")
            lp.set_rate_limit(f"{provider}-a", 0, retry_after=3600)  # the first account answers 429
        for provider in ("curl", "many", "gone", "keys", "web", "size", "esc"):
            lab.add_oauth(provider, f"{provider}-1")
        lab.add_oauth("cool", "cool-1")
        lab.add_oauth("opts", "opts-1", "opts-2")
        lab.add_oauth("opts", "opts-3")
        yield lab
    finally:
        lp.stop()


@pytest.fixture(scope="module")
def gateway(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(lab.home, tmp_path_factory.mktemp("gateway-run"))
    try:
        yield gw
    finally:
        gw.stop()
        TRANSCRIPT.add(gw.stderr())


@pytest.fixture(scope="module")
def key(lab: Lab, gateway: Gateway) -> str:
    """The gateway key, as `authpool gateway key` prints it."""
    r = lab.cli("gateway", "key")
    assert r.returncode == 0, r.stderr
    TRANSCRIPT.add(r.stderr)
    return r.stdout.strip()


@pytest.fixture
def client(gateway: Gateway, key: str) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=gateway.url, headers={"x-api-key": key}, timeout=DEADLINE) as c:
        yield c


def release_the_preamble(lp: LoopbackProvider) -> None:
    """Let a held Anthropic stream send message_start and content_block_start; it then holds after its first delta.

    The events before the first content event are held back by the pool until that event comes (an
    error there still rotates to another account), so a client sees nothing before it.
    """
    for _ in range(2):
        assert lp.wait_for_held_streams(1, DEADLINE)
        lp.release_streams(1)
    assert lp.wait_for_held_streams(1, DEADLINE)


def subject_of(text: str) -> str:
    return str(json.loads(text)["subject"])


# -- the official SDKs ---------------------------------------------------------------------------------


def test_the_openai_sdk_gets_one_normal_answer_from_the_second_account(gateway: Gateway, key: str) -> None:
    """OpenAI's SDK on /oai/v1: the first account's 429 stays inside the gateway; the answer names the second."""
    sdk = openai.OpenAI(base_url=f"{gateway.url}/oai/v1", api_key=key, max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    TRANSCRIPT.response(raw.http_response)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from oai-b."
    assert (raw.headers["x-authpool-account"], raw.headers["x-authpool-attempts"]) == ("oai/oai-b", "2")


def test_the_openai_sdk_streams_through_the_gateway_from_the_second_account(gateway: Gateway, key: str) -> None:
    """A streamed chat completion arrives chunk by chunk from the second account, the 429 rotated away."""
    sdk = openai.OpenAI(base_url=f"{gateway.url}/oais/v1", api_key=key, max_retries=0)
    with sdk.chat.completions.with_streaming_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True) as raw:
        assert (raw.headers["x-authpool-account"], raw.headers["x-authpool-attempts"]) == ("oais/oais-b", "2")
        chunks = list(raw.parse())
        TRANSCRIPT.add(repr(raw.headers))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from oais-b."
    TRANSCRIPT.add(text)


def test_the_anthropic_sdk_gets_one_normal_answer_from_the_second_account(gateway: Gateway, key: str) -> None:
    """Anthropic's SDK (the key as x-api-key) on /ant: one message, served by the second account."""
    sdk = anthropic.Anthropic(base_url=f"{gateway.url}/ant", api_key=key, max_retries=0)
    raw = sdk.messages.with_raw_response.create(**MESSAGE)
    TRANSCRIPT.response(raw.http_response)
    message = raw.parse()
    assert message.content[0].text == "Hello from ant-b."  # type: ignore[union-attr]
    assert (raw.headers["x-authpool-account"], raw.headers["x-authpool-attempts"]) == ("ant/ant-b", "2")


def test_the_anthropic_sdk_streams_through_the_gateway_from_the_second_account(gateway: Gateway, key: str) -> None:
    """messages.stream() gets every event from the second account and assembles the full message."""
    sdk = anthropic.Anthropic(base_url=f"{gateway.url}/ants", api_key=key, max_retries=0)
    with sdk.messages.stream(**MESSAGE) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        headers = stream.response.headers
    TRANSCRIPT.add(repr(headers) + text)
    assert text == "Hello from ants-b." and final.stop_reason == "end_turn"
    assert (headers["x-authpool-account"], headers["x-authpool-attempts"]) == ("ants/ants-b", "2")


def test_all_accounts_cooling_is_a_429_with_retry_after_in_each_sdk_s_error_shape(gateway: Gateway, key: str,
                                                                                lab: Lab) -> None:
    """Every account rate-limited: 429, Retry-After, and a JSON error each SDK reads as its RateLimitError."""
    lab.lp.set_rate_limit("cool-1", 0, retry_after=3600)
    ant = anthropic.Anthropic(base_url=f"{gateway.url}/cool", api_key=key, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as caught:
        ant.messages.create(**MESSAGE)
    response = TRANSCRIPT.response(caught.value.response)
    assert 3000 < int(response.headers["retry-after"]) <= 3600
    assert response.json()["type"] == "error" and response.json()["error"]["type"] == "rate_limit_error"
    assert "cool-1" in caught.value.message and "cooling" in caught.value.message
    oai = openai.OpenAI(base_url=f"{gateway.url}/cool/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as oai_caught:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    response = TRANSCRIPT.response(oai_caught.value.response)
    assert response.json()["error"]["code"] == "all_cooling" and "retry-after" in response.headers


# -- streams --------------------------------------------------------------------------------------------


def test_curl_shows_a_stream_event_by_event_as_the_provider_sends_it(gateway: Gateway, key: str, lab: Lab) -> None:
    """`curl -N`: the first content event arrives while the provider holds the rest, then each one as it is sent."""
    if shutil.which("curl") is None:
        if os.environ.get("AUTHPOOL_REQUIRE_CURL"):
            pytest.fail("curl is required here (AUTHPOOL_REQUIRE_CURL) but not installed")
        pytest.skip("curl is not installed")
    lab.lp.hold_streams()
    before = lab.lp.snapshot()["streams_finished"]
    proc = subprocess.Popen(["curl", "-N", "-sS", "-H", f"x-api-key: {key}", "-H", "content-type: application/json",
                             "--data", json.dumps({**MESSAGE, "stream": True}), f"{gateway.url}/curl/v1/messages"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    events: queue.Queue[str] = queue.Queue()
    seen: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(b"event: "):
                events.put(line.decode().strip().removeprefix("event: "))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # The events before the first content event (message_start, content_block_start) are held back
        # until it comes: an error there still rotates to another account, as in the library.
        release_the_preamble(lab.lp)  # the first delta is out; the provider holds the rest
        seen += [events.get(timeout=DEADLINE) for _ in range(3)]
        assert seen == ["message_start", "content_block_start", "content_block_delta"]
        assert lab.lp.snapshot()["streams_finished"] == before  # the provider has not sent the last event
        while seen[-1] != "message_stop":
            assert events.empty(), "an event arrived before the provider sent it"
            # Release only once the stream waits at the gate: a release with nobody waiting lets nothing go.
            assert lab.lp.wait_for_held_streams(1, DEADLINE)
            lab.lp.release_streams(1)
            seen.append(events.get(timeout=DEADLINE))
    finally:
        lab.lp.release_streams()
    assert proc.wait(timeout=DEADLINE) == 0
    reader.join(timeout=DEADLINE)
    assert seen == ["message_start", "content_block_start", "content_block_delta", "content_block_delta",
                    "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert proc.stderr is not None
    TRANSCRIPT.add(proc.stderr.read())


def test_sixty_four_streams_are_in_flight_at_once_and_all_complete(gateway: Gateway, key: str, lab: Lab) -> None:
    """64 concurrent streams: all 64 are open at the provider together, each client has its first event, all finish."""
    n = 64
    lab.lp.hold_streams()
    before = lab.lp.snapshot()
    first: list[int] = []
    texts: dict[int, str] = {}
    all_started = asyncio.Event()

    async def one(client: httpx2.AsyncClient, i: int) -> None:
        async with client.stream("POST", "/many/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            assert r.status_code == 200 and r.headers["x-authpool-account"] == "many/many-1"
            text = ""
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    if not text and i not in first:
                        first.append(i)
                        if len(first) == n:
                            all_started.set()
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    text += delta.get("content") or ""
            texts[i] = text

    async def run() -> None:
        limits = httpx2.Limits(max_connections=n)
        async with httpx2.AsyncClient(base_url=gateway.url, headers={"x-api-key": key}, timeout=DEADLINE,
                                      limits=limits) as client:
            tasks = [asyncio.create_task(one(client, i)) for i in range(n)]
            try:
                held = await asyncio.to_thread(lab.lp.wait_for_held_streams, n, DEADLINE)
                assert held, f"only {lab.lp.held_streams()} of {n} streams were open at once"
                await asyncio.wait_for(all_started.wait(), DEADLINE)  # every client has its first event
            finally:
                lab.lp.release_streams()
            await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)

    asyncio.run(run())
    assert sorted(texts) == list(range(n)) and set(texts.values()) == {"Hello from many-1."}
    after = lab.lp.snapshot()
    assert after["streams_finished"] - before["streams_finished"] == n
    assert after["streams_cut"] == before["streams_cut"]


def test_a_client_that_leaves_mid_stream_closes_the_upstream_request_at_once(gateway: Gateway, key: str,
                                                                           lab: Lab, client: httpx2.Client) -> None:
    """The client hangs up after the first delta: the provider, still holding the stream, sees its connection go."""
    lab.lp.hold_streams()
    before = lab.lp.snapshot()
    try:
        body = json.dumps({**MESSAGE, "stream": True})
        head = (f"POST /gone/v1/messages HTTP/1.1\nHost: 127.0.0.1:{gateway.port}\nx-api-key: {key}\n"
                f"content-type: application/json\ncontent-length: {len(body)}")
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=DEADLINE) as sock:
            sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body.encode())
            release_the_preamble(lab.lp)
            received = b""
            while b"content_block_delta" not in received:
                received += sock.recv(65536)
            TRANSCRIPT.add(received)
            assert lab.lp.wait_for_held_streams(1, DEADLINE)
        # Not released: only the gateway closing its upstream connection can end this stream now.
        assert lab.lp.wait_for_streams(cut=before["streams_cut"] + 1, timeout=DEADLINE)
        assert lab.lp.held_streams() == 0
    finally:
        lab.lp.release_streams()
    assert lab.lp.snapshot()["streams_finished"] == before["streams_finished"]
    wait_until(lambda: "the client left; the upstream request was closed" in gateway.stderr(), "the gateway's note")
    r = TRANSCRIPT.response(client.post("/gone/v1/messages", json=MESSAGE))  # the gateway goes on serving
    assert r.status_code == 200 and r.headers["x-authpool-account"] == "gone/gone-1"


# -- who may use it -------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["authorization", "x-api-key", "x-goog-api-key", "query"])
def test_the_key_is_accepted_where_sdks_put_an_api_key_and_never_forwarded(gateway: Gateway, key: str,
                                                                          where: str) -> None:
    """Bearer, x-api-key, x-goog-api-key or ?key=: accepted, then taken out; the provider sees the account's own."""
    headers = {"authorization": f"Bearer {key}"} if where == "authorization" else (
        {where: key} if where != "query" else {})
    params = {"key": key, "q": "1"} if where == "query" else {"q": "1"}
    r = TRANSCRIPT.response(httpx2.get(f"{gateway.url}/keys/echo-request", headers=headers, params=params))
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["query"] == ["q"]
    assert "x-api-key" not in seen["headers"] and "x-goog-api-key" not in seen["headers"]
    assert "authorization" in seen["headers"]  # the pool's credential for keys/keys-1
    assert r.headers["x-authpool-account"] == "keys/keys-1"


@pytest.mark.parametrize(("headers", "code"), [
    ({}, "gateway_key_missing"),
    ({"x-api-key": "wrong-key-0123456789abcdef"}, "gateway_key_invalid"),
    ({"authorization": "Bearer wrong-key-0123456789abcdef"}, "gateway_key_invalid"),
    ({"authorization": "Basic d3Jvbmc6a2V5"}, "gateway_key_invalid"),
])
def test_a_missing_or_wrong_key_is_a_401_and_nothing_reaches_the_provider(gateway: Gateway, lab: Lab,
                                                                          headers: dict[str, str], code: str) -> None:
    """No key, or a wrong one: 401 with one JSON error; the provider gets no request."""
    calls = lab.lp.snapshot()["api_calls"]
    r = TRANSCRIPT.response(httpx2.post(f"{gateway.url}/keys/v1/messages", json=MESSAGE, headers=headers))
    assert r.status_code == 401
    assert r.json()["error"]["code"] == code and r.json()["error"]["type"] == "authentication_error"
    assert lab.lp.snapshot()["api_calls"] == calls


@pytest.mark.parametrize(("headers", "code"), [
    ({"origin": "http://evil.example"}, "origin_refused"),
    ({"origin": "null"}, "origin_refused"),
    ({"origin": "http://127.0.0.1:1"}, "origin_refused"),
    ({"sec-fetch-site": "cross-site"}, "origin_refused"),
    ({"host": "evil.example"}, "host_refused"),
    ({"host": "rebound.example:{port}"}, "host_refused"),
])
def test_web_pages_and_other_host_names_are_refused_even_with_the_key(gateway: Gateway, key: str, lab: Lab,
                                                                      headers: dict[str, str], code: str) -> None:
    """A foreign Origin, Sec-Fetch-Site or Host (DNS rebinding) is a 403, whatever key comes with it."""
    calls = lab.lp.snapshot()["api_calls"]
    sent = {k: v.format(port=gateway.port) for k, v in headers.items()}
    r = TRANSCRIPT.response(httpx2.get(f"{gateway.url}/web/v1/models", headers={"x-api-key": key, **sent}))
    assert r.status_code == 403 and r.json()["error"]["code"] == code
    assert "access-control-allow-origin" not in r.headers
    assert lab.lp.snapshot()["api_calls"] == calls


def test_the_gateway_s_own_origin_and_names_are_accepted(gateway: Gateway, key: str) -> None:
    """Origin http://127.0.0.1:PORT, Host localhost:PORT and Sec-Fetch-Site same-origin are the gateway itself."""
    for extra in ({"origin": gateway.url}, {"host": f"localhost:{gateway.port}"}, {"sec-fetch-site": "same-origin"}):
        r = TRANSCRIPT.response(httpx2.get(f"{gateway.url}/web/v1/models", headers={"x-api-key": key, **extra}))
        assert r.status_code == 200, (extra, r.text)


# -- what the gateway refuses -----------------------------------------------------------------------------


def test_a_body_over_32_mib_is_a_413_whether_declared_or_streamed(gateway: Gateway, key: str, lab: Lab,
                                                                  client: httpx2.Client) -> None:
    """Content-Length over the limit: 413 before any byte is read; a chunked body: 413 once it passes the limit."""
    calls = lab.lp.snapshot()["api_calls"]
    status, headers, body = raw_request(
        gateway.port, f"POST /size/v1/messages HTTP/1.1\nHost: 127.0.0.1:{gateway.port}\nx-api-key: {key}\n"
                      f"content-type: application/json\ncontent-length: {40 * 1024 * 1024}")
    TRANSCRIPT.add(body)
    assert status == 413 and json.loads(body)["error"]["type"] == "request_too_large"

    def chunks() -> Iterator[bytes]:
        for _ in range(33):
            yield b" " * (1024 * 1024)

    r = TRANSCRIPT.response(client.post("/size/v1/messages", content=chunks()))
    assert r.status_code == 413
    assert lab.lp.snapshot()["api_calls"] == calls
    ok = client.post("/size/v1/messages", content=json.dumps(MESSAGE).encode() + b" " * (512 * 1024))
    assert TRANSCRIPT.response(ok).status_code == 200  # a large body under the limit goes on


def test_an_unknown_provider_or_route_is_a_404_in_json(client: httpx2.Client) -> None:
    """/nope/...: 404 naming the known providers; / and /esc (no path): 404 too, never a redirect."""
    r = TRANSCRIPT.response(client.post("/nope/v1/messages", json=MESSAGE))
    assert r.status_code == 404 and r.json()["error"]["code"] == "provider_not_found"
    assert "'nope'" in r.json()["error"]["message"]
    for path in ("/", "/esc"):
        r = TRANSCRIPT.response(client.get(path))
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path


@pytest.mark.parametrize("path", [
    "/esc/../curl/v1/models",
    "/esc/v1/../../x",
    "/esc/%2e%2e/x",
    "/esc/v1/%2E%2e/x",
    "/esc/v1/%252e%252e/x",
    "/esc/v1%2fmodels",
    "/esc/v1%5cmodels",
    "/esc//evil.example/v1/models",
    "/esc/http://evil.example/v1/models",
    "/esc/https:/evil.example",
    "/esc/v1/http:%2F%2Fevil.example",
    "/esc/v1/a%00b",
])
def test_a_path_that_could_leave_the_provider_is_refused(gateway: Gateway, key: str, lab: Lab, path: str) -> None:
    """Dot segments (also encoded), encoded slashes, empty segments, a second URL: 400, nothing sent."""
    calls = lab.lp.snapshot()["calls_by_path"]
    status, _, body = raw_request(gateway.port, f"GET {path} HTTP/1.1\nHost: 127.0.0.1:{gateway.port}\n"
                                                f"x-api-key: {key}")
    TRANSCRIPT.add(body)
    assert status == 400, body
    doc = json.loads(body)
    assert doc["error"]["code"] == "origin_refused" and "refusing the path" in doc["error"]["message"]
    assert lab.lp.snapshot()["calls_by_path"] == calls


def test_a_refused_header_or_option_is_one_clear_json_error(client: httpx2.Client) -> None:
    """An unknown x-authpool-* header, a bad wait, an unknown account: 400 with a message naming it."""
    cases = [({"x-authpool-acount": "x"}, "unknown header 'x-authpool-acount'"),
             ({"x-authpool-wait": "soon"}, "x-authpool-wait must be a number"),
             ({"x-authpool-wait": "-1"}, "x-authpool-wait must be a number"),
             ({"x-authpool-account": "opts/nobody"}, "no account 'opts/nobody'"),
             ({"x-authpool-account": "curl/curl-1"}, "belongs to curl, not opts")]
    for headers, fragment in cases:
        r = TRANSCRIPT.response(client.post("/opts/v1/messages", json=MESSAGE, headers=headers))
        assert r.status_code == 400, (headers, r.text)
        assert fragment in r.json()["error"]["message"], r.text


# -- the gateway's options ----------------------------------------------------------------------------------


def test_x_authpool_headers_pin_an_account_a_namespace_and_a_session(client: httpx2.Client, lab: Lab) -> None:
    """x-authpool-account serves from that account; a session stays on one account; a namespace holds only its own."""
    r = TRANSCRIPT.response(client.post("/opts/v1/messages", json=MESSAGE,
                                        headers={"x-authpool-account": "opts/opts-2"}))
    assert subject_of(r.text) == "opts-2" and r.headers["x-authpool-account"] == "opts/opts-2"
    served = {subject_of(TRANSCRIPT.response(client.post("/opts/v1/messages", json=MESSAGE,
                                                         headers={"x-authpool-session": "s1"})).text)
              for _ in range(3)}
    assert len(served) == 1
    with pool_env(lab.home):
        pool = Pool.open(lab.home)
        try:
            pool.store.update(lambda p: setattr(p.find("opts/opts-3"), "namespace", "team"))
        finally:
            pool.close()
    r = TRANSCRIPT.response(client.post("/opts/v1/messages", json=MESSAGE, headers={"x-authpool-namespace": "team"}))
    assert subject_of(r.text) == "opts-3"


def test_x_authpool_wait_waits_for_a_cooling_account_instead_of_answering_429(client: httpx2.Client,
                                                                             lab: Lab) -> None:
    """The only account cools for a second: with x-authpool-wait the same request waits and is served."""
    lab.lp.set_rate_limit("opts-1", 1, retry_after=1)  # one answer, then 429 for a second
    pinned = {"x-authpool-account": "opts/opts-1"}
    try:
        assert TRANSCRIPT.response(client.post("/opts/v1/messages", json=MESSAGE, headers=pinned)).status_code == 200
        r = TRANSCRIPT.response(client.post("/opts/v1/messages", json=MESSAGE,
                                            headers={**pinned, "x-authpool-wait": "30"}))
    finally:
        lab.lp.clear_rate_limit("opts-1")
    assert r.status_code == 200, r.text
    assert subject_of(r.text) == "opts-1" and r.headers["x-authpool-attempts"] == "2"


# -- last: nothing secret was said ------------------------------------------------------------------------


def test_no_secret_appears_in_any_response_or_log_line_of_the_run(gateway: Gateway, key: str, lab: Lab) -> None:
    """Every response of this module and every line the gateway logged: no token, API key or the gateway key."""
    texts = [*TRANSCRIPT.texts, gateway.stderr(), *home_texts(lab.home)]
    assert len(texts) > 20
    assert_no_secrets(texts, [*lab.secrets(), key])
    assert "Traceback" not in gateway.stderr()
