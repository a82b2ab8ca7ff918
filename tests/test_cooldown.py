"""How long a rate-limited account rests: every header dialect, the exponential default, persistence.

Unit tests drive :func:`pool.cooldown.decide_cooldown` with each built-in provider's own
``reset_headers``; end-to-end tests let the loopback provider answer 429 in each of its
styles and read the cooldown back from ``pool.json``.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest

from authpool import AllAccountsCooling
from authpool.providers.builtin import BUILTIN_PROVIDERS
from authpool.providers.cooldown import MAX_HONOURED, decide_cooldown, parse_duration, parse_reset, parse_retry_after
from authpool.server.loopback import LoopbackRequest, LoopbackResponse
from tests.conftest import LoopbackPool, run_cli

NOW = 1_800_000_000.0  # a fixed "now" for the unit tests: whole seconds, so dates round-trip exactly


def decide(headers: dict[str, str], provider: str = "openai-compatible", level: int = 0, now: float = NOW) -> Any:
    p = BUILTIN_PROVIDERS[provider]
    return decide_cooldown(headers, now=now, reset_headers=p.reset_headers, default_cooldown=p.default_cooldown,
                           max_cooldown=p.max_cooldown, level=level)


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- Retry-After and retry-after-ms ---------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [("30", 30.0), ("0", 0.0), ("1.5", 1.5), (" 120 ", 120.0)])
def test_retry_after_in_seconds_is_honoured(value: str, seconds: float) -> None:
    """Retry-After: N (delta-seconds) cools the account for exactly N seconds."""
    d = decide({"Retry-After": value})
    assert (d.until - NOW, d.source, d.is_default) == (seconds, "retry-after", False)


def test_retry_after_as_an_http_date_is_honoured() -> None:
    """Retry-After: <HTTP-date> cools the account until that moment."""
    d = decide({"Retry-After": email.utils.formatdate(NOW + 90, usegmt=True)})
    assert (d.until, d.source, d.is_default) == (NOW + 90, "retry-after", False)


def test_retry_after_as_an_obsolete_asctime_date_is_honoured_too() -> None:
    """RFC 9110 recipients must accept the obsolete date formats; asctime is one."""
    stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(NOW + 45))
    assert decide({"retry-after": stamp}).until == NOW + 45


def test_retry_after_ms_is_honoured() -> None:
    """retry-after-ms: N (OpenAI, Azure) cools the account for N milliseconds."""
    d = decide({"retry-after-ms": "1500"})
    assert (d.until - NOW, d.source, d.is_default) == (1.5, "retry-after-ms", False)


def test_retry_after_wins_over_retry_after_ms_and_reset_headers() -> None:
    """The standard header is the most authoritative source."""
    d = decide({"retry-after": "7", "retry-after-ms": "60000", "x-ratelimit-reset-requests": "6m0s"}, "openai")
    assert (d.until - NOW, d.source) == (7, "retry-after")
    d = decide({"retry-after-ms": "2500", "x-ratelimit-reset-requests": "6m0s"}, "openai")
    assert (d.until - NOW, d.source) == (2.5, "retry-after-ms")


def test_header_names_are_matched_case_insensitively() -> None:
    """A plain dict with odd casing works like httpx's Headers."""
    assert decide({"RETRY-AFTER": "5"}).until == NOW + 5
    assert decide({"X-RateLimit-Reset-Requests": "3s"}, "openai").until == NOW + 3


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "soon"},
        {"retry-after": "-5"},
        {"retry-after": ""},
        {"retry-after": "nan"},
        {"retry-after": email.utils.formatdate(NOW - 3600, usegmt=True)},  # a date in the past
        {"retry-after-ms": "a while"},
        {"retry-after-ms": "nan"},
        {"retry-after-ms": "-100"},
        {"x-ratelimit-reset-requests": "soonish"},
        {"x-ratelimit-reset-requests": "nan"},
        {"x-ratelimit-reset-requests": "-3s"},
    ],
    ids=lambda h: repr(h)[:48],
)
def test_garbage_rate_limit_headers_fall_back_to_the_exponential_default(headers: dict[str, str]) -> None:
    """A value that does not parse, is negative, not a number or in the past is ignored, never a NaN cooldown."""
    d = decide(headers, "openai")
    assert math.isfinite(d.until)
    assert (d.until - NOW, d.source, d.is_default) == (30.0, "default", True)


@pytest.mark.parametrize("headers", [{"retry-after": "99999999"}, {"retry-after": "inf"},
                                     {"retry-after": str(18 * 86400)},
                                     {"retry-after-ms": "1e400"}, {"x-ratelimit-reset-requests": "9999h"}])
def test_absurdly_long_deadlines_are_capped_at_max_cooldown_and_probed_there(headers: dict[str, str]) -> None:
    """No header parks an account for longer than max_cooldown (an 18-day Retry-After has been seen):
    the account is probed again at the cap, and never later than MAX_HONOURED whatever the config."""
    d = decide(headers, "openai")
    assert math.isfinite(d.until)
    if headers.get("retry-after") == "inf" or headers.get("retry-after-ms") == "1e400":
        assert d.source == "default"  # infinity is no information at all
        return
    assert (d.until - NOW, d.capped) == (BUILTIN_PROVIDERS["openai"].max_cooldown, True)
    huge = decide_cooldown(headers, now=NOW, reset_headers=["x-ratelimit-reset-requests"], default_cooldown=30,
                           max_cooldown=10**9, level=0)
    assert huge.until - NOW <= MAX_HONOURED


# -- the exponential default ----------------------------------------------------------------------


@pytest.mark.parametrize(("level", "seconds"), [(0, 30), (1, 60), (2, 120), (3, 240), (6, 1920), (7, 3600),
                                                 (50, 3600)])
def test_without_reset_information_the_default_doubles_per_level_up_to_the_cap(level: int, seconds: float) -> None:
    """No header at all: default_cooldown * 2**level, capped at max_cooldown."""
    d = decide({}, level=level)
    assert (d.until - NOW, d.source, d.is_default) == (seconds, "default", True)


# -- each built-in provider's reset headers ------------------------------------------------------------


_RESETS = [
    # provider, headers, expected cooldown (s), expected source
    ("anthropic", {"anthropic-ratelimit-requests-reset": rfc3339(NOW + 42)}, 42, "anthropic-ratelimit-requests-reset"),
    ("anthropic", {"anthropic-ratelimit-requests-reset": rfc3339(NOW + 10),
                   "anthropic-ratelimit-tokens-reset": rfc3339(NOW + 75)}, 75, "anthropic-ratelimit-tokens-reset"),
    ("anthropic", {"anthropic-ratelimit-input-tokens-reset": "2027-01-15T09:00:30.5+01:00"}, 30.5,
     "anthropic-ratelimit-input-tokens-reset"),
    ("anthropic", {"anthropic-ratelimit-output-tokens-reset": rfc3339(NOW + 5)}, 5,
     "anthropic-ratelimit-output-tokens-reset"),
    ("anthropic", {"anthropic-ratelimit-unified-reset": str(int(NOW + 3600))}, 3600,
     "anthropic-ratelimit-unified-reset"),
    ("anthropic", {"anthropic-ratelimit-unified-5h-reset": str(int(NOW + 5 * 3600)),
                   "anthropic-ratelimit-unified-7d-reset": str(int(NOW + 6 * 86400))}, 6 * 86400,
     "anthropic-ratelimit-unified-7d-reset"),
    ("openai", {"x-ratelimit-reset-requests": "6m0s"}, 360, "x-ratelimit-reset-requests"),
    ("openai", {"x-ratelimit-reset-requests": "20ms", "x-ratelimit-reset-tokens": "1s"}, 1,
     "x-ratelimit-reset-tokens"),
    ("openai", {"x-ratelimit-reset-tokens": "1h2m3.5s"}, 3723.5, "x-ratelimit-reset-tokens"),
    ("openai", {"x-ratelimit-reset-requests": "2"}, 2, "x-ratelimit-reset-requests"),
    ("openai-compatible", {"x-ratelimit-reset-requests": "45s"}, 45, "x-ratelimit-reset-requests"),
    ("github-copilot", {"x-ratelimit-reset": str(int(NOW + 600))}, 600, "x-ratelimit-reset"),
    # Headers a provider does not use are ignored: the default applies.
    ("gemini", {"x-ratelimit-reset-requests": "6m0s", "x-ratelimit-reset": str(int(NOW + 600)),
                "anthropic-ratelimit-requests-reset": rfc3339(NOW + 42)}, 30, "default"),
    ("anthropic", {"x-ratelimit-reset-requests": "6m0s"}, 30, "default"),
    ("github-copilot", {"anthropic-ratelimit-requests-reset": rfc3339(NOW + 42)}, 30, "default"),
    # A reset already in the past tells nothing.
    ("github-copilot", {"x-ratelimit-reset": str(int(NOW - 60))}, 30, "default"),
]


@pytest.mark.parametrize(("provider", "headers", "seconds", "source"), _RESETS,
                         ids=[f"{p}-{'+'.join(h)[:60]}" for p, h, _, _ in _RESETS])
def test_each_built_in_provider_s_reset_headers_set_the_cooldown(
    provider: str, headers: dict[str, str], seconds: float, source: str
) -> None:
    """The latest deadline among the provider's own reset headers wins (up to max_cooldown); foreign headers
    are ignored."""
    assert set(BUILTIN_PROVIDERS) >= {"anthropic", "openai", "github-copilot", "gemini"}
    d = decide(headers, provider)
    assert d.source == source
    cap = BUILTIN_PROVIDERS[provider].max_cooldown  # a longer deadline is probed at the cap
    assert d.until - NOW == pytest.approx(min(seconds, cap))
    assert d.capped is (seconds > cap)
    assert d.is_default is (source == "default")


def test_gemini_has_no_reset_headers_of_its_own() -> None:
    """Gemini signals limits in the body only; with no Retry-After the default applies."""
    assert BUILTIN_PROVIDERS["gemini"].reset_headers == []
    assert decide({"retry-after": "12"}, "gemini").until == NOW + 12


def test_a_deadline_from_the_body_joins_the_reset_headers() -> None:
    """body_deadline competes with the reset headers; the latest wins."""
    p = BUILTIN_PROVIDERS["openai"]
    d = decide_cooldown({"x-ratelimit-reset-requests": "10s"}, now=NOW, reset_headers=p.reset_headers,
                        default_cooldown=30, max_cooldown=3600, level=0, body_deadline=NOW + 50)
    assert (d.until, d.source) == (NOW + 50, "body")


@pytest.mark.parametrize(("value", "seconds"), [("1s", 1), ("6m0s", 360), ("20ms", 0.02), ("1h", 3600),
                                                 ("1h2m3.5s", 3723.5), ("2.5", 2.5), ("", None), ("6x", None),
                                                 ("m", None)])
def test_go_style_durations_parse(value: str, seconds: float | None) -> None:
    """OpenAI's reset durations (Go syntax) and plain numbers parse to seconds; anything else is None."""
    assert parse_duration(value) == (pytest.approx(seconds) if seconds is not None else None)


def test_reset_values_parse_as_timestamps_epochs_or_durations() -> None:
    """parse_reset accepts RFC 3339, epoch seconds and durations, returning absolute times."""
    assert parse_reset(rfc3339(NOW + 1), NOW) == NOW + 1
    assert parse_reset(str(int(NOW + 7)), NOW) == NOW + 7
    assert parse_reset("90s", NOW) == NOW + 90
    assert parse_reset("2026-13-45T00:00:00Z", NOW) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", NOW) == 1445412480.0


# -- end to end through the loopback provider ------------------------------------------------------------


def _cooldown_of(acme: LoopbackPool, label: str, provider: str = "acme") -> tuple[float, str, float]:
    """(seconds the persisted cooldown lasts from when it was set, its reason, its until)."""
    cd = acme.account_json(label, provider)["cooldowns"]["*"]
    return cd["until"] - cd["set_at"], cd["reason"], cd["until"]


_STYLES = [
    # loopback style, provider configured on the loopback, path, expected seconds (retry_after 20), reason
    ("retry-after-seconds", "acme", "/v1/chat/completions", 20, "429 (retry-after)"),
    ("retry-after-date", "acme", "/v1/chat/completions", 20, "429 (retry-after)"),
    ("retry-after-ms", "acme", "/v1/chat/completions", 20, "429 (retry-after-ms)"),
    ("anthropic", "anthropic", "/v1/messages", 20, "429 (anthropic-ratelimit-"),
    ("openai", "openai", "/v1/chat/completions", 20, "429 (x-ratelimit-reset-"),
    ("none", "acme", "/v1/chat/completions", 30, "429 (default)"),
]


@pytest.mark.parametrize(("style", "provider", "path", "seconds", "reason"), _STYLES, ids=[s[0] for s in _STYLES])
def test_each_loopback_rate_limit_style_persists_about_the_right_cooldown(
    acme: LoopbackPool, style: str, provider: str, path: str, seconds: float, reason: str
) -> None:
    """A real 429 in each header dialect: pool.json records a cooldown of about the advertised length."""
    if provider != "acme":
        acme.configure(provider)  # the built-in provider, with its own reset headers, aimed at the loopback
    acme.add_oauth("a", "b", provider=provider)
    acme.lp.set_rate_limit("a", 0, style, retry_after=20)
    with acme.pool.sync_client(provider) as client:
        r = client.post(path, json={"model": "m"})
    assert r.status_code == 200
    assert r.extensions["authpool"].account == f"{provider}/b"
    lasts, why, until = _cooldown_of(acme, "a", provider)
    # Dates and RFC 3339 stamps have whole seconds and are rounded up by the provider.
    assert seconds - 0.5 <= lasts <= seconds + 1.5
    assert why.startswith(reason)
    assert until > time.time() + seconds - 5
    assert acme.account_json("a", provider)["backoff_level"] == (1 if style == "none" else 0)


def test_github_copilot_s_epoch_reset_header_sets_the_cooldown_end_to_end(acme: LoopbackPool) -> None:
    """x-ratelimit-reset (epoch seconds) on a real 429 from the github-copilot provider."""
    reset_at = int(time.time()) + 120

    def limited(request: LoopbackRequest) -> LoopbackResponse:
        if "authorization" not in request.headers:
            return LoopbackResponse.error(401, "no credentials")
        return LoopbackResponse.error(429, "rate limited", {"x-ratelimit-reset": str(reset_at)})

    acme.lp.routes[("POST", "/v1/limited")] = limited
    acme.configure("github-copilot")
    acme.add_oauth("a", provider="github-copilot")
    with acme.pool.sync_client("github-copilot") as client, pytest.raises(AllAccountsCooling):
        client.post("/v1/limited", json={})
    _, why, until = _cooldown_of(acme, "a", "github-copilot")
    assert (until, why) == (reset_at, "429 (x-ratelimit-reset)")


def test_a_garbage_retry_after_ms_never_corrupts_the_pool_file(acme: LoopbackPool) -> None:
    """retry-after-ms: NaN falls back to the default cooldown; every process can still read the pool."""

    def limited(request: LoopbackRequest) -> LoopbackResponse:
        return LoopbackResponse.error(429, "rate limited", {"retry-after-ms": "NaN"})

    acme.lp.routes[("POST", "/v1/limited")] = limited
    acme.add_oauth_accounts(1)
    with acme.pool.sync_client("acme") as client, pytest.raises(AllAccountsCooling):
        client.post("/v1/limited", json={})
    lasts, why, _ = _cooldown_of(acme, "a")
    assert (lasts, why) == (30.0, "429 (default)")
    for account in acme.pool_json()["accounts"]:  # each row as stored, parsed strictly
        json.loads(json.dumps(account), parse_constant=lambda c: pytest.fail(f"{c} in the stored account"))
    status = run_cli("status")
    assert status.returncode == 0, status.stderr
    assert "1 cooling" in status.stdout


def _sleep_until(ts: float) -> None:
    while (left := ts - time.time()) > 0:
        time.sleep(left + 0.01)


def test_the_default_cooldown_doubles_on_a_repeat_and_resets_after_a_success(acme: LoopbackPool) -> None:
    """429s without reset info: 0.25 s, 0.5 s, 1 s; after a success the very next one is 0.25 s again."""
    acme.configure("acme", default_cooldown=0.25, max_cooldown=60.0)
    acme.add_oauth_accounts(1)
    acme.lp.set_rate_limit("a", 0, "none")
    lasted = []
    with acme.pool.sync_client("acme") as client:
        for _ in range(3):
            with pytest.raises(AllAccountsCooling):
                client.post("/v1/chat/completions", json={})
            lasts, why, until = _cooldown_of(acme, "a")
            lasted.append(lasts)
            _sleep_until(until)
        assert lasted == pytest.approx([0.25, 0.5, 1.0])
        assert acme.account_json("a")["backoff_level"] == 3

        acme.lp.clear_rate_limit("a")
        assert client.post("/v1/chat/completions", json={}).status_code == 200

        # Same process, same client, right after the success: the level starts over.
        acme.lp.set_rate_limit("a", 0, "none")
        with pytest.raises(AllAccountsCooling):
            client.post("/v1/chat/completions", json={})
    lasts, _, _ = _cooldown_of(acme, "a")
    assert lasts == pytest.approx(0.25)
    assert acme.account_json("a")["backoff_level"] == 1


def test_a_success_in_another_process_resets_the_default_cooldown(acme: LoopbackPool) -> None:
    """The backoff level lives in pool.json: a success served by the CLI resets it for everyone."""
    acme.configure("acme", default_cooldown=0.3, max_cooldown=60.0)
    acme.add_oauth_accounts(1)
    acme.lp.set_rate_limit("a", 0, "none")
    with acme.pool.sync_client("acme") as client:
        for _ in range(2):
            with pytest.raises(AllAccountsCooling):
                client.post("/v1/chat/completions", json={})
            _sleep_until(_cooldown_of(acme, "a")[2])
    assert acme.account_json("a")["backoff_level"] == 2
    acme.lp.clear_rate_limit("a")
    cli = run_cli("request", "acme", "GET", "/v1/models")
    assert cli.returncode == 0, cli.stderr
    assert acme.account_json("a")["backoff_level"] == 0


def test_a_reset_header_after_default_cooldowns_resets_the_level(acme: LoopbackPool) -> None:
    """A 429 that does say when it resets is honoured as said, and the exponential level starts over."""
    acme.configure("acme", default_cooldown=0.3, max_cooldown=60.0)
    acme.add_oauth_accounts(1)
    acme.lp.set_rate_limit("a", 0, "none")
    with acme.pool.sync_client("acme") as client:
        for _ in range(2):
            with pytest.raises(AllAccountsCooling):
                client.post("/v1/chat/completions", json={})
            _sleep_until(_cooldown_of(acme, "a")[2])
        acme.lp.set_rate_limit("a", 0, "retry-after-seconds", retry_after=2)
        with pytest.raises(AllAccountsCooling):
            client.post("/v1/chat/completions", json={})
    lasts, why, _ = _cooldown_of(acme, "a")
    assert lasts == pytest.approx(2.0)
    assert why == "429 (retry-after)"
    assert acme.account_json("a")["backoff_level"] == 0


def test_a_cooldown_ends_on_its_own(acme: LoopbackPool) -> None:
    """Once the persisted cooldown has passed the account is used again, by this process and others."""
    acme.add_oauth_accounts(2)
    acme.lp.set_rate_limit("a", 0, "retry-after-ms", retry_after=0.3)
    with acme.pool.sync_client("acme") as client:
        assert client.post("/v1/chat/completions", json={}).json()["subject"] == "b"
        _sleep_until(_cooldown_of(acme, "a")[2])
        acme.lp.clear_rate_limit("a")
        r = client.post("/v1/chat/completions", json={})
    assert r.json()["subject"] == "a"
    assert isinstance(r, httpx2.Response)
