"""The Deepgram live STT fake, driven by pipecat's DeepgramSTTService and by a raw socket."""

import asyncio
import hashlib
import json

import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import STTUsageMetricsData
from pipecat.services.deepgram.stt import DeepgramSTTService
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from tests.providers.harness import RunningPipeline, run_pipeline
from tollbridge.testing.fakes.deepgram_listen import FakeDeepgramListen

KEY = "dg-test-key"
AUTH = {"Authorization": f"Token {KEY}"}
MULAW_8K = "model=nova-3&encoding=mulaw&sample_rate=8000&channels=1"
SILENCE = {"mulaw": b"\xff" * 160, "linear16": b"\x00" * 320}  # 20 ms at 8 kHz
HELLO = [
    {"at": 0.5, "transcript": "hello", "is_final": False, "speech_final": False},
    {"at": 1.0, "transcript": "Hello there.", "is_final": True, "speech_final": True},
]


def stt_for(
    fake: FakeDeepgramListen, encoding: str = "mulaw", key: str = KEY
) -> DeepgramSTTService:
    return DeepgramSTTService(
        api_key=key, base_url=fake.base_url, encoding=encoding, sample_rate=8000
    )


async def feed(pipeline: RunningPipeline, seconds: float, encoding: str = "mulaw") -> None:
    """Queue caller audio as 20 ms frames, about four times faster than real time."""
    for _ in range(round(seconds / 0.02)):
        await pipeline.queue(
            InputAudioRawFrame(audio=SILENCE[encoding], sample_rate=8000, num_channels=1)
        )
        await asyncio.sleep(0.005)


def raw(fake: FakeDeepgramListen, query: str = MULAW_8K) -> connect:
    return connect(f"{fake.base_url}/v1/listen?{query}", additional_headers=AUTH)


async def send_audio(ws: ClientConnection, seconds: float) -> None:
    for _ in range(round(seconds / 0.02)):
        await ws.send(SILENCE["mulaw"])


async def test_transcripts_wait_for_their_audio() -> None:
    async with FakeDeepgramListen(KEY, HELLO) as fake:
        async with run_pipeline([stt_for(fake)]) as pipeline:
            await feed(pipeline, 0.9)
            await pipeline.downstream.wait_for(InterimTranscriptionFrame)
            await asyncio.sleep(0.3)  # ample time for a premature final to show up
            assert pipeline.downstream.of_type(TranscriptionFrame) == []
            await feed(pipeline, 0.2)
            await pipeline.downstream.wait_for(TranscriptionFrame)

    assert [f.text for f in pipeline.downstream.of_type(InterimTranscriptionFrame)] == ["hello"]
    assert [f.text for f in pipeline.downstream.of_type(TranscriptionFrame)] == ["Hello there."]
    record = fake.requests[0]
    assert record.query["encoding"] == "mulaw"
    assert record.query["sample_rate"] == "8000"
    spoken = [
        (at, message)
        for at, message in zip(record.sent_at, record.sent, strict=True)
        if message["type"] == "Results" and message["channel"]["alternatives"][0]["transcript"]
    ]
    assert [at for at, _ in spoken] == pytest.approx([0.5, 1.0])
    final = spoken[1][1]
    assert (final["is_final"], final["speech_final"], final["start"], final["duration"]) == (
        True,
        True,
        0.0,
        1.0,
    )
    assert [w["punctuated_word"] for w in final["channel"]["alternatives"][0]["words"]] == [
        "Hello",
        "there.",
    ]


@pytest.mark.parametrize(("encoding", "pipecat_share"), [("linear16", 1.0), ("mulaw", 0.5)])
async def test_usage_metrics_against_audio_received(encoding: str, pipecat_share: float) -> None:
    """pipecat counts STT usage as 16-bit PCM seconds, whatever the declared encoding.

    With linear16 that is exactly the audio Deepgram bills. With μ-law passed
    straight through it is half of it, so STTUsageMetricsData must not be
    billed as Deepgram seconds in that setup.
    """
    async with FakeDeepgramListen(KEY, HELLO) as fake:
        async with run_pipeline([stt_for(fake, encoding)]) as pipeline:
            await feed(pipeline, 1.5, encoding)
            await pipeline.downstream.wait_for(TranscriptionFrame)
        record = fake.requests[0]
        await asyncio.wait_for(record.ended.wait(), 2.0)

    reported = sum(m.value.audio_seconds for m in pipeline.metrics(STTUsageMetricsData))
    assert record.audio_seconds == pytest.approx(1.5)
    assert reported == pytest.approx(record.audio_seconds * pipecat_share)
    assert record.messages[-1] == {"type": "CloseStream"}


async def test_finalize_flushes_speech_already_heard() -> None:
    script = [
        {
            "at": 2.0,
            "transcript": "Book me in.",
            "is_final": True,
            "speech_final": True,
            "start": 0.2,
        }
    ]
    async with FakeDeepgramListen(KEY, script) as fake:
        async with run_pipeline([stt_for(fake)]) as pipeline:
            await feed(pipeline, 0.6)
            await pipeline.queue(VADUserStoppedSpeakingFrame())
            await pipeline.downstream.wait_for(TranscriptionFrame)

    [transcript] = pipeline.downstream.of_type(TranscriptionFrame)
    assert transcript.text == "Book me in."
    assert transcript.finalized
    record = fake.requests[0]
    assert {"type": "Finalize"} in record.messages
    final = next(m for m in record.sent if m["type"] == "Results")
    assert final["from_finalize"] is True


async def test_wrong_key_is_refused_at_the_handshake() -> None:
    async with FakeDeepgramListen(KEY) as fake:
        async with run_pipeline([stt_for(fake, key="not-the-key")]) as pipeline:
            await pipeline.upstream.wait_for(ErrorFrame)

    assert any("401" in error for error in pipeline.errors())
    [record] = fake.requests
    assert record.status == 401
    assert record.binary_bytes == 0
    assert record.headers["authorization"] == "<redacted>"


@pytest.mark.parametrize(
    ("options", "headers", "query", "status", "err_code"),
    [
        ({}, {}, MULAW_8K, 401, "INVALID_AUTH"),
        ({}, {"Authorization": "Token nope"}, MULAW_8K, 401, "INVALID_AUTH"),
        ({}, AUTH, "model=nova-3&encoding=mulaw", 400, "Bad Request"),
        ({}, AUTH, "model=nova-3&sample_rate=8000", 400, "Bad Request"),
        ({}, AUTH, "model=nova-3&encoding=opus&sample_rate=8000", 400, "Bad Request"),
        ({}, AUTH, "model=whisper-large&encoding=mulaw&sample_rate=8000", 400, "Bad Request"),
        ({"outage": 503}, AUTH, MULAW_8K, 503, "SERVICE_UNAVAILABLE"),
    ],
)
async def test_handshake_refusals(
    options: dict[str, int], headers: dict[str, str], query: str, status: int, err_code: str
) -> None:
    async with FakeDeepgramListen(KEY, **options) as fake:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{fake.base_url}/v1/listen?{query}", additional_headers=headers):
                pass

    response = refused.value.response
    body = json.loads(response.body)
    assert response.status_code == status
    assert body["err_code"] == err_code
    assert response.headers["dg-error"] == body["err_msg"]
    assert fake.requests[0].status == status


async def test_speech_started_and_utterance_end_follow_the_audio_clock() -> None:
    script = [
        {"at": 0.8, "transcript": "yes", "is_final": False, "speech_final": False, "start": 0.3},
        {
            "at": 1.2,
            "transcript": "Yes please.",
            "is_final": True,
            "speech_final": True,
            "start": 0.3,
            "duration": 0.9,
        },
    ]
    query = f"{MULAW_8K}&interim_results=true&vad_events=true&utterance_end_ms=1000"
    async with FakeDeepgramListen(KEY, script) as fake, raw(fake, query) as ws:
        await send_audio(ws, 3.0)
        await ws.send(json.dumps({"type": "CloseStream"}))
        received = [json.loads(message) async for message in ws]

    kinds = [m["type"] for m in received]
    assert kinds == ["SpeechStarted", "Results", "Results", "UtteranceEnd", "Results", "Metadata"]
    assert received[0]["timestamp"] == pytest.approx(0.3)
    assert received[3]["last_word_end"] == pytest.approx(1.2)
    # Released at word onset, at the result's `at`, and once 1 s of audio followed the last word.
    assert fake.requests[0].sent_at[:4] == pytest.approx([0.3, 0.8, 1.2, 2.2])


async def test_keepalive_finalize_and_close_stream() -> None:
    async with FakeDeepgramListen(KEY) as fake, raw(fake) as ws:
        await ws.send(json.dumps({"type": "KeepAlive"}))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.2)
        await send_audio(ws, 0.5)
        await ws.send(json.dumps({"type": "Finalize"}))
        finalized = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "CloseStream"}))
        closing = [json.loads(message) async for message in ws]

    assert finalized["type"] == "Results"
    assert (finalized["is_final"], finalized["from_finalize"]) == (True, True)
    assert finalized["channel"]["alternatives"][0]["transcript"] == ""
    assert finalized["duration"] == pytest.approx(0.5)
    metadata = closing[-1]
    assert metadata["type"] == "Metadata"
    assert metadata["duration"] == pytest.approx(0.5)
    assert metadata["sha256"] == hashlib.sha256(SILENCE["mulaw"] * 25).hexdigest()
    assert ws.close_code == 1000


async def test_silent_socket_is_closed_with_net0001() -> None:
    async with FakeDeepgramListen(KEY, idle_timeout=0.2) as fake, raw(fake) as ws:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 2.0)

    assert ws.close_code == 1011
    assert "net0001" in (ws.close_reason or "")


async def test_fail_after_drops_the_socket_mid_stream() -> None:
    async with FakeDeepgramListen(KEY, HELLO, fail_after=3) as fake, raw(fake) as ws:
        await send_audio(ws, 0.06)
        with pytest.raises(ConnectionClosedError):
            await asyncio.wait_for(ws.recv(), 2.0)

    record = fake.requests[0]
    assert record.dropped
    assert record.binary_messages == 3


def test_script_must_follow_the_audio_clock() -> None:
    with pytest.raises(ValueError, match="audio order"):
        FakeDeepgramListen(KEY, list(reversed(HELLO)))
