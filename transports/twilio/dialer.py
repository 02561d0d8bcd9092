"""Outbound calls: Twilio's REST API dials, and the answered call opens our Media Stream.

The call's TwiML is inline (no extra webhook round trip) and carries the
same `<Connect><Stream>` as an inbound call; Twilio's status callbacks come
back to `/status` so the ledger can reconcile the minutes. Numbers are checked
as E.164 before anything is sent.
"""

from __future__ import annotations

from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from pipeline.config import Vertical, e164
from pipeline.logs import get_logger
from transports.twilio.server import STATUS_PATH
from transports.twilio.signature import public_url

STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]
MAX_INLINE_TWIML = 4000

log = get_logger(component="dialer")


class Dialer:
    """Places calls with the official `twilio` SDK (its async HTTP client)."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        api_base_url: str | None = None,
        ring_timeout_s: int = 30,
        machine_detection: bool = False,
    ):
        if not account_sid or not auth_token:
            raise ValueError("outbound calls need TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        self._client = Client(account_sid, auth_token, http_client=AsyncTwilioHttpClient())
        if api_base_url:  # a regional edge, a proxy, or a local fake
            self._client.api.base_url = api_base_url
        self.ring_timeout_s = ring_timeout_s
        self.machine_detection = machine_detection

    async def dial(self, bridge, vertical: Vertical, to: str) -> str:
        """Place the call; returns its Call SID. `bridge` provides the TwiML and URLs."""
        to = e164(to)
        caller_id = e164(vertical.telephony.caller_id or vertical.numbers[0])
        twiml = bridge.stream_twiml(vertical, caller=caller_id, callee=to)
        if len(twiml) > MAX_INLINE_TWIML:
            raise ValueError(f"the call's TwiML is {len(twiml)} characters; Twilio takes 4000")
        options = {}
        if self.machine_detection:
            options["machine_detection"] = "Enable"
        call = await self._client.calls.create_async(
            to=to,
            from_=caller_id,
            twiml=twiml,
            status_callback=public_url(bridge.settings.public_url, STATUS_PATH),
            status_callback_event=STATUS_EVENTS,
            status_callback_method="POST",
            timeout=self.ring_timeout_s,
            record=vertical.telephony.recording,
            **options,
        )
        log.info("outbound_call_placed", call_sid=call.sid, vertical=vertical.name, to=to)
        return call.sid

    async def close(self) -> None:
        await self._client.http_client.close()
