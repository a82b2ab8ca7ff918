"""The providers of one home: the built-in ones merged with the user's ``config.toml``.

A bad file is one clear error naming the file, the line and the key; an unknown key or table
is an error too, with the closest valid name, never silently ignored.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from authpool.errors import ConfigError, ProviderNotFound
from authpool.providers.builtin import BUILTIN_PROVIDERS
from authpool.providers.provider import OAuthSettings, Provider

__all__ = ["Providers"]


class Providers:
    """The built-in providers merged with the user's ``config.toml``."""

    def __init__(self, providers: dict[str, Provider], configured: list[str] | None = None) -> None:
        self._providers = providers
        self.configured = sorted(configured or [])  # ids config.toml defines or overrides

    @classmethod
    def load(cls, config_file: Path | None) -> Providers:
        """Built-ins plus ``config_file`` (missing file: built-ins only).

        Raises:
            ConfigError: the file is not valid TOML, has an unknown key or table, or a provider
                entry is invalid; the message names the file, the line and (for a misspelt name)
                the closest valid one.
        """
        if config_file is None or not config_file.exists():
            return cls(dict(BUILTIN_PROVIDERS))
        text = config_file.read_text(encoding="utf-8", errors="replace")
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{config_file}: {e}") from None
        except RecursionError:
            raise ConfigError(f"{config_file}: nested too deeply") from None
        _check_top_level(doc, text, config_file)
        return cls(_merge(doc, text, config_file), list(doc.get("providers", {})))

    def get(self, provider_id: str) -> Provider:
        """The provider with this id.

        Raises:
            ProviderNotFound: unknown id (the message lists the known ones).
        """
        try:
            return self._providers[provider_id]
        except KeyError:
            raise ProviderNotFound(provider_id, list(self._providers)) from None

    def __iter__(self) -> Any:
        return iter(self._providers.values())

    def ids(self) -> list[str]:
        return sorted(self._providers)


def _merge(doc: dict[str, Any], text: str, path: Path) -> dict[str, Provider]:
    out = dict(BUILTIN_PROVIDERS)
    section = doc.get("providers", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path} line {_line_of(text, 'providers')}: 'providers' must be a table")
    for pid, entry in section.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{path} line {_line_of(text, f'providers.{pid}')}: providers.{pid} must be a table")
        base = out[pid].model_dump(exclude_defaults=True) if pid in out else {}
        merged = _deep_merge(base, entry)
        merged["id"] = pid
        try:
            out[pid] = Provider.model_validate(merged)
        except ValidationError as e:
            errors = e.errors()
            err = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
            key = ".".join(str(p) for p in ("providers", pid, *err["loc"]))
            line = _line_of(text, key)
            if err["type"] == "extra_forbidden":
                *parents, name = (str(p) for p in err["loc"])
                table = ".".join(("providers", pid, *parents))
                raise ConfigError(f"{path} line {line}: unknown key '{name}' in [{table}]"
                                  f"{_suggest(name, _keys_of(parents))}") from None
            raise ConfigError(f"{path} line {line}: {key}: {err['msg']}") from None
    return out


_TOP_LEVEL = ("providers", "store")  # [store] is read by authpool.storage.selection


def _check_top_level(doc: dict[str, Any], text: str, path: Path) -> None:
    """Refuse what config.toml cannot mean: anything but ``[providers.ID]`` tables at the top."""
    for key, value in doc.items():
        if key in _TOP_LEVEL:
            continue
        what = f"table [{key}]" if isinstance(value, dict) else f"key '{key}'"
        close = difflib.get_close_matches(key, _TOP_LEVEL, n=1)
        hint = (f" (did you mean [{close[0]}]?)" if close
                else " (config.toml has only [providers.ID] tables and [store])")
        raise ConfigError(f"{path} line {_line_of(text, key)}: unknown {what}{hint}")


def _keys_of(parents: list[str]) -> list[str]:
    """The keys valid in the provider table at ``parents`` (``[]`` for the provider itself)."""
    if not parents:
        return [k for k in Provider.model_fields if k != "id"]
    if parents == ["oauth"]:
        return list(OAuthSettings.model_fields)
    return []


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (valid keys: {', '.join(sorted(valid))})" if valid else ""


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _line_of(text: str, dotted: str) -> int:
    """Best-effort line number of ``dotted`` (a.b.c) in TOML text: the key's line or its table's."""
    parts = dotted.split(".")
    table: list[str] = []
    best = 1
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        header = re.match(r"^\[+\s*([^\]]+?)\s*\]+", line)
        if header:
            table = [p.strip().strip('"') for p in header.group(1).split(".")]
            if table[: len(parts)] == parts:
                return n  # the table itself, or the first table inside it
            if table == parts[: len(table)]:
                best = n
            continue
        key = re.match(r"^([A-Za-z0-9_\-\"']+)\s*=", line)
        if key and [*table, key.group(1).strip("\"'")] == parts[: len(table) + 1] and len(table) + 1 <= len(parts):
            return n
    return best
