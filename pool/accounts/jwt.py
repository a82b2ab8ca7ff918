"""Reading a JWT's claims without verifying it: for hints that cost nothing when wrong.

An expiry to refresh early, an email for a label, the ChatGPT account id a login's requests must
name: the provider checks the token itself on every request, so nothing here is trusted.
"""

from __future__ import annotations

import base64
import json
from typing import Any

__all__ = ["chatgpt_account_id", "jwt_claims"]

# Where OpenAI's tokens carry the ChatGPT account of the login (its id token and access token).
_OPENAI_AUTH_CLAIM = "https://api.openai.com/auth"


def jwt_claims(token: str | None) -> dict[str, Any]:
    """The claims of a JWT, decoded WITHOUT verifying its signature; ``{}`` if it is not one.

    Only for hints that cost nothing when wrong (an expiry to refresh early, an email for a
    label): the provider checks the token itself on every request.
    """
    if not token:
        return {}
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except ValueError:  # binascii.Error, UnicodeDecodeError and JSONDecodeError are all ValueErrors
        return {}
    return claims if isinstance(claims, dict) else {}


def chatgpt_account_id(*tokens: str | None) -> str | None:
    """The ChatGPT account id an OpenAI login's tokens name, if any (``chatgpt_account_id`` claim)."""
    for token in tokens:
        auth = jwt_claims(token).get(_OPENAI_AUTH_CLAIM)
        value = auth.get("chatgpt_account_id") if isinstance(auth, dict) else None
        if isinstance(value, str) and value and value.isprintable() and len(value) <= 200:
            return value
    return None
