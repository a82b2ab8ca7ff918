"""Test support: a real, private Secret Service (dbus-daemon + gnome-keyring).

Usage in a test::

    from tests.secret_service import SecretServiceUnavailable, secret_service_session

    def test_roundtrip():
        try:
            with secret_service_session() as ss:
                subprocess.run([...], env=ss.child_env(), check=True, timeout=30)
        except SecretServiceUnavailable as e:
            pytest.skip(str(e))

(``SecretServiceUnavailable`` is only ever raised before the block runs.) Or,
more simply, make a fixture from ``secret_service_fixture`` below, which
skips for you.

``secret_service_session()`` starts, in a throw-away temp directory:

* a private session ``dbus-daemon`` (own config: no service activation, so
  nothing on the machine can be auto-started on this bus, in particular no
  second gnome-keyring and no GUI prompter);
* ``gnome-keyring-daemon --foreground --unlock --components=secrets`` with a
  known password on stdin, which creates the ``login`` collection, makes it
  the ``default`` alias and leaves it unlocked.

It yields a :class:`SecretServiceSession` whose ``.env`` holds the variables a
child process needs (``DBUS_SESSION_BUS_ADDRESS``) and whose ``.address`` is
the bus address.  In-process code (keyring, secretstorage, jeepney) reads
``os.environ['DBUS_SESSION_BUS_ADDRESS']`` at call time, so for in-process
tests set it with ``monkeypatch.setenv`` (or use ``session.activated()``).

Every wait is bounded; on exit every daemon started here is killed by process
group and reaped, and the temp directory is removed.

Set ``AUTHPOOL_REQUIRE_SECRET_SERVICE=1`` to turn "unavailable" into a hard
error (:class:`SecretServiceRequired`) instead of a skip; ``.ci/run`` does so
after installing the Debian packages.

This module deliberately does not import pytest at import time, so it can be
used from plain scripts as well.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape as _xml_escape

__all__ = [
    "DEFAULT_PASSWORD",
    "REQUIRE_ENV",
    "SecretServiceRequired",
    "SecretServiceSession",
    "SecretServiceUnavailable",
    "secret_service_fixture",
    "secret_service_session",
]

DEFAULT_PASSWORD = "authpool-test-password"
STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
REQUIRE_ENV = "AUTHPOOL_REQUIRE_SECRET_SERVICE"

_SECRETS_NAME = "org.freedesktop.secrets"
_SECRETS_PATH = "/org/freedesktop/secrets"
_DEFAULT_ALIAS_PATH = "/org/freedesktop/secrets/aliases/default"
_GK_INTERNAL_IFACE = "org.gnome.keyring.InternalUnsupportedGuiltRiddenInterface"
# Unix socket paths are limited to 108 bytes (including the NUL).
_MAX_SOCKET_PATH = 100

_DBUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class SecretServiceUnavailable(Exception):
    """The private Secret Service cannot be provided here (tests should skip)."""


class SecretServiceRequired(RuntimeError):
    """Raised instead of :class:`SecretServiceUnavailable` when
    ``AUTHPOOL_REQUIRE_SECRET_SERVICE=1`` (set by ``.ci/run`` once it has
    installed dbus + gnome-keyring), so those tests cannot silently skip in CI.
    Deliberately *not* a subclass of ``SecretServiceUnavailable``."""


@dataclass
class SecretServiceSession:
    """Handle on a running private Secret Service."""

    address: str
    env: dict[str, str]
    password: str
    tmpdir: Path
    pids: list[int] = field(default_factory=list)

    def child_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: a minimal PATH/HOME env) updated with ``self.env``."""
        if base is None:
            base = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
        merged = dict(base)
        merged.update(self.env)
        return merged

    @contextlib.contextmanager
    def activated(self) -> Iterator[SecretServiceSession]:
        """Temporarily put ``self.env`` into ``os.environ`` (for in-process use)."""
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            yield self
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def lock(self) -> None:
        """Lock the default collection (to exercise ``keyring.errors.KeyringLocked``)."""
        with _connect(self.address) as conn:
            import secretstorage

            secretstorage.get_default_collection(conn).lock()

    def unlock(self) -> None:
        """Unlock the default collection again, without any prompt."""
        with _connect(self.address) as conn:
            import secretstorage

            coll = secretstorage.get_default_collection(conn)
            _unlock_with_password(conn, coll.collection_path, self.password)
            if coll.is_locked():
                raise RuntimeError("could not unlock the default collection")

    def is_locked(self) -> bool:
        with _connect(self.address) as conn:
            import secretstorage

            return bool(secretstorage.get_default_collection(conn).is_locked())


# --------------------------------------------------------------------------- #
# helpers


@contextlib.contextmanager
def _connect(address: str) -> Iterator[Any]:
    from jeepney.io.blocking import open_dbus_connection

    conn = open_dbus_connection(bus=address)
    try:
        yield conn
    finally:
        conn.close()


def _name_has_owner(conn: Any, name: str) -> bool:
    from jeepney import DBusAddress, new_method_call

    bus = DBusAddress(
        "/org/freedesktop/DBus",
        bus_name="org.freedesktop.DBus",
        interface="org.freedesktop.DBus",
    )
    reply = conn.send_and_get_reply(new_method_call(bus, "NameHasOwner", "s", (name,)), timeout=2)
    return bool(reply.body[0])


def _master_secret(conn: Any, password: str) -> tuple[str, bytes, bytes, str]:
    """A Secret struct (oayays) for gnome-keyring's internal interface."""
    from secretstorage.util import format_secret, open_session

    return format_secret(open_session(conn), password.encode(), "text/plain")


def _gk_internal(conn: Any) -> Any:
    from secretstorage.util import DBusAddressWrapper

    return DBusAddressWrapper(_SECRETS_PATH, _GK_INTERNAL_IFACE, conn)


def _unlock_with_password(conn: Any, collection_path: str, password: str) -> None:
    _gk_internal(conn).call(
        "UnlockWithMasterPassword",
        "o(oayays)",
        collection_path,
        _master_secret(conn, password),
    )


def _ensure_default_collection(conn: Any, password: str) -> None:
    """Make sure the 'default' alias resolves to an unlocked collection.

    gnome-keyring's ``--unlock`` normally does all of it (creates ``login``,
    aliases it as ``default``, unlocks it).  As a fallback, do it by hand
    through gnome-keyring's prompt-less internal interface.
    """
    import secretstorage
    from secretstorage.exceptions import ItemNotFoundException
    from secretstorage.util import DBusAddressWrapper

    try:
        coll = secretstorage.get_default_collection(conn)
    except ItemNotFoundException:
        coll = None
    if coll is None:
        props = {
            "org.freedesktop.Secret.Collection.Label": ("s", "Login"),
        }
        path = _gk_internal(conn).call(
            "CreateWithMasterPassword",
            "a{sv}(oayays)",
            props,
            _master_secret(conn, password),
        )[0]
        service = DBusAddressWrapper(_SECRETS_PATH, "org.freedesktop.Secret.Service", conn)
        service.call("SetAlias", "so", "default", path)
        coll = secretstorage.Collection(conn, path)
    if coll.is_locked():
        _unlock_with_password(conn, coll.collection_path, password)
    if coll.is_locked():
        raise SecretServiceUnavailable("default collection is still locked")


def _read_line(proc: subprocess.Popen[bytes], deadline: float) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SecretServiceUnavailable("timed out waiting for dbus-daemon address")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            raise SecretServiceUnavailable(f"dbus-daemon exited early (rc={proc.poll()})")
        buf += chunk
    return buf.split(b"\n", 1)[0].decode().strip()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL; always reap."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # Whatever else is left in the group (forked helpers), kill it for good.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip()
    except OSError:
        return ""


def _make_tmpdir() -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="authpool-ss-"))
    if len(str(tmp / "run" / "bus")) > _MAX_SOCKET_PATH:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix="authpool-ss-", dir="/tmp"))
    return tmp


# --------------------------------------------------------------------------- #
# public API


@contextlib.contextmanager
def secret_service_session(
    password: str = DEFAULT_PASSWORD,
    *,
    start_keyring: bool = True,
    timeout: float = STARTUP_TIMEOUT,
    socket_path: Path | None = None,
) -> Iterator[SecretServiceSession]:
    """Run a private session bus (+ gnome-keyring Secret Service) for the block.

    ``socket_path`` puts the bus socket at a chosen path (its directory must exist), e.g. the
    standard ``/run/user/<uid>/bus`` that clients find without ``DBUS_SESSION_BUS_ADDRESS``.

    Raises :class:`SecretServiceUnavailable` (before yielding) when this
    machine cannot provide one -- or :class:`SecretServiceRequired` instead if
    ``AUTHPOOL_REQUIRE_SECRET_SERVICE=1``.  With ``start_keyring=False`` only
    the bus is started (useful to test "no Secret Service on the bus" errors).
    """
    with contextlib.ExitStack() as stack:
        try:
            session = stack.enter_context(
                _run_session(password, start_keyring=start_keyring, timeout=timeout, socket_path=socket_path))
        except SecretServiceUnavailable as e:
            if os.environ.get(REQUIRE_ENV) == "1":
                raise SecretServiceRequired(f"{e} (and {REQUIRE_ENV}=1)") from e
            raise
        yield session


@contextlib.contextmanager
def _run_session(
    password: str,
    *,
    start_keyring: bool,
    timeout: float,
    socket_path: Path | None = None,
) -> Iterator[SecretServiceSession]:
    if not sys.platform.startswith("linux"):
        raise SecretServiceUnavailable(f"not Linux ({sys.platform})")
    dbus_daemon = shutil.which("dbus-daemon")
    if dbus_daemon is None:
        raise SecretServiceUnavailable("dbus-daemon not installed (apt: dbus)")
    gk_daemon = shutil.which("gnome-keyring-daemon")
    if start_keyring and gk_daemon is None:
        raise SecretServiceUnavailable("gnome-keyring-daemon not installed (apt: gnome-keyring)")
    try:
        import jeepney  # noqa: F401
        import secretstorage  # noqa: F401
    except ImportError as e:
        raise SecretServiceUnavailable(f"python package missing: {e}") from e

    tmp = _make_tmpdir()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        run, home, data, config, cache = (tmp / d for d in ("run", "home", "data", "config", "cache"))
        for d in (run, home, data, config, cache):
            d.mkdir(mode=0o700)
        socket = socket_path or run / "bus"
        conf = tmp / "session.conf"
        conf.write_text(_DBUS_CONFIG.format(socket=_xml_escape(str(socket))))

        # Daemons get a fully private environment: no DISPLAY, no real HOME,
        # so they can neither prompt nor touch the user's real keyrings.
        daemon_env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_RUNTIME_DIR": str(run),
            "XDG_DATA_HOME": str(data),
            "XDG_CONFIG_HOME": str(config),
            "XDG_CACHE_HOME": str(cache),
            "LANG": "C.UTF-8",
        }
        deadline = time.monotonic() + timeout

        dbus_log = tmp / "dbus-daemon.log"
        with open(dbus_log, "wb") as log:
            dbus = subprocess.Popen(
                [
                    dbus_daemon,
                    f"--config-file={conf}",
                    "--nofork",
                    "--nopidfile",
                    "--print-address=1",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=daemon_env,
                start_new_session=True,
            )
        procs.append(dbus)
        try:
            address = _read_line(dbus, deadline)
        except SecretServiceUnavailable as e:
            raise SecretServiceUnavailable(f"{e}: {_tail(dbus_log)}") from None
        if not address:
            raise SecretServiceUnavailable("dbus-daemon printed no address")
        env = {"DBUS_SESSION_BUS_ADDRESS": address}

        if start_keyring:
            assert gk_daemon is not None
            gk_log = tmp / "gnome-keyring.log"
            with open(gk_log, "wb") as log:
                gk = subprocess.Popen(
                    [gk_daemon, "--foreground", "--unlock", "--components=secrets"],
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**daemon_env, **env},
                    start_new_session=True,
                )
            procs.append(gk)
            assert gk.stdin is not None
            # gnome-keyring reads the password up to EOF (no trailing newline).
            # If it died already, the poll loop below reports its log.
            with contextlib.suppress(BrokenPipeError):
                gk.stdin.write(password.encode())
            with contextlib.suppress(BrokenPipeError):
                gk.stdin.close()

            last_error: BaseException | None = None
            while True:
                if gk.poll() is not None:
                    raise SecretServiceUnavailable(f"gnome-keyring-daemon exited (rc={gk.returncode}): {_tail(gk_log)}")
                try:
                    with _connect(address) as conn:
                        if _name_has_owner(conn, _SECRETS_NAME):
                            _ensure_default_collection(conn, password)
                            break
                except SecretServiceUnavailable:
                    raise
                except Exception as e:  # noqa: BLE001 - retried until deadline
                    last_error = e
                if time.monotonic() >= deadline:
                    raise SecretServiceUnavailable(
                        "timed out waiting for gnome-keyring to serve "
                        f"{_SECRETS_NAME} (last error: {last_error!r}): "
                        f"{_tail(gk_log)}"
                    )
                time.sleep(0.05)

        session = SecretServiceSession(
            address=address,
            env=env,
            password=password,
            tmpdir=tmp,
            pids=[p.pid for p in procs],
        )
        yield session
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def secret_service_fixture() -> Iterator[SecretServiceSession]:
    """Body for a pytest fixture: skips the test when unavailable.

    In a conftest.py::

        from tests.secret_service import secret_service_fixture
        secret_service = pytest.fixture(secret_service_fixture)
    """
    import pytest

    with contextlib.ExitStack() as stack:
        try:
            session = stack.enter_context(secret_service_session())
        except SecretServiceUnavailable as e:
            pytest.skip(f"Secret Service unavailable: {e}")
        yield session
