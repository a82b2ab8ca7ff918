"""Rate limits: the styles a 429 can come in, its bodies and reset headers, and quota windows."""

from __future__ import annotations

import email.utils
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from authpool.server.loopback.models import LoopbackResponse, error_body

RATE_LIMIT_STYLES: Final = frozenset(
    {"retry-after-seconds", "retry-after-date", "retry-after-ms", "anthropic", "openai", "none",
     # Deadlines carried elsewhere than Retry-After, each shape on its own (see limit_body):
     "codex-resets-at", "codex-resets-in", "google-retry-info", "google-quota-reset", "anthropic-unified"}
)
#: Styles of the reset headers a subject's *successful* answers can carry (``set_quota_window``).
QUOTA_WINDOW_STYLES: Final = frozenset({"anthropic", "anthropic-unified", "openai"})


def go_duration(seconds: float) -> str:
    """Format a duration the way OpenAI's ``x-ratelimit-reset-*`` headers do (Go style).

    Examples: ``20ms``, ``1s``, ``6m0s``, ``1h1m1.5s``.  Rounded *up* to the millisecond so
    a client that waits exactly this long never retries early.
    """
    ms = max(0, math.ceil(round(seconds * 1000, 3)))
    if ms < 1000:
        return f"{ms}ms"
    hours, rem = divmod(ms, 3_600_000)
    minutes, rem = divmod(rem, 60_000)
    secs = str(rem // 1000)
    if rem % 1000:
        secs += f".{rem % 1000:03d}".rstrip("0")
    out = ""
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return f"{out}{secs}s"


@dataclass
class RateLimit:
    """Per-subject limit: ``after`` successes, then 429 for ``retry_after`` seconds."""

    after: int | None
    style: str
    retry_after: float
    successes: int = 0
    limited_since: float | None = None



def check_style(style: str) -> None:
    if style not in RATE_LIMIT_STYLES:
        raise ValueError(f"unknown rate_limit_style {style!r}; expected one of {sorted(RATE_LIMIT_STYLES)}")


def reset_headers(style: str, remaining: float, now: float) -> dict[str, str]:  # noqa: PLR0911 - one per dialect
    """Rate-limit reset information in each dialect the product must parse, ``remaining`` s after ``now``.

    All values are rounded *up*, so a client honouring them never comes back too early
    (after shaving float noise: 90.00000000001 s must read as 90, not 91).
    """
    remaining = round(remaining, 6)
    wall = round(now + remaining, 6)
    if style == "retry-after-seconds":
        return {"Retry-After": str(math.ceil(remaining))}
    if style == "retry-after-date":
        return {"Retry-After": email.utils.formatdate(math.ceil(wall), usegmt=True)}
    if style == "retry-after-ms":
        return {"retry-after-ms": str(math.ceil(remaining * 1000))}
    if style == "anthropic":
        stamp = datetime.fromtimestamp(math.ceil(wall), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": stamp,
            "anthropic-ratelimit-tokens-reset": stamp,
        }
    if style == "anthropic-unified":
        # A Claude subscription's unified limit: the weekly window is exhausted (it decides),
        # the five-hour one still has room and resets sooner. Epoch seconds, as Anthropic sends.
        return {
            "anthropic-ratelimit-unified-status": "rejected",
            "anthropic-ratelimit-unified-5h-status": "allowed",
            "anthropic-ratelimit-unified-5h-reset": str(math.ceil(now + remaining / 4)),
            "anthropic-ratelimit-unified-7d-status": "rejected",
            "anthropic-ratelimit-unified-7d-reset": str(math.ceil(wall)),
            "anthropic-ratelimit-unified-representative-claim": "seven_day",
        }
    if style == "openai":
        duration = go_duration(remaining)
        return {
            "x-ratelimit-limit-requests": "50",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": duration,
            "x-ratelimit-reset-tokens": duration,
        }
    return {}


def spend(limit: RateLimit, now: float) -> float | None:
    """Count one request at ``now`` against ``limit``: None if allowed, else the seconds until it resets."""
    if limit.after is None:
        return None
    if limit.limited_since is not None and now - limit.limited_since >= limit.retry_after:
        limit.successes, limit.limited_since = 0, None
    if limit.successes < limit.after:
        limit.successes += 1
        return None
    if limit.limited_since is None:
        limit.limited_since = now
    return max(0.0, limit.limited_since + limit.retry_after - now)



def limit_response(style: str, remaining: float, model: str | None, now: float) -> LoopbackResponse:
    """The 429 for ``style``, resetting ``remaining`` seconds after ``now``."""
    return LoopbackResponse.json(429, limit_body(style, remaining, model, now), reset_headers(style, remaining, now))


def limit_body(style: str, remaining: float, model: str | None, now: float) -> dict[str, Any]:
    """A 429 body as each provider writes it.

    ``codex-*``: ChatGPT/Codex usage limits (``usage_limit_reached`` with ``resets_at`` epoch
    seconds, or ``resets_in_seconds``); ``google-*``: a ``RESOURCE_EXHAUSTED`` status whose
    details carry ``RetryInfo.retryDelay`` (Gemini API) or ``ErrorInfo.metadata.quotaResetDelay``
    (Code Assist), and a ``QuotaFailure`` naming the model; otherwise Anthropic's shape, or
    OpenAI's "Rate limit reached for MODEL in organization …" when the limit is per model.
    """
    remaining = round(remaining, 6)
    if style in ("codex-resets-at", "codex-resets-in"):
        error: dict[str, Any] = {"type": "usage_limit_reached", "message": "The usage limit has been reached",
                                 "plan_type": "plus"}
        if style == "codex-resets-at":
            error["resets_at"] = math.ceil(now + remaining)
        else:
            error["resets_in_seconds"] = math.ceil(remaining)
        return {"error": error}
    if style in ("google-retry-info", "google-quota-reset"):
        dims = {"location": "global", **({"model": model} if model else {})}
        details: list[dict[str, Any]] = [{
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel", "quotaDimensions": dims,
                            "quotaValue": "15"}],
        }]
        if style == "google-retry-info":
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": f"{math.ceil(remaining)}s"})
        else:
            stamp = datetime.fromtimestamp(now + remaining, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            details.append({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "QUOTA_EXHAUSTED",
                            "domain": "cloudcode-pa.googleapis.com",
                            "metadata": {"uiMessage": "true", **({"model": model} if model else {}),
                                         "quotaResetDelay": go_duration(remaining),
                                         "quotaResetTimeStamp": stamp}})
        return {"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
                          "status": "RESOURCE_EXHAUSTED", "details": details}}
    if model is not None:
        return {"error": {"message": f"Rate limit reached for {model} in organization org-loopback on requests "
                                     "per min (RPM): Limit 3, Used 3, Requested 1.",
                          "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
    return error_body(429, "rate limit exceeded")


def window_headers(style: str, remaining: float, now: float) -> dict[str, str]:
    """Reset headers a successful answer carries: the current quota window ends ``remaining`` s after ``now``."""
    wall = math.ceil(now + remaining)
    if style == "anthropic-unified":
        return {"anthropic-ratelimit-unified-status": "allowed", "anthropic-ratelimit-unified-5h-status": "allowed",
                "anthropic-ratelimit-unified-5h-reset": str(wall)}
    if style == "anthropic":
        stamp = datetime.fromtimestamp(wall, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "49",
                "anthropic-ratelimit-requests-reset": stamp}
    return {"x-ratelimit-limit-requests": "50", "x-ratelimit-remaining-requests": "49",
            "x-ratelimit-reset-requests": go_duration(remaining)}


#: How ``set_usage_windows`` reports a subscription's usage windows.
USAGE_WINDOW_STYLES: Final = frozenset({"anthropic-unified", "codex"})
_WINDOW_MINUTES: Final = {"5h": 300, "7d": 10080}


def usage_window_headers(style: str, windows: dict[str, tuple[float, float]], now: float) -> dict[str, str]:
    """Headers reporting usage windows ``{"5h": (used share, seconds to reset), "7d": ...}`` on every answer.

    ``anthropic-unified``: ``anthropic-ratelimit-unified-{5h,7d}-{utilization,reset,status}`` (a
    fraction, epoch seconds); ``codex``: ``x-codex-{primary,secondary}-*`` (percent, minutes,
    seconds to reset), primary being the shorter window.
    """
    out: dict[str, str] = {}
    ordered = sorted(windows.items(), key=lambda kv: _WINDOW_MINUTES.get(kv[0], 0))
    for position, (name, (used, reset_in)) in enumerate(ordered):
        if style == "anthropic-unified":
            prefix = f"anthropic-ratelimit-unified-{name}-"
            out[prefix + "utilization"] = f"{used:.4g}"
            out[prefix + "reset"] = str(math.ceil(now + reset_in))
            out[prefix + "status"] = "allowed" if used < 1 else "rejected"
        else:
            prefix = f"x-codex-{'primary' if position == 0 else 'secondary'}-"
            out[prefix + "used-percent"] = f"{used * 100:.4g}"
            out[prefix + "window-minutes"] = str(_WINDOW_MINUTES.get(name, 60))
            out[prefix + "reset-after-seconds"] = str(math.ceil(reset_in))
    return out
