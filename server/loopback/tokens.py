"""OAuth: minting and rotating tokens, reuse detection, and the token endpoint's grants.

The grants are ``refresh_token`` (rotation: a refresh token is good exactly once, a second
use revokes the whole family), ``authorization_code`` with PKCE (behind ``/authorize``) and
the device-code grant (behind ``/oauth/device`` and ``/device``).  They live on
``TokenRoutes``, which ``LoopbackProvider`` inherits.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from authpool.server.loopback.clock import Clock
from authpool.server.loopback.models import GrantHandler, LoopbackRequest, LoopbackResponse, LoopbackStats

ACCESS_PREFIX: Final = "lpat-"
REFRESH_PREFIX: Final = "lprt-"
API_KEY_PREFIX: Final = "lpk-"
TOKEN_ENDPOINT_MODES: Final = frozenset({"ok", "down", "garbage", "hang"})

#: How long the token endpoint stalls in ``hang`` mode; long enough to trip any sane timeout.
TOKEN_HANG_SECONDS: Final = 30.0
#: Who ``/authorize`` and ``approve_device`` log in unless a test says otherwise (``set_login``).
DEFAULT_LOGIN_SUBJECT: Final = "user@loopback.test"
DEVICE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"
#: Authorization codes live this long, as at real providers (RFC 6749 recommends <= 10 min).
AUTH_CODE_TTL: Final = 60.0
#: User codes avoid vowels (no accidental words) and look-alike characters, as RFC 8628 suggests.
_USER_CODE_ALPHABET: Final = "BCDFGHJKLMNPQRSTVWXZ"


def mint_token(prefix: str) -> str:
    """Mint an opaque secret with a recognisable prefix, so tests can grep output for leaks."""
    return prefix + secrets.token_urlsafe(32)


@dataclass
class AccessToken:
    subject: str
    family: str
    expires_at: float
    revoked: bool = False


@dataclass
class RefreshToken:
    subject: str
    family: str
    used: bool = False
    revoked: bool = False



@dataclass
class AuthCode:
    """An authorization code handed out by ``/authorize``: one use, bound to PKCE and redirect_uri."""

    subject: str
    identity: bool
    redirect_uri: str
    challenge: str
    expires_at: float
    used: bool = False
    family: str | None = None


@dataclass
class DeviceGrant:
    """A device code and its user code (RFC 8628), with the answers each poll got."""

    user_code: str
    expires_at: float
    interval: float
    last_poll: float
    status: str = "pending"  # approved | denied | done
    subject: str = ""
    identity: bool = True
    answers: list[str] = field(default_factory=list)


class TokenRoutes:
    """Token issuing, the token endpoint and logins; state lives in ``LoopbackProvider.__init__``."""

    client_id: str
    clock: Clock
    access_ttl: float
    device_interval: float
    device_ttl: float
    device_min_interval: float
    slow_down_step: float
    stats: LoopbackStats
    grant_handlers: dict[str, GrantHandler]
    _lock: threading.Lock
    _access: dict[str, AccessToken]
    _refresh: dict[str, RefreshToken]
    _oauth_mode: str
    _token_delay: float
    _token_calls_changed: threading.Condition
    _stopping: threading.Event
    _login_subject: str
    _login_deny: bool
    _login_identity: bool
    _auth_codes: dict[str, AuthCode]
    _devices: dict[str, DeviceGrant]
    _id_tokens: list[str]

    if TYPE_CHECKING:

        @property
        def base_url(self) -> str: ...

        def _wait(self, seconds: float) -> bool: ...

    def _issue(self, subject: str, family: str) -> dict[str, Any]:
        """Mint an access+refresh pair in ``family``; caller holds the lock."""
        access, refresh = mint_token(ACCESS_PREFIX), mint_token(REFRESH_PREFIX)
        self._access[access] = AccessToken(subject, family, self.clock() + self.access_ttl)
        self._refresh[refresh] = RefreshToken(subject, family)
        ttl = self.access_ttl
        return {
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": int(ttl) if float(ttl).is_integer() else ttl,
            "token_type": "Bearer",
            "scope": "user:inference",
            "subject": subject,
        }

    def _revoke_family(self, family: str) -> None:
        """Theft response: kill every access and refresh token of the family; caller holds lock."""
        for tok in self._access.values():
            if tok.family == family:
                tok.revoked = True
        for rtok in self._refresh.values():
            if rtok.family == family:
                rtok.revoked = True

    # ---- OAuth token endpoint --------------------------------------------------------------

    def _route_token(self, request: LoopbackRequest) -> LoopbackResponse | None:
        with self._token_calls_changed:
            self.stats.token_calls += 1
            mode, delay = self._oauth_mode, self._token_delay
            self._token_calls_changed.notify_all()
        # A slow endpoint still does its work after the delay, like a real one: the rotation
        # happens whether or not the client is still there to read the answer.
        if delay and not self._delayed(time.monotonic()):
            return None
        if mode == "down":
            return LoopbackResponse.json(500, {"error": "server_error", "error_description": "token service down"})
        if mode == "garbage":
            return LoopbackResponse(200, b"<html>oops</html>", {"Content-Type": "text/html"})
        if mode == "hang" and not self._wait(TOKEN_HANG_SECONDS):
            return None
        return self._token_grant(request)

    def _token_grant(self, request: LoopbackRequest) -> LoopbackResponse:
        """Validate the client and hand the parameters to the grant type's handler."""
        try:
            params = request.form()
        except (ValueError, UnicodeDecodeError):
            return LoopbackResponse.json(400, {"error": "invalid_request", "error_description": "malformed body"})
        client_id = params.get("client_id")
        if client_id is not None and client_id != self.client_id:
            return LoopbackResponse.json(401, {"error": "invalid_client", "error_description": "unknown client"})
        grant = self.grant_handlers.get(params.get("grant_type", ""))
        if grant is None:
            return LoopbackResponse.json(
                400, {"error": "unsupported_grant_type", "error_description": "unsupported grant_type"}
            )
        status, payload = grant(params)
        headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        return LoopbackResponse.json(status, payload, headers)

    def _grant_refresh_token(self, params: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """Rotate: a refresh token is good exactly once; a second use revokes the family."""
        presented = params.get("refresh_token")
        with self._lock:
            self.stats.refresh_calls += 1
            if not presented:
                return 400, {"error": "invalid_request", "error_description": "refresh_token is required"}
            tok = self._refresh.get(presented)
            if tok is None or tok.revoked:
                self.stats.invalid_grant_count += 1
                return 400, {
                    "error": "invalid_grant",
                    "error_description": "refresh token is invalid or revoked",
                }
            if tok.used:
                self._revoke_family(tok.family)
                self.stats.invalid_grant_count += 1
                self.stats.reuse_detected_count += 1
                return 400, {"error": "invalid_grant", "error_description": "refresh token reuse detected"}
            tok.used = True
            return 200, self._issue(tok.subject, tok.family)

    def set_token_delay(self, seconds: float) -> None:
        """Answer every token request ``seconds`` late (0 to turn off); the grant is done after the delay.

        A slow identity provider: the client may give up, be interrupted or killed meanwhile,
        while the provider still rotates the refresh token it was sent. Requests already waiting
        follow a change: a long delay, then 0 once the test has seen what it waited for, holds a
        token call out exactly as long as the test needs.
        """
        with self._lock:
            self._token_delay = min(max(0.0, seconds), TOKEN_HANG_SECONDS * 4)
            self._token_calls_changed.notify_all()

    def _delayed(self, start: float) -> bool:
        """Wait until ``start`` plus the token delay as it is now; False if ``stop()`` came first."""
        with self._token_calls_changed:
            while (left := start + self._token_delay - time.monotonic()) > 0:
                if self._stopping.is_set():
                    return False
                self._token_calls_changed.wait(min(left, 0.1))
        return True

    def wait_for_token_calls(self, count: int, timeout: float = 30.0) -> bool:
        """Block until the token endpoint has received ``count`` requests (True), or ``timeout`` passes."""
        with self._token_calls_changed:
            return self._token_calls_changed.wait_for(lambda: self.stats.token_calls >= count, timeout)

    # ---- logins: /authorize + authorization_code (PKCE), /oauth/device + device_code ---------

    def set_login(self, subject: str = DEFAULT_LOGIN_SUBJECT, *, deny: bool = False, identity: bool = True) -> None:
        """Decide what the "user" does at ``/authorize``, and whom ``approve_device`` logs in.

        ``/authorize`` approves at once as ``subject`` (redirecting back with a code), or with
        ``deny`` redirects back with ``error=access_denied``.  ``identity`` False leaves the user
        out of the token response (no ``id_token``, no ``subject``), as some providers do.
        """
        with self._lock:
            self._login_subject, self._login_deny, self._login_identity = subject, deny, identity

    def approve_device(self, user_code: str, subject: str | None = None) -> None:
        """The user enters ``user_code`` and approves: the next poll gets tokens for ``subject``.

        Raises ``KeyError`` if no pending device login has this user code.
        """
        with self._lock:
            grant = self._pending_device(user_code)
            grant.status, grant.subject = "approved", subject or self._login_subject
            grant.identity = self._login_identity

    def deny_device(self, user_code: str) -> None:
        """The user enters ``user_code`` and refuses: the next poll gets ``access_denied``."""
        with self._lock:
            self._pending_device(user_code).status = "denied"

    def pending_user_codes(self) -> list[str]:
        """User codes of device logins nobody has approved or denied yet."""
        with self._lock:
            return [g.user_code for g in self._devices.values() if g.status == "pending"]

    def device_answers(self, user_code: str) -> list[str]:
        """What each poll of this device login was answered (``authorization_pending``, ``slow_down``, ``tokens``…)."""
        with self._lock:
            for grant in self._devices.values():
                if grant.user_code == user_code:
                    return list(grant.answers)
        raise KeyError(user_code)

    def issued_login_secrets(self) -> list[str]:
        """Every authorization code, device code and id_token handed out (for leak scans)."""
        with self._lock:
            return [*self._auth_codes, *self._devices, *self._id_tokens]

    def _pending_device(self, user_code: str) -> DeviceGrant:
        wanted = user_code.strip().upper().replace("-", "")
        for grant in self._devices.values():
            if grant.status == "pending" and grant.user_code.replace("-", "") == wanted:
                return grant
        raise KeyError(user_code)

    def _issue_login(self, subject: str, identity: bool) -> dict[str, Any]:
        """A new login's tokens (a new family), with an unsigned id_token naming the user; caller holds lock."""
        doc = self._issue(subject, family=secrets.token_hex(8))
        if not identity:
            doc.pop("subject", None)
            return doc
        now = self.clock()
        claims: dict[str, Any] = {"iss": self.base_url, "aud": self.client_id, "sub": subject,
                                  "iat": int(now), "exp": int(now + self.access_ttl)}
        if "@" in subject:
            claims["email"], claims["email_verified"] = subject, True

        def part(obj: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

        doc["id_token"] = f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."
        self._id_tokens.append(doc["id_token"])
        return doc

    def _route_authorize(self, request: LoopbackRequest) -> LoopbackResponse | None:  # noqa: PLR0911 - one per check
        """The login page, minus the page: validate the request, then approve or deny at once."""
        q = request.query
        if q.get("client_id") != self.client_id:
            return LoopbackResponse.error(400, "unknown client_id")
        redirect_uri = q.get("redirect_uri", "")
        split = urllib.parse.urlsplit(redirect_uri)
        try:
            port = split.port
        except ValueError:
            port = None
        if split.scheme != "http" or split.hostname != "127.0.0.1" or port is None or split.fragment:
            # Never redirect to an unvalidated URI (RFC 6749 section 4.1.2.1): answer here instead.
            return LoopbackResponse.error(400, "redirect_uri must be http://127.0.0.1:PORT/PATH")

        def back(**params: str) -> LoopbackResponse:
            sep = "&" if split.query else "?"
            return LoopbackResponse(302, headers={"Location": redirect_uri + sep + urllib.parse.urlencode(params)})

        state = q.get("state", "")
        if not state:
            return back(error="invalid_request", error_description="state is required")
        if q.get("response_type") != "code":
            return back(error="unsupported_response_type", state=state)
        challenge = q.get("code_challenge", "")
        if q.get("code_challenge_method") != "S256" or not (43 <= len(challenge) <= 128):
            return back(error="invalid_request", error_description="PKCE with S256 is required", state=state)
        with self._lock:
            if self._login_deny:
                return back(error="access_denied", error_description="the user denied access", state=state)
            code = mint_token("lpac-")
            self._auth_codes[code] = AuthCode(self._login_subject, self._login_identity, redirect_uri, challenge,
                                               self.clock() + AUTH_CODE_TTL)
        return back(code=code, state=state)

    def _grant_authorization_code(self, params: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """Redeem a code once, checking client, redirect_uri and the PKCE verifier."""
        def refuse(why: str) -> tuple[int, dict[str, Any]]:
            self.stats.invalid_grant_count += 1
            return 400, {"error": "invalid_grant", "error_description": why}

        if params.get("client_id") != self.client_id:
            return 401, {"error": "invalid_client", "error_description": "client_id is required"}
        with self._lock:
            entry = self._auth_codes.get(params.get("code", ""))
            if entry is None or entry.expires_at <= self.clock():
                return refuse("authorization code is invalid or expired")
            if entry.used:  # a replayed code: revoke what it issued (RFC 6749 section 4.1.2)
                if entry.family:
                    self._revoke_family(entry.family)
                return refuse("authorization code was already used")
            entry.used = True
            if params.get("redirect_uri") != entry.redirect_uri:
                return refuse("redirect_uri does not match the authorization request")
            verifier = params.get("code_verifier", "")
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if not verifier or not secrets.compare_digest(digest, entry.challenge):
                return refuse("PKCE verification failed")
            doc = self._issue_login(entry.subject, entry.identity)
            entry.family = self._refresh[doc["refresh_token"]].family
            return 200, doc

    def _route_device_authorization(self, request: LoopbackRequest) -> LoopbackResponse | None:
        """RFC 8628 section 3.2: a device code for the poller, a user code for the human."""
        try:
            params = request.form()
        except (ValueError, UnicodeDecodeError):
            return LoopbackResponse.json(400, {"error": "invalid_request", "error_description": "malformed body"})
        if params.get("client_id") != self.client_id:
            return LoopbackResponse.json(401, {"error": "invalid_client", "error_description": "unknown client"})
        device_code = mint_token("lpdc-")
        raw = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(8))
        user_code = f"{raw[:4]}-{raw[4:]}"
        now = self.clock()
        with self._lock:
            self._devices[device_code] = DeviceGrant(user_code, now + self.device_ttl, self.device_interval, now)
        uri = self.base_url + "/device"
        return LoopbackResponse.json(200, {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": uri,
            "verification_uri_complete": f"{uri}?user_code={user_code}",
            "expires_in": self.device_ttl,
            "interval": self.device_interval,
        }, {"Cache-Control": "no-store"})

    def _route_device_page(self, request: LoopbackRequest) -> LoopbackResponse | None:
        """Where a person would enter the code; ``?user_code=…&action=approve|deny`` acts for them."""
        user_code, action = request.query.get("user_code", ""), request.query.get("action", "")
        try:
            if action == "approve":
                self.approve_device(user_code)
            elif action == "deny":
                self.deny_device(user_code)
        except KeyError:
            return LoopbackResponse(404, b"no pending login has this code\n", {"Content-Type": "text/plain"})
        text = f"{action}d {user_code}\n" if action in ("approve", "deny") else (
            "authpool loopback: add ?user_code=CODE&action=approve (or deny) to this URL\n")
        return LoopbackResponse(200, text.encode(), {"Content-Type": "text/plain"})

    def _grant_device_code(self, params: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """RFC 8628 section 3.5: pending, slow_down (polled too fast), expired, denied, or tokens once."""
        now = self.clock()
        with self._lock:
            grant = self._devices.get(params.get("device_code", ""))
            if grant is None or grant.status == "done":
                self.stats.invalid_grant_count += 1
                return 400, {"error": "invalid_grant", "error_description": "unknown or used device code"}

            def answer(error: str, **more: Any) -> tuple[int, dict[str, Any]]:
                grant.answers.append(error)
                return 400, {"error": error, **more}

            if now >= grant.expires_at:
                return answer("expired_token")
            # 10 ms of slack: a client that waits exactly the interval is never told off.
            too_fast = now - grant.last_poll < max(grant.interval, self.device_min_interval) - 0.01
            grant.last_poll = now
            if too_fast:
                grant.interval += self.slow_down_step
                return answer("slow_down", interval=grant.interval)
            if grant.status == "denied":
                return answer("access_denied")
            if grant.status == "pending":
                return answer("authorization_pending")
            grant.status = "done"
            grant.answers.append("tokens")
            return 200, self._issue_login(grant.subject, grant.identity)
