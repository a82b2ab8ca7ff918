"""The httpx2 transport that drives the rotation engine, synchronously or asynchronously.

Why a transport and not an ``httpx.Auth``: an auth flow never sees transport errors (httpx
closes the flow when a send raises), so it could not retry on network failures; and with
``follow_redirects=True`` httpx copies every header except ``Authorization`` onto a redirect to
another origin, so an ``x-api-key`` would leak. A transport sees every hop: it attaches
credentials only to requests for the provider's origins and refuses anything else.

The decisions live in :mod:`authpool.rotation.engine`; this module performs the effects it asks
for — read the store, load a secret, send, read or drop a body, peek at a stream, sleep, refresh,
write a change, take a probation lock — and hands back what came of them. There are two drivers,
one sync and one async, because each effect is one line of I/O in its own flavour; the loop
around them is the same few lines, and the decisions are written once.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import anyio
import httpx2

from authpool.accounts.model import Account
from authpool.accounts.secret import Secret
from authpool.auth.refresh import Refresher
from authpool.errors import AllAccountsCooling, InvalidInput, LockTimeout
from authpool.events.event import Event
from authpool.events.log import EventLog
from authpool.providers.provider import Provider
from authpool.rotation.effects import (
    LIST_HEADERS,
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
from authpool.rotation.engine import Clock, Engine, Served
from authpool.rotation.result import RequestResult, RotationOptions
from authpool.rotation.roster import Rosters
from authpool.rotation.streams import is_event_stream, peek_async, peek_sync
from authpool.rotation.usage import UsageLog
from authpool.storage.protocols import HeldLock, MetadataStore

__all__ = ["PoolTransport", "RotationHost", "StoreClock", "facts_of"]


class RotationHost(Protocol):
    """What a transport needs of a pool: its store, secrets, usage log, rosters and connection pools."""

    @property
    def store(self) -> MetadataStore: ...

    @property
    def usage(self) -> UsageLog: ...

    @property
    def rosters(self) -> Rosters: ...

    @property
    def events(self) -> EventLog | None: ...

    def cached_secret(self, account: Account) -> Secret | None: ...

    def secret_of(self, account: Account) -> Secret: ...

    def http_transport(self) -> httpx2.HTTPTransport: ...

    def async_http_transport(self) -> httpx2.AsyncHTTPTransport: ...


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
        host: RotationHost,
        provider: Provider,
        refresher: Refresher,
        *,
        options: RotationOptions | None = None,
        inner: httpx2.BaseTransport | None = None,
        ainner: httpx2.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.host = host
        self.provider = provider
        self.refresher = refresher
        self.usage = host.usage
        self.options = options or RotationOptions()
        self.clock = clock
        self._inner = inner
        self._ainner = ainner
        self._pinned_id: str | None = None
        if self.options.account:
            acc = host.store.read().find(self.options.account)
            if acc.provider != provider.id:
                raise InvalidInput(f"account {acc.name} belongs to {acc.provider}, not {provider.id}")
            self._pinned_id = acc.id

    def _engine(self, request: httpx2.Request) -> Engine:
        weights = self.provider.weights
        return Engine(self.provider, self.options, facts_of(request), pinned=self._pinned_id,
                      usage=lambda a, now: self.usage.view(a, weights, now),
                      clock=self.clock or StoreClock(self.host.store),
                      roster=self.host.rosters.get(self.provider, self.options.namespace))

    # -- the sync driver -------------------------------------------------------------------

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        run = _Run(self, request)
        inner = self._inner or self.host.http_transport()
        engine = self._engine(request)
        try:
            flow = engine.run()
            value: Any = None
            error: BaseException | None = None
            while True:
                try:
                    effect = flow.throw(error) if error is not None else flow.send(value)
                except StopIteration as stop:
                    return run.deliver(stop.value)
                value, error = None, None
                try:
                    value = run.step(effect, inner)
                except Exception as e:  # noqa: BLE001 - delivered into the flow, which decides
                    error = e
        except AllAccountsCooling as e:
            if not self.options.cooling_response:
                raise
            return _cooling_response(e)
        finally:
            run.close()
            self._report(engine)
            if self.usage.due():
                self.usage.flush_soon()

    # -- the async driver ------------------------------------------------------------------

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        run = _Run(self, request)
        inner = self._ainner or self.host.async_http_transport()
        engine = self._engine(request)
        try:
            flow = engine.run()
            value: Any = None
            error: BaseException | None = None
            while True:
                try:
                    effect = flow.throw(error) if error is not None else flow.send(value)
                except StopIteration as stop:
                    return run.deliver(stop.value)
                value, error = None, None
                try:
                    value = await run.astep(effect, inner)
                except Exception as e:  # noqa: BLE001 - delivered into the flow, which decides
                    error = e
        except AllAccountsCooling as e:
            if not self.options.cooling_response:
                raise
            return _cooling_response(e)
        finally:
            await run.aclose()
            self._report(engine)
            if self.usage.due():
                self.usage.flush_soon()

    def _report(self, engine: Engine) -> None:
        """Put the request's attempts in the event log (queued: the writer thread writes them)."""
        events = self.host.events
        if events is None or not engine.attempts:
            return
        provider, model = self.provider.id, engine.model
        for a in engine.attempts:
            events.emit(Event("attempt", provider, a.account, a.account_id, a.outcome, a.status, a.elapsed_ms,
                              a.cooldown_until, model, a.detail))
            if a.cooldown_until is not None:
                events.emit(Event("cooldown", provider, a.account, a.account_id, a.outcome, a.status,
                                  until=a.cooldown_until, model=model))
            if a.outcome == "needs_reauth":
                events.emit(Event("state", provider, a.account, a.account_id, "needs-reauth", a.status,
                                  detail=a.detail))
        for account_id in engine.probing:
            last = next((a for a in reversed(engine.attempts) if a.account_id == account_id), None)
            if last is not None:
                events.emit(Event("probation", provider, last.account, account_id,
                                  "passed" if last.outcome == "ok" else "failed", last.status, model=model))

    # Closing a client does not force a write: usage is flushed when due, by Pool.close()/flush()
    # and at exit, so a client or transport per call (as the MCP tool makes) does not cost a locked write
    # per call.
    def close(self) -> None:
        if self.usage.due():
            self.usage.flush_soon()

    async def aclose(self) -> None:
        if self.usage.due():
            self.usage.flush_soon()


class StoreClock:
    """The store's clock for deadlines (a team store's is the database's), a monotonic one for budgets."""

    def __init__(self, store: MetadataStore) -> None:
        self.now = store.now

    @staticmethod
    def monotonic() -> float:
        return time.monotonic()


class _Run:
    """One request's I/O state: the caller's request, the answer in hand, the probation locks held."""

    def __init__(self, transport: PoolTransport, request: httpx2.Request) -> None:
        self.t = transport
        self.host = transport.host
        self.request = request
        self.current: httpx2.Response | None = None
        self.probes: list[HeldLock] = []

    # Effects with no flavour: memory and the (cached) store read.
    def _plain(self, effect: Effect) -> tuple[bool, Any]:
        if isinstance(effect, ReadPool):
            # A store that would wait on a server answers None here: the async driver then reads
            # in a worker thread, so a slow database never stalls the event loop.
            pool = self.host.store.peek()
            return pool is not None, pool
        if isinstance(effect, LoadSecret):
            # A cached secret costs no thread hop (the async path's largest per-request cost).
            cached = self.host.cached_secret(effect.account)
            return cached is not None, cached
        if isinstance(effect, Touch):
            self.t.usage.touch(effect.account_id)
            return True, None
        return False, None

    def _credentialed(self, effect: Send) -> httpx2.Request:
        headers = httpx2.Headers(self.request.headers)
        for name, value in effect.headers.items():
            headers[name] = value
        url = self.request.url
        if effect.origin is not None:
            target = httpx2.URL(effect.origin)
            url = url.copy_with(scheme=target.scheme, host=target.host, port=target.port)
            headers["host"] = url.netloc.decode("ascii")
        return httpx2.Request(self.request.method, url, headers=headers, stream=self.request.stream,
                              extensions=self.request.extensions)

    def _answer(self, response: httpx2.Response) -> Answer:
        self.current = response
        return Answer(response.status_code, response.headers, is_event_stream(response))

    def _probe(self, account_id: str) -> bool:
        lock = self.host.store.named_lock(f"probe-{account_id}", 0.0)
        try:
            lock.acquire()
        except LockTimeout:
            return False
        self.probes.append(lock)
        return True

    def _taken(self) -> httpx2.Response:
        response, self.current = self.current, None
        if response is None:
            raise RuntimeError("the engine asked for an answer's body before any answer")
        return response

    def step(self, effect: Effect, inner: httpx2.BaseTransport) -> Any:  # noqa: PLR0911, PLR0912 - one per effect
        done, value = self._plain(effect)
        if done:
            return value
        if isinstance(effect, ReadPool):
            return self.host.store.read()
        if isinstance(effect, LoadSecret):
            return self.host.secret_of(effect.account)
        if isinstance(effect, Send):
            try:
                return self._answer(inner.handle_request(self._credentialed(effect)))
            except httpx2.TransportError as e:
                return Unreachable(_describe_error(e))
        if isinstance(effect, ReadBody):
            response = self._taken()
            try:
                return response.read()
            finally:
                response.close()
        if isinstance(effect, Drop):
            self._taken().close()
            return None
        if isinstance(effect, Peek):
            verdict, self.current = peek_sync(self._taken())
            return verdict
        if isinstance(effect, Sleep):
            _progress_sync(self.t.options.on_progress, effect.progress)
            time.sleep(effect.seconds)
            return None
        if isinstance(effect, Write):
            return self.host.store.update_accounts(effect.ids, effect.change)
        if isinstance(effect, TryProbe):
            return self._probe(effect.account_id)
        if isinstance(effect, Refresh):
            a = effect.account
            return self.t.refresher.renew(self.t.provider, a.id, a.secret_generation, effect.mode, wait=effect.wait)
        raise TypeError(f"unknown effect {effect!r}")

    async def astep(self, effect: Effect, inner: httpx2.AsyncBaseTransport) -> Any:  # noqa: PLR0911, PLR0912
        done, value = self._plain(effect)
        if done:
            return value
        if isinstance(effect, ReadPool):
            return await anyio.to_thread.run_sync(self.host.store.read)
        if isinstance(effect, LoadSecret):
            return await anyio.to_thread.run_sync(self.host.secret_of, effect.account)
        if isinstance(effect, Send):
            try:
                return self._answer(await inner.handle_async_request(self._credentialed(effect)))
            except httpx2.TransportError as e:
                return Unreachable(_describe_error(e))
        if isinstance(effect, ReadBody):
            response = self._taken()
            try:
                return await response.aread()
            finally:
                await response.aclose()
        if isinstance(effect, Drop):
            await self._taken().aclose()
            return None
        if isinstance(effect, Peek):
            verdict, self.current = await peek_async(self._taken())
            return verdict
        if isinstance(effect, Sleep):
            await _progress_async(self.t.options.on_progress, effect.progress)
            await anyio.sleep(effect.seconds)
            return None
        if isinstance(effect, Write):
            return await anyio.to_thread.run_sync(self.host.store.update_accounts, effect.ids, effect.change)
        if isinstance(effect, TryProbe):
            return await anyio.to_thread.run_sync(self._probe, effect.account_id)
        if isinstance(effect, Refresh):
            a = effect.account
            return await self.t.refresher.arenew(self.t.provider, a.id, a.secret_generation, effect.mode,
                                                 wait=effect.wait)
        raise TypeError(f"unknown effect {effect!r}")

    def deliver(self, served: Served) -> httpx2.Response:
        """The answer in hand is the response: count it, attach the result."""
        response = self._taken()
        self.t.usage.record(served.account.id, served.status, quota_resets_at=served.quota_resets_at,
                            windows=served.windows)
        response.extensions = {**response.extensions,
                               "authpool": RequestResult(served.account.id, served.account.name, served.attempts)}
        return response

    def _release(self) -> None:
        for lock in self.probes:
            lock.release()
        self.probes.clear()

    def close(self) -> None:
        self._release()
        if self.current is not None:
            self._taken().close()

    async def aclose(self) -> None:
        if self.probes:  # releasing a lease is a round trip to a team store: not on the event loop
            await anyio.to_thread.run_sync(self._release)
        if self.current is not None:
            await self._taken().aclose()


def facts_of(request: httpx2.Request) -> RequestFacts:
    """What the engine needs of a request, from the HTTP client's own parse of it."""
    url = request.url
    replayable = isinstance(request.stream, httpx2.ByteStream)
    body: bytes | None = None
    if replayable:
        try:
            body = request.content
        except httpx2.RequestNotRead:
            body = None
    headers = request.headers
    names = frozenset(k.lower() for k in headers)
    return RequestFacts(
        method=request.method,
        scheme=url.scheme,
        host=url.host,
        port=url.port or (443 if url.scheme == "https" else 80),
        path=url.path,
        has_userinfo=bool(url.userinfo),
        header_names=names,
        body=body,
        replayable=replayable,
        list_values={name: ", ".join(headers.get_list(name)) for name in LIST_HEADERS if name in names},
    )


def _progress_sync(callback: Any, progress: Progress | None) -> None:
    if callback is not None and progress is not None:
        result = callback(progress.waited, progress.total, progress.message)
        if result is not None:
            raise InvalidInput("an async progress callback needs an async client")


async def _progress_async(callback: Any, progress: Progress | None) -> None:
    if callback is not None and progress is not None:
        result = callback(progress.waited, progress.total, progress.message)
        if result is not None:
            await result


def _describe_error(e: BaseException) -> str:
    return "timed out" if isinstance(e, httpx2.TimeoutException) else type(e).__name__


def _cooling_response(e: AllAccountsCooling) -> httpx2.Response:
    """A 429 with ``Retry-After`` for HTTP-speaking callers, instead of an exception."""
    retry_after = max(1, int((e.retry_at or time.time()) - time.time() + 0.999))
    body = {"type": "error", "error": {"type": "all_accounts_cooling", "message": str(e),
                                       "retry_after_seconds": retry_after}}
    return httpx2.Response(429, headers={"retry-after": str(retry_after)}, json=body,
                           extensions={"authpool": None})

