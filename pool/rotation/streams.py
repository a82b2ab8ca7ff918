"""Peeking at an event stream: read up to its first content event, then hand it on unchanged.

A ``200`` stream may open with an error event instead of content (a rate limit or an overload
reported inside the stream). Nothing has reached the caller yet, so the engine can treat it like
the status it disguises and rotate. Only the events before the first content event are buffered
(at most :data:`PEEK_LIMIT` bytes); the bytes read are replayed in front of the rest of the
original stream, which is never collected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2

from authpool.rotation.sse import StreamVerdict, judge_prefix, parse_events

__all__ = ["PEEK_LIMIT", "is_event_stream", "peek_async", "peek_sync"]

PEEK_LIMIT = 64 * 1024  # bytes of a stream buffered at most while waiting for its first content event


def is_event_stream(response: httpx2.Response) -> bool:
    """An uncompressed ``text/event-stream``: one the engine may peek at."""
    ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    # A compressed stream would have to be decoded to be judged; deliver it as it is.
    return ctype == "text/event-stream" and encoding in ("", "identity")


def peek_sync(response: httpx2.Response) -> tuple[StreamVerdict, httpx2.Response]:
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


async def peek_async(response: httpx2.Response) -> tuple[StreamVerdict, httpx2.Response]:
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
