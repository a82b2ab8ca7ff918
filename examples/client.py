"""A scripted MCP client for authpool, using the official Python SDK.

Spawns `authpool serve` over stdio (as Claude Desktop would), lists the tools, shows the pool's
state and, if you name a provider, sends one request through the pool.

    python examples/client.py                       # tools and pool status
    python examples/client.py anthropic /v1/models  # one GET through the pool

AUTHPOOL_HOME is passed through so the server uses the same pool as your CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import anyio
from mcp import Client, StdioServerParameters


def server_params() -> StdioServerParameters:
    # Prefer the installed console script; fall back to this interpreter's module.
    exe = shutil.which("authpool")
    command, args = (exe, ["serve"]) if exe else (sys.executable, ["-m", "authpool.server.cli", "serve"])
    env = {k: v for k, v in os.environ.items() if k.startswith(("AUTHPOOL_", "PYTHON_KEYRING", "DBUS_"))}
    return StdioServerParameters(command=command, args=args, env=env)


async def main(argv: list[str]) -> None:
    async with Client(server_params()) as client:
        tools = (await client.list_tools()).tools
        print("tools:", ", ".join(t.name for t in tools))

        status = await client.call_tool("pool_status", {})
        for p in (status.structured_content or {}).get("providers", []):
            print(f"{p['provider']}: {p['ready']} ready, {p['cooling']} cooling, {p['needs_reauth']} need re-login")

        if len(argv) >= 2:
            provider, path = argv[0], argv[1]

            async def progress(done: float, total: float | None, message: str | None) -> None:
                print(f"  … {message}", file=sys.stderr)

            result = await client.call_tool(
                "proxy_request",
                {"provider": provider, "method": "GET", "path": path, "wait_s": 30},
                progress_callback=progress,
            )
            if result.is_error:
                print("error:", result.content[0].text)  # type: ignore[union-attr]
                raise SystemExit(1)
            out = result.structured_content or {}
            print(f"HTTP {out['status']} via {out['account']['name']}")
            for attempt in out["attempts"]:
                print(f"  {attempt['account']}: {attempt['outcome']} ({attempt['status']})")
            print(json.dumps(out["body"], indent=2)[:2000])


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
