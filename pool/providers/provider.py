"""What a provider is: where its credentials may go, how they are applied, how it signals limits.

Built-in providers (:mod:`authpool.providers.builtin`) carry the real public API origins and
header conventions. Users add providers or override fields of built-in ones in ``config.toml``
in the home directory (:mod:`authpool.providers.config`)::

    [providers.acme]
    base_url = "http://127.0.0.1:8080"
    auth = "bearer"                      # or "header:x-api-key"
    [providers.acme.oauth]
    token_url = "http://127.0.0.1:8080/oauth/token"
    client_id = "authpool-test"

authpool ships no other application's OAuth client id: a provider's ``oauth.client_id`` comes
from the user's config, and refreshing or logging in without one is a clear error.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from authpool.accounts.model import AccountKind, validate_provider_id
from authpool.errors import InvalidInput, OriginRefused

if TYPE_CHECKING:
    import httpx2

__all__ = ["ADVISORY_SHARE", "MANDATORY_SHARE", "OAuthSettings", "Provider", "Strategy", "TokenExchange", "origin_of",
           "url_origin"]

# Proactive refresh starts at most this share of a token's issued lifetime before it expires
# (advisory: renew if nobody else is), and must happen within the mandatory share.
ADVISORY_SHARE = 1 / 3
MANDATORY_SHARE = 1 / 10
# A linked login (kept in step with an official tool's file) starts renewing this many times earlier.
LINKED_LEAD = 2.0

Strategy = Literal["ordered", "round-robin", "least-used", "drain-soonest-reset", "sticky"]


def origin_of(url: str) -> str:
    """``scheme://host:port`` of ``url``, with the default port made explicit.

    Raises:
        ValueError: not an absolute http(s) URL.
    """
    m = re.match(r"^(https?)://([^/?#]*)", url.strip(), re.IGNORECASE)
    if not m or not m.group(2):
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    scheme, hostport = m.group(1).lower(), m.group(2).lower()
    if "@" in hostport:
        # "https://api.example.com@evil.example/" goes to evil.example: never guess, refuse.
        raise ValueError(f"URLs with a user name or password (user@host) are not accepted: {url!r}")
    if hostport.startswith("["):  # IPv6 literal
        host, _, port = hostport.partition("]")
        host += "]"
        port = port.lstrip(":")
    else:
        host, _, port = hostport.partition(":")
    if not port:
        port = "443" if scheme == "https" else "80"
    if not port.isdigit():
        raise ValueError(f"bad port in {url!r}")
    return f"{scheme}://{host}:{int(port)}"


class OAuthSettings(BaseModel):
    """How to obtain and renew tokens for a provider."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token_url: str
    authorize_url: str | None = None
    device_authorization_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    scopes: list[str] = Field(default_factory=list)
    token_request: Literal["form", "json"] = "form"
    redirect_port: int | None = None  # some providers only accept a registered loopback port
    redirect_path: str = "/callback"
    extra_authorize_params: dict[str, str] = Field(default_factory=dict)


class TokenExchange(BaseModel):
    """A second, short-lived token the provider's API wants, got by presenting the login's token.

    GitHub Copilot: the GitHub OAuth token is exchanged at ``api.github.com/copilot_internal/v2/token``
    for a Copilot token (``token``, ``expires_at``, ``refresh_in``, ``endpoints.api``) that the
    requests carry, to the endpoint the exchange named. It is renewed like an access token
    (single-flight, at ``refresh_in``), and a refusal marks the login needs-reauth.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    method: Literal["GET", "POST"] = "GET"
    scheme: str = "token"  # Authorization: <scheme> <the login's token>
    headers: dict[str, str] = Field(default_factory=dict)


class Provider(BaseModel):
    """One provider: origins, auth application, OAuth endpoints, limit headers, rotation policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str = ""
    base_url: str | None = None
    origins: list[str] = Field(default_factory=list)  # extra origins beyond base_url's
    auth: str = "bearer"  # how API keys are applied: "bearer" | "header:NAME"
    oauth_auth: str = "bearer"  # how OAuth access tokens are applied
    headers: dict[str, str] = Field(default_factory=dict)  # fixed headers sent when the caller sets none
    oauth_headers: dict[str, str] = Field(default_factory=dict)  # extra headers for OAuth accounts only
    oauth: OAuthSettings | None = None
    # Headers an OAuth login's requests carry from its stored extras (header -> extra), such as
    # the ChatGPT backend's chatgpt-account-id. Callers cannot set them: they name the account.
    secret_headers: dict[str, str] = Field(default_factory=dict)
    token_exchange: TokenExchange | None = None
    reset_headers: list[str] = Field(default_factory=list)  # response headers carrying limit resets
    strategy: Strategy = "ordered"
    # Keep an account whose busiest usage window (5h, 7d …) is at or above this percent out of
    # rotation while another account is below it (None: no reserve).
    reserve: float | None = Field(default=None, gt=0, le=100)
    weights: dict[str, float] = Field(default_factory=dict)  # account id or label -> weight
    max_attempts: int = Field(default=6, ge=1, le=50)  # accounts tried within one request
    server_error_retries: int = Field(default=2, ge=0, le=10)  # per account, for 5xx / network errors
    default_cooldown: float = Field(default=30.0, gt=0)  # a 429 without reset info, doubled per repeat
    max_cooldown: float = Field(default=3600.0, gt=0)
    refresh_advisory: float = Field(default=300.0, ge=0)  # seconds before expiry: try to refresh
    refresh_mandatory: float = Field(default=60.0, ge=0)  # seconds before expiry: must refresh
    # Seconds a request waits for a token call before moving on; the call itself goes on (up to
    # token_call_limit) and its answer is stored, because the provider may have rotated already.
    token_timeout: float = Field(default=30.0, gt=0)
    # Seconds a token call may take in all, answer included; it is read that long whatever the
    # request that started it does. Also how long a refresh interrupted mid-call (SIGKILL) keeps
    # the account's renewal waiting: its request may still reach the provider until then.
    token_call_limit: float = Field(default=150.0, gt=0, le=3600)
    timeout: float = Field(default=600.0, gt=0)  # seconds for one request (LLM calls are slow)
    # Whether this provider's OAuth logins may go into a team store that several people use.
    # Consumer subscription logins are licensed to one person: the built-ins say false, and an
    # organisation whose agreement permits sharing sets it to true itself. API keys are always fine.
    shared_logins: bool = True
    terms: str | None = None  # the terms that govern its logins (name and URL), for that refusal
    # Its model list (authpool.catalog): the list's style (None: read from `auth`; "none": it has
    # no list), its path (None: the style's), and how long a fetched list is used before asking again.
    models_style: Literal["openai", "anthropic", "gemini", "none"] | None = None
    models_path: str | None = None
    models_ttl: float = Field(default=86400.0, gt=0)

    @field_validator("id")
    @classmethod
    def _id_ok(cls, v: str) -> str:
        return validate_provider_id(v)

    @field_validator("auth", "oauth_auth")
    @classmethod
    def _auth_ok(cls, v: str) -> str:
        if v == "bearer" or (v.startswith("header:") and re.fullmatch(r"[A-Za-z0-9-]+", v[7:])):
            return v
        raise ValueError("must be 'bearer' or 'header:NAME'")

    @field_validator("models_path")
    @classmethod
    def _models_path_ok(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("must start with '/' (a path under base_url)")
        return v

    @field_validator("base_url")
    @classmethod
    def _base_ok(cls, v: str | None) -> str | None:
        if v is not None:
            origin_of(v)
        return v.rstrip("/") if v else v

    @field_validator("origins")
    @classmethod
    def _origins_ok(cls, v: list[str]) -> list[str]:
        return [origin_of(o) for o in v]

    @property
    def display_name(self) -> str:
        return self.name or self.id

    def sharing_refusal(self) -> str:
        """Why an OAuth login of this provider is not added to a team store (``shared_logins = false``)."""
        terms = self.terms or f"{self.display_name}'s terms of service"
        return (
            f"{self.display_name} OAuth logins are personal subscription logins ({terms}), so a team store "
            f"does not share them: add an API key instead (`authpool accounts add-key {self.id}`), or, if your "
            f"organisation's agreement with {self.display_name} permits sharing, set `shared_logins = true` "
            f"under [providers.{self.id}] in config.toml"
        )

    # What every request checks against is worked out once per distinct configuration (cached by
    # the fields it derives from, so a copy with other fields never reuses a stale answer).
    @property
    def allowed_origins(self) -> frozenset[str]:
        """The only origins this provider's credentials may be sent to."""
        return _allowed_origins(self.base_url, tuple(self.origins))

    @property
    def _base(self) -> tuple[str, str] | None:
        """``(origin, decoded path without a trailing slash)`` of the base URL, if it has one."""
        return _base_of(self.base_url) if self.base_url else None

    def refresh_windows(self, lifetime: float | None, *, linked: bool = False) -> tuple[float, float]:
        """``(advisory, mandatory)`` seconds before expiry for a token issued for ``lifetime`` seconds.

        The configured windows are upper bounds: a token that lives less than them (many identity
        providers issue 5-minute tokens) would otherwise be renewed on nearly every request. The
        windows are at most a third and a tenth of the issued lifetime.

        ``linked``: a login kept in step with an official tool's file (``auth.linked``). The tools
        renew near expiry (the Codex CLI five minutes before); renewing earlier than they do means
        that while authpool is in use, the tool finds a fresh login whenever it reads its file and
        never renews it itself, so the two never renew at the same instant.
        """
        advisory, mandatory = self.refresh_advisory, self.refresh_mandatory
        if linked:
            advisory *= LINKED_LEAD
        if lifetime is not None and lifetime > 0:
            advisory = min(advisory, lifetime * ADVISORY_SHARE)
            mandatory = min(mandatory, lifetime * MANDATORY_SHARE)
        return advisory, min(mandatory, advisory)

    def credential_headers(self, kind: AccountKind) -> tuple[str, str, dict[str, str]]:
        """``(header name, value prefix, extra headers)`` for an account of ``kind``."""
        style = self.auth if kind == "api_key" else self.oauth_auth
        extra = dict(self.oauth_headers) if kind == "oauth" else {}
        if style == "bearer":
            return "authorization", "Bearer ", extra
        return style[7:].lower(), "", extra

    def refuse_credential_headers(self, names: Iterable[str]) -> None:
        """Raise if a caller's header would carry a credential: the pool attaches those itself.

        Raises:
            InvalidInput: one of ``names`` is a credential header (``Authorization``, ``x-api-key`` …).
        """
        forbidden = self.all_credential_header_names()
        for name in names:
            if name.strip().lower() in forbidden:
                raise InvalidInput(
                    f"header {name!r} carries credentials (the request already has a {name} header); authpool sets "
                    "credentials itself and callers cannot set or override them"
                )

    def all_credential_header_names(self) -> frozenset[str]:
        """Every header that carries a credential for this provider (callers may not set these)."""
        return _credential_names(tuple(self.secret_headers), self.auth, self.oauth_auth)

    def resolve_url(self, path_or_url: str) -> str:
        """Turn a path (relative to base_url) or an absolute URL into a URL on an allowed origin.

        The result is checked with the parser the HTTP client itself uses, so the origin checked
        here is the origin the request will go to.

        A path stays under the base URL's path: with a base URL ``https://h/v1``, a path that
        would leave ``/v1`` (``../admin``, also percent-encoded, which a server may decode) is
        refused, since the provider's credentials are meant for that API only.

        Raises:
            OriginRefused: the URL is on another origin, has userinfo, leaves the base URL's path,
                or no base_url is configured.
            InvalidInput: a URL the HTTP client cannot parse (e.g. a CR/LF in the path).
        """
        # The same few paths come back request after request: an answer is kept, keyed by all it
        # depends on (so a changed configuration misses); a refusal is never kept, it raises each time.
        key = (self.id, self.base_url, tuple(self.origins), path_or_url)
        found = _resolved.get(key)
        if found is not None:
            return found
        url = self._resolve(path_or_url)
        if len(path_or_url) <= _RESOLVED_MAX_LEN:
            if len(_resolved) >= _RESOLVED_KEPT:
                _resolved.clear()  # a handful of paths is the norm: start over rather than track age
            _resolved[key] = url
        return url

    def _resolve(self, path_or_url: str) -> str:
        import httpx2  # loaded with the first request, not at start-up

        relative = not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", path_or_url)
        if not relative:
            try:
                origin_of(path_or_url)
            except ValueError as e:
                raise OriginRefused(str(e)) from None
            url = path_or_url
        else:
            if not self.base_url:
                raise OriginRefused(f"provider {self.id} has no base_url; set one in config.toml")
            path = path_or_url if path_or_url.startswith("/") else "/" + path_or_url
            if path.startswith("//"):
                raise OriginRefused(f"{path_or_url!r} is a network-path reference, not a path")
            url = self.base_url + path
        try:
            parsed = httpx2.URL(url)
        except httpx2.InvalidURL as e:
            raise InvalidInput(f"invalid path {path_or_url!r}: {e}") from None
        if parsed.userinfo:
            raise OriginRefused(
                f"refusing {path_or_url!r}: URLs with a user name or password (user@host) are not accepted")
        self.check_destination(url_origin(parsed), parsed.path, path_or_url)
        return url

    def check_destination(self, origin: str, path: str, given: str) -> None:
        """Refuse a destination that is not the provider's: another origin, or outside its base path.

        ``path`` is the decoded path as the HTTP client will send it (dot segments it normalised
        already applied); ``given`` is what the caller wrote, for the message. On the base URL's
        origin, a path must stay under the base URL's path: with ``https://h/v1``, ``/admin`` and
        a percent-encoded ``..`` (which a server may decode) are refused, since the provider's
        credentials are meant for that API only. Other configured origins are the provider's whole.

        Raises:
            OriginRefused: naming where the credentials may go.
        """
        if origin not in self.allowed_origins:
            raise OriginRefused(
                f"{origin} is not an origin of provider {self.id} (allowed: "
                f"{', '.join(sorted(self.allowed_origins)) or 'none'}); credentials are never sent elsewhere"
            )
        if self._base is None or origin != self._base[0]:
            return
        base = self._base[1]
        if not base:
            return  # the whole origin is the provider's
        # Dot segments left in a decoded path were percent-encoded on the wire, where a server
        # may resolve them.
        segments = _SEPARATORS.split(path)
        if "%" in path:
            segments = [_fully_unquoted(seg) for seg in segments]
        if any(seg in (".", "..") for seg in segments) or not (
                path == base or path.startswith(base + "/")):
            raise OriginRefused(
                f"path {given!r} leads outside the base path {base} of provider {self.id}; its credentials are only "
                f"sent under {self.base_url}/"
            )


_SEPARATORS = re.compile(r"[/\\]")
_RESOLVED_MAX_LEN = 512  # longer paths are checked each time rather than kept
_RESOLVED_KEPT = 1024
# resolve_url's answers: (provider id, base URL, origins, path or URL) -> URL.
_resolved: dict[tuple[str, str | None, tuple[str, ...], str], str] = {}


@functools.lru_cache(maxsize=256)
def _allowed_origins(base_url: str | None, origins: tuple[str, ...]) -> frozenset[str]:
    out = set(origins)
    if base_url:
        out.add(origin_of(base_url))
    return frozenset(out)


@functools.lru_cache(maxsize=256)
def _base_of(base_url: str) -> tuple[str, str]:
    import urllib.parse

    return origin_of(base_url), urllib.parse.unquote(urllib.parse.urlsplit(base_url).path).rstrip("/")


@functools.lru_cache(maxsize=256)
def _credential_names(secret_headers: tuple[str, ...], auth: str, oauth_auth: str) -> frozenset[str]:
    names = {"authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie",
             *(h.lower() for h in secret_headers)}
    for style in (auth, oauth_auth):
        if style.startswith("header:"):
            names.add(style[7:].lower())
    return frozenset(names)


def _fully_unquoted(segment: str) -> str:
    import urllib.parse

    for _ in range(3):  # %252e%252e decoded twice by layered servers is still ".."
        decoded = urllib.parse.unquote(segment)
        if decoded == segment:
            break
        segment = decoded
    return segment


def url_origin(url: httpx2.URL) -> str:
    """``scheme://host:port`` of a URL the HTTP client parsed (default port made explicit)."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}:{url.port or (443 if url.scheme == 'https' else 80)}"
