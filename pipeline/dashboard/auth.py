"""Who may see the dashboard: holders of the API token, and browsers that signed in with it.

A script sends `Authorization: Bearer <token>` with each request. A browser
signs in once on the login page and gets a session cookie: an expiry and an
HMAC of it keyed by the token, so it holds no secret, needs no server-side
store, and changing the token signs every browser out. With no token
configured nobody gets in.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from fastapi import Request

COOKIE = "tollbridge_session"
SESSION_S = 12 * 3600
"""How long a browser stays signed in."""


class NotSignedIn(Exception):
    """The request holds neither the token nor a valid session cookie."""


def _mac(token: str, expires: int) -> str:
    return hmac.new(token.encode(), f"dashboard-session:{expires}".encode(),
                    hashlib.sha256).hexdigest()


def session_cookie(token: str, *, now: float | None = None) -> str:
    """A cookie value that proves the browser knew `token`, until it expires."""
    expires = int(time.time() if now is None else now) + SESSION_S
    return f"{expires}.{_mac(token, expires)}"


def _valid_session(token: str, value: str, now: float) -> bool:
    expires, _, mac = value.partition(".")
    if not expires.isdigit() or int(expires) <= now:
        return False
    return hmac.compare_digest(mac.encode(), _mac(token, int(expires)).encode())


def token_matches(token: str, given: str) -> bool:
    """Constant-time; an unset token matches nothing."""
    return bool(token) and hmac.compare_digest(given.encode(), token.encode())


class Guard:
    """The dependency every dashboard page but the login page sits behind."""

    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    @property
    def token(self) -> str:
        return self._token()

    def __call__(self, request: Request) -> None:
        token = self.token
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token_matches(token, given):
            return
        cookie = request.cookies.get(COOKIE, "")
        if token and cookie and _valid_session(token, cookie, time.time()):
            return
        raise NotSignedIn
