"""A provider's model list, fetched through the pool and cached in the home.

An agent has to name a model before it can send a request; the provider's own list is the
truth. :func:`list_models` asks for it through the pool, so the call rotates, cools down and
refreshes like any other request, and keeps the answer in the home (``models.json``, 0600) for
the provider's ``models_ttl`` (a day by default): models change rarely, and the list is the
same for every request until then. ``refresh=True`` asks the provider again.

Three list styles cover the built-in providers, each with its own pagination:

=============  ============================  ==================================================
style          default path                  pages
=============  ============================  ==================================================
``openai``     ``/v1/models`` (``/models``   one page: ``{"data": [{"id", "created", ...}]}``
               under a base URL ending in
               ``/v1``)
``anthropic``  ``/v1/models``                ``?limit=1000&after_id=`` while ``has_more``
``gemini``     ``/v1beta/models``            ``?pageSize=1000&pageToken=`` while ``nextPageToken``
=============  ============================  ==================================================

A provider names its style with ``models_style`` (and ``models_path``) in ``config.toml``;
without one it is read from how the provider takes API keys (``x-api-key``: Anthropic's,
``x-goog-api-key``: Google's, else OpenAI's). ``models_style = "none"`` says the provider has no
list (the ChatGPT backend's is not a public API).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from authpool.errors import ConfigError, PoolError, RequestFailed
from authpool.pool import Pool
from authpool.providers import Provider
from authpool.storage.atomicfile import write_atomic

__all__ = ["CACHE_FILE", "MAX_PAGES", "ModelInfo", "ModelList", "list_models", "listing_of"]

CACHE_FILE = "models.json"
MAX_PAGES = 20  # a provider that pages forever must not hold a call forever
_PATHS = {"openai": "/v1/models", "anthropic": "/v1/models", "gemini": "/v1beta/models"}


@dataclass(frozen=True)
class ModelInfo:
    """One model as the provider lists it (the fields it gives; ``id`` is what a request names)."""

    id: str
    display_name: str | None = None
    created: float | None = None
    input_token_limit: int | None = None
    output_token_limit: int | None = None


@dataclass(frozen=True)
class ModelList:
    """A provider's models, when they were fetched, until when the copy is used, and who served it."""

    provider: str
    models: list[ModelInfo]
    fetched_at: float
    expires_at: float
    cached: bool
    namespace: str | None = None
    account: str | None = None  # provider/label of the account that served the fetch (None: from the cache)
    attempts: int = 0
    notes: list[str] = field(default_factory=list)


def listing_of(provider: Provider) -> tuple[str, str]:
    """``(style, path)`` of ``provider``'s model list.

    Raises:
        ConfigError: the provider says it has none (``models_style = "none"``).
    """
    configured = provider.models_style
    if configured == "none":
        raise ConfigError(f"{provider.id} has no model list authpool knows how to read; set models_style "
                          f"(openai, anthropic or gemini) and models_path under [providers.{provider.id}] in "
                          "config.toml if it has one")
    style: str = configured or {"header:x-api-key": "anthropic",
                                "header:x-goog-api-key": "gemini"}.get(provider.auth, "openai")
    path = provider.models_path
    if path is None:
        base_path = (provider.base_url or "").split("://", 1)[-1].partition("/")[2].rstrip("/")
        path = "/models" if style == "openai" and base_path.endswith("v1") else _PATHS[style]
    return style, path


async def list_models(pool: Pool, provider: str, *, refresh: bool = False, namespace: str | None = None,
                      now: float | None = None) -> ModelList:
    """``provider``'s models: the cached copy while it is fresh, else fetched through the pool.

    Raises:
        ProviderNotFound: unknown provider.
        ConfigError: the provider has no model list.
        RequestFailed: the provider refused (after rotating) or answered something unreadable;
            every account cooling (``AllAccountsCooling``), no account (``NoAccounts``).
    """
    p = pool.provider(provider)
    style, path = listing_of(p)
    now = time.time() if now is None else now
    key = f"{p.id}@{namespace}" if namespace else p.id
    if not refresh:
        cached = _cached(pool, key, now)
        if cached is not None:
            return cached
    models, account, attempts = await _fetch(pool, p.id, style, path, namespace)
    listing = ModelList(provider=p.id, namespace=namespace, models=models, fetched_at=now,
                        expires_at=now + p.models_ttl, cached=False, account=account, attempts=attempts)
    _store(pool, key, listing)
    return listing


async def _fetch(pool: Pool, provider: str, style: str, path: str,
                 namespace: str | None) -> tuple[list[ModelInfo], str, int]:
    models: list[ModelInfo] = []
    params: dict[str, str] = {"limit": "1000"} if style == "anthropic" else {"pageSize": "1000"} \
        if style == "gemini" else {}
    account, attempts = "", 0
    async with pool.client(provider, namespace=namespace) as client:
        for _ in range(MAX_PAGES):
            response = await client.get(path, params=params)
            result = response.extensions["authpool"]
            account, attempts = result.account, attempts + len(result.attempts)
            if response.status_code >= 400:
                raise RequestFailed(f"{provider} answered {response.status_code} to GET {path} for its model list"
                                    f"{_error_text(response.text)}", attempts=result.attempts)
            try:
                doc = response.json()
            except ValueError:
                raise RequestFailed(f"{provider}'s model list at {path} is not JSON") from None
            page, after = _parse(style, doc)
            models += page
            if after is None:
                break
            params = {**params, "after_id" if style == "anthropic" else "pageToken": after}
    return models, account, attempts


def _parse(style: str, doc: Any) -> tuple[list[ModelInfo], str | None]:
    """One page: its models and where the next page starts (None: the last page)."""
    if not isinstance(doc, dict):
        raise RequestFailed(f"a {style}-style model list is a JSON object, not {type(doc).__name__}")
    if style == "gemini":
        out = [ModelInfo(id=str(m["name"]).removeprefix("models/"), display_name=m.get("displayName"),
                         input_token_limit=m.get("inputTokenLimit"), output_token_limit=m.get("outputTokenLimit"))
               for m in doc.get("models") or [] if isinstance(m, dict) and m.get("name")]
        token = doc.get("nextPageToken")
        return out, str(token) if token else None
    out = [ModelInfo(id=str(m["id"]), display_name=m.get("display_name"), created=_created(m))
           for m in doc.get("data") or [] if isinstance(m, dict) and m.get("id")]
    if style == "anthropic" and doc.get("has_more") and doc.get("last_id"):
        return out, str(doc["last_id"])
    return out, None


def _created(model: dict[str, Any]) -> float | None:
    created = model.get("created")
    if isinstance(created, int | float):
        return float(created)
    stamp = model.get("created_at")
    if isinstance(stamp, str):
        from datetime import datetime

        try:
            return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _error_text(text: str) -> str:
    text = " ".join(text.split())[:200]
    return f": {text}" if text else ""


def _cached(pool: Pool, key: str, now: float) -> ModelList | None:
    entry = _load(pool).get(key)
    if not isinstance(entry, dict) or float(entry.get("expires_at", 0)) <= now:
        return None
    try:
        models = [ModelInfo(**m) for m in entry["models"]]
        return ModelList(provider=entry["provider"], namespace=entry.get("namespace"), models=models,
                         fetched_at=float(entry["fetched_at"]), expires_at=float(entry["expires_at"]), cached=True)
    except (KeyError, TypeError, ValueError):
        return None  # a copy from another version of authpool: fetch anew


def _load(pool: Pool) -> dict[str, Any]:
    try:
        doc = json.loads((pool.home.path / CACHE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _store(pool: Pool, key: str, listing: ModelList) -> None:
    """Keep ``listing`` (a cache: a write that fails costs a fetch next time, nothing else)."""
    doc = _load(pool)
    entry = asdict(listing)
    for dropped in ("cached", "account", "attempts", "notes"):
        entry.pop(dropped)
    doc[key] = entry
    with contextlib.suppress(PoolError):
        write_atomic(pool.home.path / CACHE_FILE, json.dumps(doc, indent=1, sort_keys=True).encode())
