"""Which credential store holds the pool's secrets — the same one for every process.

The CLI runs in a desktop terminal and reaches the Secret Service; ``authpool serve``, spawned
by an MCP client with a trimmed environment, may not. If each process quietly picked whatever
keyring it could reach, the pool's secrets would split across two stores and accounts would
"randomly" lose their tokens. So the backend is chosen once, when the pool first stores a
secret, recorded in the pool file by class name, and every later process loads exactly that
backend or fails with an error that says why and how to fix it.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import keyring.backend
import keyring.core
import keyring.errors
from keyring.backend import KeyringBackend

from authpool.errors import SecretBackendUnavailable
from authpool.storage.secrets import VAULT_BACKEND, canonical_backend

__all__ = [
    "VAULT_BACKEND",
    "backend_name",
    "choose_backend",
    "ensure_session_bus",
    "load_backend",
    "resolve_target",
]

log = logging.getLogger("authpool")


# Backends that prompt with getpass on stdin: stdin is the MCP transport, so never use them.
_PROMPTING = ("keyrings.alt.file.EncryptedKeyring", "keyrings.cryptfile.")
# Not real stores: the chainer delegates, fail/null store nothing.
_NOT_STORES = ("keyring.backends.chainer.", "keyring.backends.fail.", "keyring.backends.null.")


def backend_name(backend: KeyringBackend) -> str:
    """The importable ``module.Class`` name recorded in the pool file."""
    cls = type(backend)
    return f"{cls.__module__}.{cls.__qualname__}"


def ensure_session_bus() -> None:
    """Point D-Bus clients at the user's session bus when the environment lost the address.

    MCP clients spawn stdio servers with a minimal environment that drops
    ``DBUS_SESSION_BUS_ADDRESS``; the desktop's bus still lives at ``/run/user/<uid>/bus``.
    """
    if not sys.platform.startswith("linux") or os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        return
    bus = Path(f"/run/user/{os.getuid()}/bus")
    if bus.exists():
        os.environ["DBUS_SESSION_BUS_ADDRESS"] = f"unix:path={bus}"


def load_backend(name: str, *, check_env: bool = True) -> KeyringBackend:
    """Load the recorded backend ``name`` or explain why this process cannot use it.

    ``check_env=False`` skips the PYTHON_KEYRING_BACKEND agreement check (used when moving the
    pool's secrets to another backend on purpose).

    Raises:
        SecretBackendUnavailable: not installed here, or not reachable from this process.
    """
    name = canonical_backend(name)
    env = canonical_backend(os.environ.get("PYTHON_KEYRING_BACKEND") or "")
    if check_env and env and env != name:
        raise SecretBackendUnavailable(
            f"this pool keeps its secrets in {name}, but PYTHON_KEYRING_BACKEND selects {env}; "
            "unset PYTHON_KEYRING_BACKEND (or set it to the pool's backend)"
        )
    ensure_session_bus()
    if name == VAULT_BACKEND:
        from authpool.storage.vault import VaultKeyring

        return VaultKeyring()
    try:
        return keyring.core.load_keyring(name)
    except (ImportError, AttributeError) as e:
        raise SecretBackendUnavailable(
            f"this pool keeps its secrets in {name}, which is not installed for {sys.executable}"
        ) from e
    except Exception as e:  # priority raises RuntimeError (or a D-Bus error) where a backend cannot run
        raise SecretBackendUnavailable(
            f"this pool keeps its secrets in {name}, which this process cannot reach ({_reason(e)}){_hint(name)}"
        ) from e


def resolve_target(target: str) -> KeyringBackend:
    """The backend a ``secrets move`` names: ``vault``, ``os`` (the best working OS store), or a class name.

    Raises:
        SecretBackendUnavailable: no such backend, or it cannot be used from here.
    """
    ensure_session_bus()
    if target == "vault":
        return load_backend(VAULT_BACKEND, check_env=False)
    if target == "os":
        for kr in _os_candidates():
            if _probe(kr):
                return kr
        raise SecretBackendUnavailable("no OS credential store works from this process")
    if target.startswith(_PROMPTING):
        raise SecretBackendUnavailable(f"{target} asks for a password on stdin, which authpool cannot allow")
    backend = load_backend(target, check_env=False)
    if target != VAULT_BACKEND and not _probe(backend):
        raise SecretBackendUnavailable(f"{target} failed a write/read/delete check from this process")
    return backend


def choose_backend() -> tuple[KeyringBackend, bool]:
    """Pick the backend for a new pool; returns ``(backend, is_fallback)``.

    ``PYTHON_KEYRING_BACKEND`` wins when set. Otherwise the highest-priority OS store that
    survives a write/read/delete probe, else the encrypted-file vault.

    Raises:
        SecretBackendUnavailable: ``PYTHON_KEYRING_BACKEND`` names an unusable or prompting backend.
    """
    ensure_session_bus()
    env = canonical_backend(os.environ.get("PYTHON_KEYRING_BACKEND") or "")
    if env:
        if env.startswith(_PROMPTING):
            raise SecretBackendUnavailable(
                f"PYTHON_KEYRING_BACKEND={env} asks for a password on stdin, which authpool cannot "
                "allow (stdin carries the MCP protocol); pick another backend or unset it"
            )
        return load_backend(env), False  # chosen explicitly: not a fallback worth warning about
    candidates = _os_candidates()
    for kr in candidates:
        if _probe(kr):
            return kr, False
    from authpool.storage.vault import VaultKeyring

    return VaultKeyring(), True


def _os_candidates() -> list[KeyringBackend]:
    """Real OS stores of priority >= 1, best first (no chainer, fail, null, prompting or our vault)."""
    return sorted(
        (
            kr
            for kr in keyring.backend.get_all_keyring()
            if _usable_priority(kr) and not backend_name(kr).startswith(_PROMPTING + _NOT_STORES)
            and backend_name(kr) != VAULT_BACKEND
        ),
        key=lambda kr: float(kr.priority),
        reverse=True,
    )


def _usable_priority(kr: KeyringBackend) -> bool:
    try:
        return float(kr.priority) >= 1
    except Exception:  # noqa: BLE001 - a backend's priority raising (anything) means "not here"
        return False


def _probe(kr: KeyringBackend) -> bool:
    # A backend can pass its priority check and still fail on use (no collection, locked,
    # no agent): try a real round trip before entrusting it with the pool's secrets.
    service, user = "authpool", "authpool-probe"
    try:
        kr.set_password(service, user, "probe")
        ok = kr.get_password(service, user) == "probe"
        kr.delete_password(service, user)
    except Exception as e:  # noqa: BLE001 - any failure of the probe means "do not use this store"
        log.debug("credential store %s is not usable: %s", backend_name(kr), _reason(e))
        return False
    return ok


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def _hint(name: str) -> str:
    if "SecretService" in name or "libsecret" in name:
        return (
            "; MCP clients start servers without DBUS_SESSION_BUS_ADDRESS: add it to the server's "
            '"env" in the MCP config (run `echo $DBUS_SESSION_BUS_ADDRESS` in your desktop terminal), '
            "and make sure the keyring is unlocked"
        )
    return ""
