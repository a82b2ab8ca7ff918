"""Helpers for the gateway tests: ``authpool gateway`` as a real process, raw HTTP, and a transcript.

The gateway is started exactly as a user starts it (``python -m authpool.server.cli gateway --port 0
--port-file F``) on a test home whose providers live on a real LoopbackProvider; clients are the
official SDKs, curl, httpx2 and raw sockets. Every response a test sees and every line the gateway
logs goes into a :class:`Transcript`, scanned for secrets at the end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from authpool.storage import VAULT_BACKEND
from tests.conftest import REPO

DEADLINE = 60.0  # seconds any one wait may take before the test fails: generous, never a measure


def wait_until(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """Poll ``condition`` until it is truthy and return it; fail naming ``what`` after a generous deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class Transcript:
    """Everything the gateway said during a run: responses (status line, headers, body) and its stderr."""

    texts: list[str] = field(default_factory=list)

    def response(self, r: httpx2.Response) -> httpx2.Response:
        """Keep ``r`` (read) and return it."""
        self.texts.append(f"{r.status_code}\n{r.headers!r}\n{r.text}")
        return r

    def add(self, text: str | bytes) -> None:
        self.texts.append(text.decode(errors="replace") if isinstance(text, bytes) else text)


class Gateway:
    """``authpool gateway`` (or ``command``, e.g. ``serve --http``) running on ``home``, stderr kept in a file."""

    def __init__(self, home: Path, workdir: Path, *args: str, env: dict[str, str] | None = None,
                 wait: bool = True, command: tuple[str, ...] = ("gateway",)) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port_file = workdir / "gateway.port"
        self.stderr_file = workdir / "gateway.stderr"
        inherited = {k: v for k, v in os.environ.items() if k != "AUTHPOOL_GATEWAY_KEY"}
        self.env = {**inherited, "AUTHPOOL_HOME": str(home), "PYTHON_KEYRING_BACKEND": VAULT_BACKEND,
                    "AUTHPOOL_LOG": "INFO", **(env or {})}
        self.argv = [sys.executable, "-m", "authpool.server.cli", *command, "--port", "0", "--port-file",
                     str(self.port_file), *args]
        with self.stderr_file.open("wb") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                         env=self.env, cwd=REPO)
        self.port = 0
        if wait:
            self.port = int(wait_until(self._listening, "the gateway's port file"))

    def _listening(self) -> str | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the gateway exited with {self.proc.returncode}: {self.stderr()}")
        try:
            return self.port_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return self.stderr_file.read_text(errors="replace")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = DEADLINE) -> int:
        """The exit status (the process is killed, and the test fails, if it does not exit in time)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the gateway did not exit within {timeout}s: {self.stderr()[-2000:]}") from None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def refuses_connections(self) -> bool:
        """Whether a new TCP connection to the gateway's port is refused now."""
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=5).close()
        except ConnectionRefusedError:
            return True
        return False


def raw_request(port: int, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` (request line and headers, CRLF added) and ``body`` exactly as written; the answer.

    For what no HTTP client sends as given: dot segments, encoded slashes, a foreign ``Host``.
    Reads a ``Content-Length`` answer (the gateway's refusals always have one).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head_bytes, _, rest = data.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, headers, rest
