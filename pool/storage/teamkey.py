"""A member's copy of a team key: ``AUTHPOOL_TEAM_KEY``, or kept in the member's own credential store.

A team store's secrets are sealed (:mod:`authpool.storage.sealing`) under a team key that every
member holds and the database never sees. ``authpool team key import`` keeps it in this machine's
credential store, under service ``authpool-team`` and the store's address (without password).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from authpool.errors import TeamKeyError

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

__all__ = ["TEAM_KEY_ENV", "TEAM_KEY_SERVICE", "forget_member_key", "member_key", "save_member_key"]

TEAM_KEY_ENV = "AUTHPOOL_TEAM_KEY"
TEAM_KEY_SERVICE = "authpool-team"  # the member's credential-store entry: service, user = the store's address


def member_key(location: str) -> str | None:
    """The team key text kept for the store at ``location`` in this member's credential store."""
    backend = _member_backend()
    try:
        return backend.get_password(TEAM_KEY_SERVICE, location)
    except Exception as e:  # noqa: BLE001 - any backend failure is one clear line
        raise TeamKeyError(f"could not read the team key from the credential store: {type(e).__name__}") from None


def save_member_key(location: str, key_text: str) -> str:
    """Keep the team key for ``location`` in this member's credential store; returns the store's name."""
    from authpool.storage.keyrings import backend_name

    backend = _member_backend()
    try:
        backend.set_password(TEAM_KEY_SERVICE, location, key_text)
    except Exception as e:  # noqa: BLE001 - any backend failure is one clear line
        raise TeamKeyError(f"could not keep the team key in {backend_name(backend)}: {type(e).__name__}") from None
    return backend_name(backend)


def forget_member_key(location: str) -> None:
    """Remove this member's copy of the team key for ``location`` (a missing one is fine)."""
    import contextlib

    import keyring.errors

    with contextlib.suppress(keyring.errors.PasswordDeleteError):
        _member_backend().delete_password(TEAM_KEY_SERVICE, location)


def _member_backend() -> KeyringBackend:
    from authpool.storage.keyrings import choose_backend

    backend, _ = choose_backend()
    return backend
