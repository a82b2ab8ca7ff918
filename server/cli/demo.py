"""``authpool demo``: the pool working end to end, against a loopback provider.

It starts a provider on 127.0.0.1 that behaves like the real ones (rotating refresh tokens
with reuse detection, rate limits with ``Retry-After``), creates three demo accounts in a
temporary home, spawns ``authpool serve`` exactly as an MCP client would (the official client,
over stdio, with the client's default environment), drives the tools, and narrates what
happened. Nothing outside the temporary home is touched; it is deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from authpool import Pool, TokenSet

if TYPE_CHECKING:
    from authpool.server.loopback import LoopbackProvider

__all__ = ["add_parser", "cmd_demo", "run_demo"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo`` to the CLI's subcommands."""
    p = sub.add_parser("demo", help="show the pool working end to end against a loopback provider (touches nothing)")
    p.add_argument("--keep", action="store_true", help="keep the temporary home for inspection")
    p.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run ``authpool demo``."""
    return run_demo(keep=args.keep)


def run_demo(keep: bool = False) -> int:
    """Run the demo; returns the exit status (non-zero if the pool did not behave)."""
    # Imported here: every other command builds this parser, and only the demo needs them.
    import anyio

    from authpool.server.loopback import LoopbackProvider

    home = Path(tempfile.mkdtemp(prefix="authpool-demo-"))
    provider = LoopbackProvider(access_ttl=3600).start()
    issued: list[str] = []
    try:
        _setup(home, provider, issued)
        ok = anyio.run(_drive, home, provider, issued)
    finally:
        provider.stop()
        if keep:
            print(f"\nhome kept at {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    return 0 if ok else 1


def _setup(home: Path, provider: LoopbackProvider, issued: list[str]) -> None:
    os.environ["AUTHPOOL_HOME"] = str(home)
    # The demo's secrets go to an encrypted file inside the temporary home, never the user's keyring.
    os.environ["PYTHON_KEYRING_BACKEND"] = "authpool.storage.vault.VaultKeyring"
    os.environ.pop("AUTHPOOL_STORE", None)  # the demo touches nothing outside its home: never a team store
    home.chmod(0o700)
    config = home / "config.toml"
    config.write_text(
        "[providers.demo]\n"
        'name = "Loopback demo provider"\n'
        f'base_url = "{provider.base_url}"\n'
        'auth = "header:x-api-key"\n'
        "[providers.demo.oauth]\n"
        f'token_url = "{provider.token_url}"\n'
        f'client_id = "{provider.client_id}"\n'
    )
    config.chmod(0o600)
    pool = Pool.open(home)
    for subject in ("alice", "bob"):
        tokens = provider.add_oauth_account(subject)
        issued += [tokens["access_token"], tokens["refresh_token"]]
        pool.add_oauth("demo", subject, TokenSet.parse(tokens))
    key = provider.add_api_key("carol")
    issued.append(key)
    pool.add_api_key("demo", "carol", key)
    # alice answers one request, then 429 with Retry-After: 30 until the window passes.
    provider.set_rate_limit("alice", 1, style="retry-after-seconds", retry_after=30)


async def _drive(home: Path, provider: LoopbackProvider, issued: list[str]) -> bool:
    from mcp import Client, StdioServerParameters

    print("authpool demo: a loopback provider, three accounts, and `authpool serve` spawned as an MCP client would")
    print(f"  provider  {provider.base_url}  (rotates refresh tokens; rate-limits alice after 1 request)")
    print(f"  home      {home}  (temporary)\n")
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "authpool.server.cli", "serve"],
        env={"AUTHPOOL_HOME": str(home), "PYTHON_KEYRING_BACKEND": "authpool.storage.vault.VaultKeyring"},
    )
    results: list[str] = []
    checks: list[tuple[str, bool]] = []
    started = time.monotonic()
    async with Client(params, mode="legacy") as client:
        print(f"spawned `authpool serve` and initialized in {time.monotonic() - started:.2f}s; "
              f"{len((await client.list_tools()).tools)} tools\n")

        async def call(name: str, args: dict[str, Any]) -> dict[str, Any]:
            r = await client.call_tool(name, args)
            text = r.content[0].text if r.content else ""  # type: ignore[union-attr]
            results.append(text)
            if r.is_error:
                raise SystemExit(f"authpool demo: tool {name} failed: {text}")
            return r.structured_content or {}

        accounts = (await call("list_accounts", {"provider": "demo"}))["accounts"]
        print("1. list_accounts")
        for a in accounts:
            print(f"     {a['name']:<12} {a['kind']:<8} {a['state']}")

        body = {"model": "demo-1", "max_tokens": 64, "messages": [{"role": "user", "content": "hello"}]}
        request = {"provider": "demo", "method": "POST", "path": "/v1/messages", "json": body}
        first = await call("proxy_request", request)
        print(f"\n2. proxy_request POST /v1/messages -> {first['status']} from {first['account']['name']}")
        checks.append(("first request served by alice", first["account"]["name"] == "demo/alice"))

        second = await call("proxy_request", request)
        print(f"\n3. proxy_request again -> {second['status']} from {second['account']['name']}, within the same call:")
        _print_trail(second["attempts"])
        outcomes = [(a["account"], a["outcome"]) for a in second["attempts"]]
        checks.append(("429 on alice rotated to the next account in the same call",
                       outcomes[0] == ("demo/alice", "rate_limited") and second["status"] == 200))

        provider.expire_access_tokens("bob")
        refreshes_before = provider.snapshot()["refresh_calls"]
        third = await call("proxy_request", request)
        print(f"\n4. bob's access token expired at the provider; proxy_request -> {third['status']} from "
              f"{third['account']['name']}:")
        _print_trail(third["attempts"])
        refreshed = provider.snapshot()["refresh_calls"] - refreshes_before
        print(f"     token endpoint called {refreshed} time(s); the new refresh token was stored before use")
        checks.append(("expired token refreshed once and the request succeeded",
                       refreshed == 1 and third["status"] == 200
                       and any(a["outcome"] == "refreshed" for a in third["attempts"])))

        status = await call("pool_status", {})
        print("\n5. pool_status")
        for p in status["providers"]:
            nxt = f", next frees up at {p['next_free_at']}" if p["next_free_at"] else ""
            print(f"     {p['provider']}: {p['ready']} ready, {p['cooling']} cooling, "
                  f"{p['needs_reauth']} need re-login{nxt}")
        alice = await call("account_status", {"account": "demo/alice"})
        print(f"     demo/alice: {alice['state']}, {alice['cooldown_remaining_s']:.0f}s left "
              f"({alice['last_error']})")

    leaked = [s for s in issued if any(s in r for r in results)]
    stats = provider.snapshot()
    checks.append(("no token or key in any tool result", not leaked))
    checks.append(("no refresh token was ever reused", stats["reuse_detected_count"] == 0))
    print()
    for what, passed in checks:
        print(f"  [{'ok' if passed else 'FAILED'}] {what}")
    print(f"\nprovider saw {stats['api_calls']} API calls and {stats['token_calls']} token call(s); "
          f"results scanned: {len(results)} ({sum(len(r) for r in results)} characters)")
    return all(passed for _, passed in checks)


def _print_trail(attempts: list[dict[str, Any]]) -> None:
    for a in attempts:
        extra = ""
        if a["cooldown_until"]:
            extra = f", cooling until {a['cooldown_until']} ({a['detail']})"
        print(f"     {a['account']:<12} {a['status'] or '-':<4} {a['outcome']}{extra}")

