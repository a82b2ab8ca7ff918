"""``authpool request``: one request through the pool, from the shell.

The response body goes to stdout (so it pipes into ``jq``), the account that served it and
the attempt trail to stderr. Exit status: 0 for 2xx/3xx, 4 for a final 4xx, 5 for a final 5xx,
1 when the pool could not serve the request at all (all cooling, no accounts, refused origin).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import httpx2

from authpool import InvalidInput, NoAccounts, Pool, RequestFailed
from authpool.rotation import Attempt, RequestResult

__all__ = ["parse_headers", "print_trail", "read_body", "run_request"]


def run_request(args: argparse.Namespace) -> int:
    headers = parse_headers(args.header)
    content, content_type = read_body(args.json_body, args.data)
    if content_type and "content-type" not in {k.lower() for k in headers}:
        headers["content-type"] = content_type
    pool = Pool.open()
    provider = pool.provider(args.provider)
    url = provider.resolve_url(args.path)

    def progress(waited: float, total: float | None, message: str) -> None:
        print(f"authpool: {message}", file=sys.stderr)

    out = sys.stdout.buffer
    last = b""
    try:
        with pool.sync_client(args.provider, account=args.account, namespace=args.namespace,
                              wait_budget=args.wait, on_progress=progress, session=args.session) as client:
            request = client.build_request(args.method.upper(), url, content=content, headers=headers)
            # Streamed to stdout as it arrives: an event stream (stream: true) shows tokens live.
            try:
                response = client.send(request, stream=True)
            except NoAccounts as e:
                raise e.in_home(pool.home.path) from None
            try:
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    out.flush()
                    last = chunk or last
            except httpx2.HTTPError as e:  # the body broke off, or is not the encoding it claims
                served: RequestResult | None = response.extensions.get("authpool")
                reason = str(e) if isinstance(e, httpx2.DecodingError) else type(e).__name__
                raise RequestFailed(
                    f"{args.provider} answered HTTP {response.status_code}"
                    f"{f' via {served.account}' if served else ''}, but the response body could not be read "
                    f"({reason})", attempts=served.attempts if served else None,
                ) from None
            finally:
                response.close()
    except RequestFailed as e:
        if not args.quiet:
            print_trail(e.attempts)
        raise
    finally:
        pool.close()
        # Also when the body broke off or Ctrl-C stopped it: the next line (an error, the
        # trail, the shell prompt) must not start after the body's last character.
        if last and not last.endswith(b"\n") and sys.stdout.isatty():
            with contextlib.suppress(OSError):
                out.write(b"\n")
                out.flush()
    out.flush()
    result: RequestResult | None = response.extensions.get("authpool")
    if result is not None and not args.quiet:
        print(f"authpool: HTTP {response.status_code} from {result.account} ({result.account_id})",
              file=sys.stderr)
        print_trail(result.attempts)
    if response.status_code >= 500:
        return 5
    if response.status_code >= 400:
        return 4
    return 0


def print_trail(attempts: list[Attempt]) -> None:
    """One stderr line per attempt: account, outcome, status, cooldown."""
    for a in attempts:
        status = f" ({a.status})" if a.status else ""
        until = f" until {time.strftime('%H:%M:%S', time.localtime(a.cooldown_until))}" if a.cooldown_until else ""
        detail = f": {a.detail}" if a.detail and a.outcome not in ("ok", "rate_limited") else ""
        print(f"authpool:   {a.account}: {a.outcome}{status}{until}{detail}", file=sys.stderr)


def parse_headers(values: list[str]) -> dict[str, str]:
    """``-H 'K: V'`` options as a dict.

    Raises:
        InvalidInput: a header without a colon.
    """
    out: dict[str, str] = {}
    for raw in values:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            raise InvalidInput(f"bad header {raw!r}: use 'Name: value'")
        out[name.strip()] = value.strip()
    return out


def read_body(json_body: str | None, data: str | None) -> tuple[bytes | None, str | None]:
    """The request body and its content type from ``--json`` or ``--data``.

    Raises:
        InvalidInput: malformed JSON, or an unreadable @FILE.
    """
    if json_body is not None:
        try:
            json.loads(json_body)
        except json.JSONDecodeError as e:
            raise InvalidInput(f"--json is not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
        return json_body.encode(), "application/json"
    if data is None:
        return None, None
    if data == "-":
        return sys.stdin.buffer.read(), None
    if data.startswith("@"):
        try:
            with open(data[1:], "rb") as f:
                return f.read(), None
        except OSError as e:
            raise InvalidInput(f"cannot read {data[1:]}: {e.strerror}") from None
    return data.encode(), None

