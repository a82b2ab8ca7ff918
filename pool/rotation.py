"""Same-request rotation: one logical request, served by whichever account can serve it.

For each attempt the engine picks an account (enabled, not needing re-auth, not cooling;
ordered by the provider's strategy), applies its credentials, sends, and classifies the
answer before any of the body reaches the caller:

- ``429``: cool the account down (``Retry-After``, ``retry-after-ms``, reset headers, else an
  exponential default), persist that at once, and retry on the next account;
- ``401``/``403``: refresh the token once (single-flight, see :mod:`pool.refresh`) and retry on
  the same account; if still refused, mark it (401: needs re-auth) and rotate;
- network errors and ``5xx``: bounded retries with backoff, then rotate;
- anything else is the answer: it is returned with its body still unread, so streams stream.

When every account is cooling, the request waits for the soonest one if that is within its
wait budget (reporting progress), else fails with :class:`~pool.errors.AllAccountsCooling`
naming when the next account frees up. Every retry loop is bounded by attempts and by one
deadline shared across them.

The engine is a generator of *effects* (send this, sleep that long, run this blocking call,
refresh that account) so the same decisions drive both the sync and the async transport.

Why a transport and not an ``httpx.Auth``: an auth flow never sees transport errors (httpx
closes the flow when a send raises), so it could not retry on network failures; and with
``follow_redirects=True`` httpx copies every header except ``Authorization`` onto a redirect to
another origin, so an ``x-api-key`` would leak. A transport sees every hop: it attaches
credentials only to requests for the provider's origins and refuses anything else.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2

from .cooldown import decide_cooldown
from .errors import (
    AllAccountsCooling,
    BodyNotReplayable,
    InvalidInput,
    NoAccounts,
    OriginRefused,
    PoolError,
    ReauthRequired,
    RefreshError,
    RequestFailed,
)
from .models import WHOLE_ACCOUNT, Account, Cooldown, PoolFile
from .providers import Provider
from .refresh import Contended, Refresher, RefreshMode
from .secret import Secret
from .strategy import UsageView, order_accounts

__all__ = ["Attempt", "PoolTransport", "RequestResult", "RotationOptions"]

log = logging.getLogger("authpool")

ProgressCallback = Callable[[float, float | None, str], Awaitable[None] | None]

_BACKOFF_BASE = 0.25
_BACKOFF_CAP = 4.0


@dataclass
class Attempt:
    """One try within a request: which account, what came back, what the engine did about it."""

    account_id: str
    account: str  # provider/label
    status: int | None
    outcome: str  # ok | rate_limited | unauthorized | refreshed | refresh_failed | needs_reauth | server_error
    #              | network_error | forbidden
    elapsed_ms: float
    cooldown_until: float | None = None
    detail: str | None = None

    def public(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "account": self.account,
            "status": self.status,
            "outcome": self.outcome,
            "elapsed_ms": round(self.elapsed_ms, 1),
            "cooldown_until": self.cooldown_until,
            "detail": self.detail,
        }


@dataclass
class RequestResult:
    """Attached to every response as ``response.extensions["authpool"]``."""

    account_id: str
    account: str
    attempts: list[Attempt] = field(default_factory=list)


@dataclass(frozen=True)
class RotationOptions:
    """Per-client choices: pin an account, stay in a namespace, how long to wait for a cooling pool."""

    account: str | None = None  # id or provider/label: use only this account
    namespace: str | None = None
    wait_budget: float = 0.0  # seconds a request may wait for a cooling account
    on_progress: ProgressCallback | None = None


# -- effects -------------------------------------------------------------------------------


@dataclass
class _Send:
    request: httpx2.Request


@dataclass
class _Discard:
    response: httpx2.Response


@dataclass
class _Block:
    fn: Callable[[], Any]


@dataclass
class _Sleep:
    seconds: float
    waited: float = 0.0
    total: float | None = None
    message: str = ""


@dataclass
class _Refresh:
    account: Account
    mode: RefreshMode


@dataclass
class _Failed:
    """What a send returns into the flow when the transport raised."""

    error: httpx2.TransportError


_Effect = _Send | _Discard | _Block | _Sleep | _Refresh


class _Engine:
    """The decisions of one request. Holds no I/O of its own."""

    def __init__(self, transport: PoolTransport, request: httpx2.Request) -> None:
        self.t = transport
        self.provider = transport.provider
        self.request = request
        self.attempts: list[Attempt] = []
        self.tried: set[str] = set()
        self.deadline = time.monotonic() + self.provider.timeout + transport.options.wait_budget
        self.wait_left = transport.options.wait_budget
        self.last_error: PoolError | None = None
        self.picks = 0  # accounts picked so far (retries on the same account do not count)
        self.cooled: dict[str, float] = {}  # account id -> end of the cooldown this request set

    # The flow. Yields effects; receives their results; returns the final response.
    def flow(self) -> Generator[_Effect, Any, httpx2.Response]:  # noqa: PLR0912, PLR0915 - one state machine, read top to bottom
        self._check_request()
        pinned: Account | None = None  # set to retry the same account (after a refresh)
        refreshed: set[str] = set()
        server_failures: dict[str, int] = {}
        while True:
            if time.monotonic() > self.deadline:
                raise self._fail(f"gave up after {len(self.attempts)} attempts: the request deadline passed")
            acc = pinned
            pinned = None
            if acc is None:
                # The provider's max_attempts bounds how many accounts one request tries (each
                # pick counts, also a second turn after waiting for a cooldown).
                if self.picks >= self.provider.max_attempts:
                    raise self._fail(f"gave up after {self.picks} tries of accounts (max_attempts = "
                                     f"{self.provider.max_attempts} for {self.provider.id})")
                acc = yield from self._choose()
                self.picks += 1
            if self.attempts and not _replayable(self.request):
                raise BodyNotReplayable(
                    "the request body is a stream that was already sent once, so it cannot be retried on "
                    "another account; send bytes or JSON instead of a stream",
                    attempts=self.attempts,
                )
            secret = yield from self._secret(acc)
            if secret is None:
                self.tried.add(acc.id)
                continue
            start = time.monotonic()
            result = yield _Send(self._with_credentials(acc, secret))
            elapsed = (time.monotonic() - start) * 1000
            if isinstance(result, _Failed):
                n = server_failures[acc.id] = server_failures.get(acc.id, 0) + 1
                self._note(acc, None, "network_error", elapsed, detail=_describe_error(result.error))
                if n <= self.provider.server_error_retries:
                    yield _Sleep(self._backoff(n))
                    pinned = acc
                else:
                    self.tried.add(acc.id)
                    self.last_error = RequestFailed(
                        f"could not reach {self.provider.id}: {_describe_error(result.error)}")
                continue
            response: httpx2.Response = result
            status = response.status_code
            if status == 429:
                yield from self._rate_limited(acc, response, elapsed)
                continue
            if status in (401, 403):
                yield _Discard(response)
                if acc.kind == "oauth" and acc.id not in refreshed:
                    refreshed.add(acc.id)
                    renewed = yield from self._refresh(acc, "force", elapsed, status)
                    if renewed:
                        pinned = self.t.pool.get(acc.id)
                        continue
                    self.tried.add(acc.id)
                    continue
                yield from self._refused(acc, status, elapsed)
                continue
            if status >= 500 and status != 501:
                n = server_failures[acc.id] = server_failures.get(acc.id, 0) + 1
                self._note(acc, status, "server_error", elapsed)
                if n <= self.provider.server_error_retries:
                    yield _Discard(response)
                    yield _Sleep(self._backoff(n))
                    pinned = acc
                    continue
                if not self._others_left(acc):
                    return self._finish(acc, response, status)  # nobody else to try: the error is the answer
                yield _Discard(response)
                self.tried.add(acc.id)
                continue
            self._note(acc, status, "ok", elapsed)
            if acc.backoff_level > 0 and status < 400:
                # The exponential level is cooldown state, not a hot-path counter: reset it before
                # returning, as a cooldown is set. Left to the batched usage flush, a 429 right after
                # this success would still double, and a late flush could undo a newer 429's level.
                yield _Block(functools.partial(self.t.pool.store.update, _clear_backoff(acc.id)))
            return self._finish(acc, response, status)

    # -- steps ---------------------------------------------------------------------------

    def _check_request(self) -> None:
        url = self.request.url
        if url.userinfo:
            raise OriginRefused("refusing a URL with a user name or password (user@host)")
        # The origin as the HTTP client will connect to it, from its own parsed URL.
        host = f"[{url.host}]" if ":" in url.host else url.host
        origin = f"{url.scheme}://{host}:{url.port or (443 if url.scheme == 'https' else 80)}"
        if origin not in self.provider.allowed_origins:
            # Also the path a cross-origin redirect takes: it arrives here as a new request.
            raise OriginRefused(
                f"refusing to send {self.provider.id} credentials to {origin}: not one of the provider's "
                f"origins ({', '.join(sorted(self.provider.allowed_origins)) or 'none configured'})"
            )
        forbidden = self.provider.all_credential_header_names()
        for name in self.request.headers:
            if name.lower() in forbidden:
                raise InvalidInput(
                    f"the request already has a {name} header; authpool sets credentials itself and "
                    "does not let callers override them"
                )

    def _choose(self) -> Generator[_Effect, Any, Account]:
        while True:
            pool_file = self.t.pool.store.read()
            now = time.time()
            ready, soonest, considered = self.t.candidates(pool_file, now, self.tried)
            if ready:
                acc = ready[0]
                self.t.usage.touch(acc.id)
                return acc
            if considered == 0:
                raise self._no_accounts(pool_file)
            if any(self.cooled.get(i, now + 1) <= now for i in self.tried):
                # A cooldown this request set has already ended (Retry-After: 0, a few ms): that
                # account may go again now, a wait of zero, not "no account could serve".
                soonest = now
            if self.tried and soonest is None:
                # Every account was tried in this request and none is merely cooling: give up.
                raise self._fail(self._summary("no account could serve the request"))
            if soonest is None:
                raise self._fail(self._summary("no account is usable"))
            wait = soonest - now
            if wait > self.wait_left or time.monotonic() + wait > self.deadline:
                raise AllAccountsCooling(
                    self._summary(
                        f"all {self.provider.id} accounts are cooling down; the next frees up at "
                        f"{_clock(soonest)} (in {wait:.0f}s)"
                    ),
                    soonest,
                    attempts=self.attempts,
                )
            total = self.t.options.wait_budget
            waited = total - self.wait_left
            self.wait_left -= wait
            yield _Sleep(wait + 0.05, waited, total, f"all accounts cooling; waiting {wait:.1f}s for the next")
            # Only the accounts that were rate-limited come back after the wait. One whose refresh
            # failed, or that exhausted its 5xx retries, stays out: a second 401 from an account
            # whose refresh failed (endpoint down) would wrongly mark a live login needs-reauth.
            self.tried.difference_update(self.cooled)

    def _secret(self, acc: Account) -> Generator[_Effect, Any, Secret | None]:  # noqa: PLR0911
        try:
            secret: Secret = yield _Block(lambda: self.t.pool.secret_of(acc))
        except PoolError as e:
            self._note(acc, None, "secret_error", 0.0, detail=str(e))
            self.last_error = e
            return None
        if acc.kind != "oauth" or secret.expires_at is None:
            return secret
        left = secret.expires_at - time.time()
        if left > self.provider.refresh_advisory:
            return secret
        mode: RefreshMode = "mandatory" if left <= self.provider.refresh_mandatory else "advisory"
        try:
            renewed: Secret = yield _Refresh(acc, mode)
            return renewed
        except Contended:
            return secret  # advisory: someone else is renewing; the current token is still valid
        except (RefreshError, ReauthRequired) as e:
            if mode == "advisory" and isinstance(e, RefreshError):
                log.info("advisory refresh of %s failed (%s); using the current token", acc.name, e)
                return secret
            self._note(acc, None, "refresh_failed" if isinstance(e, RefreshError) else "needs_reauth", 0.0,
                       detail=str(e))
            self.last_error = e
            return None

    def _refresh(self, acc: Account, mode: RefreshMode, elapsed: float, status: int) -> Generator[_Effect, Any, bool]:
        try:
            yield _Refresh(acc, mode)
        except ReauthRequired as e:
            self._note(acc, status, "needs_reauth", elapsed, detail=str(e))
            self.last_error = e
            return False
        except RefreshError as e:
            self._note(acc, status, "refresh_failed", elapsed, detail=str(e))
            self.last_error = e
            return False
        self._note(acc, status, "refreshed", elapsed)
        return True

    def _rate_limited(self, acc: Account, response: httpx2.Response, elapsed: float) -> Generator[_Effect, Any, None]:
        yield _Discard(response)
        now = time.time()
        decision = decide_cooldown(
            response.headers,
            now=now,
            reset_headers=self.provider.reset_headers,
            default_cooldown=self.provider.default_cooldown,
            max_cooldown=self.provider.max_cooldown,
            level=acc.backoff_level,
        )

        def cool(pool: PoolFile) -> None:
            a = pool.find(acc.id)
            a.cooldowns[WHOLE_ACCOUNT] = Cooldown(until=decision.until, reason=f"429 ({decision.source})", set_at=now)
            a.backoff_level = a.backoff_level + 1 if decision.is_default else 0
            a.counters.rate_limited += 1
            a.last_status = 429
            a.last_error = f"rate limited until {_clock(decision.until)} ({decision.source})"

        yield _Block(lambda: self.t.pool.store.update(cool))
        self._note(acc, 429, "rate_limited", elapsed, cooldown_until=decision.until, detail=decision.source)
        self.tried.add(acc.id)
        self.cooled[acc.id] = decision.until

    def _refused(self, acc: Account, status: int, elapsed: float) -> Generator[_Effect, Any, None]:
        reauth = status == 401
        detail = ("credentials rejected (401); the account needs a new login or key" if reauth
                  else "forbidden (403)")

        def mark(pool: PoolFile) -> None:
            a = pool.find(acc.id)
            a.last_status = status
            a.last_error = detail
            a.counters.unauthorized += 1
            if reauth:
                a.needs_reauth = True

        yield _Block(lambda: self.t.pool.store.update(mark))
        self._note(acc, status, "needs_reauth" if reauth else "forbidden", elapsed, detail=detail)
        self.tried.add(acc.id)

    def _finish(self, acc: Account, response: httpx2.Response, status: int) -> httpx2.Response:
        self.t.usage.record(acc.id, status)  # a backoff reset was already written by the flow
        response.extensions = {**response.extensions,
                               "authpool": RequestResult(acc.id, acc.name, list(self.attempts))}
        return response

    # -- helpers -------------------------------------------------------------------------

    def _with_credentials(self, acc: Account, secret: Secret) -> httpx2.Request:
        name, prefix, extra = self.provider.credential_headers(acc.kind)
        headers = httpx2.Headers(self.request.headers)
        for k, v in {**self.provider.headers, **extra}.items():
            if k not in headers:
                headers[k] = v
        headers[name] = prefix + secret.credential
        return httpx2.Request(
            self.request.method,
            self.request.url,
            headers=headers,
            stream=self.request.stream,
            extensions=self.request.extensions,
        )

    def _others_left(self, acc: Account) -> bool:
        if self.picks >= self.provider.max_attempts:
            return False
        ready, _, _ = self.t.candidates(self.t.pool.store.read(), time.time(), self.tried | {acc.id})
        return bool(ready)

    def _backoff(self, n: int) -> float:
        delay = min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (n - 1)) * (0.5 + random.random() / 2)  # noqa: S311
        return float(max(0.0, min(delay, self.deadline - time.monotonic())))

    def _note(self, acc: Account, status: int | None, outcome: str, elapsed: float, *,
              cooldown_until: float | None = None, detail: str | None = None) -> None:
        self.attempts.append(Attempt(acc.id, acc.name, status, outcome, elapsed, cooldown_until, detail))
        log.info("%s %s via %s: %s%s", self.request.method, self.request.url.path, acc.name,
                 outcome, f" ({status})" if status else "")

    def _fail(self, message: str) -> RequestFailed:
        if self.last_error is not None and not self.attempts:
            return RequestFailed(str(self.last_error), attempts=self.attempts)
        if self.last_error is not None:
            message = f"{message}; last error: {self.last_error}"
        return RequestFailed(message, attempts=self.attempts)

    def _summary(self, head: str) -> str:
        pool_file = self.t.pool.store.read()
        now = time.time()
        states = []
        for a in self.t.scope(pool_file):
            state = a.state(now)
            if state == "cooling":
                until = a.cooldown_until(now=now)
                state = f"cooling until {_clock(until or now)}"
            states.append(f"{a.name}: {state}")
        return head + (f" ({'; '.join(states)})" if states else "")

    def _no_accounts(self, pool_file: PoolFile) -> NoAccounts:
        scope = self.t.scope(pool_file)
        if not scope:
            where = f" in namespace {self.t.options.namespace!r}" if self.t.options.namespace else ""
            return NoAccounts(
                f"provider {self.provider.id} has no accounts{where}; add one with "
                f"`authpool accounts add-key {self.provider.id} --label NAME` or `authpool login {self.provider.id}`",
                attempts=self.attempts,
            )
        return NoAccounts(self._summary(f"no usable {self.provider.id} account"), attempts=self.attempts)


def _clear_backoff(account_id: str) -> Callable[[PoolFile], None]:
    def clear(pool: PoolFile) -> None:
        for a in pool.accounts:  # removed meanwhile: nothing to reset, and the response still stands
            if a.id == account_id:
                a.backoff_level = 0

    return clear


def _replayable(request: httpx2.Request) -> bool:
    return isinstance(request.stream, httpx2.ByteStream)


def _describe_error(e: BaseException) -> str:
    return "timed out" if isinstance(e, httpx2.TimeoutException) else type(e).__name__


def _clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


# -- the transport -------------------------------------------------------------------------


class PoolTransport(httpx2.BaseTransport, httpx2.AsyncBaseTransport):
    """An httpx2 transport that serves each request through the pool of one provider.

    Example:
        >>> client = httpx2.AsyncClient(transport=pool.transport("anthropic"),
        ...                             base_url="https://api.anthropic.com")  # doctest: +SKIP
        >>> r = await client.post("/v1/messages", json={...})  # doctest: +SKIP
        >>> r.extensions["authpool"].account  # doctest: +SKIP
        'anthropic/work'
    """

    def __init__(
        self,
        pool: Any,
        provider: Provider,
        refresher: Refresher,
        *,
        options: RotationOptions | None = None,
        inner: httpx2.BaseTransport | None = None,
        ainner: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.pool = pool
        self.provider = provider
        self.refresher = refresher
        self.usage = pool.usage
        self.options = options or RotationOptions()
        self._inner = inner
        self._ainner = ainner
        self._pinned_id: str | None = None
        if self.options.account:
            acc = pool.get(self.options.account)
            if acc.provider != provider.id:
                raise InvalidInput(f"account {acc.name} belongs to {acc.provider}, not {provider.id}")
            self._pinned_id = acc.id

    # -- candidate selection (pure over a PoolFile) ----------------------------------------

    def scope(self, pool_file: PoolFile) -> list[Account]:
        """The accounts this transport may use at all (provider, namespace, pinned account)."""
        out = []
        for a in pool_file.accounts:
            if a.provider != self.provider.id:
                continue
            if self._pinned_id is not None and a.id != self._pinned_id:
                continue
            if self.options.namespace is not None and a.namespace != self.options.namespace:
                continue
            out.append(a)
        return out

    def candidates(self, pool_file: PoolFile, now: float, exclude: set[str]) -> tuple[list[Account], float | None, int]:
        """(ready accounts in strategy order, soonest cooldown end among cooling ones, how many exist)."""
        scope = self.scope(pool_file)
        ready: list[Account] = []
        soonest: float | None = None
        for a in scope:
            if not a.enabled or a.needs_reauth:
                continue
            until = a.cooldown_until(now=now)
            if until is not None:
                soonest = until if soonest is None else min(soonest, until)
                continue
            if a.id in exclude:
                continue
            ready.append(a)
        weights = self.provider.weights

        def usage(a: Account) -> UsageView:
            return UsageView(self.usage.last_used(a.id, a.last_used_at),
                             weights.get(a.id, weights.get(a.label, 1.0)),
                             self.usage.unrecorded(a.id))

        return order_accounts(self.provider.strategy, ready, usage), soonest, len(scope)

    # -- drivers ---------------------------------------------------------------------------

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        inner = self._inner or self.pool.http_transport()
        flow = _Engine(self, request).flow()
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = flow.throw(error) if error is not None else flow.send(value)
            except StopIteration as stop:
                self._maybe_flush_sync()
                return stop.value  # type: ignore[no-any-return]
            value, error = None, None
            try:
                if isinstance(effect, _Send):
                    try:
                        value = inner.handle_request(effect.request)
                    except httpx2.TransportError as e:
                        value = _Failed(e)
                elif isinstance(effect, _Discard):
                    effect.response.read()
                    effect.response.close()
                elif isinstance(effect, _Block):
                    value = effect.fn()
                elif isinstance(effect, _Sleep):
                    self._progress_sync(effect)
                    time.sleep(effect.seconds)
                elif isinstance(effect, _Refresh):
                    value = self.refresher.refresh(self.provider, effect.account.id,
                                                   effect.account.secret_generation, effect.mode)
            except Exception as e:  # noqa: BLE001 - delivered into the flow, which decides
                error = e

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        inner = self._ainner or self.pool.async_http_transport()
        flow = _Engine(self, request).flow()
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = flow.throw(error) if error is not None else flow.send(value)
            except StopIteration as stop:
                if self.usage.due():
                    await anyio.to_thread.run_sync(self.usage.flush)
                return stop.value  # type: ignore[no-any-return]
            value, error = None, None
            try:
                if isinstance(effect, _Send):
                    try:
                        value = await inner.handle_async_request(effect.request)
                    except httpx2.TransportError as e:
                        value = _Failed(e)
                elif isinstance(effect, _Discard):
                    await effect.response.aread()
                    await effect.response.aclose()
                elif isinstance(effect, _Block):
                    value = await anyio.to_thread.run_sync(effect.fn)
                elif isinstance(effect, _Sleep):
                    await self._progress_async(effect)
                    await anyio.sleep(effect.seconds)
                elif isinstance(effect, _Refresh):
                    value = await self.refresher.arefresh(self.provider, effect.account.id,
                                                          effect.account.secret_generation, effect.mode)
            except Exception as e:  # noqa: BLE001 - delivered into the flow, which decides
                error = e

    def _maybe_flush_sync(self) -> None:
        if self.usage.due():
            self.usage.flush()

    def _progress_sync(self, effect: _Sleep) -> None:
        cb = self.options.on_progress
        if cb is not None and effect.message:
            result = cb(effect.waited, effect.total, effect.message)
            if result is not None:
                raise InvalidInput("an async progress callback needs an async client")

    async def _progress_async(self, effect: _Sleep) -> None:
        cb = self.options.on_progress
        if cb is not None and effect.message:
            result = cb(effect.waited, effect.total, effect.message)
            if result is not None:
                await result

    # Closing a client does not force a write: usage is flushed when due, by Pool.close()/flush()
    # and at exit, so a client per call (as the MCP tool makes) does not cost a locked write per call.
    def close(self) -> None:
        self._maybe_flush_sync()

    async def aclose(self) -> None:
        if self.usage.due():
            await anyio.to_thread.run_sync(self.usage.flush)
