"""The MCP boundary: how failures reach the client, one readable line each.

The SDK (mcp 2.x, ``mcp.server.mcpserver``) reports two kinds of failure in a way that helps
nobody: a resource that raises anything but ``ResourceError`` becomes ``-32603 Error reading
resource URI`` (the reason withheld) plus a traceback on stderr; and arguments that fail the
input schema come back as pydantic's multi-line dump with a documentation link and the echoed
input (``Tool.run`` wraps the ``ValidationError`` in a ``ToolError``). :class:`PoolServer`
translates both where the SDK raises them, in ``read_resource`` and ``call_tool``. authpool has no
prompts, and the SDK answers ``prompts/get`` for an unknown name with error code 0 and a traceback
on stderr; :class:`PoolServer` answers it as the specification says, ``-32602`` (invalid params). Its stdio
transport also answers the JSON-RPC frames the SDK's would drop (:mod:`authpool.server.mcp.stdio`).
Inside a tool, :func:`tool_errors` turns the library's expected errors into tool errors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError, UnexpectedResourceError, UnexpectedToolError
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from pydantic import AnyUrl, ValidationError
from pydantic_core import ErrorDetails

from authpool import PoolError
from authpool.server.mcp.subscriptions import Subscriptions

__all__ = ["PoolServer", "describe_argument_errors", "tool_errors"]


class PoolServer(MCPServer[Any]):
    """An ``MCPServer`` whose resource and argument errors say what is wrong, in a line each."""

    async def run_stdio_async(self) -> None:
        """Serve on stdio as ``MCPServer`` does, answering the frames its transport would drop.

        See :mod:`authpool.server.mcp.stdio`. The low-level server is the one ``MCPServer.run_stdio_async``
        drives too; only the transport in front of it differs.
        """
        from authpool.server.mcp.stdio import guarded_stdio

        lowlevel = self._lowlevel_server
        async with guarded_stdio() as (read_stream, write_stream):
            await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())

    def serve_subscriptions(self, subscriptions: Subscriptions) -> None:
        """Serve the 2025 era's ``resources/subscribe`` / ``unsubscribe`` through ``subscriptions``.

        ``MCPServer`` registers neither; they go on the low-level server this one drives (the
        2026 era's ``subscriptions/listen`` is served by the SDK from the bus given at construction).
        """
        subscriptions.register(self._lowlevel_server)

    async def read_resource(self, uri: AnyUrl | str, context: Context[Any, Any] | None = None) -> Any:
        try:
            return await super().read_resource(uri, context)
        except UnexpectedResourceError as e:
            # A PoolError is an expected failure (a corrupt pool file, a bad config.toml): its
            # message is the answer. Anything else stays a crash, reported as the SDK does.
            if isinstance(e.__cause__, PoolError):
                raise ResourceError(str(e.__cause__)) from None
            raise

    async def get_prompt(self, name: str, arguments: dict[str, Any] | None = None,
                         context: Context[Any, Any] | None = None) -> Any:
        # The SDK raises a bare ValueError for a name it does not know, which its dispatcher logs
        # with a traceback and answers with code 0; a client's typo is neither a crash nor code 0.
        if self._prompt_manager.get_prompt(name) is None:
            raise MCPError(INVALID_PARAMS, f"unknown prompt: {name}")
        return await super().get_prompt(name, arguments, context)

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as e:
            # The SDK's own test for "the arguments failed the input schema" (a crash inside the
            # tool is an UnexpectedToolError, whatever caused it).
            if isinstance(e.__cause__, ValidationError) and not isinstance(e, UnexpectedToolError):
                raise ToolError(describe_argument_errors(name, e.__cause__)) from None
            raise


@contextlib.contextmanager
def tool_errors() -> Iterator[None]:
    """Turn the library's expected errors (``PoolError``) into tool errors carrying their message."""
    try:
        yield
    except PoolError as e:
        raise ToolError(str(e)) from None


def describe_argument_errors(tool: str, error: ValidationError) -> str:
    """``invalid arguments for TOOL:`` and one line per failing field, never echoing a value.

    Example:
        ``invalid arguments for proxy_request:\\nmax_body_chars must be at least 1000``
    """
    lines = [f"invalid arguments for {tool}:"]
    for err in error.errors(include_url=False, include_input=False):
        line = _field_line(err)
        if line not in lines:
            lines.append(line)
    return "\n".join(lines)


_TYPES = {
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "dict_type": "must be a JSON object",
    "list_type": "must be a JSON array",
    "missing": "is required",
    "finite_number": "must be a finite number",
}
_BOUNDS = {
    "greater_than_equal": ("ge", "must be at least {}"),
    "less_than_equal": ("le", "must be at most {}"),
    "greater_than": ("gt", "must be greater than {}"),
    "less_than": ("lt", "must be less than {}"),
    "string_too_short": ("min_length", "must be at least {} characters long"),
    "string_too_long": ("max_length", "must be at most {} characters long"),
}


def _field_line(err: ErrorDetails) -> str:
    field = ".".join(str(part) for part in err["loc"]) or "arguments"
    kind = err["type"]
    if kind in _TYPES:
        return f"{field} {_TYPES[kind]}"
    ctx = err.get("ctx") or {}
    if kind in _BOUNDS and _BOUNDS[kind][0] in ctx:
        key, text = _BOUNDS[kind]
        bound = ctx[key]
        return f"{field} {text.format(int(bound) if isinstance(bound, float) and bound.is_integer() else bound)}"
    # Anything else: pydantic's own sentence (it names expectations, not the input).
    msg = err["msg"]
    return f"{field}: {msg[:1].lower()}{msg[1:]}"
