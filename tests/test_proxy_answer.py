"""What proxy_request does with a request and an answer besides sending: the URL it resolves, the
headers it adds, and the credential it scrubs from an answer that echoes it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from authpool import InvalidInput, OriginRefused
from authpool.providers.provider import Provider
from authpool.server.mcp.proxy import ProxyCall, _echoes, run_proxy
from tests.conftest import LoopbackPool

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

KEY2 = "sk-test/echo/two+key=="  # two slashes: a writer may escape one and not the other


def _mixed(key: str) -> str:
    """``key`` JSON-escaped with only its first slash written as ``\\/``."""
    return json.dumps(key)[1:-1].replace("/", "\\/", 1)


class _Echo(BaseHTTPRequestHandler):
    """A provider that echoes the caller's key back, in every place an answer can carry it."""

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        key = self.headers["authorization"].removeprefix("Bearer ")
        if self.path == "/json":
            self._answer(400, "application/json", ('{"error": {"message": "bad key ' + _mixed(key) + '"}}').encode())
        elif self.path == "/unicode":
            spelled = "".join(f"\\u{ord(c):04x}" for c in key)
            self._answer(400, "application/json", ('{"error": {"message": "bad key ' + spelled + '"}}').encode())
        elif self.path == "/text":
            self._answer(400, "text/plain", f"invalid key {key}".encode())
        elif self.path == "/stream":
            delta = {"type": "content_block_delta", "delta": {"type": "text_delta", "text": f"you sent {key}"}}
            error = {"type": "error", "error": {"type": "overloaded_error", "message": f"bad key {key}"}}
            events = (f"event: content_block_delta\ndata: {json.dumps(delta)}\n\n"
                      f"event: error\ndata: {json.dumps(error)}\n\n")
            self._answer(200, "text/event-stream", events.encode())
        else:
            self._answer(200, "application/json", b'{"ok": true, "note": "sk-test/echo is only part of it"}',
                         {"x-request-id": key})

    def _answer(self, status: int, ctype: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass


@pytest.fixture
def echo(acme: LoopbackPool) -> Iterator[LoopbackPool]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        acme.configure("echo", base_url=f"http://127.0.0.1:{server.server_address[1]}")
        acme.add_api_key("k", KEY2, provider="echo")
        yield acme
    finally:
        server.shutdown()
        server.server_close()


async def _call(pool: LoopbackPool, path: str) -> Any:
    return await run_proxy(pool.pool, ProxyCall(provider="echo", method="GET", path=path))


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/json", "/unicode", "/text"])
async def test_an_echoed_key_is_redacted_however_the_answer_spells_it(echo: LoopbackPool, path: str) -> None:
    outcome = await _call(echo, path)
    shown = json.dumps(outcome.body, ensure_ascii=False)
    assert KEY2 not in shown and "<redacted>" in shown, shown


@pytest.mark.anyio
async def test_an_echoed_key_is_redacted_from_a_stream_s_text_and_error(echo: LoopbackPool) -> None:
    outcome = await _call(echo, "/stream")
    assert outcome.stream is not None and outcome.stream.error is not None
    assert outcome.stream.text == "you sent <redacted>"
    assert outcome.stream.error["message"] == "bad key <redacted>"
    assert KEY2 not in json.dumps(outcome.body)


@pytest.mark.anyio
async def test_an_echoed_key_is_redacted_from_the_headers_and_a_clean_body_is_left_alone(echo: LoopbackPool) -> None:
    outcome = await _call(echo, "/clean")
    assert outcome.headers["x-request-id"] == "<redacted>"
    assert outcome.body == {"ok": True, "note": "sk-test/echo is only part of it"}


def test_only_a_raw_answer_that_could_spell_a_key_is_searched() -> None:
    key = (KEY2,)
    assert not _echoes(b'{"text": "line one\\nline two"}', key)  # a \\n cannot spell a key
    assert _echoes(KEY2.encode(), key)
    assert _echoes(json.dumps({"k": KEY2}).encode(), key)
    assert _echoes(_mixed(KEY2).encode(), key)  # an escaped slash: always searched
    assert _echoes(b'"\\u0041"', key)  # a \\u escape: always searched
    assert not _echoes(KEY2.encode(), ())
