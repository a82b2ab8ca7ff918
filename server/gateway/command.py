"""``authpool gateway``: serve the pool over HTTP until SIGTERM or Ctrl-C, then leave nothing behind.

Start: the key is loaded (or created), the address bound and listening, and only then is the
port written to ``--port-file`` (atomically), so a script that reads the file can connect at
once. One line on stderr says where the gateway listens, for which pool, and where its key is.

Stop (SIGTERM or Ctrl-C): the listening socket closes at once (new connections are refused);
responses in flight — streams included — go on for up to ``--grace`` seconds (a second Ctrl-C
stops waiting), then whatever is left is cancelled and its upstream connections closed. Token
refreshes this process sent are waited for (the provider may have rotated the login already;
leaving before the answer is stored would log the user out; a further signal leaves at once),
batched usage counters are written, the port file is removed, and the process exits 0.

uvicorn serves the Starlette app (:func:`~authpool.server.gateway.app.build_app`) on a socket
bound here, with its access log off (a request line may carry ``?key=``) and its own log lines
reduced to one line each on stderr.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from authpool import Pool, PoolError
from authpool.server.gateway.app import build_app, build_mcp_app
from authpool.server.gateway.errors import GatewayError
from authpool.server.gateway.guard import Site
from authpool.server.gateway.keys import GatewayKey

__all__ = ["DEFAULT_GRACE", "DEFAULT_PORT", "is_loopback", "run_gateway"]

log = logging.getLogger("authpool")

DEFAULT_PORT = 8787
DEFAULT_GRACE = 60.0  # seconds in-flight responses get to finish after SIGTERM


def _signals() -> tuple[int, ...]:
    """The signals that stop the gateway: SIGINT, SIGTERM, and SIGHUP (a closed terminal or a dropped
    SSH session must not end it mid-refresh) unless it is ignored (``nohup``: then it keeps running)."""
    hup = getattr(signal, "SIGHUP", None)
    taken = hup is not None and signal.getsignal(hup) is not signal.SIG_IGN
    return (signal.SIGINT, signal.SIGTERM, *((hup,) if taken and hup is not None else ()))


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost`` (reachable from this machine only)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run_gateway(*, host: str, port: int, port_file: Path | None = None, allow_remote: bool = False,
                allow_hosts: list[str] | None = None, grace: float = DEFAULT_GRACE, mcp_only: bool = False,
                no_auth: bool = False) -> int:
    """Serve the gateway (or, with ``mcp_only``, MCP alone: ``authpool serve --http``) until a signal.

    Both serve MCP at ``/mcp`` (:mod:`~authpool.server.gateway.endpoint`). Returns the exit
    status (0 after a clean stop).

    Raises:
        GatewayError: a non-loopback ``host`` without ``allow_remote``, ``no_auth`` off loopback, an
            address that cannot be bound, an unusable ``AUTHPOOL_GATEWAY_KEY``.
        PoolError: the pool or its credential store cannot be read.
    """
    host = host.strip("[]")
    what = "the MCP server" if mcp_only else "the gateway"
    if not is_loopback(host) and not allow_remote:
        raise GatewayError(f"--host {host} is reachable from other machines; {what} binds loopback addresses "
                           "only, unless you add --allow-remote (every client then still needs the gateway key)")
    if no_auth and not is_loopback(host):
        raise GatewayError(f"--no-auth is accepted on a loopback address only, not on {host}: other machines "
                           "would reach every account in the pool without a key")
    pool = Pool.open()
    key = None if no_auth else GatewayKey(pool)
    if key is not None:
        key.load()
    sock = _listen(host, port)
    bound = int(sock.getsockname()[1])
    site = Site.of(host, bound, allow_hosts or [])
    if not is_loopback(host):
        print(f"authpool: warning: {what} on {host}:{bound} is reachable from other machines: anyone with "
              "the gateway key can use every account in the pool, and several providers' terms forbid sharing "
              "a subscription login with other people", file=sys.stderr, flush=True)
    if no_auth:
        print(f"authpool: warning: --no-auth: any program of any user of this machine can use every account in "
              f"the pool through {site.origin}/mcp; leave it off unless this machine is yours alone",
              file=sys.stderr, flush=True)
    from authpool.server.gateway.endpoint import McpEndpoint
    from authpool.server.mcp.server import build_server

    endpoint = McpEndpoint(build_server(pool), key, site)
    # The gateway has no --no-auth: it always has a key.
    app = build_mcp_app(endpoint, site) if mcp_only or key is None else build_app(pool, key, site, mcp=endpoint)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=math.ceil(grace), server_header=False, date_header=False,
                            ws="none")
    _quiet_uvicorn()
    announce = _serving_mcp if mcp_only else _started
    server = _Server(config, announce=lambda: announce(pool, key, host, bound, port_file), grace=grace,
                     name="the MCP server" if mcp_only else "the gateway")
    early: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Before uvicorn listens, every signal waits for it here; then uvicorn takes SIGINT and SIGTERM
        # itself, and SIGHUP, which it leaves alone, stops it the same way.
        if not server.started:
            early.append(signum)
        elif not server.should_exit:
            server.handle_exit(signum, frame)

    previous = {sig: signal.signal(sig, on_signal) for sig in _signals()}
    server.early = early
    try:
        server.run(sockets=[sock])
    except SystemExit as e:  # uvicorn's way of saying the application failed to start
        raise GatewayError(f"the gateway could not start (status {e.code}); see the lines above") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        if port_file is not None:
            _remove_port_file(port_file, bound)
    _finish(pool, "MCP server" if mcp_only else "gateway")
    return 0


class _Server(uvicorn.Server):
    """uvicorn's server, announcing itself once it accepts and honouring a signal that came before."""

    def __init__(self, config: uvicorn.Config, *, announce: Any, grace: float, name: str) -> None:
        super().__init__(config)
        self.announce = announce
        self.grace = grace
        self.name = name
        self.early: list[int] = []

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.announce()
        for signum in self.early:  # a signal before uvicorn listened for them: act on it now
            self.handle_exit(signum, None)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            busy = len(self.server_state.tasks)
            print(f"authpool: {signal.Signals(sig).name}: {self.name} stops accepting; "
                  + (f"waiting up to {self.grace:g}s for {busy} response(s) in flight (Ctrl-C again to stop "
                     "waiting)" if busy else "no response in flight"), file=sys.stderr, flush=True)
        super().handle_exit(sig, frame)


def _listen(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise GatewayError(f"cannot listen on {host}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: without it, a response written in two parts waits for
        # the client's delayed ACK (about 40 ms per request).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise GatewayError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


def _started(pool: Pool, key: GatewayKey | None, host: str, port: int, port_file: Path | None) -> None:
    shown = f"[{host}]" if ":" in host else host
    source = key.source if key is not None else "nowhere"
    print(f"authpool: gateway listening on http://{shown}:{port} for the pool in {pool.home.path} (MCP at /mcp); "
          f"clients send the gateway key from {source} (`authpool gateway key` prints it)", file=sys.stderr, flush=True)
    if port_file is not None:
        _write_port_file(port_file, port)


def _serving_mcp(pool: Pool, key: GatewayKey | None, host: str, port: int, port_file: Path | None) -> None:
    shown = f"[{host}]" if ":" in host else host
    how = (f"clients send the gateway key from {key.source} as Authorization: Bearer (`authpool gateway key` prints "
           "it)" if key is not None else "no key is asked for (--no-auth)")
    print(f"authpool: serving MCP at http://{shown}:{port}/mcp for the pool in {pool.home.path}; {how}",
          file=sys.stderr, flush=True)
    if port_file is not None:
        _write_port_file(port_file, port)


def _write_port_file(path: Path, port: int) -> None:
    path = path.expanduser()
    try:
        fd, tmp = tempfile.mkstemp(prefix=".port-", dir=path.parent or ".")
        with os.fdopen(fd, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not write the port file %s: %s", path, e.strerror)


def _remove_port_file(path: Path, port: int) -> None:
    with contextlib.suppress(OSError):
        if path.expanduser().read_text().strip() == str(port):
            path.expanduser().unlink()


def _finish(pool: Pool, name: str) -> None:
    """Wait for sent token refreshes, then write the counters; a further signal leaves at once."""
    from authpool.auth import Flight, drain

    def leave(signum: int, frame: FrameType | None) -> None:
        print("authpool: left before a token refresh finished; if the provider revoked the login, the next "
              "request says so", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    def say(pending: list[Flight]) -> None:
        names = ", ".join(sorted({f.name for f in pending}))
        print(f"authpool: finishing a token refresh ({names}) before exiting: the provider may have rotated the "
              "login already; press Ctrl-C again to leave anyway", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, leave) for sig in _signals()}
    try:
        drain(notify=say)
        try:
            pool.close()
        except PoolError as e:
            log.warning("could not write usage counters on exit: %s", e)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"authpool: {name} stopped", file=sys.stderr, flush=True)


class _OneLine(logging.Filter):
    """uvicorn's log records as one line each: no traceback (AUTHPOOL_DEBUG=1 keeps them), and not the
    note that a response broke off, which the relay has already reported in its own words."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("ASGI callable returned without completing response"):
            return False
        if record.exc_info and not os.environ.get("AUTHPOOL_DEBUG"):
            kind = record.exc_info[0].__name__ if record.exc_info[0] else "error"
            record.msg = f"{str(record.msg).strip()} ({kind}; rerun with AUTHPOOL_DEBUG=1 for details)"
            record.exc_info = None
            record.exc_text = None
        return True


def _quiet_uvicorn() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("authpool: gateway: %(message)s"))
    handler.addFilter(_OneLine())
    # The SDK logs each Host/Origin refusal; the refused client gets the reason in its answer.
    logging.getLogger("mcp.server.transport_security").setLevel(logging.ERROR)
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler] if name == "uvicorn" else []
        logger.setLevel(logging.WARNING)
        logger.propagate = name != "uvicorn"
    logging.getLogger("uvicorn.access").disabled = True
