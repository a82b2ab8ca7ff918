"""The device authorization grant (RFC 8628): log in where no browser can reach this process.

The user opens a URL on any device and enters a short code; meanwhile this process polls the
token endpoint at the pace the server sets. :class:`DeviceFlow` holds one login's state and
reads every answer (``authorization_pending``, ``slow_down`` — poll 5 s slower from then on, or
at the ``interval`` the server names — ``expired_token``, ``access_denied``, tokens); it polls
synchronously (the CLI) or asynchronously (the MCP server), the same way. Polling is bounded by
the code's ``expires_in`` and by the caller's timeout, and a refused, expired or timed-out
login stores nothing.

Example:
    >>> result = device_login(Pool.open(), "github-copilot", on_event=print)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import httpx2

from authpool.auth.login import (
    NOTHING_STORED,
    LoginCancelled,
    LoginError,
    LoginExpired,
    LoginHost,
    LoginResult,
    LoginTimeout,
    LoginTokens,
    read_login_tokens,
    require_oauth,
    store_login,
    token_client,
)
from authpool.auth.oauth import build_token_request, describe_transport_error
from authpool.providers.provider import Provider

__all__ = ["DEVICE_GRANT", "DeviceAuthorization", "DeviceEvent", "DeviceFlow", "device_login"]

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_INTERVAL = 5.0  # RFC 8628 section 3.2: when the server names none
SLOW_DOWN_STEP = 5.0  # RFC 8628 section 3.5
DEFAULT_EXPIRES_IN = 900.0
MIN_INTERVAL = 0.05  # never hammer an endpoint that asks for 0
MAX_TRANSIENT = 3  # consecutive network errors / 5xx tolerated while polling


@dataclass(frozen=True, repr=False)
class DeviceAuthorization:
    """What the user needs (URL, code) and what the poller keeps (the device code, never shown)."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_at: float  # wall-clock epoch seconds
    interval: float

    def __repr__(self) -> str:
        return (f"DeviceAuthorization(user_code={self.user_code!r}, verification_uri={self.verification_uri!r}, "
                f"expires_at={self.expires_at!r}, interval={self.interval!r})")


@dataclass(frozen=True)
class DeviceEvent:
    """Progress of a device login, for a spinner or MCP progress notifications."""

    kind: Literal["started", "pending", "slow_down"]
    authorization: DeviceAuthorization
    interval: float  # seconds between polls now
    remaining: float  # seconds until the code expires
    polls: int


class DeviceFlow:
    """One device login: the requests to send and the reading of each answer.

    Raises (constructor):
        ConfigError: the provider lacks a device authorization URL or a client id.
    """

    def __init__(self, provider: Provider, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.provider = provider
        self.oauth = require_oauth(provider, "device_authorization_url")
        self._url = self.oauth.device_authorization_url or ""
        self._client_id = self.oauth.client_id or ""
        self._clock = clock
        self._auth: DeviceAuthorization | None = None
        self._expires = 0.0  # on self._clock
        self.interval = DEFAULT_INTERVAL
        self.next_poll_at = 0.0
        self.polls = 0
        self._last: Literal["started", "pending", "slow_down"] = "started"
        self._transient = 0
        self._last_call = False

    @property
    def authorization(self) -> DeviceAuthorization:
        if self._auth is None:
            raise RuntimeError("the device flow has not started")
        return self._auth

    # -- sans I/O ------------------------------------------------------------------------------

    def authorization_request(self) -> httpx2.Request:
        """The POST to the device authorization endpoint (client id and scope, form-encoded)."""
        body = {"client_id": self._client_id}
        if self.oauth.client_secret:
            body["client_secret"] = self.oauth.client_secret
        if self.oauth.scopes:
            body["scope"] = " ".join(self.oauth.scopes)
        return httpx2.Request("POST", self._url, data=body,
                              headers={"accept": "application/json"})

    def accept_authorization(self, response: httpx2.Response) -> DeviceAuthorization:
        """Read the device authorization answer and schedule the first poll.

        Raises:
            LoginError: the endpoint refused or answered without the required fields.
        """
        where = f"the device authorization endpoint of {self.provider.id}"
        doc = _json(response)
        if response.status_code >= 400 or "error" in doc:
            error = doc.get("error")
            detail = f" ({error})" if isinstance(error, str) and error.isprintable() and len(error) < 80 else ""
            raise LoginError(f"{where} answered HTTP {response.status_code}{detail}; {NOTHING_STORED}")
        device_code, user_code = doc.get("device_code"), doc.get("user_code")
        uri = doc.get("verification_uri") or doc.get("verification_url")  # Google spells it _url
        complete = doc.get("verification_uri_complete")
        if not (isinstance(device_code, str) and device_code and isinstance(user_code, str) and user_code
                and isinstance(uri, str) and uri):
            raise LoginError(f"{where} answered without device_code, user_code and verification_uri; "
                             f"{NOTHING_STORED}")
        expires_in = _positive(doc.get("expires_in")) or DEFAULT_EXPIRES_IN
        self.interval = max(MIN_INTERVAL, _positive(doc.get("interval")) or DEFAULT_INTERVAL)
        now = self._clock()
        self._expires = now + expires_in
        self.next_poll_at = now + self.interval
        self._auth = DeviceAuthorization(
            device_code=device_code, user_code=user_code, verification_uri=uri,
            verification_uri_complete=complete if isinstance(complete, str) and complete else None,
            expires_at=time.time() + expires_in, interval=self.interval,
        )
        return self._auth

    def plan(self, deadline: float | None) -> float:
        """Seconds to wait before the next poll (0: poll now); ``deadline`` is on the flow's clock.

        Polls keep to the interval, never earlier. The poll due at or after the code's expiry is
        still made, so the provider says ``expired_token`` itself (or, approved at the last
        moment, hands over the tokens); ``deadline`` ends the wait without an early poll.

        Raises:
            LoginExpired: the code has expired.
            LoginTimeout: ``deadline`` has passed.
        """
        now = self._clock()
        if self._last_call:  # the last poll was made and the user had not approved
            if now >= self._expires:
                raise self._expired()
            raise self._timeout()
        due = self.next_poll_at
        if deadline is not None and due > deadline:
            if now >= deadline:
                raise self._timeout()
            return deadline - now
        if now < due:
            return due - now
        self._last_call = now >= self._expires or (deadline is not None and now >= deadline)
        return 0.0

    def token_request(self) -> httpx2.Request:
        """One poll of the token endpoint."""
        return build_token_request(self.provider, {"grant_type": DEVICE_GRANT,
                                                   "device_code": self.authorization.device_code})

    def accept_token(self, response: httpx2.Response) -> LoginTokens | None:
        """Read one poll's answer: the tokens, or ``None`` to keep polling.

        Raises:
            LoginExpired: ``expired_token``.
            LoginCancelled: ``access_denied``.
            LoginError: any other refusal.
        """
        self.polls += 1
        doc = _json(response)
        error = doc.get("error")
        if error == "authorization_pending":
            self._again("pending")
            return None
        if error == "slow_down":
            named = _positive(doc.get("interval"))  # GitHub names the new interval
            self.interval = named if named and named > self.interval else self.interval + SLOW_DOWN_STEP
            self._again("slow_down")
            return None
        if error == "expired_token":
            raise self._expired()
        if error == "access_denied":
            raise LoginCancelled(f"the login was denied at {self.provider.id} (access_denied); {NOTHING_STORED}")
        if response.status_code >= 500:
            self._transient_failure(f"the token endpoint of {self.provider.id} answered HTTP {response.status_code}")
            return None
        self._transient = 0
        return read_login_tokens(self.provider, response, grant="device code")

    def transport_failed(self, error: Exception) -> None:
        """Note a network failure of one poll; after a few in a row, give up.

        Raises:
            LoginError: too many consecutive failures.
        """
        self._transient_failure(str(describe_transport_error(self.provider, error)))

    def event(self) -> DeviceEvent:
        """The flow's state now, for display."""
        return DeviceEvent(kind=self._last, authorization=self.authorization, interval=self.interval,
                           remaining=max(0.0, self._expires - self._clock()), polls=self.polls)

    # -- I/O -----------------------------------------------------------------------------------

    def start(self, client: httpx2.Client) -> DeviceAuthorization:
        """Ask the provider for a user code (synchronously)."""
        try:
            response = client.send(self.authorization_request())
        except httpx2.TransportError as e:
            raise LoginError(f"{self._unreachable(e)}; {NOTHING_STORED}") from None
        return self.accept_authorization(response)

    async def astart(self, client: httpx2.AsyncClient) -> DeviceAuthorization:
        """Ask the provider for a user code (asynchronously)."""
        try:
            response = await client.send(self.authorization_request())
        except httpx2.TransportError as e:
            raise LoginError(f"{self._unreachable(e)}; {NOTHING_STORED}") from None
        return self.accept_authorization(response)

    def poll(self, client: httpx2.Client, *, max_wait: float | None = None,
             on_event: Callable[[DeviceEvent], None] | None = None,
             sleep: Callable[[float], None] = time.sleep) -> LoginTokens:
        """Poll until the user approves (synchronously); ``max_wait`` seconds bound it below ``expires_in``."""
        deadline = None if max_wait is None else self._clock() + max_wait
        self._last_call = False
        while True:
            delay = self.plan(deadline)
            if delay > 0:
                sleep(delay)
                continue
            try:
                response = client.send(self.token_request())
            except httpx2.TransportError as e:
                self.transport_failed(e)
                continue
            tokens = self.accept_token(response)
            if tokens is not None:
                return tokens
            if on_event is not None:
                on_event(self.event())

    async def apoll(self, client: httpx2.AsyncClient, *, max_wait: float | None = None,
                    on_event: Callable[[DeviceEvent], Awaitable[None]] | None = None) -> LoginTokens:
        """Poll until the user approves (asynchronously, cancellable); ``max_wait`` as for :meth:`poll`."""
        deadline = None if max_wait is None else self._clock() + max_wait
        self._last_call = False
        while True:
            delay = self.plan(deadline)
            if delay > 0:
                await anyio.sleep(delay)
                continue
            try:
                response = await client.send(self.token_request())
            except httpx2.TransportError as e:
                self.transport_failed(e)
                continue
            tokens = self.accept_token(response)
            if tokens is not None:
                return tokens
            if on_event is not None:
                await on_event(self.event())

    # -- internals -----------------------------------------------------------------------------

    def _again(self, kind: Literal["pending", "slow_down"]) -> None:
        self._transient = 0
        self._last = kind
        self.next_poll_at = self._clock() + self.interval

    def _transient_failure(self, what: str) -> None:
        self._transient += 1
        if self._transient >= MAX_TRANSIENT:
            raise LoginError(f"{what} ({self._transient} times in a row); {NOTHING_STORED}")
        self.next_poll_at = self._clock() + self.interval

    def _timeout(self) -> LoginTimeout:
        return LoginTimeout(f"the login was not approved within the time allowed; {NOTHING_STORED}")

    def _expired(self) -> LoginExpired:
        return LoginExpired(f"the code {self.authorization.user_code} expired before the login was approved; "
                            f"{NOTHING_STORED}; start the login again")

    def _unreachable(self, e: Exception) -> str:
        kind = "timed out" if isinstance(e, httpx2.TimeoutException) else f"failed ({type(e).__name__})"
        return f"reaching the device authorization endpoint of {self.provider.id} {kind}"


def device_login(
    pool: LoginHost,
    provider_id: str,
    *,
    on_event: Callable[[DeviceEvent], None],
    label: str | None = None,
    namespace: str = "default",
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    transport: httpx2.BaseTransport | None = None,
) -> LoginResult:
    """Log in with the device flow, from start to stored account.

    Args:
        on_event: called once the code is known (``started``: show the URL and code) and after
            every poll that must wait longer.
        timeout: seconds to wait for approval (default: until the code expires).
        sleep: how to wait between polls (the CLI animates a countdown while it waits).

    Raises:
        LoginExpired, LoginCancelled, LoginTimeout, LoginError: nothing was stored.
        ConfigError: the provider lacks a device authorization URL or a client id.
    """
    provider = pool.provider(provider_id)
    flow = DeviceFlow(provider)
    with token_client(transport) as client:
        flow.start(client)
        on_event(flow.event())
        tokens = flow.poll(client, max_wait=timeout, on_event=on_event, sleep=sleep)
    return store_login(pool, provider.id, tokens, label=label, namespace=namespace)


def _json(response: httpx2.Response) -> dict[str, Any]:
    try:
        doc = json.loads(response.content) if response.content else None
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _positive(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None
