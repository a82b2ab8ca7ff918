"""Same-request rotation: one logical request, served by whichever account can serve it.

For each attempt the engine picks an account (enabled, not needing re-auth, not cooling for
the request's model; ordered by the provider's strategy, a session's account first), applies
its credentials, sends, and classifies the answer before any of the body reaches the caller:

- ``429``, or a ``200`` stream that opens with a rate-limit error event: cool the account down
  (``Retry-After``, ``retry-after-ms``, reset headers, deadlines in the body, else an
  exponential default) for the model the error names, or the whole account; persist that at
  once; retry on the next account;
- ``401``/``403``: refresh the token once (single-flight, see :mod:`pool.refresh`) and retry on
  the same account; if still refused, mark it (401: needs re-auth) and rotate;
- network errors, ``5xx`` and streams opening with an overloaded error: bounded retries with
  backoff, then rotate;
- anything else is the answer: returned with its body unread (a stream is read only up to its
  first content event), so streams stream.

An account whose cooldown has ended is on probation: one request at a time (across processes)
may use it until one succeeds. When every account is cooling, the request waits for the soonest
one if that is within its wait budget (reporting progress), else fails with
:class:`~pool.errors.AllAccountsCooling` naming each account's state and when the next frees
up. Every retry loop is bounded by attempts and by one deadline shared across them.

The engine is a generator of *effects* (send this, sleep that long, run this blocking call,
refresh that account); :mod:`pool.transport` drives it synchronously or asynchronously.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx2

from authpool.accounts.model import WHOLE_ACCOUNT, Account, Cooldown, PoolFile, SessionBinding
from authpool.accounts.secret import Secret
from authpool.accounts.views import relogin_command
from authpool.auth.flight import RefreshMode, Renewal
from authpool.errors import (
    AllAccountsCooling,
    BodyNotReplayable,
    NoAccounts,
    OriginRefused,
    PoolError,
    ReauthRequired,
    RefreshError,
    RefreshPending,
    RequestFailed,
)
from authpool.providers.cooldown import decide_cooldown, latest_reset
from authpool.providers.provider import url_origin
from authpool.providers.ratelimit import model_of_request, read_body_limit
from authpool.rotation.sse import StreamVerdict

if TYPE_CHECKING:
    from authpool.rotation.driver import PoolTransport
    from authpool.storage.lock import Lock

__all__ = ["Attempt", "RequestResult", "RotationOptions"]

log = logging.getLogger("authpool")

ProgressCallback = Callable[[float, float | None, str], Awaitable[None] | None]

_BACKOFF_BASE = 0.25
_BACKOFF_CAP = 4.0
_PROBE_POLL = 0.25  # seconds between looks at an account another request is probing


@dataclass
class Attempt:
    """One try within a request: which account, what came back, what the engine did about it."""

    account_id: str
    account: str  # provider/label
    status: int | None
    outcome: str  # ok | rate_limited | refreshed | refresh_failed | refresh_pending | needs_reauth | unauthorized
    #              | forbidden | server_error | network_error | secret_error | stream_rate_limited | stream_overloaded
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
    """Per-client choices: pin an account, stay in a namespace, wait for a cooling pool, keep a session."""

    account: str | None = None  # id or provider/label: use only this account
    namespace: str | None = None
    wait_budget: float = 0.0  # seconds a request may wait for a cooling account
    on_progress: ProgressCallback | None = None
    session: str | None = None  # requests with the same key stay on one account while it is healthy
    session_ttl: float = 3600.0
    # All cooling: raise AllAccountsCooling (default), or answer a synthetic 429 with Retry-After,
    # for callers that speak HTTP to their own clients.
    cooling_response: bool = False


# -- effects -------------------------------------------------------------------------------


@dataclass
class _Send:
    request: httpx2.Request


@dataclass
class _Discard:
    """Read (unless ``read`` is false) and close a response we will not return.

    After reading, its body is in ``response.content``. A stream that opened with an error is
    closed unread: it might never end.
    """

    response: httpx2.Response
    read: bool = True


@dataclass
class _Peek:
    """Read a stream up to its first content event; returns (verdict, response to deliver)."""

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
    wait: float  # seconds the request waits for it; the refresh itself goes on regardless


@dataclass
class _Failed:
    """What a send returns into the flow when the transport raised."""

    error: httpx2.TransportError


Effect = _Send | _Discard | _Peek | _Block | _Sleep | _Refresh
Flow = Generator[Effect, Any, httpx2.Response]


class _Engine:
    """The decisions of one request. Holds no I/O of its own."""

    def __init__(self, transport: PoolTransport, request: httpx2.Request) -> None:
        self.t = transport
        self.provider = transport.provider
        self.options = transport.options
        self.request = request
        self.attempts: list[Attempt] = []
        self.tried: set[str] = set()
        self.deadline = time.monotonic() + self.provider.timeout + self.options.wait_budget
        self.wait_left = self.options.wait_budget
        self.last_error: PoolError | None = None
        self.picks = 0  # accounts picked so far (retries on the same account do not count)
        self.cooled: dict[str, float] = {}  # account id -> end of the cooldown this request set
        self.model = model_of_request(request.url.path, _body_of(request))
        self.session_key = f"{self.provider.id}/{self.options.session}" if self.options.session else None
        self.probes: dict[str, Lock] = {}  # probation locks this request holds
        # 401s not yet confirmed by the provider accepting another account's credentials.
        self.suspects: list[Attempt] = []
        self.accepted = False  # the provider accepted some account's credentials in this request

    # The flow. Yields effects; receives their results; returns the final response.
    def flow(self) -> Flow:  # noqa: PLR0912, PLR0915 - one state machine, read top to bottom
        self._check_request()
        pinned: Account | None = None  # set to retry the same account (after a refresh or a 5xx)
        refreshes: dict[str, int] = {}  # forced refreshes per account in this request (at most 2)
        minted: dict[str, bool] = {}  # whether the last one renewed the token itself
        failures: dict[str, int] = {}
        while True:
            if time.monotonic() > self.deadline:
                raise self._fail(f"gave up after {len(self.attempts)} attempts: the request deadline passed")
            acc, pinned = pinned, None
            if acc is None:
                # max_attempts bounds how many accounts one request tries (each pick counts).
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
                self._note(acc, None, "network_error", elapsed, detail=_describe_error(result.error))
                pinned = yield from self._transient(acc, failures, None,
                                                    f"could not reach {self.provider.id}: "
                                                    f"{_describe_error(result.error)}")
                continue
            response: httpx2.Response = result
            status = response.status_code
            yield from self._credentials_accepted(status)
            if status == 429:
                yield _Discard(response)
                yield from self._rate_limited(acc, response.headers, response.content, 429, "rate_limited", elapsed)
                continue
            if status in (401, 403):
                yield _Discard(response)
                # Refresh and retry the same account. Only a refusal of a token this request
                # minted itself proves the login is refused: a token another process had just
                # minted may have been revoked since, so it earns one real refresh of its own.
                if acc.kind == "oauth" and not minted.get(acc.id) and refreshes.get(acc.id, 0) < 2:
                    refreshes[acc.id] = refreshes.get(acc.id, 0) + 1
                    renewal = yield from self._refresh(acc, "force", elapsed, status)
                    if renewal is not None:
                        minted[acc.id] = renewal.performed
                        pinned = self.t.pool.get(acc.id)
                    else:
                        self.tried.add(acc.id)
                    continue
                yield from self._refused(acc, status, elapsed)
                continue
            if status >= 500 and status != 501:
                self._note(acc, status, "server_error", elapsed)
                if failures.get(acc.id, 0) >= self.provider.server_error_retries and not self._others_left(acc):
                    return (yield from self._finish(acc, response, status))  # nobody left: the error is the answer
                yield _Discard(response)
                pinned = yield from self._transient(acc, failures, status,
                                                    f"{self.provider.id} answered HTTP {status}")
                continue
            if status < 300 and _is_event_stream(response):
                verdict, response = yield _Peek(response)
                if verdict.kind != "content":
                    yield from self._stream_error(acc, response, verdict, elapsed, failures)
                    continue
            self._note(acc, status, "ok", elapsed)
            return (yield from self._finish(acc, response, status))

    def close(self) -> None:
        """Release what the request holds (probation locks); called by the drivers at the end."""
        for lock in self.probes.values():
            lock.release()
        self.probes.clear()

    # -- choosing --------------------------------------------------------------------------

    def _check_request(self) -> None:
        url = self.request.url
        if url.userinfo:
            raise OriginRefused("refusing a URL with a user name or password (user@host)")
        origin = url_origin(url)  # as the HTTP client will connect to it, from its own parsed URL
        if origin not in self.provider.allowed_origins:
            # Also the path a cross-origin redirect takes: it arrives here as a new request.
            raise OriginRefused(
                f"refusing to send {self.provider.id} credentials to {origin}: not one of the provider's "
                f"origins ({', '.join(sorted(self.provider.allowed_origins)) or 'none configured'})"
            )
        self.provider.refuse_credential_headers(self.request.headers.keys())

    def _choose(self) -> Generator[Effect, Any, Account]:
        while True:
            pool_file = self.t.pool.store.read()
            now = time.time()
            ready, soonest, considered = self.t.candidates(pool_file, now, self.tried, self.model)
            if considered == 0:
                raise self._no_accounts(pool_file)
            ready = self._session_first(pool_file, ready, now)
            probing = False
            for acc in ready:
                if self._on_probation(acc) and acc.id not in self.probes:
                    lock = yield _Block(functools.partial(self.t.probe_lock, acc.id))
                    if lock is None:
                        probing = True  # another request is probing it: try the next account
                        continue
                    self.probes[acc.id] = lock
                self.t.usage.touch(acc.id)
                return acc
            if probing:
                soonest = min(soonest or now + _PROBE_POLL, now + _PROBE_POLL)
            elif any(self.cooled.get(i, now + 1) <= now for i in self.tried):
                # A cooldown this request set has already ended (Retry-After: 0, a few ms): that
                # account may go again now, a wait of zero, not "no account could serve".
                soonest = now
            if soonest is None:
                head = "no account could serve the request" if self.tried else "no account is usable"
                raise self._fail(self._summary(head))
            yield from self._wait_for(soonest, now)

    def _scopes(self) -> tuple[str, ...]:
        """The cooldown scopes this request falls in: the whole account, and its model if any."""
        return (WHOLE_ACCOUNT, self.model) if self.model else (WHOLE_ACCOUNT,)

    def _on_probation(self, acc: Account) -> bool:
        """Whether this request must probe ``acc``: on probation after a cooldown of one of its scopes.

        Probation is per scope like the cooldown that caused it. A cooldown of model X leaves
        other models at full traffic (they were never refused), and their successes say nothing
        about X, so X is still probed when its cooldown ends. The ended cooldown entries are the
        markers; a success in their scope removes them (see :func:`_after_success`).
        """
        return acc.probation and any(scope in acc.cooldowns for scope in self._scopes())

    def _session_first(self, pool_file: PoolFile, ready: list[Account], now: float) -> list[Account]:
        if self.session_key is None:
            return ready
        binding = pool_file.sessions.get(self.session_key)
        if binding is None or binding.expires_at <= now:
            return ready
        bound = [a for a in ready if a.id == binding.account_id]
        return bound + [a for a in ready if a.id != binding.account_id]

    def _wait_for(self, soonest: float, now: float) -> Generator[Effect, Any, None]:
        wait = max(0.0, soonest - now)
        if wait > self.wait_left or time.monotonic() + wait > self.deadline:
            renewing = any(a.failing_refresh() is not None for a in self.t.scope(self.t.pool.store.read()))
            what = "cooling down or failing to renew their tokens" if renewing else "cooling down"
            raise AllAccountsCooling(
                self._summary(
                    f"all {self.provider.id} accounts are {what}; the next frees up at "
                    f"{_clock(soonest)} (in {wait:.0f}s)"
                ),
                soonest,
                attempts=self.attempts,
            )
        total = self.options.wait_budget
        waited = total - self.wait_left
        self.wait_left -= wait
        yield _Sleep(wait + 0.05, waited, total, f"all accounts cooling; waiting {wait:.1f}s for the next")
        # Only the accounts that were rate-limited come back after the wait. One whose refresh
        # failed, or that exhausted its 5xx retries, stays out: a second 401 from an account
        # whose refresh failed (endpoint down) would wrongly mark a live login needs-reauth.
        self.tried.difference_update(self.cooled)

    # -- credentials -----------------------------------------------------------------------

    def _secret(self, acc: Account) -> Generator[Effect, Any, Secret | None]:  # noqa: PLR0911
        secret: Secret
        # A cached secret costs no thread hop (the async path's largest per-request cost).
        cached: Secret | None = self.t.pool.cached_secret(acc)
        if cached is not None:
            secret = cached
        else:
            try:
                secret = yield _Block(functools.partial(self.t.pool.secret_of, acc))
            except PoolError as e:
                self._note(acc, None, "secret_error", 0.0, detail=str(e))
                self.last_error = e
                return None
        if acc.kind != "oauth" or secret.expires_at is None:
            return secret
        now = time.time()
        left = secret.expires_at - now
        advisory, mandatory = self.provider.refresh_windows(acc.access_lifetime)
        if left > advisory:
            return secret
        mode: RefreshMode = "mandatory" if left <= mandatory else "advisory"
        failing = acc.failing_refresh()
        if failing is not None and failing.next_try_at > now:
            if mode == "advisory":
                return secret  # renewing is failing; the current token still works meanwhile
            self._note(acc, None, "refresh_failed", 0.0, detail=failing.describe())
            self.last_error = RefreshError(f"renewing {acc.name} is failing: {failing.describe()}")
            return None
        try:
            renewed: Renewal | None = yield _Refresh(acc, mode, self._refresh_wait())
            # None: advisory, and someone else is renewing it; the current token is still valid.
            return renewed.secret if renewed is not None else secret
        except (RefreshError, ReauthRequired) as e:
            if mode == "advisory" and isinstance(e, RefreshError):
                log.info("advisory refresh of %s failed (%s); using the current token", acc.name, e)
                return secret
            self._note(acc, None, _refresh_outcome(e), 0.0, detail=str(e))
            self.last_error = e
            return None

    def _refresh(self, acc: Account, mode: RefreshMode, elapsed: float,
                 status: int) -> Generator[Effect, Any, Renewal | None]:
        try:
            renewal: Renewal = yield _Refresh(acc, mode, self._refresh_wait())
        except (ReauthRequired, RefreshError) as e:
            self._note(acc, status, _refresh_outcome(e), elapsed, detail=str(e))
            self.last_error = e
            return None
        self._note(acc, status, "refreshed", elapsed,
                   detail=None if renewal.performed else "renewed by another process")
        return renewal

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

    # -- outcomes --------------------------------------------------------------------------

    def _rate_limited(self, acc: Account, headers: Any, body: Any, status: int | None, outcome: str,
                      elapsed: float) -> Generator[Effect, Any, None]:
        now = time.time()
        limit = read_body_limit(body, now)
        decision = decide_cooldown(
            headers,
            now=now,
            reset_headers=self.provider.reset_headers,
            default_cooldown=self.provider.default_cooldown,
            max_cooldown=self.provider.max_cooldown,
            level=acc.backoff_level,
            body_deadline=limit.deadline,
        )
        # A limit that names a model cools only that model's scope: other models keep the account.
        scope = limit.model or WHOLE_ACCOUNT
        # A limit reported inside a 200 stream says "stream", not "200": the status was a success.
        what = "stream" if outcome == "stream_rate_limited" or status is None else str(status)
        reason = f"{what} ({decision.source})" + (f" for {scope}" if scope != WHOLE_ACCOUNT else "")

        def cool(pool: PoolFile) -> None:
            a = pool.find(acc.id)
            a.cooldowns = {k: v for k, v in a.cooldowns.items() if v.until > now}  # drop ended ones
            a.cooldowns[scope] = Cooldown(until=decision.until, reason=reason, set_at=now)
            a.backoff_level = a.backoff_level + 1 if decision.is_default else 0
            a.probation = True
            a.counters.rate_limited += 1
            a.last_status = status
            a.last_error = f"rate limited until {_clock(decision.until)} ({decision.source})" + (
                f" for model {scope}" if scope != WHOLE_ACCOUNT else "")

        yield _Block(functools.partial(self.t.pool.store.update, cool))
        detail = decision.source + (f"; model {scope}" if scope != WHOLE_ACCOUNT else "")
        self._note(acc, status, outcome, elapsed, cooldown_until=decision.until, detail=detail)
        self.tried.add(acc.id)
        self.cooled[acc.id] = decision.until

    def _stream_error(self, acc: Account, response: httpx2.Response, verdict: StreamVerdict, elapsed: float,
                      failures: dict[str, int]) -> Generator[Effect, Any, None]:
        # Nothing was delivered yet, so the disguised error can be handled like its status code.
        yield _Discard(response, read=False)
        if verdict.kind == "rate_limited":
            yield from self._rate_limited(acc, response.headers, {"error": verdict.error}, response.status_code,
                                          "stream_rate_limited", elapsed)
            return
        self._note(acc, response.status_code, "stream_overloaded", elapsed,
                   detail=str((verdict.error or {}).get("type", "error event")))
        failures[acc.id] = failures.get(acc.id, 0) + 1
        self.tried.add(acc.id)
        self.last_error = RequestFailed(f"{self.provider.id} streams opened with an error event")

    def _transient(self, acc: Account, failures: dict[str, int], status: int | None,
                   message: str) -> Generator[Effect, Any, Account | None]:
        """A network error or 5xx: retry the same account with backoff, then move on.

        Never persisted as a cooldown or a flag: a transient failure must not take an account
        (let alone the pool) out of service.
        """
        n = failures[acc.id] = failures.get(acc.id, 0) + 1
        if n <= self.provider.server_error_retries:
            yield _Sleep(self._backoff(n))
            return acc
        self.tried.add(acc.id)
        self.last_error = RequestFailed(message)
        return None

    def _refused(self, acc: Account, status: int, elapsed: float) -> Generator[Effect, Any, None]:
        """A 401 that no renewal can cure, or a 403: rotate; mark a 401 needs-reauth on a second opinion.

        A provider configured with the wrong auth style refuses every account the same way, so
        one 401 proves nothing about the key itself. The account is marked only once the
        provider has accepted another account's credentials in this request (any answer but
        401/403 or a 5xx); until then it is a suspect, and if every account tried is refused,
        the error points at the provider's configuration instead.
        """
        self.tried.add(acc.id)
        if status != 401:
            yield _Block(functools.partial(self.t.pool.store.update, _refusal(acc.id, status, dead=False)))
            self._note(acc, status, "forbidden", elapsed, detail="forbidden (403)")
            return
        dead = self.accepted
        yield _Block(functools.partial(self.t.pool.store.update, _refusal(acc.id, status, dead=dead)))
        self._note(acc, status, "needs_reauth" if dead else "unauthorized", elapsed, detail=_DEAD if dead else _REFUSED)
        if not dead:
            self.suspects.append(self.attempts[-1])

    def _credentials_accepted(self, status: int) -> Generator[Effect, Any, None]:
        """The provider answered an account without refusing its credentials: refusals of others are real."""
        if self.accepted or status in (401, 403, 407) or status >= 500:
            return
        self.accepted = True
        yield from self._confirm_refusals()

    def _confirm_refusals(self) -> Generator[Effect, Any, None]:
        suspects, self.suspects = self.suspects, []
        if not suspects:
            return
        for attempt in suspects:
            attempt.outcome, attempt.detail = "needs_reauth", _DEAD
        ids = {attempt.account_id for attempt in suspects}

        def mark(pool: PoolFile) -> None:
            for a in pool.accounts:  # removed meanwhile: nothing to mark
                if a.id in ids:
                    a.needs_reauth = True
                    a.last_error = _DEAD

        yield _Block(functools.partial(self.t.pool.store.update, mark))

    def _finish(self, acc: Account, response: httpx2.Response, status: int) -> Generator[Effect, Any, httpx2.Response]:
        now = time.time()
        bind = self._session_to_bind(acc, now) if status < 400 else None
        success = status < 400
        # A probation flag without any cooldown left to confirm (after `authpool reset`) just ends.
        probed = self._on_probation(acc) or (acc.probation and not acc.cooldowns)
        if (success and (acc.backoff_level > 0 or probed)) or bind is not None:
            # Cooldown state is written before the response returns, like a cooldown itself:
            # left to the batched usage flush, a 429 right after this success would still double,
            # and a probation would outlive the success that ended it.
            yield _Block(functools.partial(self.t.pool.store.update,
                                           _after_success(acc.id, success, bind, self._scopes())))
        reset = latest_reset(response.headers, self.provider.reset_headers, now) if success else None
        self.t.usage.record(acc.id, status, quota_resets_at=reset)
        response.extensions = {**response.extensions,
                               "authpool": RequestResult(acc.id, acc.name, list(self.attempts))}
        return response

    def _session_to_bind(self, acc: Account, now: float) -> tuple[str, SessionBinding] | None:
        if self.session_key is None:
            return None
        current = self.t.pool.store.read().sessions.get(self.session_key)
        ttl = self.options.session_ttl
        if current is not None and current.account_id == acc.id and current.expires_at - now > ttl / 2:
            return None  # bound and fresh enough: no write
        return self.session_key, SessionBinding(account_id=acc.id, expires_at=now + ttl)

    # -- helpers -------------------------------------------------------------------------

    def _others_left(self, acc: Account) -> bool:
        if self.picks >= self.provider.max_attempts:
            return False
        ready, _, _ = self.t.candidates(self.t.pool.store.read(), time.time(), self.tried | {acc.id}, self.model)
        return bool(ready)

    def _refresh_wait(self) -> float:
        """How long this request waits for a token call: the provider's token timeout, within its deadline."""
        return max(0.0, min(self.provider.token_timeout, self.deadline - time.monotonic()))

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
        if self.suspects and not self.accepted:
            message += "; " + self._configuration_hint()
        return RequestFailed(message, attempts=self.attempts)

    def _configuration_hint(self) -> str:
        """Why every account being refused points at the provider's configuration, and what it sends."""
        pid = self.provider.id
        kinds = sorted({a.kind for a in self.t.scope(self.t.pool.store.read()) if a.id in
                        {s.account_id for s in self.suspects}})
        how = []
        for kind in kinds:
            header, prefix, _ = self.provider.credential_headers(kind)
            what = "API keys" if kind == "api_key" else "OAuth tokens"
            how.append(f"{what} go in the {header} header" + (" as a Bearer token" if prefix else ""))
        return (f"every {pid} account tried was refused (401) the same way, so the provider's configuration is "
                f"the likely cause rather than the credentials ({'; '.join(how)}; check `auth` for "
                f"[providers.{pid}] in config.toml); the accounts were not marked needs-reauth")

    def _summary(self, head: str) -> str:
        """``head`` plus every account's state, so the error says what to do next."""
        pool_file = self.t.pool.store.read()
        now = time.time()
        states = []
        for a in self.t.scope(pool_file):
            state = a.state(now)
            until = a.cooldown_until(self.model or WHOLE_ACCOUNT, now)
            if state == "ready" and until is not None:
                state = f"cooling for {self.model} until {_clock(until)}"
            elif state == "cooling":
                state = f"cooling until {_clock(until or now)}"
            elif state == "ready" and any(s.account_id == a.id for s in self.suspects):
                state = "refused (401) in this request"
            elif state == "refresh-failing" and (failing := a.failing_refresh()) is not None:
                state = failing.describe()
            elif state == "needs-reauth":
                state += f" (run `{relogin_command(a)}`)" if a.kind == "oauth" else " (replace its key)"
            states.append(f"{a.name}: {state}")
        return head + (f" ({'; '.join(states)})" if states else "")

    def _no_accounts(self, pool_file: PoolFile) -> NoAccounts:
        where = f" in namespace {self.options.namespace!r}" if self.options.namespace else ""
        return NoAccounts(
            f"provider {self.provider.id} has no accounts{where}; add one with "
            f"`authpool accounts add-key {self.provider.id} --label NAME` or `authpool login {self.provider.id}`",
            attempts=self.attempts,
        )


_REFUSED = "credentials rejected (401)"
_DEAD = "credentials rejected (401); the account needs a new login or key"


def _refusal(account_id: str, status: int, *, dead: bool) -> Callable[[PoolFile], None]:
    def note(pool: PoolFile) -> None:
        a = pool.find(account_id)
        a.last_status = status
        a.last_error = "forbidden (403)" if status == 403 else _DEAD if dead else _REFUSED
        a.counters.unauthorized += 1
        a.needs_reauth = a.needs_reauth or dead

    return note


def _after_success(account_id: str, success: bool, bind: tuple[str, SessionBinding] | None,
                   scopes: tuple[str, ...] = (WHOLE_ACCOUNT,)) -> Callable[[PoolFile], None]:
    def apply(pool: PoolFile) -> None:
        now = time.time()
        for a in pool.accounts:  # removed meanwhile: nothing to reset, and the response still stands
            if a.id == account_id and success:
                a.backoff_level = 0
                # The success confirms the scopes it was in: their ended cooldowns go. Probation
                # lasts while another scope still has a cooldown (running, or ended unconfirmed).
                a.cooldowns = {k: v for k, v in a.cooldowns.items() if k not in scopes or v.until > now}
                a.probation = a.probation and bool(a.cooldowns)
        if bind is not None:
            pool.sessions = {k: v for k, v in pool.sessions.items() if v.expires_at > now}
            pool.sessions[bind[0]] = bind[1]

    return apply


def _refresh_outcome(e: PoolError) -> str:
    if isinstance(e, ReauthRequired):
        return "needs_reauth"
    return "refresh_pending" if isinstance(e, RefreshPending) else "refresh_failed"


def _body_of(request: httpx2.Request) -> bytes | None:
    if not _replayable(request):
        return None
    try:
        return request.content
    except httpx2.RequestNotRead:
        return None


def _replayable(request: httpx2.Request) -> bool:
    return isinstance(request.stream, httpx2.ByteStream)


def _is_event_stream(response: httpx2.Response) -> bool:
    ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    # A compressed stream would have to be decoded to be judged; deliver it as it is.
    return ctype == "text/event-stream" and encoding in ("", "identity")


def _describe_error(e: BaseException) -> str:
    return "timed out" if isinstance(e, httpx2.TimeoutException) else type(e).__name__


def _clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def __getattr__(name: str) -> Any:
    # PoolTransport moved to pool.transport; keep `from pool.rotation import PoolTransport` working.
    if name == "PoolTransport":
        from authpool.rotation.driver import PoolTransport

        return PoolTransport
    raise AttributeError(name)
