"""One reader per source: a tool's credentials file, or the environment, into a :class:`Scan`."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

from authpool.accounts.jwt import chatgpt_account_id, jwt_claims
from authpool.accounts.model import validate_provider_id
from authpool.accounts.secret import TokenSet
from authpool.errors import InvalidInput, NotFound
from authpool.importers.candidate import Candidate, Scan, Skipped
from authpool.importers.jsonfile import JsonObject, read_json_file
from authpool.providers.builtin import BUILTIN_PROVIDERS

__all__ = [
    "OPENCODE_PROVIDERS",
    "SOURCES",
    "TOOL_NAMES",
    "default_path",
    "env_variables",
    "read_claude_code",
    "read_codex",
    "read_env",
    "read_gemini",
    "read_opencode",
    "scan_source",
]

Source = Literal["opencode", "claude-code", "codex", "gemini", "env"]
SOURCES: tuple[Source, ...] = ("opencode", "claude-code", "codex", "gemini", "env")

# How each tool is named in messages ("shares its refresh token with Claude Code").
TOOL_NAMES: dict[str, str] = {
    "opencode": "opencode",
    "claude-code": "Claude Code",
    "codex": "the Codex CLI",
    "gemini": "the Gemini CLI",
    "env": "the environment",
}

# opencode provider ids that differ from ours. An id that names a known provider (built-in or
# from config.toml) is used as it is; anything else is skipped with a note.
OPENCODE_PROVIDERS: dict[str, str] = {"google": "gemini"}


def default_path(source: str, environ: Mapping[str, str] | None = None) -> Path:
    """The file a source is read from when no path is given.

    Raises:
        InvalidInput: unknown source, or ``env`` (which reads no file).
    """
    env = os.environ if environ is None else environ

    def home() -> Path:
        return Path(env["HOME"]) if env.get("HOME") else Path.home()

    if source == "opencode":
        data = env.get("XDG_DATA_HOME") or str(home() / ".local" / "share")
        return Path(data) / "opencode" / "auth.json"
    if source == "claude-code":
        return Path(env.get("CLAUDE_CONFIG_DIR") or home() / ".claude") / ".credentials.json"
    if source == "codex":
        return Path(env.get("CODEX_HOME") or home() / ".codex") / "auth.json"
    if source == "gemini":
        return home() / ".gemini" / "oauth_creds.json"
    if source == "env":
        raise InvalidInput("the env source reads environment variables, not a file")
    raise InvalidInput(f"unknown import source {source!r}; choose one of {', '.join(SOURCES)}")


def scan_source(source: str, path: Path | None = None, *, environ: Mapping[str, str] | None = None,
                provider_ids: Iterable[str] | None = None) -> Scan:
    """Read one source (``path`` or its default file; ``environ`` for ``env``).

    ``provider_ids`` are the known providers (default: the built-in ones; the CLI passes those
    of config.toml too): opencode entries and ``<PROVIDER>_API_KEY`` variables are matched
    against them.

    Raises:
        NotFound: the file does not exist.
        InvalidInput: the file cannot be read or is not what the source writes.
    """
    env = os.environ if environ is None else environ
    known = _known(provider_ids)
    if source == "env":
        if path is not None:
            raise InvalidInput("the env source reads environment variables; it takes no PATH")
        return read_env(env, known)
    file = path if path is not None else default_path(source, env)
    try:
        doc = read_json_file(file)
    except NotFound as e:
        hint = ""
        if path is None:
            hint = f"; log in with {TOOL_NAMES[source]} first, or give the file's path"
            if source == "claude-code" and sys.platform == "darwin":
                hint = "; on macOS Claude Code keeps its login in the Keychain, not in this file"
        raise NotFound(f"{e}{hint}") from None
    if source == "opencode":
        return read_opencode(file, doc, known)
    if source == "claude-code":
        return read_claude_code(file, doc)
    if source == "codex":
        return read_codex(file, doc)
    if source == "gemini":
        return read_gemini(file, doc)
    raise InvalidInput(f"unknown import source {source!r}; choose one of {', '.join(SOURCES)}")


def _tokens(access: str, refresh: str | None, expires: float | None, extra: dict[str, str] | None = None) -> TokenSet:
    """A token set; ``expires`` in seconds or milliseconds, else the access token's JWT ``exp``."""
    parsed = TokenSet.parse({"access_token": access, "refresh_token": refresh,
                             "expires_at": expires if expires and expires > 0 else None})
    expires_at = parsed.expires_at if parsed.expires_at is not None else _jwt_exp(access)
    return TokenSet(access_token=parsed.access_token, refresh_token=parsed.refresh_token,
                    expires_at=expires_at, extra=dict(extra or {}))


def _jwt_exp(token: str) -> float | None:
    exp = jwt_claims(token).get("exp")
    if isinstance(exp, int | float) and not isinstance(exp, bool) and exp > 0:
        return float(exp)
    return None


def _email(*tokens: str | None) -> str | None:
    """The first email claim found in these JWTs (OpenAI also nests it under a profile claim)."""
    for token in tokens:
        claims = jwt_claims(token)
        profile = claims.get("https://api.openai.com/profile")
        for value in (claims.get("email"), profile.get("email") if isinstance(profile, dict) else None):
            if isinstance(value, str) and "@" in value and value.isprintable() and len(value) <= 80:
                return value.strip().replace("/", "_")
    return None


def _known(provider_ids: Iterable[str] | None) -> set[str]:
    return set(BUILTIN_PROVIDERS) if provider_ids is None else set(provider_ids)


def _label(source: str, email: str | None = None) -> str:
    return (f"{source}-{email}" if email else source)[:100]


def _show(name: str) -> str:
    """A key from a source file, safe to print (they are ids, but the file is not ours)."""
    shown = name if name.isprintable() and len(name) <= 40 else name[:40].encode("unicode_escape").decode()
    return repr(shown)


def read_opencode(file: Path, doc: object, provider_ids: Iterable[str] | None = None) -> Scan:
    """opencode's ``auth.json``: ``{provider: {type: oauth|api|wellknown, ...}}``.

    ``oauth`` entries hold ``refresh``, ``access``, ``expires`` (ms) and, for OpenAI, ``accountId``;
    ``api`` entries hold ``key``. ``wellknown`` entries log in to a self-hosted server, not a
    provider, and are skipped, as are providers authpool does not know.
    """
    known = _known(provider_ids)
    top = JsonObject(file, doc)
    scan = Scan("opencode", str(file))
    for name in top.doc:
        origin = f"entry {_show(name)}"
        raw = top.doc[name]
        if isinstance(raw, dict) and raw.get("type") == "wellknown":  # keyed by the server's URL
            scan.skipped.append(Skipped(origin, "a login to a self-hosted well-known server, not a provider account"))
            continue
        provider = name if name in known else OPENCODE_PROVIDERS.get(name)
        if name == "openai" and isinstance(raw, dict) and raw.get("type") == "oauth":
            provider = "chatgpt"  # opencode's OpenAI login is a ChatGPT-plan login (the Codex backend)
        if provider is None:
            try:
                hint = f" (define [providers.{validate_provider_id(name)}] in config.toml to import it)"
            except InvalidInput:
                hint = ""
            scan.skipped.append(Skipped(origin, f"authpool has no provider {_show(name)}{hint}"))
            continue
        entry = top.obj(name)
        kind = entry.text("type", required=True)
        if kind == "oauth":
            access = entry.text("access", required=True)
            refresh = entry.text("refresh")
            account_id = entry.text("accountId") or (chatgpt_account_id(access) if provider == "chatgpt" else None)
            extra = {"account_id": account_id} if account_id else {}
            tokens = _tokens(access or "", refresh, entry.number("expires"), extra)
            label = _label("opencode", _email(access))
            scan.candidates.append(Candidate("opencode", origin, provider, "oauth", label, tokens=tokens, entry=name))
        elif kind == "api":
            key = entry.text("key", required=True)
            scan.candidates.append(Candidate("opencode", origin, provider, "api_key", "opencode", api_key=key))
        else:
            scan.skipped.append(Skipped(origin, f"login type {_show(kind or '')} is not one authpool imports"))
    return scan


def read_claude_code(file: Path, doc: object) -> Scan:
    """Claude Code's ``.credentials.json``: ``{claudeAiOauth: {accessToken, refreshToken, expiresAt (ms), ...}}``."""
    top = JsonObject(file, doc)
    login = top.obj("claudeAiOauth")
    tokens = _tokens(login.text("accessToken", required=True) or "", login.text("refreshToken"),
                     login.number("expiresAt"))
    plan = login.text("subscriptionType")
    detail = f"subscription: {plan}" if plan and plan.isprintable() and len(plan) <= 40 else ""
    candidate = Candidate("claude-code", "claudeAiOauth", "anthropic", "oauth", "claude-code", tokens=tokens,
                          detail=detail)
    return Scan("claude-code", str(file), [candidate])


def read_codex(file: Path, doc: object) -> Scan:
    """The Codex CLI's ``auth.json``: ``{OPENAI_API_KEY, auth_mode, tokens: {...}, last_refresh}``.

    The ChatGPT login (``tokens``) is a ChatGPT-plan login, not an API key: it becomes an OAuth
    account of the ``chatgpt`` provider (the Codex backend), keeping ``id_token`` and
    ``account_id`` (from the file, else from the tokens' claim) in the token set's extras, since
    every request must name the account. Its expiry comes from the access token's ``exp`` claim.
    A non-null ``OPENAI_API_KEY`` becomes an ``openai`` API-key account.
    """
    top = JsonObject(file, doc)
    scan = Scan("codex", str(file))
    if top.has("tokens"):
        t = top.obj("tokens")
        access = t.text("access_token", required=True) or ""
        id_token = t.text("id_token")
        account_id = t.text("account_id") or chatgpt_account_id(id_token, access)
        extra = {k: v for k, v in (("id_token", id_token), ("account_id", account_id)) if v}
        tokens = _tokens(access, t.text("refresh_token"), None, extra)
        label = _label("codex", _email(id_token, access))
        scan.candidates.append(Candidate("codex", "tokens", "chatgpt", "oauth", label, tokens=tokens))
    key = top.text("OPENAI_API_KEY")
    if key:
        scan.candidates.append(Candidate("codex", "OPENAI_API_KEY", "openai", "api_key", "codex-key", api_key=key))
    if not scan.candidates:
        scan.skipped.append(Skipped("file", "neither 'tokens' nor 'OPENAI_API_KEY' is set (logged out?)"))
    return scan


def read_gemini(file: Path, doc: object) -> Scan:
    """The Gemini CLI's ``oauth_creds.json``: ``{access_token, refresh_token, expiry_date (ms), id_token, ...}``."""
    top = JsonObject(file, doc)
    access = top.text("access_token", required=True) or ""
    id_token = top.text("id_token")
    tokens = _tokens(access, top.text("refresh_token"), top.number("expiry_date"))
    candidate = Candidate("gemini", "oauth_creds", "gemini", "oauth", _label("gemini", _email(id_token)), tokens=tokens)
    return Scan("gemini", str(file), [candidate])


def env_variables(provider_ids: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """``(variable, provider)`` pairs the ``env`` source reads, in the order it reads them."""
    known = sorted(_known(provider_ids))
    out = [(pid.upper().replace("-", "_").replace(".", "_") + "_API_KEY", pid) for pid in known]
    if "gemini" in known:
        out.append(("GOOGLE_API_KEY", "gemini"))  # what Google's own SDKs read
    return out


def read_env(environ: Mapping[str, str], provider_ids: Iterable[str] | None = None) -> Scan:
    """API keys from ``<PROVIDER>_API_KEY`` variables (and ``GOOGLE_API_KEY``); empty ones are unset."""
    scan = Scan("env", "the environment")
    seen: dict[tuple[str, str], str] = {}
    for var, provider in env_variables(provider_ids):
        value = environ.get(var, "").strip()
        if not value:
            continue
        origin = f"${var}"
        if any(c.isspace() for c in value):
            scan.skipped.append(Skipped(origin, "the value contains whitespace; not a single API key"))
            continue
        if (provider, value) in seen:
            scan.skipped.append(Skipped(origin, f"the same key as {seen[provider, value]}"))
            continue
        seen[provider, value] = origin
        scan.candidates.append(Candidate("env", origin, provider, "api_key", "env", api_key=value))
    return scan
