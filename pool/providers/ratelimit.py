"""What a rate-limit answer's *body* says: when the limit resets, and which model it covers.

Headers are read by :mod:`pool.cooldown`. Bodies add:

- OpenAI / Codex usage limits: ``{"error": {"resets_at": <epoch>, "resets_in_seconds": N}}``;
- Google: ``RetryInfo.retryDelay`` (``"30s"``) and ``ErrorInfo.metadata.quotaResetDelay``
  (``"1h2m3s"``, ``"850ms"``) in ``error.details``, and the model in
  ``QuotaFailure.violations[].quotaDimensions.model``;
- a model named in the message, as OpenAI writes it ("Rate limit reached for gpt-4o in
  organization …") or in an ``error.model`` field.

When a limit names a model, only that model's scope of the account cools down; other models
keep using the account.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from authpool.providers.cooldown import parse_duration

__all__ = ["BodyLimit", "model_of_request", "read_body_limit"]

_MODEL_IN_MESSAGE = re.compile(
    r"\bfor (?:model )?[`'\"]?([A-Za-z0-9][\w.:\-/]{1,80}?)[`'\"]? in (?:organization|project)"
)
_MODEL_IN_PATH = re.compile(r"/models/([^/:?]+)")


@dataclass(frozen=True)
class BodyLimit:
    """A deadline (epoch seconds) and/or a model scope found in an error body."""

    deadline: float | None = None
    model: str | None = None


def read_body_limit(body: bytes | dict[str, Any] | None, now: float) -> BodyLimit:
    """Extract the latest reset deadline and the limited model from an error body, if any."""
    error = _error_object(body)
    if error is None:
        return BodyLimit()
    deadlines = _openai_deadlines(error, now)
    models: list[str] = []
    for detail in error.get("details") or []:
        if isinstance(detail, dict):
            deadlines += _google_deadlines(detail, now)
            models += _google_models(detail)
    if isinstance(error.get("model"), str):
        models.append(error["model"])
    message = error.get("message")
    if isinstance(message, str) and (m := _MODEL_IN_MESSAGE.search(message)):
        models.append(m.group(1))
    future = [d for d in deadlines if d > now]
    return BodyLimit(max(future) if future else None, models[0].lower() if models else None)


def _error_object(body: bytes | dict[str, Any] | None) -> dict[str, Any] | None:
    doc: Any = body
    if isinstance(body, bytes | bytearray):
        try:
            doc = json.loads(body) if body else None
        except ValueError:
            return None
    if not isinstance(doc, dict):
        return None
    error = doc.get("error", doc)
    return error if isinstance(error, dict) else None


def _openai_deadlines(error: dict[str, Any], now: float) -> list[float]:
    out = []
    resets_at = _number(error.get("resets_at"))
    if resets_at is not None:
        out.append(resets_at / 1000 if resets_at > 1e12 else resets_at)
    resets_in = _number(error.get("resets_in_seconds"))
    if resets_in is not None:
        out.append(now + resets_in)
    return out


def _google_deadlines(detail: dict[str, Any], now: float) -> list[float]:
    out = []
    if str(detail.get("@type", "")).endswith("RetryInfo"):
        d = parse_duration(str(detail.get("retryDelay", "")))
        if d is not None:
            out.append(now + d)
    metadata = detail.get("metadata")
    if isinstance(metadata, dict) and "quotaResetDelay" in metadata:
        d = parse_duration(str(metadata["quotaResetDelay"]))
        if d is not None:
            out.append(now + d)
    return out


def _google_models(detail: dict[str, Any]) -> list[str]:
    out = []
    metadata = detail.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("model"), str):
        out.append(metadata["model"])
    for violation in detail.get("violations") or []:
        dims = violation.get("quotaDimensions") if isinstance(violation, dict) else None
        if isinstance(dims, dict) and isinstance(dims.get("model"), str):
            out.append(dims["model"])
    return out


def model_of_request(path: str, body: bytes | None) -> str | None:
    """The model a request is for: the JSON body's ``model``, or a ``/models/<m>`` path (Gemini)."""
    if body:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("model"), str):
            return str(doc["model"]).lower()
    m = _MODEL_IN_PATH.search(path)
    return m.group(1).lower() if m else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
