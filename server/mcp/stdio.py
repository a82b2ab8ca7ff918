"""The stdio wire of ``authpool serve``: every frame gets an answer JSON-RPC 2.0 calls for.

The SDK's stdio transport (``mcp.server.stdio.stdio_server``) hands a line it cannot parse as a
JSON-RPC message to the server loop as an exception, and the loop drops it: a request with an
id but no ``method``, with ``jsonrpc: "1.0"`` or with ``params: "x"`` gets no answer at all (the
client waits forever), and text that is not JSON gets no parse error. JSON-RPC 2.0 says
``-32600 Invalid Request`` with the request's id, and ``-32700 Parse error`` with id null.

:func:`guarded_stdio` is ``stdio_server`` with a line filter in front: a frame the SDK would
drop is answered here, on the SDK's own write stream (so answers never interleave), and
everything else passes through unchanged.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import IO, TYPE_CHECKING, Any, cast

import anyio
import mcp_types as types
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

if TYPE_CHECKING:
    # The stream protocols the SDK's Server.run takes; not exported publicly.
    from mcp.shared._stream_protocols import ReadStream, WriteStream

__all__ = ["guarded_stdio", "invalid_frame_answer"]


@contextlib.asynccontextmanager
async def guarded_stdio() -> AsyncIterator[tuple[ReadStream[SessionMessage | Exception], WriteStream[SessionMessage]]]:
    """``stdio_server()``, answering the frames it would drop in silence."""
    lines = _GuardedLines(_claim_stdin())
    # stdio_server only iterates its stdin (`async for line in stdin`), which _GuardedLines does.
    async with stdio_server(stdin=cast("anyio.AsyncFile[str]", lines)) as (read_stream, write_stream):
        lines.answer_on(write_stream)
        yield read_stream, write_stream


def invalid_frame_answer(line: str) -> types.JSONRPCError | None:
    """The error answer a line of input needs, or None if it is a message the SDK will handle.

    Blank lines are not messages and get no answer either (callers skip them). Malformed
    responses (``result``/``error`` without ``method``) are never answered: JSON-RPC forbids
    replying to a response.
    """
    try:
        message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValidationError:
        notification = False
    else:
        # An id the adapter cannot use (9.5, an object) makes a request parse as a notification,
        # which is never answered, and its sender waits forever. Other messages are fine.
        if not isinstance(message, types.JSONRPCNotification) or '"id"' not in line:
            return None
        notification = True
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError):
        return _answer(None, types.PARSE_ERROR, "Parse error: the line is not valid JSON")
    if not isinstance(doc, dict):
        return _answer(None, types.INVALID_REQUEST,
                       "Invalid Request: a message must be a JSON object (batches are not supported)")
    if notification and "id" not in doc:
        return None  # a good notification; "id" was only inside a string
    if "method" not in doc and ("result" in doc or "error" in doc):
        return None  # a bad response to one of our requests: never answered
    request_id = doc.get("id")
    id_ok = request_id is None or (isinstance(request_id, int | str) and not isinstance(request_id, bool))
    return _answer(request_id if id_ok else None, types.INVALID_REQUEST, f"Invalid Request: {_why(doc, id_ok)}")


def _why(doc: dict[str, Any], id_ok: bool) -> str:
    if doc.get("jsonrpc") != "2.0":
        return 'jsonrpc must be "2.0"'
    if not id_ok:
        return "id must be a string or an integer"
    if "method" not in doc:
        return "missing method"
    if not isinstance(doc["method"], str):
        return "method must be a string"
    if "params" in doc and not isinstance(doc["params"], dict):
        return "params must be an object"
    return "not a valid JSON-RPC 2.0 message"


def _answer(request_id: int | str | None, code: int, message: str) -> types.JSONRPCError:
    return types.JSONRPCError(jsonrpc="2.0", id=request_id, error=types.ErrorData(code=code, message=message))


class _UnownedText(io.TextIOWrapper):
    """A text layer whose close leaves the binary stream open (it may be sys.stdin's own)."""

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.detach()


class _GuardedLines:
    """The lines of stdin, minus the ones answered here (and blank ones)."""

    def __init__(self, wire: IO[bytes]) -> None:
        self._file = anyio.wrap_file(_UnownedText(wire, encoding="utf-8", errors="replace"))
        self._reply: WriteStream[SessionMessage] | None = None
        self._ready = anyio.Event()

    def answer_on(self, write_stream: WriteStream[SessionMessage]) -> None:
        self._reply = write_stream
        self._ready.set()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        async for line in self._file:
            if not line.strip():
                continue
            answer = invalid_frame_answer(line)
            if answer is None:
                yield line
                continue
            await self._ready.wait()
            if self._reply is None:  # pragma: no cover - set together with _ready
                return
            try:
                await self._reply.send(SessionMessage(answer))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return  # the server is shutting down: nobody left to answer


def _claim_stdin() -> IO[bytes]:
    """The wire as a private descriptor; fd 0 then reads /dev/null (as the SDK arranges it).

    Nothing else in the process, a child included, can then consume bytes meant for the server.
    Where that is not possible (no real fd 0, not POSIX) the wire is read in place.
    """
    try:
        is_fd0 = sys.stdin.buffer.fileno() == 0
    except (AttributeError, OSError, ValueError):
        is_fd0 = False
    if os.name != "posix" or not is_fd0:
        return sys.stdin.buffer
    import fcntl

    wire = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(devnull, 0)
    finally:
        os.close(devnull)
    # closefd=False: the reader thread may still block on it while the process exits.
    return os.fdopen(wire, "rb", closefd=False)
