"""X-Twilio-Signature checks for webhooks and the Media Streams upgrade.

Twilio signs the URL it requested. Behind a proxy or tunnel the server sees a
different host or scheme, so the URL is rebuilt from the configured public
base URL plus the request's path and query. For the WebSocket upgrade Twilio
signs the `wss://` URL as written in the TwiML, with no parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

from twilio.request_validator import RequestValidator


def public_url(public_base: str, path: str, query: str = "", *, websocket: bool = False) -> str:
    """The URL as Twilio addressed it: public scheme and host, our path and query."""
    base = urlsplit(public_base)
    scheme = base.scheme
    if websocket:
        scheme = {"https": "wss", "http": "ws"}.get(scheme, scheme)
    full_path = base.path.rstrip("/") + path
    return urlunsplit((scheme, base.netloc, full_path, query, ""))


class SignatureChecker:
    """Validates Twilio's signatures with the account's auth token."""

    def __init__(self, auth_token: str):
        if not auth_token:
            raise ValueError("an auth token is required to check Twilio signatures")
        self._validator = RequestValidator(auth_token)

    def valid(self, url: str, params: Mapping[str, str] | str, signature: str | None) -> bool:
        if not signature:
            return False
        return bool(self._validator.validate(url, params, signature))

    def sign(self, url: str, params: Mapping[str, str]) -> str:
        """Compute a signature (for the softphone and tests acting as Twilio)."""
        return self._validator.compute_signature(url, params)
