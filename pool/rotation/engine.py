"""Same-request rotation, decided: one logical request, served by whichever account can serve it.

The engine holds every decision of one request and does no I/O: it is a generator that yields
effects (:mod:`authpool.rotation.effects` — read the store, send with these headers, read that
body, sleep, refresh, write this change) and receives their results. A driver
(:mod:`authpool.rotation.driver`) performs them, synchronously or asynchronously; tests drive
the engine with scripted results and no sockets.

For each attempt the engine picks an account (:mod:`authpool.rotation.candidates`: enabled,
alive, not cooling for the request's model, a session's account first, then by the provider's
strategy), asks for its credentials, sends, and classifies the answer before any of the body
reaches the caller:

- ``429``, or a ``200`` stream that opens with a rate-limit error event: cool the account down
  (``Retry-After``, ``retry-after-ms``, reset headers, deadlines in the body, else an
  exponential default) for the model the error names, or the whole account; persist that at
  once; retry on the next account;
- ``401``/``403``: refresh the token once (single-flight, see :mod:`authpool.auth.refresh`) and
  retry on the same account; if still refused, rotate — and mark a ``401`` needs-reauth only on a
  second opinion (the provider accepted another account's credentials in this request);
- network errors, ``5xx`` and streams opening with an overloaded error: bounded retries with
  backoff, then rotate;
- anything else is the answer: returned with its body unread (a stream is read only up to its
  first content event), so streams stream.

An account whose cooldown has ended is on probation: one request at a time (across processes)
may use it until one succeeds. When every account is cooling, the request waits for the soonest
one if that is within its wait budget (reporting progress), else fails with
:class:`~authpool.errors.AllAccountsCooling` naming each account's state and when the next frees
up. Every retry loop is bounded by attempts and by one deadline shared across them.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from authpool.accounts import transitions
from authpool.accounts.model import WHOLE_ACCOUNT, Account, AccountKind, PoolFile, QuotaWindow, Rows, SessionBinding
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
from authpool.providers.provider import Provider, origin_of
from authpool.providers.ratelimit import model_of_request, read_body_limit
from authpool.providers.windows import read_windows
from authpool.rotation.candidates import Selection, in_scope, select
from authpool.rotation.effects import (
    Answer,
    Drop,
    Effect,
    LoadSecret,
    Peek,
    Progress,
    ReadBody,
    ReadPool,
    Refresh,
    RequestFacts,
    Send,
    Sleep,
    Touch,
    TryProbe,
    Unreachable,
    Write,
)
from authpool.rotation.result import Attempt, Outcome, RotationOptions
from authpool.rotation.roster import Roster
from authpool.rotation.sse import StreamVerdict
from authpool.rotation.strategy import UsageView

__all__ = ["Clock", "Engine", "Served", "SystemClock"]

log = logging.getLogger("authpool")

_BACKOFF_BASE = 0.25
_BACKOFF_CAP = 4.0
_PROBE_POLL = 0.25  # seconds between looks at an account another request is probing


class Clock(Protocol):
    """Wall time for deadlines in the store, a monotonic clock for this request's own budget."""

    def now(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clocks."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass(frozen=True)
class Served:
    """The engine's verdict: the current answer is the response, served by ``account``."""

    account: Account
    status: int
    attempts: list[Attempt]
    quota_resets_at: float | None  # from the answer's reset headers, for strategies
    windows: dict[str, QuotaWindow] = field(default_factory=dict)  # the usage windows the answer reported


Flow = Generator[Effect, Any, Served]


class Engine:
    """The decisions of one request.

    Args:
        provider: the provider the request goes to.
        options: the caller's choices (pinned account, namespace, wait budget, session).
        request: the request's facts.
        pinned: the pinned account's id (resolved by the driver), if any.
        usage: this process's view of an account's use, at a time (for the strategy).
        clock: the clocks (tests pass their own).
    """

    def __init__(self, provider: Provider, options: RotationOptions, request: RequestFacts, *,
                 pinned: str | None = None, usage: Callable[[Account, float], UsageView],
                 clock: Clock | None = None, roster: Roster | None = None) -> None:
        self.provider = provider
        # The provider's accounts kept ordered between requests (a large pool); None: sort them here.
        self.roster = roster if pinned is None else None
        self.options = options
        self.request = request
        self.pinned = pinned
        self.usage = usage
        self.clock = clock or SystemClock()
        self.attempts: list[Attempt] = []
        self.tried: set[str] = set()
        self.deadline = self.clock.monotonic() + provider.timeout + options.wait_budget
        self.wait_left = options.wait_budget
        self.last_error: PoolError | None = None
        self.picks = 0  # accounts picked so far (retries on the same account do not count)
        self.cooled: dict[str, float] = {}  # account id -> end of the cooldown this request set
        self.model = model_of_request(request.path, request.body)
        self.session_key = f"{provider.id}/{options.session}" if options.session else None
        self.probing: set[str] = set()  # accounts whose probation lock this request holds
        # 401s not yet confirmed by the provider accepting another account's credentials.
        self.suspects: list[Attempt] = []
        self.accepted = False  # the provider accepted some account's credentials in this request
        self.kind_of: dict[str, AccountKind] = {}  # the accounts tried

    # The flow. Yields effects; receives their results; returns the verdict.
    def run(self) -> Flow:  # noqa: PLR0912, PLR0915 - one state machine, read top to bottom
        self._check_request()
        pinned: Account | None = None  # set to retry the same account (after a refresh or a 5xx)
        refreshes: dict[str, int] = {}  # forced refreshes per account in this request (at most 2)
        minted: dict[str, bool] = {}  # whether the last one renewed the token itself
        failures: dict[str, int] = {}
        while True:
            if self.clock.monotonic() > self.deadline:
                raise (yield from self._fail(
                    f"gave up after {len(self.attempts)} attempts: the request deadline passed"))
            acc, pinned = pinned, None
            if acc is None:
                # max_attempts bounds how many accounts one request tries (each pick counts).
                if self.picks >= self.provider.max_attempts:
                    raise (yield from self._fail(f"gave up after {self.picks} tries of accounts (max_attempts = "
                                                 f"{self.provider.max_attempts} for {self.provider.id})"))
                acc = yield from self._choose()
                self.picks += 1
            if self.attempts and not self.request.replayable:
                raise BodyNotReplayable(
                    "the request body is a stream that was already sent once, so it cannot be retried on "
                    "another account; send bytes or JSON instead of a stream",
                    attempts=self.attempts,
                )
            secret = yield from self._secret(acc)
            if secret is None:
                self.tried.add(acc.id)
                continue
            usable, origin = self._endpoint(acc, secret)
            if not usable:
                self.tried.add(acc.id)
                continue
            start = self.clock.monotonic()
            answer: Answer | Unreachable = yield Send(acc, self._credentials(acc, secret), origin)
            elapsed = (self.clock.monotonic() - start) * 1000
            if isinstance(answer, Unreachable):
                self._note(acc, None, "network_error", elapsed, detail=answer.reason)
                pinned = yield from self._transient(acc, failures, f"could not reach {self.provider.id}: "
                                                                   f"{answer.reason}")
                continue
            status = answer.status
            yield from self._credentials_accepted(status)
            if status == 429:
                body = yield ReadBody()
                yield from self._rate_limited(acc, answer.headers, body, 429, "rate_limited", elapsed)
                continue
            if status in (401, 403):
                yield ReadBody()
                # Refresh and retry the same account. Only a refusal of a token this request
                # minted itself proves the login is refused: a token another process had just
                # minted may have been revoked since, so it earns one real refresh of its own.
                if acc.kind == "oauth" and not minted.get(acc.id) and refreshes.get(acc.id, 0) < 2:
                    refreshes[acc.id] = refreshes.get(acc.id, 0) + 1
                    renewal = yield from self._refresh(acc, elapsed, status)
                    if renewal is not None:
                        minted[acc.id] = renewal.performed
                        pool: PoolFile = yield ReadPool()
                        pinned = pool.find(acc.id)
                    else:
                        self.tried.add(acc.id)
                    continue
                yield from self._refused(acc, status, elapsed)
                continue
            if status >= 500 and status != 501:
                self._note(acc, status, "server_error", elapsed)
                if failures.get(acc.id, 0) >= self.provider.server_error_retries and not (
                        yield from self._others_left(acc)):
                    return (yield from self._finish(acc, answer))  # nobody left: the error is the answer
                yield ReadBody()
                pinned = yield from self._transient(acc, failures, f"{self.provider.id} answered HTTP {status}")
                continue
            if status < 300 and answer.event_stream:
                verdict: StreamVerdict = yield Peek()
                if verdict.kind != "content":
                    yield from self._stream_error(acc, answer, verdict, elapsed, failures)
                    continue
            self._note(acc, status, "ok", elapsed)
            return (yield from self._finish(acc, answer))

    # -- choosing --------------------------------------------------------------------------

    def _check_request(self) -> None:
        if self.request.has_userinfo:
            raise OriginRefused("refusing a URL with a user name or password (user@host)")
        # The origin as the HTTP client will connect to it, from its own parse of the URL. Also
        # the path a cross-origin redirect takes: it arrives here as a new request.
        self.provider.check_destination(self.request.origin, self.request.path, self.request.path)
        self.provider.refuse_credential_headers(self.request.header_names)

    def _scope(self, pool: PoolFile) -> list[Account]:
        return in_scope(pool, self.provider.id, namespace=self.options.namespace, pinned=self.pinned)

    def _choose(self) -> Generator[Effect, Any, Account]:
        while True:
            pool: PoolFile = yield ReadPool()
            now = self.clock.now()
            selection = self._select(pool, now, self.tried)
            if not selection.considered:
                raise self._no_accounts()
            soonest = selection.soonest
            probing = False
            for acc in selection.ready:
                if self._on_probation(acc) and acc.id not in self.probing:
                    if not (yield TryProbe(acc.id)):
                        probing = True  # another request is probing it: try the next account
                        continue
                    self.probing.add(acc.id)
                yield Touch(acc.id)
                return acc
            if probing:
                soonest = min(soonest or now + _PROBE_POLL, now + _PROBE_POLL)
            elif any(self.cooled.get(i, now + 1) <= now for i in self.tried):
                # A cooldown this request set has already ended (Retry-After: 0, a few ms): that
                # account may go again now, a wait of zero, not "no account could serve".
                soonest = now
            if soonest is None:
                head = "no account could serve the request" if self.tried else "no account is usable"
                raise (yield from self._fail(head, with_states=True))
            yield from self._wait_for(soonest, now, pool)

    def _scopes(self) -> tuple[str, ...]:
        """The cooldown scopes this request falls in: the whole account, and its model if any."""
        return (WHOLE_ACCOUNT, self.model) if self.model else (WHOLE_ACCOUNT,)

    def _on_probation(self, acc: Account) -> bool:
        """Whether this request must probe ``acc``: on probation after a cooldown of one of its scopes.

        Probation is per scope like the cooldown that caused it. A cooldown of model X leaves
        other models at full traffic (they were never refused), and their successes say nothing
        about X, so X is still probed when its cooldown ends. The ended cooldown entries are the
        markers; a success in their scope removes them (:func:`transitions.confirm_success`).
        """
        return acc.probation and any(scope in acc.cooldowns for scope in self._scopes())

    def _select(self, pool: PoolFile, now: float, exclude: set[str], offered: int | None = None) -> Selection:
        """The ready accounts in order (the session's bound account first), the soonest other one."""
        bound = self._bound(pool, now)
        if self.roster is not None:
            return self.roster.select(pool, now=now, exclude=exclude, model=self.model, usage=self._usage_at(now),
                                      prefer=bound, **({"offered": offered} if offered is not None else {}))
        selection = select(self._scope(pool), self.provider, now=now, exclude=exclude, model=self.model,
                           usage=self._usage_at(now))
        if bound is None:
            return selection
        ready = [a for a in selection.ready if a.id == bound] + [a for a in selection.ready if a.id != bound]
        return Selection(ready, selection.soonest, selection.considered)

    def _bound(self, pool: PoolFile, now: float) -> str | None:
        """The account this request's session is bound to, while the binding lasts."""
        if self.session_key is None:
            return None
        binding = pool.sessions.get(self.session_key)
        return binding.account_id if binding is not None and binding.expires_at > now else None

    def _wait_for(self, soonest: float, now: float, pool: PoolFile) -> Generator[Effect, Any, None]:
        wait = max(0.0, soonest - now)
        if wait > self.wait_left or self.clock.monotonic() + wait > self.deadline:
            renewing = any(a.failing_refresh() is not None for a in self._scope(pool))
            what = "cooling down or failing to renew their tokens" if renewing else "cooling down"
            head = (f"all {self.provider.id} accounts are {what}; the next frees up at {_clock(soonest)} "
                    f"(in {wait:.0f}s)")
            raise AllAccountsCooling((yield from self._summary(head)), soonest, attempts=self.attempts)
        total = self.options.wait_budget
        waited = total - self.wait_left
        self.wait_left -= wait
        yield Sleep(wait + 0.05, Progress(waited, total, f"all accounts cooling; waiting {wait:.1f}s for the next"))
        # Only the accounts that were rate-limited come back after the wait. One whose refresh
        # failed, or that exhausted its 5xx retries, stays out: a second 401 from an account
        # whose refresh failed (endpoint down) would wrongly mark a live login needs-reauth.
        self.tried.difference_update(self.cooled)

    # -- credentials -----------------------------------------------------------------------

    def _secret(self, acc: Account) -> Generator[Effect, Any, Secret | None]:  # noqa: PLR0911
        try:
            secret: Secret = yield LoadSecret(acc)
        except PoolError as e:
            self._note(acc, None, "secret_error", 0.0, detail=str(e))
            self.last_error = e
            return None
        if acc.kind != "oauth" or secret.expires_at is None:
            return secret
        now = self.clock.now()
        left = secret.expires_at - now
        advisory, mandatory = self.provider.refresh_windows(acc.access_lifetime, linked=acc.link is not None)
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
            renewed: Renewal | None = yield Refresh(acc, mode, self._refresh_wait())
            # None: advisory, and someone else is renewing it; the current token is still valid.
            return renewed.secret if renewed is not None else secret
        except (RefreshError, ReauthRequired) as e:
            if mode == "advisory" and isinstance(e, RefreshError):
                log.info("advisory refresh of %s failed (%s); using the current token", acc.name, e)
                return secret
            self._note(acc, None, _refresh_outcome(e), 0.0, detail=str(e))
            self.last_error = e
            return None

    def _refresh(self, acc: Account, elapsed: float, status: int) -> Generator[Effect, Any, Renewal | None]:
        try:
            renewal: Renewal | None = yield Refresh(acc, "force", self._refresh_wait())
        except (ReauthRequired, RefreshError) as e:
            self._note(acc, status, _refresh_outcome(e), elapsed, detail=str(e))
            self.last_error = e
            return None
        if renewal is None:  # only advisory refreshes yield to another one; kept for the type
            return None
        self._note(acc, status, "refreshed", elapsed,
                   detail=None if renewal.performed else "renewed by another process")
        return renewal

    def _credentials(self, acc: Account, secret: Secret) -> Mapping[str, str]:
        """The headers to set on the caller's request: the credential, and fixed ones it did not set.

        An OAuth login also carries the provider's ``secret_headers`` from its stored extras (the
        ChatGPT backend's ``chatgpt-account-id``).
        """
        name, prefix, extra = self.provider.credential_headers(acc.kind)
        headers: dict[str, str] = {}
        for key, value in {**self.provider.headers, **extra}.items():
            k = key.lower()
            if k not in self.request.header_names:
                headers[k] = value
            elif k in self.request.list_values:
                headers[k] = merge_list(self.request.list_values[k], value)
        if acc.kind == "oauth":
            headers.update({header.lower(): secret.extra[key] for header, key in self.provider.secret_headers.items()
                            if secret.extra.get(key)})
        headers[name] = prefix + secret.credential
        return headers

    def _endpoint(self, acc: Account, secret: Secret) -> tuple[bool, str | None]:
        """``(usable, origin)``: the origin this account's requests go to when its token exchange named
        one (None: as requested). Not usable: the named endpoint is not one of the provider's origins,
        so its token goes nowhere.
        """
        base = secret.extra.get("api_base") if self.provider.token_exchange is not None else None
        if not base:
            return True, None
        try:
            origin = origin_of(base)
        except ValueError:
            origin = base
        if origin in self.provider.allowed_origins:
            return True, origin
        self._note(acc, None, "secret_error", 0.0,
                   detail=f"its token exchange named the endpoint {origin}, not one of {self.provider.id}'s origins")
        self.last_error = RequestFailed(self.attempts[-1].detail or "")
        return False, None

    # -- outcomes --------------------------------------------------------------------------

    def _rate_limited(self, acc: Account, headers: Mapping[str, str], body: bytes | dict[str, Any],
                      status: int | None, outcome: Outcome, elapsed: float) -> Generator[Effect, Any, None]:
        now = self.clock.now()
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
        model = f" for {scope}" if scope != WHOLE_ACCOUNT else ""
        source = f"{decision.source}, capped at max_cooldown" if decision.capped else decision.source
        reason = f"{what} ({source}){model}"
        error = f"rate limited until {_clock(decision.until)} ({source})" + (
            f" for model {scope}" if scope != WHOLE_ACCOUNT else "")

        windows = read_windows(headers, now)

        def cool(rows: Rows) -> None:
            transitions.cool(rows.get(acc.id), scope=scope, until=decision.until, reason=reason, now=now,
                             exponential=decision.is_default, status=status, error=error, windows=windows)

        yield Write("cool", (acc.id,), cool)
        detail = source + (f"; model {scope}" if scope != WHOLE_ACCOUNT else "")
        self._note(acc, status, outcome, elapsed, cooldown_until=decision.until, detail=detail)
        self.tried.add(acc.id)
        self.cooled[acc.id] = decision.until

    def _stream_error(self, acc: Account, answer: Answer, verdict: StreamVerdict, elapsed: float,
                      failures: dict[str, int]) -> Generator[Effect, Any, None]:
        # Nothing was delivered yet, so the disguised error can be handled like its status code.
        yield Drop()
        if verdict.kind == "rate_limited":
            yield from self._rate_limited(acc, answer.headers, {"error": verdict.error}, answer.status,
                                          "stream_rate_limited", elapsed)
            return
        self._note(acc, answer.status, "stream_overloaded", elapsed,
                   detail=str((verdict.error or {}).get("type", "error event")))
        failures[acc.id] = failures.get(acc.id, 0) + 1
        self.tried.add(acc.id)
        self.last_error = RequestFailed(f"{self.provider.id} streams opened with an error event")

    def _transient(self, acc: Account, failures: dict[str, int],
                   message: str) -> Generator[Effect, Any, Account | None]:
        """A network error or 5xx: retry the same account with backoff, then move on.

        Never persisted as a cooldown or a flag: a transient failure must not take an account
        (let alone the pool) out of service.
        """
        n = failures[acc.id] = failures.get(acc.id, 0) + 1
        if n <= self.provider.server_error_retries:
            yield Sleep(self._backoff(n))
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
        dead = status == 401 and self.accepted

        def refuse(rows: Rows) -> None:
            transitions.refused(rows.get(acc.id), status, dead=dead)

        yield Write("refuse", (acc.id,), refuse)
        if status != 401:
            self._note(acc, status, "forbidden", elapsed, detail=transitions.FORBIDDEN)
            return
        self._note(acc, status, "needs_reauth" if dead else "unauthorized", elapsed,
                   detail=transitions.DEAD if dead else transitions.REFUSED)
        if not dead:
            self.suspects.append(self.attempts[-1])

    def _credentials_accepted(self, status: int) -> Generator[Effect, Any, None]:
        """The provider answered an account without refusing its credentials: refusals of others are real."""
        if self.accepted or status in (401, 403, 407) or status >= 500:
            return
        self.accepted = True
        suspects, self.suspects = self.suspects, []
        if not suspects:
            return
        for attempt in suspects:
            attempt.outcome, attempt.detail = "needs_reauth", transitions.DEAD
        ids = tuple(sorted({attempt.account_id for attempt in suspects}))

        def confirm(rows: Rows) -> None:
            for a in rows.accounts.values():  # removed meanwhile: nothing to mark
                transitions.confirm_refusal(a)

        yield Write("confirm-refusals", ids, confirm)

    def _finish(self, acc: Account, answer: Answer) -> Generator[Effect, Any, Served]:
        now = self.clock.now()
        status = answer.status
        success = status < 400
        bind = (yield from self._session_to_bind(acc, now)) if success else None
        # The account as it is now: another process may have cooled it while this request was out,
        # and a success in that scope makes such a cooldown stale (a cached read: one fstat).
        pool: PoolFile = yield ReadPool()
        current = pool.get(acc.id) or acc
        stale = any(scope in current.cooldowns for scope in self._scopes())
        if (success and (current.backoff_level > 0 or stale or self._on_probation(current))) or bind is not None:
            # Cooldown state is written before the response returns, like a cooldown itself:
            # left to the batched usage flush, a 429 right after this success would still double,
            # and a probation would outlive the success that ended it.
            scopes = self._scopes()

            def succeeded(rows: Rows) -> None:
                a = rows.accounts.get(acc.id)  # removed meanwhile: nothing to reset, the response still stands
                if a is not None and success:
                    transitions.confirm_success(a, scopes, now)
                if bind is not None:
                    transitions.bind_session(rows, bind[0], bind[1], now)

            yield Write("success", (acc.id,), succeeded)
        reset = latest_reset(answer.headers, self.provider.reset_headers, now) if success else None
        return Served(acc, status, list(self.attempts), reset, read_windows(answer.headers, now))

    def _session_to_bind(self, acc: Account, now: float) -> Generator[Effect, Any, tuple[str, SessionBinding] | None]:
        if self.session_key is None:
            return None
        pool: PoolFile = yield ReadPool()
        current = pool.sessions.get(self.session_key)
        ttl = self.options.session_ttl
        if current is not None and current.account_id == acc.id and current.expires_at - now > ttl / 2:
            return None  # bound and fresh enough: no write
        return self.session_key, SessionBinding(account_id=acc.id, expires_at=now + ttl)

    # -- helpers -------------------------------------------------------------------------

    def _others_left(self, acc: Account) -> Generator[Effect, Any, bool]:
        if self.picks >= self.provider.max_attempts:
            return False
        pool: PoolFile = yield ReadPool()
        return bool(self._select(pool, self.clock.now(), self.tried | {acc.id}, offered=1).ready)

    def _usage_at(self, now: float) -> Callable[[Account], UsageView]:
        return lambda a: self.usage(a, now)

    def _refresh_wait(self) -> float:
        """How long this request waits for a token call: the provider's token timeout, within its deadline."""
        return max(0.0, min(self.provider.token_timeout, self.deadline - self.clock.monotonic()))

    def _backoff(self, n: int) -> float:
        delay = min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (n - 1)) * (0.5 + random.random() / 2)  # noqa: S311
        return float(max(0.0, min(delay, self.deadline - self.clock.monotonic())))

    def _note(self, acc: Account, status: int | None, outcome: Outcome, elapsed: float, *,
              cooldown_until: float | None = None, detail: str | None = None) -> None:
        self.attempts.append(Attempt(acc.id, acc.name, status, outcome, elapsed, cooldown_until, detail))
        self.kind_of[acc.id] = acc.kind
        log.info("%s %s via %s: %s%s", self.request.method, self.request.path, acc.name,
                 outcome, f" ({status})" if status else "")

    def _fail(self, message: str, *, with_states: bool = False) -> Generator[Effect, Any, RequestFailed]:
        if with_states:
            message = yield from self._summary(message)
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
        kinds = sorted({self.kind_of[s.account_id] for s in self.suspects})
        how = []
        for kind in kinds:
            header, prefix, _ = self.provider.credential_headers(kind)
            what = "API keys" if kind == "api_key" else "OAuth tokens"
            how.append(f"{what} go in the {header} header" + (" as a Bearer token" if prefix else ""))
        return (f"every {pid} account tried was refused (401) the same way, so the provider's configuration is "
                f"the likely cause rather than the credentials ({'; '.join(how)}; check `auth` for "
                f"[providers.{pid}] in config.toml); the accounts were not marked needs-reauth")

    def _summary(self, head: str) -> Generator[Effect, Any, str]:
        """``head`` plus every account's state, so the error says what to do next."""
        pool: PoolFile = yield ReadPool()
        now = self.clock.now()
        states = []
        for a in self._scope(pool):
            state: str = a.state(now)
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

    def _no_accounts(self) -> NoAccounts:
        where = f" in namespace {self.options.namespace!r}" if self.options.namespace else ""
        return NoAccounts(
            f"provider {self.provider.id} has no accounts{where}; add one with "
            f"`authpool accounts add-key {self.provider.id} --label NAME` or `authpool login {self.provider.id}`",
            attempts=self.attempts,
        )


def _refresh_outcome(e: PoolError) -> Outcome:
    if isinstance(e, ReauthRequired):
        return "needs_reauth"
    return "refresh_pending" if isinstance(e, RefreshPending) else "refresh_failed"


def merge_list(theirs: str, ours: str) -> str:
    """A comma-separated header list: the caller's items in their order, then ours it lacks."""
    items = [item.strip() for item in theirs.split(",") if item.strip()]
    seen = {item.lower() for item in items}
    items += [item.strip() for item in ours.split(",") if item.strip() and item.strip().lower() not in seen]
    return ",".join(items)


def _clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))
