"""Calls through the real bridge: uvicorn, a real WebSocket, pipecat services, provider fakes."""

from __future__ import annotations

import asyncio
import base64
import json
from decimal import Decimal

import httpx
import pytest
import websockets

from tests.conftest import FIXTURES, running_bridge
from tollbridge.testing.cassette import Cassette
from tollbridge.testing.softphone import CallScript
from tollbridge.transports.twilio.caller_audio import load_caller_audio
from tollbridge.transports.twilio.transport import MERGE_BYTES

pytestmark = pytest.mark.long(10)

SPEECH = load_caller_audio(FIXTURES / "calls" / "salon_barge_in_dtmf.wav")
CHARS_PER_SECOND = 14.0
GREETING = "Hello, Acme front desk. How can I help?"
PARAMS = {"vertical": "frontdesk", "tenant": "acme", "from": "+15550109999", "to": "+15550100900"}


def final(at: float, text: str) -> dict:
    return {"at": at, "transcript": text, "is_final": True, "speech_final": True}


def interim(at: float, text: str) -> dict:
    return {"at": at, "transcript": text, "is_final": False, "speech_final": False}


def script(**kwargs) -> CallScript:
    return CallScript(audio=kwargs.pop("audio", SPEECH[: 8000 * 6]), parameters=PARAMS,
                      settle_s=1.5, max_s=30, **kwargs)


def assistant_messages(session) -> list[str]:
    return [m["content"] for m in session.built.context.get_messages()
            if m.get("role") == "assistant" and isinstance(m.get("content"), str)]


async def test_a_full_call_leaves_transcript_audio_marks_and_usage(frontdesk):
    cassette = Cassette(
        stt=[final(4.0, "what are your opening hours")],
        llm=[
            {"match": "opening hours", "tool_calls": [{"name": "opening_hours", "arguments": {}}]},
            {"match": "Monday to Friday", "text": "We are open Monday to Friday, eight to six."},
        ],
    )
    async with running_bridge(frontdesk, cassette) as running:
        phone = await running.softphone().call(script())
        [usage] = await running.finished()
        session = running.sessions[0]
        assert running.fakes.failures == []

    reply = "We are open Monday to Friday, eight to six."
    assert assistant_messages(session) == [GREETING, reply]
    # every mark the bridge sent was played and echoed; nothing had to be cleared
    assert phone.marks_received and phone.marks_echoed == phone.marks_received
    assert phone.clears == 0
    expected_audio = (len(GREETING) + len(reply)) / CHARS_PER_SECOND
    assert abs(phone.agent_audio_seconds - expected_audio) < 0.2
    # usage: what the fakes saw is what the meter billed
    [stt] = usage.stt
    listened = running.fakes.fakes["deepgram.stt"].requests[0].audio_seconds
    assert float(stt.audio_seconds) == listened
    assert abs(listened - phone.duration_s) < 0.1
    [tts] = usage.tts
    assert tts.characters == running.fakes.fakes["deepgram.tts"].characters
    assert len(usage.llm) == 2 and all(r.output_tokens > 0 for r in usage.llm)
    assert usage.ended_by == "caller_hung_up"
    assert (usage.tenant, usage.vertical, usage.from_number) == ("acme", "frontdesk", "+15550109999")


async def test_barge_in_clears_twilio_and_the_context_keeps_only_what_was_heard(frontdesk):
    cassette = Cassette(
        stt=[interim(1.0, "what are"), final(2.2, "what are your hours")],
        llm=[{"match": "your hours", "text": "Monday to Friday, eight to six."}],
    )
    async with running_bridge(frontdesk, cassette) as running:
        phone = await running.softphone().call(script())
        await running.finished()
        session = running.sessions[0]

    greeting_s = len(GREETING) / CHARS_PER_SECOND
    reply = "Monday to Friday, eight to six."
    assert phone.clears == 1 and phone.clear_times[0] < greeting_s
    # the greeting was cut short: the model remembers the words the caller heard, no more
    heard_s = phone.agent_audio_seconds - len(reply) / CHARS_PER_SECOND
    assert 0.3 < heard_s < greeting_s - 0.5
    said, answer = assistant_messages(session)
    assert answer == reply
    assert said.endswith("[interrupted]")
    words = said.removesuffix("[interrupted]").split()
    assert words == GREETING.split()[: len(words)]
    heard_chars = heard_s * CHARS_PER_SECOND
    assert heard_chars - 8 <= len(" ".join(words)) <= heard_chars + 1


async def test_keypad_presses_reach_the_model(frontdesk):
    cassette = Cassette(llm=[{"match": "[keypad] 1", "text": "You pressed one."}])
    async with running_bridge(frontdesk, cassette) as running:
        phone = await running.softphone().call(script(dtmf=[(3.5, "1")]))
        await running.finished()
        session = running.sessions[0]
        assert running.fakes.failures == []
    assert session.built.transport.connection.stats.dtmf == ["1"]
    assert assistant_messages(session)[-1] == "You pressed one."
    assert phone.ended_by == "caller_finished"


async def test_a_failing_tool_is_reported_to_the_model_and_the_call_goes_on(frontdesk):
    cassette = Cassette(
        stt=[final(4.0, "put me through to a person")],
        llm=[
            {"match": "person", "tool_calls": [{"name": "transfer", "arguments": {}}]},
            {"match": "transfer line is down", "text": "Sorry, I can't transfer you right now."},
        ],
    )
    async with running_bridge(frontdesk, cassette) as running:
        await running.softphone().call(script())
        await running.finished()
        session = running.sessions[0]
        assert running.fakes.failures == []
    assert assistant_messages(session)[-1] == "Sorry, I can't transfer you right now."


async def test_the_agent_hangs_up_after_its_goodbye_has_been_played(frontdesk):
    goodbye = "Thanks for calling Acme. Goodbye!"
    cassette = Cassette(
        stt=[final(4.0, "that's all, bye")],
        llm=[
            {"match": "bye", "tool_calls": [{"name": "end_call", "arguments": {}}]},
            {"match": "ending", "text": goodbye},
        ],
    )
    async with running_bridge(frontdesk, cassette) as running:
        phone = await running.softphone().call(script(audio=SPEECH[: 8000 * 20]))
        [usage] = await running.finished()
    assert phone.ended_by == "agent_hung_up"
    heard = (len(GREETING) + len(goodbye)) / CHARS_PER_SECOND
    assert abs(phone.agent_audio_seconds - heard) < 0.2  # the goodbye was played in full
    assert usage.ended_by == "agent"
    assert phone.duration_s < 12


async def test_the_caller_hanging_up_mid_reply_still_leaves_a_record(frontdesk):
    cassette = Cassette(
        stt=[final(3.5, "tell me everything")],
        llm=[{"match": "everything", "text": "Well, there is a lot to say. " * 6}],
    )
    async with running_bridge(frontdesk, cassette) as running:
        phone = await running.softphone().call(script(hang_up_at=6.0))
        [usage] = await running.finished()
    assert phone.ended_by == "caller_hung_up"
    assert usage.ended_by == "caller_hung_up"
    assert usage.tts and usage.stt


async def test_an_abrupt_disconnect_still_leaves_a_record(frontdesk):
    async with running_bridge(frontdesk, Cassette()) as running:
        async with websockets.connect(running.bridge.media_url, additional_headers=_signed(running)) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(_start())
            for chunk in range(1, 51):
                await ws.send(_media(chunk, b"\xff" * 160))
        # no stop: the socket just went away
        [usage] = await running.finished()
    assert usage.ended_by == "disconnected"
    assert usage.call_sid == "CA" + "1" * 32


async def test_bad_messages_are_skipped_and_the_call_goes_on(frontdesk):
    async with running_bridge(frontdesk, Cassette()) as running:
        async with websockets.connect(running.bridge.media_url, additional_headers=_signed(running)) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(_media(0, b"\xff" * 160))  # media before start
            await ws.send(_start())
            hostile = [
                "this is not json",
                "[1, 2, 3]",
                json.dumps({"event": "telepathy", "streamSid": "MZ1"}),
                json.dumps({"no_event": True}),
                json.dumps({"event": "media", "media": {"payload": "%%% not base64 %%%"}}),
                json.dumps({"event": "media", "media": {"payload": base64.b64encode(b"\xff" * 40_000).decode()}}),
                "x" * 100_000,
                json.dumps({"event": "dtmf", "dtmf": {"digit": "Z"}}),
                json.dumps({"event": "start", "start": {"streamSid": "MZ\"; drop", "callSid": "CA1"}}),
                json.dumps({"event": "mark", "mark": {"name": "never-sent"}}),
            ]
            for message in hostile:
                await ws.send(message)
            for chunk in range(1, 101):
                await ws.send(_media(chunk, b"\xff" * 160))
                await asyncio.sleep(0.02)  # paced like Twilio
            await ws.send(json.dumps({"event": "stop", "stop": {"callSid": "CA" + "1" * 32}}))
            async for _ in ws:  # the bridge closes once the call has ended
                pass
        [usage] = await running.finished()
        listened = running.fakes.fakes["deepgram.stt"].requests[0].audio_seconds
    # only the 100 good frames (2 s) reached the recognizer; nothing hostile did
    assert abs(listened - 2.0) < 0.01
    assert usage.ended_by == "caller_hung_up"


async def test_an_unsigned_media_stream_is_refused(frontdesk):
    async with running_bridge(frontdesk, Cassette()) as running:
        for headers in ({}, {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"}):
            try:
                async with websockets.connect(running.bridge.media_url, additional_headers=headers):
                    raise AssertionError("the bridge accepted an unsigned stream")
            except websockets.InvalidStatus as refused:
                assert refused.response.status_code == 403
        assert running.usages == []


def _signed(running) -> dict[str, str]:
    from tests.conftest import AUTH_TOKEN
    from tollbridge.transports.twilio.signature import SignatureChecker

    return {"X-Twilio-Signature": SignatureChecker(AUTH_TOKEN).sign(running.bridge.media_url, {})}


def _start() -> str:
    return json.dumps({
        "event": "start", "sequenceNumber": "1", "streamSid": "MZ" + "2" * 32,
        "start": {"streamSid": "MZ" + "2" * 32, "accountSid": "AC" + "3" * 32,
                  "callSid": "CA" + "1" * 32, "tracks": ["inbound"],
                  "customParameters": PARAMS,
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
    })


def _media(chunk: int, audio: bytes) -> str:
    return json.dumps({
        "event": "media", "streamSid": "MZ" + "2" * 32,
        "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(chunk * 20),
                  "payload": base64.b64encode(audio).decode()},
    })


async def test_a_call_reaching_its_budget_is_wrapped_up_politely(frontdesk):
    from dataclasses import replace
    from decimal import Decimal

    farewell = "Sorry, our time is up. Goodbye."
    vertical = replace(frontdesk, budget_usd=Decimal("0.002"), budget_farewell=farewell)
    cassette = Cassette(
        stt=[final(4.0, "tell me a long story")],
        llm=[{"match": "story", "text": "Once upon a time there was a phone call."}],
    )
    async with running_bridge(vertical, cassette) as running:
        phone = await running.softphone().call(script(audio=SPEECH[: 8000 * 20]))
        [usage] = await running.finished()
        session = running.sessions[0]
    assert usage.ended_by == "budget"
    assert phone.ended_by == "agent_hung_up"
    assert assistant_messages(session)[-1] == farewell


async def test_audio_crosses_the_bridge_bit_exact_with_no_conversion(frontdesk):
    """Twilio's μ-law reaches Deepgram untouched; Aura-2's μ-law reaches Twilio untouched."""
    import hashlib

    from tollbridge.codec import AudioConverter
    from tollbridge.testing.fakes.audio import synthesize

    reply = "We are open Monday to Friday, eight to six."
    cassette = Cassette(stt=[final(4.0, "what are your opening hours")],
                        llm=[{"match": "opening hours", "text": reply}])
    async with running_bridge(frontdesk, cassette) as running:
        phone = await running.softphone().call(script())
        await running.finished()
        session = running.sessions[0]
        [listened] = running.fakes.fakes["deepgram.stt"].requests
        spoken_texts = [m["text"] for r in running.fakes.fakes["deepgram.tts"].requests
                        for m in r.messages if isinstance(m, dict) and m.get("type") == "Speak"]
    assert not [p for p in session.built.processors if isinstance(p, AudioConverter)]
    [metadata] = [m for m in listened.sent if m.get("type") == "Metadata"]
    assert metadata["sha256"] == hashlib.sha256(phone.caller_audio).hexdigest()
    pieces = [synthesize(text, encoding="mulaw", sample_rate=8000, chars_per_second=CHARS_PER_SECOND)
              for text in spoken_texts]
    spoken = b"".join(pieces)
    assert "".join(spoken_texts).split() == (GREETING + " " + reply).split()
    assert len(phone.agent_audio) == len(spoken)
    assert phone.agent_audio == spoken
    # Aura sends 100 ms chunks; once Twilio has audio queued they go out merged
    chunks = sum(-(-len(piece) // 800) for piece in pieces)
    assert len(spoken) / MERGE_BYTES <= phone.media_received < chunks * 0.7


async def test_a_stream_without_parameters_goes_to_the_only_vertical(frontdesk):
    """A peer that sends a bare `start` (no customParameters) still gets the agent."""
    cassette = Cassette(stt=[final(3.5, "hello")], llm=[{"match": "hello", "text": "Hi there."}])
    async with running_bridge(frontdesk, cassette) as running:
        phone = await running.softphone().call(
            CallScript(audio=SPEECH[: 8000 * 5], parameters={}, settle_s=1.5, max_s=20))
        [usage] = await running.finished()
        session = running.sessions[0]
    assert usage.vertical == "frontdesk"
    assert assistant_messages(session)[-1] == "Hi there."
    assert phone.marks_echoed == phone.marks_received


async def test_two_concurrent_calls_keep_their_own_state(frontdesk):
    """Two calls at once on one bridge: separate pipelines, contexts, usage and audio."""
    cassette = Cassette(
        stt=[final(4.5, "what are your opening hours")],  # the greeting is over by then
        llm=[
            {"match": "opening hours", "text": "Monday to Friday, eight to six."},
            {"match": "opening hours", "text": "Monday to Friday, eight to six."},
        ],
    )
    async with running_bridge(frontdesk, cassette) as running:
        short, long = await asyncio.gather(
            running.softphone().call(script(audio=SPEECH[: 8000 * 6])),
            running.softphone().call(script(audio=SPEECH[: 8000 * 9])),
        )
        usages = {u.call_sid: u for u in await running.finished(2)}
        sessions = {s.call.call_sid: s for s in running.sessions}
    assert set(usages) == {short.call_sid, long.call_sid}
    for phone in (short, long):
        session = sessions[phone.call_sid]
        assert assistant_messages(session) == [GREETING, "Monday to Friday, eight to six."]
        [stt] = usages[phone.call_sid].stt
        assert abs(float(stt.audio_seconds) - phone.duration_s) < 0.05  # each billed its own audio
    assert sessions[short.call_sid].built.context is not sessions[long.call_sid].built.context
    assert usages[long.call_sid].stt[0].audio_seconds > usages[short.call_sid].stt[0].audio_seconds


async def test_a_stream_that_stops_sending_media_ends_as_idle_with_its_record(frontdesk):
    async with running_bridge(frontdesk, Cassette()) as running:
        running.bridge.settings.idle_timeout_s = 0.5
        async with websockets.connect(running.bridge.media_url, additional_headers=_signed(running)) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(_start())
            for chunk in range(1, 6):
                await ws.send(_media(chunk, b"\xff" * 160))
            # then nothing, though the socket stays up (the client answers pings)
            async with asyncio.timeout(5):
                async for _ in ws:  # the bridge hangs up
                    pass
        [usage] = await running.finished()
    assert usage.ended_by == "idle"
    assert usage.call_sid == "CA" + "1" * 32
    assert 0.4 < usage.measured_seconds < 3


async def test_a_stream_sending_media_is_never_idle(frontdesk):
    async with running_bridge(frontdesk, Cassette()) as running:
        running.bridge.settings.idle_timeout_s = 0.5
        phone = await running.softphone().call(script(hang_up_at=2.0))
        [usage] = await running.finished()
    assert phone.ended_by == usage.ended_by == "caller_hung_up"


async def test_a_second_live_stream_for_a_call_sid_is_refused_and_the_first_goes_on(frontdesk):
    async with running_bridge(frontdesk, Cassette()) as running:
        first = asyncio.create_task(
            running.softphone().call(script(hang_up_at=2.5), call_sid="CA" + "1" * 32)
        )
        async with asyncio.timeout(5):
            while not running.bridge.sessions:
                await asyncio.sleep(0.02)
        async with websockets.connect(running.bridge.media_url, additional_headers=_signed(running)) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(_start())  # the same CallSid, another stream
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async with asyncio.timeout(5):
                    while True:
                        await ws.recv()
        async with httpx.AsyncClient() as client:
            health = (await client.get(running.url + "/healthz")).json()
        phone = await first
        await asyncio.sleep(0.3)  # a second record would have been written by now
        usages = running.usages
    assert closed.value.rcvd.code == 1008
    assert "already has a live stream" in closed.value.rcvd.reason
    assert health["calls"] == 1
    assert [u.ended_by for u in usages] == ["caller_hung_up"]
    assert usages[0].measured_seconds >= Decimal("2.4")  # the first call's own, whole record
    assert phone.ended_by == "caller_hung_up"


async def test_a_realtime_call_reaching_its_budget_hears_the_farewell_before_the_hang_up():
    """A speech-to-speech brain has no TTS: it is asked to say the farewell, as the greeting."""
    from dataclasses import replace

    from tollbridge.config import load_vertical
    from tollbridge.testing.fakes.openai_realtime import MS_PER_CHARACTER, speech

    greeting, farewell = "Hi, OneRoof here.", "Time is up. Goodbye."
    realtime = load_vertical(FIXTURES.parents[1] / "examples" / "real_estate" / "realtime.vertical.toml")
    vertical = replace(realtime, greeting=greeting, budget_usd=Decimal("0.0001"),
                       budget_farewell=farewell)
    cassette = Cassette(llm=[{"match": "Open the call by saying exactly", "text": greeting},
                             {"match": f'end the call by saying exactly this, and nothing else: "{farewell}"',
                              "text": farewell}])
    async with running_bridge(vertical, cassette) as running:
        phone = await running.softphone().call(CallScript(
            audio=b"\xff" * 8000, parameters={"vertical": vertical.name}, settle_s=8, max_s=20))
        [usage] = await running.finished()
        assert running.fakes.failures == []
    assert usage.ended_by == "budget"
    assert phone.ended_by == "agent_hung_up"
    assert phone.agent_audio == speech(greeting, "audio/pcmu") + speech(farewell, "audio/pcmu")
    heard_s = (len(greeting) + len(farewell)) * MS_PER_CHARACTER / 1000
    assert phone.duration_s < heard_s + 3, "hung up once the farewell was heard"
