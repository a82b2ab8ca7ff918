"""A real PostgreSQL server for the team-store tests: ``initdb`` into a temporary directory, ``pg_ctl``
on a free port on 127.0.0.1, one fresh database per test.

PostgreSQL refuses to run as root, so under root the server runs as the ``postgres`` user (or
``authpool-pg``, created here if neither exists). Without ``initdb`` the tests skip, unless
``AUTHPOOL_REQUIRE_POSTGRES=1`` (CI sets it once it installed the server): then they fail.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PostgresServer", "PostgresUnavailable", "find_bin_dir", "postgres_server"]

USER = "authpool"
PASSWORD = "pg-test-password-never-printed"  # trust auth ignores it; the tests check it never leaks


class PostgresUnavailable(Exception):
    """No PostgreSQL server binaries here."""


def find_bin_dir() -> Path:
    """The directory of ``initdb`` and ``pg_ctl``: PATH first, then Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    raise PostgresUnavailable("initdb not found (apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> str | None:
    """Who runs the server: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "authpool-pg"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "authpool-pg"],
                   check=True, capture_output=True)
    return "authpool-pg"


class PostgresServer:
    """One running server; :meth:`database` makes a fresh, empty database and returns its URL."""

    def __init__(self, bin_dir: Path, data: Path, port: int, run_as: str | None, *, durable: bool = False) -> None:
        self.durable = durable
        self.bin_dir = bin_dir
        self.data = data
        self.port = port
        self.run_as = run_as
        self._n = itertools.count(1)
        self.log = data.parent / "server.log"

    def _as_server_user(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *argv] if self.run_as else argv

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), *args]
        return subprocess.run(self._as_server_user(argv), capture_output=True, text=True, timeout=120, check=check)

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data.parent} -c max_connections=300"
        if not self.durable:  # tests: speed; benchmarks ask for a durable server, as a team would run
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self.pg_ctl("-o", opts, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        """Stop (fast: every connection is dropped) and start again on the same port."""
        self.stop("fast")
        self.start()

    def url(self, dbname: str, *, password: bool = True) -> str:
        auth = f"{USER}:{PASSWORD}" if password else USER
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def database(self) -> str:
        """A fresh empty database; its URL (with a password the server ignores, to check it never leaks)."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._n)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pg_dump(self, url: str) -> str:
        r = subprocess.run([str(self.bin_dir / "pg_dump"), "--dbname", url], capture_output=True, text=True,
                           timeout=120, check=True)
        return r.stdout


@contextlib.contextmanager
def postgres_server(*, durable: bool = False) -> Iterator[PostgresServer]:
    """Start a throw-away server (``durable``: with fsync and synchronous commits); stopped and deleted afterwards."""
    bin_dir = find_bin_dir()
    run_as = _server_user()
    root = Path(tempfile.mkdtemp(prefix="authpool-pg-"))
    data = root / "data"
    try:
        if run_as:
            info = pwd.getpwnam(run_as)
            os.chown(root, info.pw_uid, info.pw_gid)
        os.chmod(root, 0o755)
        init = [str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8",
                "--no-sync", "--locale=C"]
        cmd = ["runuser", "-u", run_as, "--", *init] if run_as else init
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {r.stderr.strip()[-500:]}")
        server = PostgresServer(bin_dir, data, _free_port(), run_as, durable=durable)
        server.start()
        try:
            yield server
        finally:
            server.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)
