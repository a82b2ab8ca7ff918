"""Subscription endpoints: the GitHub Copilot token exchange and the ChatGPT (Codex) backend.

``GET /copilot_internal/v2/token`` takes a GitHub login's token (``Authorization: token …``) and
answers a short-lived Copilot token (``token``, ``expires_at``, ``refresh_in``,
``endpoints.api``), the only token the API routes accept for that login's requests.
``POST /backend-api/codex/responses`` answers only an OAuth token together with the
``chatgpt-account-id`` header of the same login, as the ChatGPT backend does. Both live on
``SubscriptionRoutes``, which ``LoopbackProvider`` inherits.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from authpool.server.loopback.clock import Clock
from authpool.server.loopback.models import LoopbackRequest, LoopbackResponse, LoopbackStats
from authpool.server.loopback.tokens import AccessToken, mint_token

COPILOT_PREFIX: Final = "lpcp-"
CODEX_PATH: Final = "/backend-api/codex/responses"
EXCHANGE_PATH: Final = "/copilot_internal/v2/token"


def account_id_of(subject: str) -> str:
    """The ChatGPT account id of a loopback login (what ``chatgpt-account-id`` must carry)."""
    return f"acct-{subject}"


@dataclass
class ExchangeStats:
    """What the exchange was asked: calls, and refusals of dead or unknown logins."""

    calls: int = 0
    refused: int = 0


class SubscriptionRoutes:
    """The exchange and the ChatGPT backend; state lives in ``LoopbackProvider.__init__``."""

    clock: Clock
    stats: LoopbackStats
    _lock: threading.Lock
    _access: dict[str, AccessToken]
    exchange_stats: ExchangeStats
    #: Seconds a Copilot token lives; ``refresh_in`` is a fifth shorter, as GitHub answers.
    copilot_ttl: float
    #: The API endpoint exchanges name (None: this server's own base URL).
    copilot_api: str | None
    _copilot: dict[str, str]  # Copilot token -> subject

    if TYPE_CHECKING:

        @property
        def base_url(self) -> str: ...

    def _route_copilot_exchange(self, request: LoopbackRequest) -> LoopbackResponse | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        now = self.clock()
        with self._lock:
            self.exchange_stats.calls += 1
            login = self._access.get(token.strip()) if scheme.lower() == "token" else None
            if login is None or login.revoked or login.expires_at <= now or token.startswith(COPILOT_PREFIX):
                self.exchange_stats.refused += 1
                return LoopbackResponse.json(401, {"message": "Bad credentials"})
            copilot = mint_token(COPILOT_PREFIX)
            self._access[copilot] = AccessToken(login.subject, login.family, now + self.copilot_ttl)
            self._copilot[copilot] = login.subject
        return LoopbackResponse.json(200, {
            "token": copilot,
            "expires_at": int(now + self.copilot_ttl),
            "refresh_in": int(self.copilot_ttl * 0.8),
            "endpoints": {"api": self.copilot_api or self.base_url},
        })

    def expire_copilot_tokens(self, subject: str | None = None) -> None:
        """Make the Copilot tokens of ``subject`` (or everyone) answer 401; the GitHub logins stay good."""
        now = self.clock()
        with self._lock:
            for token, owner in self._copilot.items():
                if subject is None or owner == subject:
                    self._access[token].expires_at = min(self._access[token].expires_at, now - 1)

    def _route_codex(self, request: LoopbackRequest) -> LoopbackResponse | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        now = self.clock()
        with self._lock:
            self.stats.api_calls += 1
            login = self._access.get(token.strip()) if scheme.lower() == "bearer" else None
            if login is None or login.revoked or login.expires_at <= now:
                return LoopbackResponse.json(401, {"detail": "Could not validate the access token"})
            subject = login.subject
            by_subject = self.stats.api_calls_by_subject
            by_subject[subject] = by_subject.get(subject, 0) + 1
        if request.headers.get("chatgpt-account-id") != account_id_of(subject):
            return LoopbackResponse.json(400, {"detail": "chatgpt-account-id is missing or not this login's"})
        try:
            payload: Any = request.json()
        except (ValueError, UnicodeDecodeError):
            payload = None
        model = payload.get("model") if isinstance(payload, dict) else None
        return LoopbackResponse.json(200, {"object": "response", "model": model, "subject": subject,
                                           "output_text": f"hello from the ChatGPT backend, {subject}"})
