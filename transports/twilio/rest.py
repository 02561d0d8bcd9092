"""Twilio's REST API: placing outbound calls, redirecting a live call, and reading what
Twilio charged for a call.

An outbound call's TwiML is inline (no extra webhook round trip) and carries
the same `<Connect><Stream>` as an inbound call, with the same
`<Start><Recording>` ahead of it when the vertical records; Twilio's status callbacks
come back to `/status` so the ledger can reconcile the minutes. Numbers are
checked as E.164 before anything is sent. After a call ends, Twilio fills in
the Call resource's `price` (connectivity only) some time later; the ledger
stores it beside our own figure so drift shows. A live call is redirected by
updating it with new TwiML: Twilio leaves the Media Stream, says what it is
given with its own voice, then puts the caller through (`<Dial>`) or hangs up.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

from tenacity import AsyncRetrying, retry_if_result, stop_after_attempt, wait_chain, wait_fixed
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse

from tollbridge.config import Vertical, e164
from tollbridge.logs import get_logger
from tollbridge.settings import Settings
from tollbridge.transports.twilio.server import STATUS_PATH
from tollbridge.transports.twilio.signature import public_url

STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]
MAX_INLINE_TWIML = 4000

log = get_logger(component="twilio_rest")
PRICE_WAITS_S = (30.0, 60.0, 120.0, 300.0)
"""When to look for a finished call's price: Twilio sets it a little after the call ends."""


class TwilioRest:
    """Twilio's REST API through the official `twilio` SDK (its async HTTP client)."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        api_base_url: str | None = None,
        ring_timeout_s: int = 30,
    ):
        if not account_sid or not auth_token:
            raise ValueError("outbound calls need TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        self._client = Client(account_sid, auth_token, http_client=AsyncTwilioHttpClient())
        if api_base_url:  # a regional edge, a proxy, or a local fake
            self._client.api.base_url = api_base_url
        self.ring_timeout_s = ring_timeout_s

    @classmethod
    def from_settings(cls, settings: Settings) -> TwilioRest:
        """The account the environment names (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN…)."""
        return cls(
            settings.twilio_account_sid,
            settings.twilio_auth_token.get_secret_value(),
            api_base_url=settings.twilio_api_base_url,
        )

    async def dial(self, bridge, vertical: Vertical, to: str) -> str:
        """Place the call; returns its Call SID. `bridge` provides the TwiML and URLs."""
        to = e164(to)
        caller_id = e164(vertical.telephony.caller_id or vertical.numbers[0])
        options: dict[str, str] = {}
        if vertical.telephony.voicemail:  # Twilio asks what to do once it knows who answered
            options.update(machine_detection="DetectMessageEnd",
                           url=bridge.answered_url(vertical), method="POST")
        else:
            twiml = bridge.stream_twiml(vertical, caller=caller_id, callee=to)
            if len(twiml) > MAX_INLINE_TWIML:
                raise ValueError(f"the call's TwiML is {len(twiml)} characters; Twilio takes 4000")
            options.update(twiml=twiml)
        call = await self._client.calls.create_async(
            to=to,
            from_=caller_id,
            status_callback=public_url(bridge.settings.public_url, STATUS_PATH),
            status_callback_event=STATUS_EVENTS,
            status_callback_method="POST",
            timeout=self.ring_timeout_s,
            **options,
        )
        log.info("outbound_call_placed", call_sid=call.sid, vertical=vertical.name, to=to)
        return call.sid

    async def redirect(self, call_sid: str, *, say: str | None, dial: str | None) -> None:
        """Take live call `call_sid` off its stream: `<Say>` `say`, then `<Dial>` `dial`
        or `<Hangup>` (see `tollbridge.session.CallControl`)."""
        response = VoiceResponse()
        if say:
            response.say(say)
        if dial:
            response.dial(e164(dial))
        else:
            response.hangup()
        await self._client.calls(call_sid).update_async(twiml=str(response))
        log.info("call_redirected", call_sid=call_sid, dial=dial, say=bool(say))

    async def call_price(
        self, call_sid: str, waits: tuple[float, ...] = PRICE_WAITS_S
    ) -> Decimal | None:
        """What Twilio charged for the call (USD, positive), once it has set it; None if
        it still has not after the last wait."""

        async def look() -> Decimal | None:
            call = await self._client.calls(call_sid).fetch_async()
            if call.price is None or (call.price_unit or "USD").upper() != "USD":
                return None
            return abs(Decimal(str(call.price)))

        polling = AsyncRetrying(
            retry=retry_if_result(lambda price: price is None),
            stop=stop_after_attempt(len(waits)),
            wait=wait_chain(*(wait_fixed(wait) for wait in waits[1:] or (0,))),
            retry_error_callback=lambda _: None,  # still unset after the last look
        )
        await asyncio.sleep(waits[0])  # it is never set the moment the call ends
        price: Decimal | None = await polling(look)
        if price is None:
            log.warning("twilio_price_not_set", call_sid=call_sid)
        return price

    async def close(self) -> None:
        await self._client.http_client.close()
