"""The MCP tools as a client sees them: the official Python client, connected in memory.

``build_server`` runs in this process over a pool of its own on the test home (as a server
process would), and the official client calls it in memory, so every tool's behaviour is tested
without a process in between; the stdio transport, stdout and shutdown are tested on a real
`authpool serve` in ``test_mcp_stdio.py``. The provider is a real LoopbackProvider; CLI
processes are real subprocesses on the same home. Tests share one server (each uses its own
provider id and accounts).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from authpool import Pool
from authpool.server.loopback import LoopbackProvider, LoopbackRequest, LoopbackResponse
from authpool.server.mcp.proxy import TRUNCATION_MARKER
from authpool.server.mcp.server import build_server
from tests.conftest import assert_no_secrets
from tests.mcp_support import TOOLS, Lab, Session, assert_no_traceback, assert_tool_error, lab_session, pool_env

pytestmark = pytest.mark.anyio

# One provider id per scenario, all on one loopback; loopback subjects are unique across them.
ACCOUNTS: dict[str, list[str]] = {
    "main": ["alice", "bob"],      # + carol (API key)
    "admin": [],                   # dave (API key), enabled/disabled and reset by tests
    "rot": ["erin", "frank"],      # erin is rate-limited
    "refr": ["grace"],             # grace's access token expires at the loopback
    "cool": ["heidi", "ivan"],     # both rate-limited for 30 s
    "wait": ["judy", "mallory"],   # both rate-limited for 1 s after one request
    "shared": ["oscar"],           # + peggy, added by the CLI while the server runs
    "sync": ["trent"],             # refreshed by the server, then used by the CLI
    "held": ["uma"],               # a request held at the provider while other calls go on
    "flush": ["walter"],           # usage counters written when the server stops
}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One home and one loopback for the module, with every scenario's accounts."""
    lp = LoopbackProvider().start()
    try:
        lab = Lab(tmp_path_factory.mktemp("mcp") / "home", lp, list(ACCOUNTS))
        for provider, subjects in ACCOUNTS.items():
            lab.add_oauth(provider, *subjects)
        lab.add_api_key("main", "carol")
        lab.add_api_key("admin", "dave")
        yield lab
    finally:
        lp.stop()


@pytest.fixture(scope="module")
async def mcp(lab: Lab) -> AsyncIterator[Session]:
    """One in-memory server for the module, its log captured (and checked for tracebacks and secrets at the end)."""
    async with lab_session(lab) as session:
        yield session


def trail(result: dict[str, Any]) -> list[tuple[str, int | None, str]]:
    return [(a["account"], a["status"], a["outcome"]) for a in result["attempts"]]


def models(provider: str, **extra: Any) -> dict[str, Any]:
    return {"provider": provider, "method": "GET", "path": "/v1/models", **extra}


MESSAGE = {"model": "loopback-small", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


# -- initialize and tools/list ------------------------------------------------------------------


async def test_the_server_introduces_itself_as_authpool_with_instructions(mcp: Session) -> None:
    """The client sees the server's name, protocol 2026-07-28 and instructions that name proxy_request."""
    c = mcp.client
    assert c.protocol_version == "2026-07-28"
    assert c.server_info is not None and c.server_info.name == "authpool"
    assert c.instructions is not None and "proxy_request" in c.instructions and "pool of accounts" in c.instructions


# (required input properties, all input properties, required output fields)
SCHEMAS: dict[str, tuple[set[str], set[str], set[str]]] = {
    "proxy_request": (
        {"provider", "method", "path"},
        {"provider", "method", "path", "query", "headers", "json", "body", "account", "namespace", "wait_s",
         "stream", "session", "max_body_chars"},
        {"status", "headers", "body", "body_format", "body_bytes", "truncated", "account", "attempts"},
    ),
    "list_accounts": (set(), {"provider", "namespace", "state", "limit", "cursor"},
                      {"accounts", "total", "next_cursor"}),
    "account_status": (
        {"account"}, {"account"},
        {"id", "provider", "namespace", "label", "name", "kind", "enabled", "state", "cooling_until", "cooldowns",
         "token_expires_at", "last_used_at", "last_status", "last_error", "counters", "cooldown_remaining_s",
         "reauth_command", "recent_attempts"},
    ),
    "pool_status": (set(), set(), {"now", "home", "providers"}),
    "set_account_enabled": (
        {"account", "enabled"}, {"account", "enabled"},
        {"id", "provider", "namespace", "label", "name", "kind", "enabled", "state", "cooling_until", "cooldowns",
         "token_expires_at", "last_used_at", "last_status", "last_error", "counters"},
    ),
    "reset_cooldown": (
        {"account"}, {"account"},
        {"id", "provider", "namespace", "label", "name", "kind", "enabled", "state", "cooling_until", "cooldowns",
         "token_expires_at", "last_used_at", "last_status", "last_error", "counters"},
    ),
    "list_providers": (set(), set(), {"providers"}),
}
READ_ONLY = {"list_accounts", "account_status", "pool_status", "list_providers"}


async def test_tools_list_names_every_tool_with_input_and_output_schemas(mcp: Session) -> None:
    """tools/list has the seven pool tools with the expected fields; every tool has a description and both schemas."""
    tools = {t.name: t for t in (await mcp.client.list_tools()).tools}
    assert set(tools) >= set(TOOLS) and sorted(TOOLS) == sorted(SCHEMAS)
    for name, tool in tools.items():  # including tools added elsewhere (start_login, finish_login)
        assert tool.description, name
        assert tool.input_schema["type"] == "object", name
        assert tool.output_schema is not None and tool.output_schema["type"] == "object", name
    for name, (required, properties, output_required) in SCHEMAS.items():
        tool = tools[name]
        assert tool.description and "\n    " not in tool.description, name
        schema = tool.input_schema
        assert schema["type"] == "object", name
        assert set(schema.get("properties", {})) == properties, name
        assert set(schema.get("required", [])) == required, name
        assert tool.output_schema is not None, name
        assert tool.output_schema["type"] == "object", name
        assert set(tool.output_schema["required"]) == output_required, name
        assert set(tool.output_schema["properties"]) >= output_required, name
        assert tool.annotations is not None and tool.annotations.read_only_hint is (name in READ_ONLY), name
    for name, tool in tools.items():
        hints = tool.annotations
        assert hints is not None and None not in (hints.read_only_hint, hints.destructive_hint,
                                                  hints.idempotent_hint, hints.open_world_hint), name
        for where, schema in (("input", tool.input_schema), ("output", tool.output_schema)):
            assert untyped(schema) == [], f"{name} {where} schema: untyped {untyped(schema)}"
    props = tools["proxy_request"].input_schema["properties"]
    assert "ctx" not in props
    assert props["wait_s"]["type"] == "number" and props["wait_s"]["minimum"] == 0
    assert props["max_body_chars"]["type"] == "integer" and props["max_body_chars"]["minimum"] == 1000
    assert props["body"]["type"] == "string"
    assert tools["set_account_enabled"].input_schema["properties"]["enabled"]["type"] == "boolean"


def untyped(schema: Any, path: str = "") -> list[str]:
    """The places in a JSON schema that accept anything: no type, no $ref, no anyOf/oneOf/allOf, no enum/const."""
    if not isinstance(schema, dict):
        return []
    found: list[str] = []
    keys = {"type", "$ref", "anyOf", "oneOf", "allOf", "enum", "const"}
    if path and not keys & schema.keys():
        found.append(path)
    for key in ("anyOf", "oneOf", "allOf"):
        for i, sub in enumerate(schema.get(key, [])):
            found += untyped(sub, f"{path}.{key}[{i}]")
    for name, sub in schema.get("properties", {}).items():
        found += untyped(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            found += untyped(schema[key], f"{path}.{key}")
    for name, sub in schema.get("$defs", {}).items():
        found += untyped(sub, f"$defs.{name}")
    return found


# -- every tool with good arguments -------------------------------------------------------------


async def test_proxy_request_returns_the_provider_answer_and_the_serving_account(mcp: Session) -> None:
    """A GET and a JSON POST come back with status, headers, parsed body, size and the account that served them."""
    r = await mcp.ok("proxy_request", models("main"))
    assert r["status"] == 200 and r["body_format"] == "json" and r["truncated"] is False
    assert [m["id"] for m in r["body"]["data"]] == ["loopback-small", "loopback-large"]
    assert r["body_bytes"] == len(json.dumps(r["body"]).encode())
    assert r["headers"]["content-type"] == "application/json" and r["headers"]["request-id"].startswith("req_")
    assert r["account"]["name"] == "main/alice" and r["account"]["label"] == "alice"
    assert trail(r) == [("main/alice", 200, "ok")]

    r = await mcp.ok("proxy_request", {"provider": "main", "method": "post", "path": "v1/messages", "json": MESSAGE})
    assert r["status"] == 200 and r["body"]["content"][0]["text"] == "Hello from alice."
    # A raw text body that happens to be JSON is sent verbatim, not decoded into an object.
    r = await mcp.ok("proxy_request", {"provider": "main", "method": "POST", "path": "/v1/messages",
                                       "body": json.dumps({**MESSAGE, "model": "raw-body"}),
                                       "headers": {"content-type": "application/json"}})
    assert r["body"]["model"] == "raw-body"
    # Pinned to one account, by provider/label.
    r = await mcp.ok("proxy_request", models("main", account="main/carol"))
    assert r["account"]["name"] == "main/carol" and r["body"]["subject"] == "carol"


async def test_list_accounts_shows_every_account_or_one_provider_s(mcp: Session) -> None:
    """list_accounts lists all accounts, or one provider's, with state and counters but no secret."""
    everything = await mcp.ok("list_accounts", {})
    assert {a["provider"] for a in everything["accounts"]} == set(ACCOUNTS)
    main = (await mcp.ok("list_accounts", {"provider": "main"}))["accounts"]
    assert [(a["name"], a["kind"]) for a in main] == [("main/alice", "oauth"), ("main/bob", "oauth"),
                                                      ("main/carol", "api_key")]
    alice = main[0]
    assert alice["state"] == "ready" and alice["enabled"] is True and alice["token_expires_at"].endswith("Z")
    assert set(alice["counters"]) == {"requests", "rate_limited", "unauthorized", "refreshes", "failures"}


async def test_account_status_shows_one_account_in_full(mcp: Session, lab: Lab) -> None:
    """account_status takes an id or provider/label and shows state, counters and recent attempts."""
    by_name = await mcp.ok("account_status", {"account": "main/bob"})
    by_id = await mcp.ok("account_status", {"account": by_name["id"]})
    assert by_id["name"] == by_name["name"] == "main/bob"
    assert by_name["kind"] == "oauth" and by_name["state"] == "ready"
    assert by_name["cooldown_remaining_s"] is None and by_name["reauth_command"] is None
    assert by_name["id"] == lab.account_json("main/bob")["id"]


async def test_pool_status_summarises_each_provider(mcp: Session) -> None:
    """pool_status counts ready, cooling, needs-reauth and disabled accounts per provider."""
    status = await mcp.ok("pool_status", {})
    assert status["now"].endswith("Z")
    main = next(p for p in status["providers"] if p["provider"] == "main")
    assert (main["ready"], main["cooling"], main["needs_reauth"], main["disabled"]) == (3, 0, 0, 0)
    assert main["next_free_at"] is None and main["total"] == 3
    assert (main["attention"], main["attention_more"]) == ([], 0)


async def test_set_account_enabled_disables_and_enables_in_the_shared_store(mcp: Session, lab: Lab) -> None:
    """Disabling an account is written to pool.json at once and takes it out of rotation; enabling puts it back."""
    off = await mcp.ok("set_account_enabled", {"account": "admin/dave", "enabled": False})
    assert off["enabled"] is False and off["state"] == "disabled"
    assert lab.account_json("admin/dave")["enabled"] is False
    await mcp.err("proxy_request", models("admin"), "no account is usable", "admin/dave: disabled")
    on = await mcp.ok("set_account_enabled", {"account": "admin/dave", "enabled": True})
    assert on["enabled"] is True and on["state"] == "ready"
    assert lab.account_json("admin/dave")["enabled"] is True


async def test_reset_cooldown_makes_a_cooling_account_ready_again(mcp: Session, lab: Lab) -> None:
    """After a 429 the account is cooling; reset_cooldown clears it in pool.json and it is ready."""
    lab.lp.set_rate_limit("dave", 0, retry_after=60)
    try:
        await mcp.err("proxy_request", models("admin"), "all admin accounts are cooling down")
        assert (await mcp.ok("account_status", {"account": "admin/dave"}))["state"] == "cooling"
        assert lab.account_json("admin/dave")["cooldowns"]
        reset = await mcp.ok("reset_cooldown", {"account": "admin/dave"})
        assert reset["state"] == "ready" and reset["cooldowns"] == {} and reset["cooling_until"] is None
        assert lab.account_json("admin/dave")["cooldowns"] == {}
    finally:
        lab.lp.clear_rate_limit("dave")
    assert (await mcp.ok("proxy_request", models("admin")))["account"]["name"] == "admin/dave"


async def test_list_providers_shows_base_urls_and_credential_origins(mcp: Session, lab: Lab) -> None:
    """list_providers shows built-in and configured providers, the origins credentials may go to, and account counts."""
    providers = {p["id"]: p for p in (await mcp.ok("list_providers", {}))["providers"]}
    assert {"anthropic", "openai", *ACCOUNTS} <= set(providers)
    main = providers["main"]
    assert main["base_url"] == lab.lp.base_url
    assert main["origins"] == [lab.lp.base_url]  # http://127.0.0.1:PORT, the port made explicit
    assert main["oauth_configured"] is True and main["accounts"] == 3
    assert main["api_key_header"] == "authorization"
    assert providers["anthropic"]["origins"] == ["https://api.anthropic.com:443"]


async def test_tools_without_parameters_ignore_arguments(mcp: Session) -> None:
    """pool_status and list_providers take no arguments; the SDK ignores any that are sent."""
    assert (await mcp.ok("pool_status", {"provider": 5}))["providers"]
    assert (await mcp.ok("list_providers", {"verbose": "yes"}))["providers"]


# -- every tool with bad arguments -------------------------------------------------------------

BAD_CALLS: list[tuple[str, dict[str, Any], list[str]]] = [
    # unknown provider
    ("proxy_request", models("nope"), ["unknown provider 'nope'", "known providers", "main"]),
    ("list_accounts", {"provider": "nope"}, ["unknown provider 'nope'", "known providers"]),
    # unknown account
    ("proxy_request", models("main", account="main/nobody"), ["no account 'main/nobody'"]),
    ("proxy_request", models("main", account="rot/erin"), ["rot/erin belongs to rot, not main"]),
    ("account_status", {"account": "main/nobody"}, ["no account 'main/nobody'", "authpool accounts list"]),
    ("set_account_enabled", {"account": "nope/x", "enabled": False}, ["no account 'nope/x'"]),
    ("reset_cooldown", {"account": "zzzzzzzz"}, ["no account 'zzzzzzzz'"]),
    # missing required argument
    ("proxy_request", {"provider": "main", "method": "GET"}, ["path is required"]),
    ("proxy_request", {}, ["provider is required", "method is required", "path is required"]),
    ("account_status", {}, ["account is required"]),
    ("set_account_enabled", {"account": "admin/dave"}, ["enabled is required"]),
    ("reset_cooldown", {}, ["account is required"]),
    # wrong type or out of range
    ("proxy_request", models("main", wait_s="soon"), ["wait_s must be a number"]),
    ("proxy_request", models("main", wait_s=-1), ["wait_s must be at least 0"]),
    ("proxy_request", models("main", max_body_chars=10), ["max_body_chars must be at least 1000"]),
    ("proxy_request", models("main", headers="x-trace: 1"), ["headers must be a JSON object"]),
    ("proxy_request", models("main", query={"limit": 5}), ["query.limit must be a string"]),
    ("list_accounts", {"provider": 5}, ["provider must be a string"]),
    ("account_status", {"account": 3}, ["account must be a string"]),
    ("set_account_enabled", {"account": "admin/dave", "enabled": "maybe"}, ["enabled must be true or false"]),
    ("reset_cooldown", {"account": ["main/alice"]}, ["account must be a string"]),
    # well-typed but meaningless
    ("proxy_request", models("main", method="FETCH"), ["unsupported method 'FETCH'", "GET"]),
    ("proxy_request", {**models("main", method="POST"), "json": {"a": 1}, "body": "b"}, ["either json or body"]),
    ("proxy_request", models("main", namespace="team-x"), ["no accounts in namespace 'team-x'"]),
    # the login tools (unknown provider, unknown login, missing or mistyped arguments)
    ("start_login", {"provider": "nope"}, ["unknown provider 'nope'"]),
    ("start_login", {}, ["provider is required"]),
    ("finish_login", {"login_id": "no-such-login"}, ["unknown login_id 'no-such-login'", "start_login"]),
    ("finish_login", {"login_id": "x", "timeout_s": "long"}, ["timeout_s must be a number"]),
    # what the HTTP client cannot send: refused up front, not retried as a "network error"
    ("proxy_request", models("main", headers={"x-note": "café"}), ["header 'x-note'", "only printable ASCII"]),
    ("proxy_request", models("main", headers={"x-a": "1\r\nx-injected: 1"}), ["header 'x-a'", "printable ASCII"]),
    ("proxy_request", models("main", headers={"bad name": "1"}), ["'bad name' is not a valid HTTP header name"]),
    ("proxy_request", models("main", path="/v1/models\r\nx-injected: 1"), ["invalid path", "non-printable"]),
]


@pytest.mark.parametrize(("tool", "args", "fragments"), BAD_CALLS,
                         ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(BAD_CALLS)])
async def test_bad_arguments_give_a_tool_error_with_a_clear_message(
    mcp: Session, tool: str, args: dict[str, Any], fragments: list[str],
) -> None:
    """Unknown provider/account, missing or mistyped arguments: isError, a message naming the problem, no traceback."""
    before = mcp.lab.lp.snapshot()["api_calls"]
    text = await mcp.err(tool, args, *fragments)
    assert text.startswith((f"Error executing tool {tool}: ", f"invalid arguments for {tool}:\n"))
    assert mcp.lab.lp.snapshot()["api_calls"] == before  # refused before anything was sent
    assert_no_traceback(mcp.stderr())


async def test_an_unknown_tool_is_a_tool_error(mcp: Session) -> None:
    """Calling a tool that does not exist is an isError result naming it."""
    assert_tool_error(await mcp.call("delete_everything", {}), "Unknown tool: delete_everything")


# -- resources -----------------------------------------------------------------------------------


async def test_resources_list_and_read_as_json(mcp: Session, lab: Lab) -> None:
    """The pool's resources and the account template are listed and read as JSON; an unknown URI is -32602."""
    listed = {str(r.uri): r for r in (await mcp.client.list_resources()).resources}
    assert set(listed) == {"authpool://accounts", "authpool://pool-status", "authpool://providers"}
    assert all(r.mime_type == "application/json" and r.description for r in listed.values())
    templates = (await mcp.client.list_resource_templates()).resource_templates
    assert [t.uri_template for t in templates] == ["authpool://accounts/{id}"]

    status = json.loads((await mcp.client.read_resource("authpool://pool-status")).contents[0].text)  # type: ignore[union-attr]
    assert next(p for p in status["providers"] if p["provider"] == "main")["ready"] >= 1
    carol = lab.pool.get("main/carol")
    one = json.loads((await mcp.client.read_resource(f"authpool://accounts/{carol.id}")).contents[0].text)  # type: ignore[union-attr]
    assert one["name"] == "main/carol" and one["kind"] == "api_key" and "recent_attempts" in one
    with pytest.raises(MCPError) as e:
        await mcp.client.read_resource("authpool://accounts/nosuchid")
    assert "nosuchid" in str(e.value) and "Traceback" not in str(e.value)

    accounts = await mcp.client.read_resource("authpool://accounts")
    assert accounts.contents[0].mime_type == "application/json"
    text = accounts.contents[0].text  # type: ignore[union-attr]
    names = {a["name"] for a in json.loads(text)["accounts"]}
    assert {"main/alice", "main/carol", "admin/dave"} <= names
    assert_no_secrets(text, lab.secrets())

    providers = json.loads((await mcp.client.read_resource("authpool://providers")).contents[0].text)  # type: ignore[union-attr]
    assert next(p for p in providers["providers"] if p["id"] == "main")["base_url"] == lab.lp.base_url

    with pytest.raises(MCPError) as e:
        await mcp.client.read_resource("authpool://secrets")
    assert e.value.code == -32602 and "authpool://secrets" in str(e.value)


# -- rotation and refresh ----------------------------------------------------------------------


async def test_a_429_rotates_to_the_next_account_within_the_call(mcp: Session, lab: Lab) -> None:
    """erin answers 429: the result comes from frank, the attempts show the 429, and erin's cooldown is visible."""
    lab.lp.set_rate_limit("erin", 0, retry_after=30)
    before = time.time()
    r = await mcp.ok("proxy_request", {"provider": "rot", "method": "POST", "path": "/v1/messages", "json": MESSAGE})
    assert r["status"] == 200 and r["body"]["subject"] == "frank" and r["account"]["name"] == "rot/frank"
    assert trail(r) == [("rot/erin", 429, "rate_limited"), ("rot/frank", 200, "ok")]
    assert r["attempts"][0]["cooldown_until"] is not None

    erin = await mcp.ok("account_status", {"account": "rot/erin"})
    assert erin["state"] == "cooling" and erin["last_status"] == 429
    assert 20 <= erin["cooldown_remaining_s"] <= 31
    assert "429" in erin["cooldowns"]["*"]["reason"] and erin["counters"]["rate_limited"] == 1
    assert [(a["status"], a["outcome"]) for a in erin["recent_attempts"]] == [(429, "rate_limited")]
    # Written to the shared store before the call returned.
    assert lab.account_json("rot/erin")["cooldowns"]["*"]["until"] >= before + 25

    rot = next(p for p in (await mcp.ok("pool_status", {}))["providers"] if p["provider"] == "rot")
    assert (rot["ready"], rot["cooling"]) == (1, 1) and rot["next_free_at"] == erin["cooling_until"]
    # The next call goes straight to frank: erin is not tried while cooling.
    assert trail(await mcp.ok("proxy_request", models("rot"))) == [("rot/frank", 200, "ok")]


async def test_a_401_refreshes_the_token_once_and_retries(mcp: Session, lab: Lab) -> None:
    """grace's token expired at the provider: the attempts show 'refreshed', the token endpoint is called once."""
    lab.lp.expire_access_tokens("grace")
    before = lab.lp.snapshot()
    generation = lab.account_json("refr/grace")["secret_generation"]
    r = await mcp.ok("proxy_request", models("refr"))
    assert r["status"] == 200 and r["body"]["subject"] == "grace"
    assert trail(r) == [("refr/grace", 401, "refreshed"), ("refr/grace", 200, "ok")]
    after = lab.lp.snapshot()
    assert after["refresh_calls"] - before["refresh_calls"] == 1
    assert after["invalid_grant_count"] == before["invalid_grant_count"]
    grace = await mcp.ok("account_status", {"account": "refr/grace"})
    assert grace["state"] == "ready" and grace["counters"]["refreshes"] == 1
    assert lab.account_json("refr/grace")["secret_generation"] == generation + 1


# -- cooling pools: the error, and waiting with progress -----------------------------------------


async def test_without_wait_s_the_error_says_when_the_next_account_frees_up(mcp: Session, lab: Lab) -> None:
    """Both accounts answer 429 (Retry-After 30): the tool error names the time the next one frees up."""
    for subject in ACCOUNTS["cool"]:
        lab.lp.set_rate_limit(subject, 0, retry_after=30)
    text = await mcp.err("proxy_request", models("cool"), "all cool accounts are cooling down",
                         "the next frees up at", "cool/heidi: cooling until", "cool/ivan: cooling until")
    m = re.search(r"frees up at (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\b.*\(in (\d+)s\)", text)
    assert m is not None, text
    assert 25 <= int(m.group(2)) <= 30
    cool = next(p for p in (await mcp.ok("pool_status", {}))["providers"] if p["provider"] == "cool")
    assert (cool["ready"], cool["cooling"]) == (0, 2) and cool["next_free_at"] is not None
    for subject in ACCOUNTS["cool"]:
        status = await mcp.ok("account_status", {"account": f"cool/{subject}"})
        assert [a["outcome"] for a in status["recent_attempts"]] == ["rate_limited"]


async def test_with_wait_s_a_cooling_pool_waits_with_progress_and_succeeds(mcp: Session, lab: Lab) -> None:
    """Every account cooling for ~1 s and wait_s=5: progress notifications arrive and the call succeeds."""
    for subject in ACCOUNTS["wait"]:
        lab.lp.set_rate_limit(subject, 1, retry_after=1)
    assert trail(await mcp.ok("proxy_request", models("wait"))) == [("wait/judy", 200, "ok")]
    assert trail(await mcp.ok("proxy_request", models("wait"))) == [("wait/judy", 429, "rate_limited"),
                                                                   ("wait/mallory", 200, "ok")]
    # Now mallory is used up too: without wait_s the pool is cooling...
    await mcp.err("proxy_request", models("wait"), "all wait accounts are cooling down", "the next frees up at")
    # ...and with it, the call waits for judy and reports progress meanwhile.
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    r = await mcp.ok("proxy_request", models("wait", wait_s=5), progress_callback=on_progress)
    assert r["status"] == 200 and trail(r) == [("wait/judy", 200, "ok")]
    assert progress, "no progress notification arrived"  # so the call did wait for judy
    done, total, message = progress[0]
    assert total == 5 and 0 <= done <= 5
    assert message is not None and "cooling" in message and "waiting" in message


# -- what proxy_request refuses or cuts ----------------------------------------------------------


async def test_an_absolute_url_on_another_origin_is_refused(mcp: Session, lab: Lab) -> None:
    """A URL outside the provider's origins is refused before any request; one on its origin is served."""
    before = lab.lp.snapshot()["calls_by_path"]
    for url, origin in (("https://127.0.0.1:" + str(lab.lp.port) + "/v1/models", f"https://127.0.0.1:{lab.lp.port}"),
                        ("http://127.0.0.1:1/v1/models", "http://127.0.0.1:1"),
                        ("HTTP://EXAMPLE.COM:80/v1/models", "http://example.com:80")):
        await mcp.err("proxy_request", models("main", path=url), f"{origin} is not an origin of provider main")
    await mcp.err("proxy_request", models("main", path="//example.com/v1/models"), "network-path reference")
    text = await mcp.err("proxy_request", models("main", path="http://example.com/v1/models"),
                         "http://example.com:80 is not an origin of provider main", lab.lp.base_url,
                         "credentials are never sent elsewhere")
    assert "Bearer" not in text
    # A URL with userinfo whose text starts like the provider's origin goes elsewhere: refused.
    with LoopbackProvider() as elsewhere:
        sneaky = f"{lab.lp.base_url}@127.0.0.1:{elsewhere.port}/echo-auth-present"
        await mcp.err("proxy_request", models("main", path=sneaky), "user name or password (user@host)")
        assert elsewhere.snapshot()["calls_by_path"] == {}
    assert lab.lp.snapshot()["calls_by_path"] == before
    r = await mcp.ok("proxy_request", models("main", path=lab.lp.base_url + "/v1/models"))
    assert r["status"] == 200


async def test_credential_headers_cannot_be_set_by_the_caller(mcp: Session, lab: Lab) -> None:
    """Authorization, x-api-key (any case) and friends are refused, without echoing their value."""
    before = lab.lp.snapshot()["api_calls"]
    for name in ("Authorization", "authorization", "x-api-key", "X-API-KEY", "Proxy-Authorization", "Cookie"):
        text = await mcp.err("proxy_request", models("main", headers={name: "Bearer caller-chosen-credential"}),
                             f"header {name!r} carries credentials", "cannot set or override them")
        assert "caller-chosen-credential" not in text
    assert lab.lp.snapshot()["api_calls"] == before
    # Ordinary headers are fine.
    r = await mcp.ok("proxy_request", models("main", headers={"x-trace-id": "t-1"}))
    assert r["status"] == 200


async def test_an_oversized_body_is_truncated_with_a_marker_and_its_full_size(mcp: Session) -> None:
    """A body beyond max_body_chars is cut, ends with the marker, and body_bytes is the full size."""
    r = await mcp.ok("proxy_request", models("main", path="/big", query={"bytes": "250000"}))
    marker = TRUNCATION_MARKER.format(shown=100_000, total=250_000)
    assert r["truncated"] is True and r["body_bytes"] == 250_000 and r["body_format"] == "text"
    assert r["body"].endswith(marker) and len(r["body"]) == 100_000 + len(marker)
    assert "truncated by authpool" in marker

    r = await mcp.ok("proxy_request", models("main", path="/big?bytes=5000", max_body_chars=1000))
    assert r["truncated"] is True and r["body_bytes"] == 5000
    assert r["body"].endswith(TRUNCATION_MARKER.format(shown=1000, total=5000))

    r = await mcp.ok("proxy_request", models("main", path="/big?bytes=1000", max_body_chars=1000))
    assert r["truncated"] is False and r["body_bytes"] == 1000 and len(r["body"]) == 1000


async def test_a_response_body_that_cannot_be_read_is_a_clear_tool_error(mcp: Session, lab: Lab) -> None:
    """A body that is not the gzip it claims, or that breaks off mid-stream: a tool error naming why, no traceback."""
    def bad_gzip(request: LoopbackRequest) -> LoopbackResponse:
        return LoopbackResponse(200, b'{"not": "gzip"}', {"Content-Type": "application/json",
                                                          "Content-Encoding": "gzip"})

    def broken_off(request: LoopbackRequest) -> LoopbackResponse:
        def chunks() -> Iterator[bytes]:
            yield b'{"partial": '
            raise ConnectionAbortedError("the provider died mid-body")  # the connection is dropped

        return LoopbackResponse(200, headers={"Content-Type": "application/json"}, stream=chunks())

    lab.lp.routes[("GET", "/bad-gzip")] = bad_gzip
    lab.lp.routes[("GET", "/broken-off")] = broken_off
    try:
        await mcp.err("proxy_request", models("main", path="/bad-gzip"),
                      "main answered HTTP 200 via main/alice, but the response body could not be read",
                      "decompressing")
        await mcp.err("proxy_request", models("main", path="/broken-off"),
                      "main answered HTTP 200 via main/alice, but the response body could not be read",
                      "RemoteProtocolError")
    finally:
        del lab.lp.routes[("GET", "/bad-gzip")], lab.lp.routes[("GET", "/broken-off")]
    assert_no_traceback(mcp.stderr())
    # The pool is fine afterwards.
    assert (await mcp.ok("proxy_request", models("main")))["status"] == 200


async def test_a_slow_upstream_does_not_block_other_tool_calls(mcp: Session, lab: Lab) -> None:
    """While proxy_request waits on the provider (held there), list_accounts on the same session answers."""
    finished: list[dict[str, Any]] = []

    async def slow() -> None:
        finished.append(await mcp.ok("proxy_request", models("held")))

    lab.lp.hold_api_requests()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            assert await anyio.to_thread.run_sync(lab.lp.wait_for_held_requests, 1), "the request never arrived"
            accounts = await mcp.ok("list_accounts", {"provider": "main"})
            assert accounts["accounts"] and finished == []  # answered while the request is still held
            lab.lp.release_api_requests()
    finally:
        lab.lp.release_api_requests()
    assert finished[0]["status"] == 200 and trail(finished[0]) == [("held/uma", 200, "ok")]


# -- the store is shared with the CLI ---------------------------------------------------------------


async def test_accounts_added_and_disabled_by_the_cli_are_seen_on_the_next_call(mcp: Session, lab: Lab) -> None:
    """The CLI adds an account and disables another while the server runs: the server's next calls see both."""
    assert [a["name"] for a in (await mcp.ok("list_accounts", {"provider": "shared"}))["accounts"]] == ["shared/oscar"]

    key = lab.lp.add_api_key("peggy")
    lab.handed_out.append(key)
    added = lab.cli("accounts", "add-key", "shared", "--label", "peggy", input=key)
    assert added.returncode == 0, added.stderr
    accounts = (await mcp.ok("list_accounts", {"provider": "shared"}))["accounts"]
    assert [(a["name"], a["kind"], a["state"]) for a in accounts] == [("shared/oscar", "oauth", "ready"),
                                                                     ("shared/peggy", "api_key", "ready")]

    disabled = lab.cli("accounts", "disable", "shared/oscar")
    assert disabled.returncode == 0, disabled.stderr
    oscar = await mcp.ok("account_status", {"account": "shared/oscar"})
    assert oscar["enabled"] is False and oscar["state"] == "disabled"
    r = await mcp.ok("proxy_request", models("shared"))
    assert trail(r) == [("shared/peggy", 200, "ok")] and r["body"]["subject"] == "peggy"
    assert_no_secrets([added.stdout, added.stderr, disabled.stdout, disabled.stderr], lab.secrets())


async def test_a_refresh_done_by_the_server_is_used_by_the_cli(mcp: Session, lab: Lab) -> None:
    """The server refreshes trent's token; pool.json's generation moves and `authpool request` uses the new token."""
    generation = lab.account_json("sync/trent")["secret_generation"]
    lab.lp.expire_access_tokens("trent")
    before = lab.lp.snapshot()
    r = await mcp.ok("proxy_request", models("sync"))
    assert trail(r) == [("sync/trent", 401, "refreshed"), ("sync/trent", 200, "ok")]
    assert lab.account_json("sync/trent")["secret_generation"] == generation + 1

    cli = await anyio.to_thread.run_sync(lambda: lab.cli("request", "sync", "GET", "/v1/models"))
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["subject"] == "trent"
    assert "HTTP 200 from sync/trent" in cli.stderr and "refreshed" not in cli.stderr
    after = lab.lp.snapshot()
    assert after["refresh_calls"] - before["refresh_calls"] == 1  # the server's; the CLI needed none
    assert after["invalid_grant_count"] == before["invalid_grant_count"] == 0
    assert_no_secrets([cli.stdout, cli.stderr], lab.secrets())


async def test_usage_counters_batched_while_serving_are_written_when_the_server_stops(lab: Lab) -> None:
    """A served request's counter stays in memory while the server runs (no write is due); stopping writes it."""
    before = lab.account_json("flush/walter")["counters"]["requests"]
    with pool_env(lab.home):
        pool = Pool.open(lab.home)
        pool.usage.interval = 3600.0  # nothing becomes due while this test runs: only the stop writes
        try:
            async with Client(build_server(pool)) as client:
                r = await client.call_tool("proxy_request", models("flush"))
                assert r.is_error is False and r.structured_content["status"] == 200
                assert lab.account_json("flush/walter")["counters"]["requests"] == before
            assert lab.account_json("flush/walter")["counters"]["requests"] == before + 1
        finally:
            pool.close()
