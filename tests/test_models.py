"""Model discovery: `authpool.catalog.list_models`, `authpool models` and the `list_models` tool.

The provider is a LoopbackProvider that answers each list style (OpenAI's `/v1/models`,
Anthropic's paged `/v1/models`, Google's paged `/v1beta/models`, at most two models a page). The
list goes through the pool, so it rotates like any request, and is cached in the home.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authpool.catalog import list_models, listing_of
from authpool.providers import Provider
from tests.conftest import LoopbackPool, assert_no_secrets, home_texts, run_cli
from tests.mcp_support import Lab, lab_session

pytestmark = pytest.mark.anyio

NAMES = ["m-1", "m-2", "m-3", "m-4", "m-5"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize(("fields", "style", "path"), [
    ({"auth": "bearer"}, "openai", "/v1/models"),
    ({"auth": "header:x-api-key"}, "anthropic", "/v1/models"),
    ({"auth": "header:x-goog-api-key"}, "gemini", "/v1beta/models"),
    ({"auth": "bearer", "base_url": "http://127.0.0.1:9/v1"}, "openai", "/models"),
    ({"auth": "bearer", "models_style": "gemini", "models_path": "/api/models"}, "gemini", "/api/models"),
])
def test_a_providers_list_style_is_read_from_how_it_takes_keys_unless_configured(
        fields: dict[str, str], style: str, path: str) -> None:
    """x-api-key means Anthropic's list, x-goog-api-key Google's, else OpenAI's (under /v1: /models)."""
    assert listing_of(Provider(id="acme", base_url=fields.pop("base_url", "http://127.0.0.1:9"), **fields)) == (
        style, path)


@pytest.mark.parametrize(("style", "auth"), [("openai", "bearer"), ("anthropic", "header:x-api-key"),
                                             ("gemini", "bearer")])
async def test_every_page_of_each_style_is_fetched_through_the_pool(acme: LoopbackPool, style: str,
                                                                   auth: str) -> None:
    """Five models in pages of two (Anthropic, Google) or one page (OpenAI): all five, in order."""
    acme.configure(auth=auth, models_style=style)
    acme.add_api_key("k1")
    acme.lp.set_models(*NAMES)
    listing = await list_models(acme.pool, "acme")
    assert [m.id for m in listing.models] == NAMES
    assert listing.cached is False and listing.account == "acme/k1"
    if style == "gemini":
        assert listing.models[0].display_name == "M 1" and listing.models[0].input_token_limit == 1_048_576


async def test_the_list_is_cached_in_the_home_until_it_expires_and_refresh_asks_again(acme: LoopbackPool) -> None:
    """A second call makes no request; refresh=True and an expired copy ask the provider again."""
    acme.configure(models_ttl=600)
    acme.add_api_key("k1")
    first = await list_models(acme.pool, "acme", now=1000.0)
    calls = acme.lp.stats.api_calls_by_subject["k1"]
    again = await list_models(acme.pool, "acme", now=1500.0)
    assert again.cached is True and again.models == first.models and again.expires_at == 1600.0
    assert acme.lp.stats.api_calls_by_subject["k1"] == calls
    acme.lp.set_models("m-new")
    assert [m.id for m in (await list_models(acme.pool, "acme", refresh=True, now=1500.0)).models] == ["m-new"]
    assert (await list_models(acme.pool, "acme", now=5000.0)).cached is False
    assert acme.lp.stats.api_calls_by_subject["k1"] == calls + 2
    assert ((acme.home / "models.json").stat().st_mode & 0o777) == 0o600
    assert_no_secrets(home_texts(acme.home), acme.secrets())


async def test_a_rate_limited_account_rotates_like_any_request(acme: LoopbackPool) -> None:
    """The first account answers 429: the list comes from the next one, which the result names."""
    acme.add_api_key("a")
    acme.add_api_key("b")
    acme.lp.set_rate_limit("a", 0, retry_after=3600)
    listing = await list_models(acme.pool, "acme", refresh=True)
    assert listing.account == "acme/b" and listing.attempts == 2


def test_the_cli_prints_the_models_and_their_json(acme: LoopbackPool) -> None:
    """`authpool models acme` prints a table (where they came from on stderr); --json the full list."""
    acme.add_api_key("k1")
    r = run_cli("models", "acme")
    assert r.returncode == 0, r.stderr
    assert "loopback-small" in r.stdout and "fetched just now by acme/k1" in r.stderr
    r = run_cli("models", "acme", "--json")
    doc = json.loads(r.stdout)
    assert doc["cached"] is True and [m["id"] for m in doc["models"]] == ["loopback-small", "loopback-large"]
    assert_no_secrets([r.stdout, r.stderr], acme.secrets())


@pytest.mark.parametrize(("args", "fragment"), [
    (["models", "nope"], "unknown provider 'nope'"),
    (["models", "chatgpt"], "chatgpt has no model list authpool knows how to read"),
])
def test_a_provider_without_a_list_is_one_clear_line(home: Path, args: list[str], fragment: str) -> None:
    """An unknown provider, or one without a list, is one line on stderr and exit 1, never a traceback."""
    r = run_cli(*args)
    assert r.returncode == 1 and fragment in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr


async def test_the_list_models_tool_answers_through_the_pool(tmp_path: Path, acme: LoopbackPool) -> None:
    """The MCP tool returns the models with ISO times, whether it fetched them now, and never a secret."""
    lab = Lab(tmp_path / "lab", acme.lp, ["mods"])
    lab.add_api_key("mods", "mods-1")
    async with lab_session(lab) as s:
        out = await s.ok("list_models", {"provider": "mods"})
        assert [m["id"] for m in out["models"]] == ["loopback-small", "loopback-large"]
        assert out["cached"] is False and out["account"] == "mods/mods-1" and out["expires_at"].endswith("Z")
        assert (await s.ok("list_models", {"provider": "mods"}))["cached"] is True
        await s.err("list_models", {"provider": "chatgpt"}, "no model list")
