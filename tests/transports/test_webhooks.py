"""The bridge's HTTP side: voice webhook, status callbacks, outbound dialing — all signed."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from decimal import Decimal
from urllib.parse import parse_qs
from xml.etree import ElementTree

import httpx
import pytest
from aiohttp import web

from tests.conftest import AUTH_TOKEN, FIXTURES, running_bridge
from tollbridge.costs.catalog import Catalog
from tollbridge.costs.pricing import price_call, rebill
from tollbridge.testing.cassette import Cassette
from tollbridge.testing.softphone import CallScript
from tollbridge.transports.twilio.caller_audio import load_caller_audio
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


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"CallDuration": "9" * 30}, "CallDuration"),  # would overflow the ledger's INTEGER
        ({"CallDuration": "90000"}, "CallDuration"),  # longer than Twilio lets a call last
        ({"CallDuration": "-5"}, "CallDuration"),
        ({"CallDuration": "61.5"}, "CallDuration"),
        ({"CallDuration": "1e3"}, "CallDuration"),
        ({"CallDuration": "\u0666\u0661"}, "CallDuration"),  # digits, but not ASCII ones
        ({"CallStatus": "exploded"}, "CallStatus"),
        ({"CallStatus": ""}, "CallStatus"),
        ({"CallSid": ""}, "CallSid is missing"),
        ({"CallSid": "CA' OR 1=1 --"}, "CallSid"),
    ],
)
async def test_a_status_callback_with_values_that_make_no_sense_is_refused(frontdesk, change, named):
    status = {**INBOUND, "CallStatus": "completed", "CallDuration": "61", **change}
    async with running_bridge(frontdesk, Cassette()) as running:
        response = await post(running, "/status", status)
        assert running.statuses == []  # nothing reached the ledger
    assert response.status_code == 400
    assert named in response.json()["detail"]


async def test_a_status_callback_without_a_duration_is_kept(frontdesk):
    async with running_bridge(frontdesk, Cassette()) as running:
        response = await post(running, "/status", {**INBOUND, "CallStatus": "in-progress"})
        [update] = running.statuses
    assert response.status_code == 204 and update.duration_seconds is None


async def test_a_recording_vertical_starts_the_recording_before_the_stream(frontdesk):
    recording = replace(frontdesk, telephony=frontdesk.telephony.model_copy(update={"recording": True}))
    async with running_bridge(recording, Cassette()) as running:
        twiml = (await post(running, "/voice", INBOUND)).text
        plain = running.bridge.stream_twiml(frontdesk, "+15550107777", "+15550100900")
    root = ElementTree.fromstring(twiml)
    assert [child.tag for child in root] == ["Start", "Connect"]
    started = root.find("./Start/Recording")
    assert started.get("recordingStatusCallback") == running.url + "/recording-status"
    assert set(started.get("recordingStatusCallbackEvent").split()) == {"completed", "absent"}
    assert root.find("./Connect/Stream") is not None
    assert ElementTree.fromstring(plain).find("Start") is None  # a vertical that does not record


RECORDING = {"AccountSid": "AC" + "3" * 32, "CallSid": INBOUND["CallSid"],
             "RecordingSid": "RE" + "6" * 32, "RecordingStatus": "completed",
             "RecordingDuration": "125", "RecordingChannels": "1",
             "RecordingSource": "StartCallRecordingTwiML",
             "RecordingUrl": "https://api.twilio.com/2010-04-01/Accounts/AC/Recordings/RE"}


async def test_recording_callbacks_are_signed_checked_and_only_a_finished_one_is_billed(frontdesk):
    received = []

    async def on_recording(update):
        received.append(update)

    async with running_bridge(frontdesk, Cassette()) as running:
        running.bridge.on_recording = on_recording
        forged = await post(running, "/recording-status", RECORDING, signature="Zm9yZ2Vk")
        absent = await post(running, "/recording-status",
                            {**RECORDING, "RecordingStatus": "absent", "RecordingDuration": "0"})
        absurd = await post(running, "/recording-status", {**RECORDING, "RecordingDuration": "x"})
        missing = await post(running, "/recording-status",
                             {k: v for k, v in RECORDING.items() if k != "RecordingDuration"})
        done = await post(running, "/recording-status", RECORDING)
    assert forged.status_code == 403
    assert absent.status_code == done.status_code == 204
    assert absurd.status_code == missing.status_code == 400
    assert "RecordingDuration" in absurd.json()["detail"]
    assert [(u.call_sid, u.recording_sid, u.duration_seconds) for u in received] == [
        (INBOUND["CallSid"], "RE" + "6" * 32, 125)
    ]


async def test_the_api_schema_and_docs_are_not_served(frontdesk):
    async with running_bridge(frontdesk, Cassette()) as running:
        async with httpx.AsyncClient(base_url=running.url) as client:
            pages = [await client.get(path) for path in ("/openapi.json", "/docs", "/redoc")]
            health = await client.get("/healthz")
    assert [page.status_code for page in pages] == [404, 404, 404]
    assert health.status_code == 200 and health.json()["calls"] == 0


async def test_a_draining_bridge_turns_callers_away_without_a_stream(frontdesk):
    async with running_bridge(frontdesk, Cassette()) as running:
        running.bridge.draining = True
        response = await post(running, "/voice", INBOUND)
        async with httpx.AsyncClient() as client:
            health = await client.get(running.url + "/healthz")
    root = ElementTree.fromstring(response.text)
    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert "call back" in root.find("Say").text
    assert health.status_code == 503 and health.json()["draining"] is True


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


@contextlib.asynccontextmanager
async def twilio_api(account: str):
    """Twilio's Calls endpoint on loopback, and a dialer pointed at it."""
    fake = FakeTwilioCalls(account, AUTH_TOKEN)
    app = web.Application()
    app.router.add_post(f"/2010-04-01/Accounts/{account}/Calls.json", fake.create)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    dialer = TwilioRest(account, AUTH_TOKEN,
                        api_base_url=f"http://127.0.0.1:{runner.addresses[0][1]}")
    try:
        yield fake, dialer
    finally:
        await dialer.close()
        await runner.cleanup()


async def test_outbound_dial_sends_the_stream_twiml_and_status_callback(frontdesk):
    async with twilio_api("AC" + "5" * 32) as (fake, dialer):
        async with running_bridge(frontdesk, Cassette()) as running:
            call_sid = await dialer.dial(running.bridge, frontdesk, "+15550108888")
            with pytest.raises(ValueError, match=r"not an E\.164 phone number"):
                await dialer.dial(running.bridge, frontdesk, "555-0188")
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


async def test_an_outbound_recording_call_records_once_through_its_twiml(frontdesk):
    account = "AC" + "5" * 32
    fake = FakeTwilioCalls(account, AUTH_TOKEN)
    app = web.Application()
    app.router.add_post(f"/2010-04-01/Accounts/{account}/Calls.json", fake.create)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    dialer = TwilioRest(account, AUTH_TOKEN, api_base_url=f"http://127.0.0.1:{runner.addresses[0][1]}")
    recording = replace(frontdesk, telephony=frontdesk.telephony.model_copy(update={"recording": True}))
    try:
        async with running_bridge(recording, Cassette()) as running:
            await dialer.dial(running.bridge, recording, "+15550108888")
    finally:
        await dialer.close()
        await runner.cleanup()
    [form] = fake.created
    assert "Record" not in form  # one recording, started by the TwiML, not a second by REST
    root = ElementTree.fromstring(form["Twiml"][0])
    assert [child.tag for child in root] == ["Start", "Connect"]
    callback = root.find("./Start/Recording").get("recordingStatusCallback")
    assert callback == running.url + "/recording-status"


VOICEMAIL = "Hi, it's Acme. Please call us back."
SPEECH = load_caller_audio(FIXTURES / "calls" / "salon_barge_in_dtmf.wav")


def script(parameters: dict[str, str]) -> CallScript:
    return CallScript(audio=SPEECH[: 8000 * 4], parameters=parameters, settle_s=1.0,
                      speed=2.0, max_s=20)


def leaving_voicemail(frontdesk):
    return replace(frontdesk, telephony=frontdesk.telephony.model_copy(
        update={"direction": "outbound", "voicemail": VOICEMAIL}))


async def test_a_vertical_with_a_voicemail_dials_with_machine_detection(frontdesk):
    sales = leaving_voicemail(frontdesk)
    async with twilio_api("AC" + "6" * 32) as (fake, dialer):
        async with running_bridge(sales, Cassette()) as running:
            await dialer.dial(running.bridge, sales, "+15550108888")
    [form] = fake.created
    assert form["MachineDetection"] == ["DetectMessageEnd"]
    # Twilio asks us what to do once it knows who answered: no fixed TwiML
    assert form["Url"] == [running.url + "/answered?vertical=frontdesk"] and "Twiml" not in form


OUTBOUND = {**INBOUND, "From": "+15550100900", "To": "+15550108888",
            "Direction": "outbound-api", "CallStatus": "in-progress"}


async def test_a_machine_gets_the_voicemail_and_a_record_with_no_ai(frontdesk):
    sales = leaving_voicemail(frontdesk)
    async with running_bridge(sales, Cassette()) as running:
        beep = await post(running, "/answered?vertical=frontdesk",
                          {**OUTBOUND, "AnsweredBy": "machine_end_beep"})
        fax = await post(running, "/answered?vertical=frontdesk",
                         {**OUTBOUND, "CallSid": "CA" + "7" * 32, "AnsweredBy": "fax"})
        forged = await post(running, "/answered?vertical=frontdesk",
                            {**OUTBOUND, "AnsweredBy": "human"}, signature="Zm9yZ2Vk")
    root = ElementTree.fromstring(beep.text)
    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert root.find("Say").text == VOICEMAIL
    assert [child.tag for child in ElementTree.fromstring(fax.text)] == ["Hangup"]
    assert forged.status_code == 403
    voicemail, hung_up = running.usages
    assert (voicemail.ended_by, voicemail.answered_by) == ("voicemail", "machine_end_beep")
    assert (hung_up.ended_by, hung_up.answered_by) == ("machine", "fax")
    assert not (voicemail.stt or voicemail.llm or voicemail.tts)
    cost = rebill(price_call(voicemail, Catalog.load()), 25, "completed")  # Twilio's CallDuration
    lines = {line.item: line for line in cost.items}
    assert set(lines) == {"number.local", "voice.outbound", "amd"}  # no Media Streams
    assert (lines["amd"].quantity, lines["amd"].usd) == (1, Decimal("0.0075"))
    assert lines["voice.outbound"].quantity == 1  # 25 s: one minute


async def test_a_person_gets_the_agent_and_the_detection_is_billed(frontdesk):
    sales = leaving_voicemail(frontdesk)
    async with running_bridge(sales, Cassette()) as running:
        answer = await post(running, "/answered?vertical=frontdesk",
                            {**OUTBOUND, "AnsweredBy": "human"})
        stream = ElementTree.fromstring(answer.text).find("./Connect/Stream")
        parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
        assert parameters["answered_by"] == "human"
        await running.softphone().call(script(parameters=parameters))
        [usage] = await running.finished()
    assert usage.answered_by == "human" and usage.tts  # the agent spoke
    items = {line.item for line in price_call(usage, Catalog.load()).items}
    assert {"amd", "media_streams", "voice.outbound"} <= items
