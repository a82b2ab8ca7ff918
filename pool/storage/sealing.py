"""Keys that seal secrets (a team store's team key, the local vault's key): bytes, text, fingerprints, AES-256-GCM.

A team store keeps every secret sealed with AES-256-GCM under a 32-byte **team key** that every
member holds and the database never sees. A member's process finds it in ``AUTHPOOL_TEAM_KEY``
(base64 of 32 bytes, or a passphrase stretched with scrypt and the store's salt) or in the
member's own credential store, where ``authpool team key import`` put it. Keys are named by a
**fingerprint** (a hash prefix that reveals nothing about the key), so a wrong key is an error that
says which key was tried and which one the store expects — never garbage.

Example:
    >>> key = new_key()
    >>> sealer = Sealer(key)
    >>> sealer.open(sealer.seal(b"sk-...", b"acct0001"), b"acct0001")
    b'sk-...'
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from authpool.errors import InvalidInput, SecretError

__all__ = ["KEY_BYTES", "Sealer", "decode_key", "derive_key", "encode_key", "fingerprint", "key_from_text", "new_key"]

KEY_BYTES = 32
_NONCE = 12
_CHECK = b"authpool-key-check"
_SCRYPT = {"n": 2**15, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024}


def new_key() -> bytes:
    """A fresh random 32-byte key."""
    return os.urandom(KEY_BYTES)


def encode_key(key: bytes) -> str:
    """The key as text (standard base64), for a password manager or ``AUTHPOOL_TEAM_KEY``."""
    return base64.b64encode(key).decode()


def decode_key(text: str) -> bytes | None:
    """The 32 bytes ``text`` encodes in base64 (standard or URL-safe), or None if it is not such a key."""
    text = text.strip()
    for decode in (lambda t: base64.b64decode(t, validate=True), base64.urlsafe_b64decode):
        try:
            raw = decode(text)
        except (binascii.Error, ValueError):
            continue
        if len(raw) == KEY_BYTES:
            return raw
    return None


def derive_key(passphrase: str, salt: bytes) -> bytes:
    """A 32-byte key stretched from a passphrase with scrypt (N=2^15, r=8, p=1)."""
    return hashlib.scrypt(passphrase.encode(), salt=salt, dklen=KEY_BYTES, **_SCRYPT)


def key_from_text(text: str, salt: bytes) -> bytes:
    """A base64 key as is, anything else as a passphrase stretched with ``salt``.

    Raises:
        InvalidInput: the text is empty.
    """
    if not text.strip():
        raise InvalidInput("the key is empty")
    raw = decode_key(text)
    return raw if raw is not None else derive_key(text, salt)


def fingerprint(key: bytes) -> str:
    """A short name for ``key`` (``1a2b-3c4d-5e6f-7a8b``): a hash prefix, safe to show and log."""
    digest = hashlib.sha256(b"authpool key fingerprint\x00" + key).hexdigest()[:16]
    return "-".join(digest[i : i + 4] for i in range(0, 16, 4))


class Sealer:
    """AES-256-GCM under one key: ``seal``/``open`` with associated data, and a check value for the key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise InvalidInput(f"a key is {KEY_BYTES} bytes")
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)
        self.fingerprint = fingerprint(key)

    def seal(self, plain: bytes, aad: bytes) -> bytes:
        """``nonce || ciphertext+tag``; a random 96-bit nonce per seal."""
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, plain, aad)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        """The plaintext, or :class:`SecretError` if the blob was not sealed by this key for ``aad``."""
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], aad)
        except (InvalidTag, ValueError):
            raise SecretError("a sealed secret does not open with this key (damaged, or moved to another "
                              "account)") from None

    def check_value(self) -> bytes:
        """A value only this key opens: stored beside sealed secrets so a wrong key is named, not used."""
        return self.seal(_CHECK, b"check")

    def opens(self, check: bytes) -> bool:
        """Whether ``check`` (from :meth:`check_value`) was made with this key."""
        try:
            return self.open(check, b"check") == _CHECK
        except SecretError:
            return False
