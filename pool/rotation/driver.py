"""The httpx2 transport that drives the rotation engine, synchronously or asynchronously.

Why a transport and not an ``httpx.Auth``: an auth flow never sees transport errors (httpx
closes the flow when a send raises), so it could not retry on network failures; and with
``follow_redirects=True`` httpx copies every header except ``Authorization`` onto a redirect to
another origin, so an ``x-api-key`` would leak. A transport sees every hop: it attaches
credentials only to requests for the provider's origins and refuses anything else.

The decisions live in :mod:`pool.rotation`; this module only performs the effects it asks for
(send, read, peek at a stream, block, sleep, refresh) and picks candidates from a pool file.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx2

from authpool.accounts.model import WHOLE_ACCOUNT, Account, PoolFile
from authpool.auth.refresh import Refresher
from authpool.errors import AllAccountsCooling, InvalidInput, LockTimeout
from authpool.providers.provider import Provider
from authpool.rotation.engine import (
    Flow,
    RotationOptions,
    _Block,
    _Discard,
    _Engine,
    _Failed,
    _Peek,
    _Refresh,
    _Send,
    _Sleep,
)
from authpool.rotation.sse import StreamVerdict, judge_prefix, parse_events
from authpool.rotation.strategy import UsageView, order_accounts
from authpool.storage.lock import Lock

__all__ = ["PoolTransport"]

PEEK_LIMIT = 64 * 1024  # bytes of a stream buffered at most while waiting for its first content event


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

    def candidates(
        self, pool_file: PoolFile, now: float, exclude: set[str], model: str | None = None
    ) -> tuple[list[Account], float | None, int]:
        """(ready accounts in strategy order, soonest cooldown end among cooling ones, how many exist).

        An account cooling only for another model than ``model`` is ready.
        """
        scope = self.scope(pool_file)
        ready: list[Account] = []
        soonest: float | None = None
        for a in scope:
            if not a.enabled or a.needs_reauth:
                continue
            until = a.cooldown_until(model or WHOLE_ACCOUNT, now)
            if until is not None:
                soonest = until if soonest is None else min(soonest, until)
                continue
            if a.id in exclude:
                continue
            until = self._renewal_blocked_until(a, now)
            if until is not None:
                soonest = until if soonest is None else min(soonest, until)
                continue
            ready.append(a)
        weights = self.provider.weights

        def usage(a: Account) -> UsageView:
            reset = self.usage.quota_resets_at(a.id, a.quota_resets_at)
            return UsageView(
                self.usage.last_used(a.id, a.last_used_at),
                weights.get(a.id, weights.get(a.label, 1.0)),
                self.usage.unrecorded(a.id),
                # A reset that has passed says nothing about the current window (the account has a
                # fresh quota, its next reset unknown); kept, it would rank first for draining.
                reset if reset is not None and reset > now else None,
            )

        return order_accounts(self.provider.strategy, ready, usage), soonest, len(scope)

    def _renewal_blocked_until(self, a: Account, now: float) -> float | None:
        """When an account that cannot serve until renewed, while renewing it fails, may try again.

        Its token was refused, or is inside the mandatory window; the token endpoint failed and
        its backoff has not ended. Skipped like a cooling account: no token call, no request.
        """
        failing = a.failing_refresh()
        if failing is None or failing.next_try_at <= now:
            return None
        _, mandatory = self.provider.refresh_windows(a.access_lifetime)
        expiring = a.access_expires_at is not None and a.access_expires_at - now <= mandatory
        return failing.next_try_at if failing.token_refused or expiring else None

    def probe_lock(self, account_id: str) -> Lock | None:
        """Take the account's probation lock without waiting; None if another request holds it."""
        lock = Lock(self.pool.home.lock_file(f"probe-{account_id}"), timeout=0.0)
        try:
            lock.acquire()
        except LockTimeout:
            return None
        return lock

    # -- drivers ---------------------------------------------------------------------------

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        inner = self._inner or self.pool.http_transport()
        engine = _Engine(self, request)
        try:
            try:
                return self._run_sync(engine.flow(), inner)
            except AllAccountsCooling as e:
                if not self.options.cooling_response:
                    raise
                return _cooling_response(e)
        finally:
            engine.close()
            if self.usage.due():
                self.usage.flush()

    def _run_sync(self, flow: Flow, inner: httpx2.BaseTransport) -> httpx2.Response:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = flow.throw(error) if error is not None else flow.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            value, error = None, None
            try:
                if isinstance(effect, _Send):
                    try:
                        value = inner.handle_request(effect.request)
                    except httpx2.TransportError as e:
                        value = _Failed(e)
                elif isinstance(effect, _Discard):
                    if effect.read:
                        effect.response.read()
                    effect.response.close()
                elif isinstance(effect, _Peek):
                    value = _peek_sync(effect.response)
                elif isinstance(effect, _Block):
                    value = effect.fn()
                elif isinstance(effect, _Sleep):
                    self._progress_sync(effect)
                    time.sleep(effect.seconds)
                elif isinstance(effect, _Refresh):
                    value = self.refresher.renew(self.provider, effect.account.id,
                                                 effect.account.secret_generation, effect.mode, wait=effect.wait)
            except Exception as e:  # noqa: BLE001 - delivered into the flow, which decides
                error = e

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        inner = self._ainner or self.pool.async_http_transport()
        engine = _Engine(self, request)
        try:
            try:
                return await self._run_async(engine.flow(), inner)
            except AllAccountsCooling as e:
                if not self.options.cooling_response:
                    raise
                return _cooling_response(e)
        finally:
            engine.close()
            if self.usage.due():
                await anyio.to_thread.run_sync(self.usage.flush)

    async def _run_async(self, flow: Flow, inner: httpx2.AsyncBaseTransport) -> httpx2.Response:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = flow.throw(error) if error is not None else flow.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            value, error = None, None
            try:
                if isinstance(effect, _Send):
                    try:
                        value = await inner.handle_async_request(effect.request)
                    except httpx2.TransportError as e:
                        value = _Failed(e)
                elif isinstance(effect, _Discard):
                    if effect.read:
                        await effect.response.aread()
                    await effect.response.aclose()
                elif isinstance(effect, _Peek):
                    value = await _peek_async(effect.response)
                elif isinstance(effect, _Block):
                    value = await anyio.to_thread.run_sync(effect.fn)
                elif isinstance(effect, _Sleep):
                    await self._progress_async(effect)
                    await anyio.sleep(effect.seconds)
                elif isinstance(effect, _Refresh):
                    value = await self.refresher.arenew(self.provider, effect.account.id,
                                                        effect.account.secret_generation, effect.mode,
                                                        wait=effect.wait)
            except Exception as e:  # noqa: BLE001 - delivered into the flow, which decides
                error = e

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
        if self.usage.due():
            self.usage.flush()

    async def aclose(self) -> None:
        if self.usage.due():
            await anyio.to_thread.run_sync(self.usage.flush)


def _cooling_response(e: AllAccountsCooling) -> httpx2.Response:
    """A 429 with ``Retry-After`` for HTTP-speaking callers, instead of an exception."""
    retry_after = max(1, int((e.retry_at or time.time()) - time.time() + 0.999))
    body = {"type": "error", "error": {"type": "all_accounts_cooling", "message": str(e),
                                       "retry_after_seconds": retry_after}}
    return httpx2.Response(429, headers={"retry-after": str(retry_after)}, json=body,
                           extensions={"authpool": None})


# -- stream peeking ------------------------------------------------------------------------


def _peek_sync(response: httpx2.Response) -> tuple[StreamVerdict, httpx2.Response]:
    stream = response.stream
    if not isinstance(stream, httpx2.SyncByteStream):
        raise TypeError("a sync transport returned an async stream")
    chunks = iter(stream)
    buffered = b""
    verdict = StreamVerdict("undecided")
    while verdict.kind == "undecided" and len(buffered) < PEEK_LIMIT:
        chunk = next(chunks, None)
        if chunk is None:
            verdict = judge_prefix(parse_events(buffered + b"\n\n")[0], finished=True)
            break
        buffered += chunk
        verdict = judge_prefix(parse_events(buffered)[0])
    if verdict.kind == "undecided":
        verdict = StreamVerdict("content")
    return verdict, _replace_stream(response, _SyncReplay(buffered, chunks, stream))


async def _peek_async(response: httpx2.Response) -> tuple[StreamVerdict, httpx2.Response]:
    stream = response.stream
    if not isinstance(stream, httpx2.AsyncByteStream):
        raise TypeError("an async transport returned a sync stream")
    chunks = stream.__aiter__()
    buffered = b""
    verdict = StreamVerdict("undecided")
    while verdict.kind == "undecided" and len(buffered) < PEEK_LIMIT:
        try:
            chunk = await chunks.__anext__()
        except StopAsyncIteration:
            verdict = judge_prefix(parse_events(buffered + b"\n\n")[0], finished=True)
            break
        buffered += chunk
        verdict = judge_prefix(parse_events(buffered)[0])
    if verdict.kind == "undecided":
        verdict = StreamVerdict("content")
    return verdict, _replace_stream(response, _AsyncReplay(buffered, chunks, stream))


def _replace_stream(response: httpx2.Response, stream: Any) -> httpx2.Response:
    return httpx2.Response(response.status_code, headers=response.headers, stream=stream,
                           extensions=response.extensions)


class _SyncReplay(httpx2.SyncByteStream):
    """The bytes read while peeking, then the rest of the original stream."""

    def __init__(self, prefix: bytes, rest: Iterator[bytes], original: httpx2.SyncByteStream) -> None:
        self._prefix, self._rest, self._original = prefix, rest, original

    def __iter__(self) -> Iterator[bytes]:
        if self._prefix:
            yield self._prefix
        yield from self._rest

    def close(self) -> None:
        self._original.close()


class _AsyncReplay(httpx2.AsyncByteStream):
    """The bytes read while peeking, then the rest of the original stream."""

    def __init__(self, prefix: bytes, rest: AsyncIterator[bytes], original: httpx2.AsyncByteStream) -> None:
        self._prefix, self._rest, self._original = prefix, rest, original

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._prefix:
            yield self._prefix
        async for chunk in self._rest:
            yield chunk

    async def aclose(self) -> None:
        await self._original.aclose()
