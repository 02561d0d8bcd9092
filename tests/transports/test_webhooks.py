"""The bridge's HTTP side: voice webhook, status callbacks, outbound dialing — all signed."""

from __future__ import annotations

from urllib.parse import parse_qs
from xml.etree import ElementTree

import httpx
import pytest
from aiohttp import web

from tests.conftest import AUTH_TOKEN, running_bridge
from tollbridge.providers.cassette import Cassette
from tollbridge.transports.twilio.rest import TwilioRest
from tollbridge.transports.twilio.signature import SignatureChecker

SIGNER = SignatureChecker(AUTH_TOKEN)
INBOUND = {
    "CallSid": "CA" + "4" * 32, "AccountSid": "AC" + "3" * 32, "From": "+15550107777",
    "To": "+15550100900", "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01",
}


async def post(running, path: str, form: dict, *, signature: str | None = "sign") -> httpx.Response:
    url = running.url + path
    headers = {}
    if signature == "sign":
        headers["X-Twilio-Signature"] = SIGNER.sign(url, form)
    elif signature:
        headers["X-Twilio-Signature"] = signature
    async with httpx.AsyncClient() as client:
        return await client.post(url, data=form, headers=headers)


async def test_a_signed_voice_webhook_connects_the_call_to_the_media_stream(frontdesk):
    async with running_bridge(frontdesk, Cassette()) as running:
        response = await post(running, "/voice", INBOUND)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/xml")
    stream = ElementTree.fromstring(response.text).find("./Connect/Stream")
    assert stream.get("url") == running.url.replace("http://", "ws://") + "/media"
    assert stream.get("statusCallback") == running.url + "/stream-status"
    parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert parameters == {"vertical": "frontdesk", "tenant": "acme",
                          "from": "+15550107777", "to": "+15550100900"}


@pytest.mark.parametrize("signature", [None, "bm90IGEgc2lnbmF0dXJl", "tampered"])
async def test_an_unsigned_or_forged_webhook_is_refused(frontdesk, signature):
    async with running_bridge(frontdesk, Cassette()) as running:
        if signature == "tampered":  # signed for other parameters
            signature = SIGNER.sign(running.url + "/voice", {**INBOUND, "To": "+15550100901"})
        response = await post(running, "/voice", INBOUND, signature=signature)
    assert response.status_code == 403


async def test_an_unknown_number_gets_an_apology_and_a_hang_up(frontdesk):
    async with running_bridge(frontdesk, Cassette()) as running:
        response = await post(running, "/voice", {**INBOUND, "To": "+15550100999"})
    root = ElementTree.fromstring(response.text)
    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert root.find("Connect") is None


async def test_signed_status_callbacks_are_recorded_and_forged_ones_refused(frontdesk):
    status = {**INBOUND, "CallStatus": "completed", "CallDuration": "61", "SequenceNumber": "3"}
    async with running_bridge(frontdesk, Cassette()) as running:
        assert (await post(running, "/status", status)).status_code == 204
        assert (await post(running, "/status", status, signature="Zm9yZ2Vk")).status_code == 403
        [update] = running.statuses
    assert (update.call_sid, update.status, update.duration_seconds) == (
        INBOUND["CallSid"], "completed", 61,
    )


class FakeTwilioCalls:
    """Twilio's REST Calls endpoint, enough for the official SDK to place a call."""

    def __init__(self, account_sid: str, auth_token: str):
        self.account_sid, self.auth_token = account_sid, auth_token
        self.created: list[dict[str, list[str]]] = []

    async def create(self, request: web.Request) -> web.Response:
        import base64

        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return web.json_response({"code": 20003, "message": "Authenticate"}, status=401)
        form = parse_qs(await request.text())
        self.created.append(form)
        sid = "CA" + f"{len(self.created):032d}"
        return web.json_response(
            {"sid": sid, "status": "queued", "direction": "outbound-api", "to": form["To"][0],
             "from": form["From"][0], "account_sid": self.account_sid},
            status=201,
        )


async def test_outbound_dial_sends_the_stream_twiml_and_status_callback(frontdesk):
    account = "AC" + "5" * 32
    fake = FakeTwilioCalls(account, AUTH_TOKEN)
    app = web.Application()
    app.router.add_post(f"/2010-04-01/Accounts/{account}/Calls.json", fake.create)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    api = f"http://127.0.0.1:{runner.addresses[0][1]}"
    dialer = TwilioRest(account, AUTH_TOKEN, api_base_url=api)
    try:
        async with running_bridge(frontdesk, Cassette()) as running:
            call_sid = await dialer.dial(running.bridge, frontdesk, "+15550108888")
            with pytest.raises(ValueError, match=r"not an E\.164 phone number"):
                await dialer.dial(running.bridge, frontdesk, "555-0188")
    finally:
        await dialer.close()
        await runner.cleanup()
    assert call_sid == "CA" + f"{1:032d}"
    [form] = fake.created  # the bad number never reached Twilio
    assert form["To"] == ["+15550108888"] and form["From"] == ["+15550100900"]
    assert form["StatusCallback"] == [running.url + "/status"]
    assert form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    stream = ElementTree.fromstring(form["Twiml"][0]).find("./Connect/Stream")
    assert stream.get("url") == running.url.replace("http://", "ws://") + "/media"
    parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert parameters["vertical"] == "frontdesk" and parameters["to"] == "+15550108888"


async def test_the_calls_endpoint_needs_the_bearer_token_and_a_valid_number(frontdesk):
    class RecordingDialer:
        def __init__(self):
            self.calls = []

        async def dial(self, bridge, vertical, to):
            self.calls.append((vertical.name, to))
            return "CA" + "9" * 32

    async with running_bridge(frontdesk, Cassette()) as running:
        running.bridge.settings.api_token = "s3cret-token"
        running.bridge.dialer = dialer = RecordingDialer()
        async with httpx.AsyncClient(base_url=running.url) as client:
            body = {"vertical": "frontdesk", "to": "+15550108888"}
            assert (await client.post("/calls", json=body)).status_code == 401
            wrong = {"Authorization": "Bearer nope"}
            assert (await client.post("/calls", json=body, headers=wrong)).status_code == 401
            good = {"Authorization": "Bearer s3cret-token"}
            bad_number = await client.post("/calls", json={**body, "to": "0800"}, headers=good)
            assert bad_number.status_code == 422 and "E.164" in bad_number.json()["detail"]
            unknown = await client.post("/calls", json={**body, "vertical": "nope"}, headers=good)
            assert unknown.status_code == 404
            placed = await client.post("/calls", json=body, headers=good)
    assert placed.status_code == 201 and placed.json() == {"call_sid": "CA" + "9" * 32}
    assert dialer.calls == [("frontdesk", "+15550108888")]


@pytest.mark.parametrize("body", [{}, {"to": 5}, b"{not json"], ids=["empty", "wrong", "garbled"])
async def test_the_calls_endpoint_refuses_strangers_before_reading_the_body(frontdesk, body):
    async with running_bridge(frontdesk, Cassette()) as running:
        running.bridge.settings.api_token = "s3cret-token"
        async with httpx.AsyncClient(base_url=running.url) as client:
            sent = {"content": body} if isinstance(body, bytes) else {"json": body}
            response = await client.post(
                "/calls", headers={"Content-Type": "application/json"}, **sent
            )
    assert response.status_code == 401
    assert "vertical" not in response.text  # nothing of the body's schema leaks


async def test_the_calls_endpoint_wants_the_bearer_scheme_not_a_bare_token(frontdesk):
    async with running_bridge(frontdesk, Cassette()) as running:
        running.bridge.settings.api_token = "s3cret-token"
        async with httpx.AsyncClient(base_url=running.url) as client:
            body = {"vertical": "frontdesk", "to": "+15550108888"}
            bare = await client.post("/calls", json=body, headers={"Authorization": "s3cret-token"})
            basic = await client.post(
                "/calls", json=body, headers={"Authorization": "Basic s3cret-token"}
            )
    assert bare.status_code == basic.status_code == 401
    assert bare.headers["www-authenticate"] == "Bearer"
