"""Logging in: authorization code + PKCE, through a loopback redirect or a pasted URL.

A login ends in :func:`store_login`: a new account, or new tokens for an existing label (its
id, order and counters kept). Until then nothing is written: a refused, cancelled, timed-out
or forged login leaves the store exactly as it was. The device flow lives in
:mod:`pool.device` and ends the same way.

Errors (all :class:`~pool.errors.AuthError`, so ``except PoolError`` still catches them)::

    AuthError
     └── LoginError                        a login did not complete; nothing was stored
          ├── LoginCancelled               denied at the provider (access_denied), or Ctrl-C
          ├── LoginExpired                 the device code expired before it was approved
          ├── LoginTimeout (TimeoutError)  nothing came back within the time allowed
          └── StateMismatch                the redirect belongs to another login (stale tab, forgery)

The account's label defaults to the user's email or id when the provider says who logged in
(an ``id_token``'s ``email``/``sub`` claims, read without verifying the signature because they
only name the account, or an ``account``/``email``/``subject`` field), else ``account-N``.

Example:
    >>> result = browser_login(Pool.open(), "acme", on_url=lambda url, _: print(url))  # doctest: +SKIP
    >>> result.account.name, result.created  # doctest: +SKIP
    ('acme/alice@example.com', True)
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import socket
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx2

from authpool.accounts.jwt import chatgpt_account_id, jwt_claims
from authpool.accounts.model import Account, validate_label
from authpool.accounts.secret import TokenSet
from authpool.auth.oauth import (
    TOKEN_TIMEOUT,
    build_token_request,
    describe_transport_error,
    parse_token_response,
)
from authpool.auth.pkce import Pkce, new_state
from authpool.auth.redirect import RedirectListener
from authpool.errors import (
    ConfigError,
    DuplicateLabel,
    InvalidGrant,
    InvalidInput,
    LoginCancelled,
    LoginError,
    LoginExpired,
    LoginTimeout,
    RefreshError,
    StateMismatch,
)
from authpool.providers.provider import OAuthSettings, Provider

__all__ = [
    "AuthorizationCodeLogin",
    "LoginCancelled",
    "LoginError",
    "LoginExpired",
    "LoginResult",
    "LoginTimeout",
    "LoginTokens",
    "StateMismatch",
    "browser_login",
    "exchange_code",
    "paste_login",
    "read_login_tokens",
    "require_oauth",
    "store_login",
    "token_client",
]


class LoginHost(Protocol):
    """What a login needs of a pool: its providers, its accounts, and where a new login goes."""

    def provider(self, provider_id: str) -> Provider: ...

    def accounts(self, provider: str | None = None) -> list[Account]: ...

    def save_login(self, provider: str, label: str, tokens: TokenSet, *,
                   namespace: str = "default") -> tuple[Account, bool]: ...

    def add_oauth(self, provider: str, label: str, tokens: TokenSet, *, namespace: str = "default") -> Account: ...

DEFAULT_TIMEOUT = 300.0
NOTHING_STORED = "nothing was stored"


# -- configuration -------------------------------------------------------------------------


def require_oauth(provider: Provider, endpoint: Literal["authorize_url", "device_authorization_url"]) -> OAuthSettings:
    """The provider's OAuth settings, checked to have a client id and ``endpoint``.

    Raises:
        ConfigError: something is missing; the message names the ``config.toml`` key to set.
    """
    table = f"[providers.{provider.id}.oauth]"
    oauth = provider.oauth
    if oauth is None:
        raise ConfigError(f"provider {provider.id} has no OAuth settings: add {table} with token_url, {endpoint} "
                          "and client_id to config.toml (see examples/config.toml)")
    if not oauth.client_id:
        raise ConfigError(
            f"provider {provider.id} has no OAuth client id: set {table} client_id in config.toml to a client "
            "you registered with the provider (authpool ships no other application's client id)"
        )
    if not getattr(oauth, endpoint):
        other = ("log in with --device instead" if endpoint == "authorize_url" and oauth.device_authorization_url
                 else "log in without --device instead" if oauth.authorize_url else "")
        raise ConfigError(f"provider {provider.id} has no {endpoint}: set {table} {endpoint} in config.toml"
                          + (f", or {other}" if other else ""))
    return oauth


# -- what a token endpoint hands back --------------------------------------------------------


@dataclass(frozen=True, repr=False)
class LoginTokens:
    """A login's tokens and, when the provider said who logged in, a label for the account."""

    tokens: TokenSet
    identity: str | None = None

    def __repr__(self) -> str:
        return f"LoginTokens(identity={self.identity!r}, tokens=<hidden>)"


def read_login_tokens(provider: Provider, response: httpx2.Response, *, grant: str = "authorization code"
                      ) -> LoginTokens:
    """Read a token endpoint's answer to a login grant; keep ``id_token``/account ids in ``extra``.

    Raises:
        LoginError: the endpoint refused the grant or answered without a usable token.
    """
    try:
        tokens = parse_token_response(provider, response.status_code, response.headers.get("content-type", ""),
                                      response.content)
    except InvalidGrant:
        raise LoginError(f"the token endpoint of {provider.id} rejected the {grant} (invalid_grant); "
                         f"{NOTHING_STORED}; log in again") from None
    except RefreshError as e:
        raise LoginError(f"{e}; {NOTHING_STORED}") from None
    try:
        doc: Any = json.loads(response.content)
    except ValueError:
        doc = {}
    identity, extra = _identity(doc if isinstance(doc, dict) else {})
    if extra:
        tokens = dataclasses.replace(tokens, extra={**tokens.extra, **extra})
    return LoginTokens(tokens, identity)


def _identity(doc: Mapping[str, Any]) -> tuple[str | None, dict[str, str]]:
    """(label candidate, secret extras) from a token response: emails first, then user ids."""
    extra: dict[str, str] = {}
    emails: list[object] = []
    ids: list[object] = []
    id_token = doc.get("id_token")
    if isinstance(id_token, str) and id_token:
        extra["id_token"] = id_token
        claims = jwt_claims(id_token)
        emails.append(claims.get("email"))
        ids.append(claims.get("sub"))
        chatgpt = chatgpt_account_id(id_token)  # a ChatGPT login's requests must name it
        if chatgpt is not None:
            extra["account_id"] = chatgpt
    account = doc.get("account")
    if isinstance(account, dict):
        emails += [account.get("email_address"), account.get("email")]
        account_id = account.get("uuid") or account.get("id")
        if isinstance(account_id, str | int) and not isinstance(account_id, bool):
            extra["account_id"] = str(account_id)
            ids.append(str(account_id))
    elif isinstance(account, str):
        ids.append(account)
    emails.append(doc.get("email"))
    ids.append(doc.get("subject"))
    for candidate in (*emails, *ids):
        if isinstance(candidate, str):
            try:
                return validate_label(candidate), extra
            except InvalidInput:
                continue
    return None, extra


# -- storing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoginResult:
    """The account a login produced, and whether it is new (else its tokens were replaced)."""

    account: Account
    created: bool

    def view(self) -> dict[str, Any]:
        """``{id, name, created}``: what the CLI's ``--json`` and the MCP tool return."""
        return {"id": self.account.id, "name": self.account.name, "created": self.created}


def store_login(pool: LoginHost, provider_id: str, login: LoginTokens, *, label: str | None = None,
                namespace: str = "default") -> LoginResult:
    """Store a finished login as ``provider/label``.

    ``label`` given, or the provider named the user: that account gets the tokens (created if
    new, else its tokens are replaced and its history kept). Otherwise — or when the user's
    name is taken by an API-key account — a new ``account-N`` with the first free N: two
    anonymous logins never overwrite each other.

    Raises:
        InvalidInput: ``label`` is malformed or belongs to an API-key account.
        SecretError: the credential store failed (nothing was added).
    """
    chosen = label
    if not chosen and login.identity:
        taken_by = next((a for a in pool.accounts(provider_id) if a.label == login.identity), None)
        chosen = login.identity if taken_by is None or taken_by.kind == "oauth" else None
    if chosen:
        account, created = pool.save_login(provider_id, chosen, login.tokens, namespace=namespace)
        return LoginResult(account, created)
    taken = {a.label for a in pool.accounts(provider_id)}
    n = 1
    for _ in range(1000):
        while f"account-{n}" in taken:
            n += 1
        try:
            account = pool.add_oauth(provider_id, f"account-{n}", login.tokens, namespace=namespace)
        except DuplicateLabel:  # another login took it meanwhile
            taken.add(f"account-{n}")
            continue
        return LoginResult(account, True)
    raise InvalidInput(f"could not find a free account-N label for {provider_id}; pass --label")


# -- authorization code + PKCE ------------------------------------------------------------------


class AuthorizationCodeLogin:
    """The client's half of one authorization-code + PKCE login, without I/O.

    Raises (constructor):
        ConfigError: the provider lacks an authorize URL or a client id.
    """

    def __init__(self, provider: Provider, redirect_uri: str) -> None:
        self.provider = provider
        self.oauth = require_oauth(provider, "authorize_url")
        self.redirect_uri = redirect_uri
        self.pkce = Pkce.new()
        self.state = new_state()

    @property
    def authorize_url(self) -> str:
        """Where the user's browser goes to log in."""
        params = {
            "response_type": "code",
            "client_id": self.oauth.client_id or "",
            "redirect_uri": self.redirect_uri,
            "state": self.state,
            "code_challenge": self.pkce.challenge,
            "code_challenge_method": self.pkce.method,
        }
        if self.oauth.scopes:
            params["scope"] = " ".join(self.oauth.scopes)
        params.update(self.oauth.extra_authorize_params)
        base = self.oauth.authorize_url or ""
        sep = "&" if "?" in base else "?"
        return base + sep + urllib.parse.urlencode(params, quote_via=urllib.parse.quote)

    def accept_redirect(self, params: Mapping[str, str]) -> str:
        """The authorization code from the redirect's query parameters.

        Raises:
            StateMismatch: ``state`` is missing or not this login's.
            LoginCancelled: the user denied access (``error=access_denied``).
            LoginError: another OAuth error, or no code.
        """
        state = params.get("state")
        error = params.get("error")
        if state is not None and not hmac.compare_digest(state.encode(), self.state.encode()):
            raise StateMismatch(
                f"refused a redirect whose state does not match this login (a stale browser tab or a forged "
                f"redirect); {NOTHING_STORED}"
            )
        if error:
            raise self._refused(error, params.get("error_description"))
        if state is None:
            raise StateMismatch(f"refused a redirect without the login's state; {NOTHING_STORED}")
        code = params.get("code")
        if not code:
            raise LoginError(f"the redirect carried no authorization code; {NOTHING_STORED}")
        return code

    def accept_pasted(self, text: str) -> str:
        """The code from what the user pasted: the redirect URL, ``CODE#STATE``, or the bare code.

        The state is checked whenever the pasted text carries one.

        Raises:
            InvalidInput: nothing usable was pasted.
            StateMismatch, LoginCancelled, LoginError: as :meth:`accept_redirect`.
        """
        text = text.strip()
        if not text:
            raise InvalidInput("nothing was pasted")
        if "://" in text or text.startswith("?") or "code=" in text or "error=" in text:
            split = urllib.parse.urlsplit(text if "://" in text else "http://x/" + text.lstrip("?"))
            params: dict[str, str] = {}
            for part in (split.fragment, split.query):
                params.update({k: v[-1] for k, v in urllib.parse.parse_qs(part).items()})
            if not params.get("code") and not params.get("error"):
                raise InvalidInput("the pasted URL has no code; paste the whole address your browser was sent to "
                                   "after logging in")
            if "state" not in params and params.get("code"):
                return params["code"]
            return self.accept_redirect(params)
        if "#" in text:
            code, _, state = text.partition("#")
            return self.accept_redirect({"code": code, "state": state})
        if any(c.isspace() for c in text) or not text.isprintable():
            raise InvalidInput("the pasted code contains spaces or control characters; paste the code alone")
        return text

    def token_request(self, code: str) -> httpx2.Request:
        """The code-for-tokens request (with the PKCE verifier)."""
        return build_token_request(self.provider, {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": self.pkce.verifier,
        })

    def _refused(self, error: str, description: str | None) -> LoginError:
        if error == "access_denied":
            return LoginCancelled(f"the login was denied at {self.provider.id} (access_denied); {NOTHING_STORED}")
        detail = error if error.isprintable() and len(error) < 80 else "unreadable error"
        if description and description.isprintable():
            detail += f": {description[:200]}"
        return LoginError(f"{self.provider.id} refused the login ({detail}); {NOTHING_STORED}")


def token_client(transport: httpx2.BaseTransport | None = None) -> httpx2.Client:
    """A client for token endpoints: never follows redirects (they get codes and secrets)."""
    return httpx2.Client(timeout=TOKEN_TIMEOUT, follow_redirects=False, transport=transport)


def exchange_code(login: AuthorizationCodeLogin, code: str, client: httpx2.Client) -> LoginTokens:
    """Redeem the authorization code at the token endpoint.

    Raises:
        LoginError: the endpoint is unreachable, refused the code or answered garbage.
    """
    try:
        response = client.send(login.token_request(code))
    except httpx2.TransportError as e:
        raise LoginError(f"{describe_transport_error(login.provider, e)}; {NOTHING_STORED}") from None
    return read_login_tokens(login.provider, response)


def browser_login(
    pool: LoginHost,
    provider_id: str,
    *,
    on_url: Callable[[str, str], None],
    label: str | None = None,
    namespace: str = "default",
    timeout: float = DEFAULT_TIMEOUT,
    transport: httpx2.BaseTransport | None = None,
) -> LoginResult:
    """Log in through the browser, receiving the redirect on ``127.0.0.1``.

    Args:
        on_url: called with ``(authorize_url, redirect_uri)`` once the listener is ready; shows
            the URL and opens a browser. The redirect may arrive while it runs.
        timeout: seconds to wait for the redirect.

    Raises:
        LoginTimeout: no redirect in time. StateMismatch, LoginCancelled, LoginError: see
        :meth:`AuthorizationCodeLogin.accept_redirect`. ConfigError: settings missing, or the
        configured ``redirect_port`` is taken.
    """
    provider = pool.provider(provider_id)
    oauth = require_oauth(provider, "authorize_url")
    listener: RedirectListener[str] = RedirectListener(port=oauth.redirect_port or 0, path=oauth.redirect_path)
    try:
        listener.bind()
    except OSError as e:
        raise ConfigError(f"cannot listen on 127.0.0.1:{oauth.redirect_port} for the login redirect "
                          f"([providers.{provider.id}.oauth] redirect_port): {e.strerror or e}") from None
    with token_client(transport) as client:  # built first: loading CA certificates takes a moment
        with listener:
            login = AuthorizationCodeLogin(provider, listener.redirect_uri)
            listener.serve(login.accept_redirect)
            on_url(login.authorize_url, login.redirect_uri)
            code = listener.wait(timeout)
        if code is None:
            raise LoginTimeout(f"no login came back to {login.redirect_uri} within {timeout:g}s; {NOTHING_STORED} "
                               "(use --timeout to wait longer, or --paste / --device where no browser can reach "
                               "this machine)")
        tokens = exchange_code(login, code, client)
    return store_login(pool, provider.id, tokens, label=label, namespace=namespace)


def paste_login(
    pool: LoginHost,
    provider_id: str,
    *,
    read_pasted: Callable[[str, str], str],
    label: str | None = None,
    namespace: str = "default",
    transport: httpx2.BaseTransport | None = None,
) -> LoginResult:
    """Log in where no browser can reach this machine: the user pastes the redirect URL or the code.

    Args:
        read_pasted: called with ``(authorize_url, redirect_uri)``; shows the URL and returns
            what the user pasted (it may raise :class:`LoginTimeout` or ``KeyboardInterrupt``).
    """
    provider = pool.provider(provider_id)
    oauth = require_oauth(provider, "authorize_url")
    port = oauth.redirect_port or _free_port()
    login = AuthorizationCodeLogin(provider, f"http://127.0.0.1:{port}{oauth.redirect_path}")
    with token_client(transport) as client:
        code = login.accept_pasted(read_pasted(login.authorize_url, login.redirect_uri))
        tokens = exchange_code(login, code, client)
    return store_login(pool, provider.id, tokens, label=label, namespace=namespace)


def _free_port() -> int:
    # The browser is sent to a port nothing listens on; the user copies the URL from its address bar.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
