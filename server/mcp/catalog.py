"""The ``list_models`` tool: a provider's models, so an agent can name one before ``proxy_request``.

A thin shell over :func:`authpool.catalog.list_models`: the list is fetched through the pool
(it rotates like any request) and cached in the home for the provider's ``models_ttl``.
"""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations
from pydantic import Field

from authpool.catalog import list_models as fetch_models
from authpool.server.mcp.boundary import tool_errors
from authpool.server.mcp.schemas import ModelListView, OptionalText, model_list
from authpool.server.mcp.state import ToolContext, state_of

__all__ = ["list_models", "register_catalog_tools"]


async def list_models(
    ctx: ToolContext,
    provider: Annotated[str, Field(description="provider id, e.g. 'anthropic', 'gemini' (see list_providers)")],
    refresh: Annotated[bool, Field(description="ask the provider again instead of using the cached copy (kept "
                                               "for a day by default)")] = False,
    namespace: Annotated[OptionalText, Field(description="fetch with this sub-pool's accounts (accounts of "
                                                         "different plans may see different models)")] = "",
) -> ModelListView:
    """List the models a provider offers (their ids are what a request's "model" names), fetched through the pool with one of its accounts and cached for a day. Call it before proxy_request when you do not know the exact model name."""  # noqa: E501
    with tool_errors():
        listing = await fetch_models(state_of(ctx).pool, provider, refresh=refresh, namespace=namespace or None)
    return model_list(listing)


def register_catalog_tools(server: MCPServer[Any]) -> None:
    """Add ``list_models`` to ``server`` (whose lifespan yields a ``ServerState``)."""
    # Read-only: it asks the provider (open world) and changes nothing there; what it writes is
    # authpool's own cache and usage counters, as every request does.
    server.tool(annotations=ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                                            open_world_hint=True))(list_models)
