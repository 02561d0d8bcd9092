"""The Deepgram Aura TTS fake, driven by pipecat's WebSocket and HTTP services and by raw clients."""

import json
import warnings

import aiohttp
import numpy as np
import pytest
from pipecat.frames.frames import ErrorFrame, TTSAudioRawFrame, TTSSpeakFrame, TTSStoppedFrame
from pipecat.metrics.metrics import TTSUsageMetricsData
from pipecat.services.deepgram.tts import DeepgramHttpTTSService, DeepgramTTSService
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.providers.harness import RunningPipeline, run_pipeline
from tollbridge.testing.fakes.audio import alaw_encode, ulaw_encode
from tollbridge.testing.fakes.deepgram_speak import FakeDeepgramSpeak

KEY = "dg-test-key"
AUTH = {"Authorization": f"Token {KEY}"}
THALIA = "model=aura-2-thalia-en"
MULAW_8K = f"{THALIA}&encoding=mulaw&sample_rate=8000"
REST_MULAW_8K = {
    "model": "aura-2-thalia-en",
    "encoding": "mulaw",
    "sample_rate": "8000",
    "container": "none",
}


def mulaw_bytes(text: str) -> int:
    """What the fake speaks for `text` at its default 14 characters a second, in μ-law 8 kHz."""
    return round(len(text) * 8000 / 14)


def audio_by_context(pipeline: RunningPipeline) -> list[int]:
    """Audio bytes that reached the end of the pipeline, per TTS context, in order."""
    sizes: dict[str | None, int] = {}
    for frame in pipeline.downstream.of_type(TTSAudioRawFrame):
        sizes[frame.context_id] = sizes.get(frame.context_id, 0) + len(frame.audio)
    return list(sizes.values())


def ws_tts(fake: FakeDeepgramSpeak, key: str = KEY) -> DeepgramTTSService:
    return DeepgramTTSService(
        api_key=key, base_url=fake.base_url, encoding="mulaw", sample_rate=8000
    )


# The WebSocket service appends a space to each sentence; with it, these lengths are
# multiples of 7 characters, so their μ-law audio is a whole, even number of bytes
# (pipecat treats TTS audio as 16-bit and would pad an odd tail).
WS_SENTENCES = ["Hello there, caller.", "See you then."]


async def test_ws_audio_length_follows_the_text() -> None:
    async with FakeDeepgramSpeak(KEY) as fake:
        async with run_pipeline([ws_tts(fake)]) as pipeline:
            await pipeline.queue(*(TTSSpeakFrame(text) for text in WS_SENTENCES))
            await pipeline.downstream.wait_for(TTSStoppedFrame, count=2)

    assert audio_by_context(pipeline) == [mulaw_bytes(f"{text} ") for text in WS_SENTENCES]
    audio = b"".join(frame.audio for frame in pipeline.downstream.of_type(TTSAudioRawFrame))
    assert set(audio) - {0xFF, 0x7F}, "the fake speaks a tone, not μ-law silence"
    record = fake.requests[0]
    assert record.query == {"model": "aura-2-helena-en", "encoding": "mulaw", "sample_rate": "8000"}
    assert [m["type"] for m in record.messages] == ["Speak", "Flush", "Speak", "Flush", "Close"]
    assert [m for m in record.sent if m["type"] == "Flushed"] == [
        {"type": "Flushed", "sequence_id": 0},
        {"type": "Flushed", "sequence_id": 1},
    ]


async def test_ws_characters_are_counted_by_the_fake_not_pipecat() -> None:
    """pipecat 1.14's DeepgramTTSService reports no TTS usage; the fake's count is the bill."""
    async with FakeDeepgramSpeak(KEY) as fake:
        async with run_pipeline([ws_tts(fake)]) as pipeline:
            await pipeline.queue(*(TTSSpeakFrame(text) for text in WS_SENTENCES))
            await pipeline.downstream.wait_for(TTSStoppedFrame, count=2)

    assert pipeline.metrics(TTSUsageMetricsData) == []
    assert fake.characters == sum(len(f"{text} ") for text in WS_SENTENCES)


async def test_http_audio_and_usage_match_the_fake() -> None:
    sentences = ["Your table is booked.", "Anything else?"]
    async with FakeDeepgramSpeak(KEY) as fake, aiohttp.ClientSession() as session:
        tts = DeepgramHttpTTSService(
            api_key=KEY,
            aiohttp_session=session,
            base_url=fake.http_url,
            encoding="mulaw",
            sample_rate=8000,
        )
        async with run_pipeline([tts]) as pipeline:
            await pipeline.queue(*(TTSSpeakFrame(text) for text in sentences))
            await pipeline.downstream.wait_for(TTSStoppedFrame, count=2)

    assert audio_by_context(pipeline) == [mulaw_bytes(text) for text in sentences]
    usage = [m.value for m in pipeline.metrics(TTSUsageMetricsData)]
    assert usage == [record.characters for record in fake.requests] == [21, 14]
    assert all(record.query["container"] == "none" for record in fake.requests)


async def test_wrong_key_is_refused_with_deepgrams_reason() -> None:
    async with FakeDeepgramSpeak(KEY) as fake:
        async with run_pipeline([ws_tts(fake, key="not-the-key")]) as pipeline:
            await pipeline.upstream.wait_for(ErrorFrame)

    assert "Deepgram refused the connection (HTTP 401): Invalid credentials." in pipeline.errors()
    assert fake.requests[0].status == 401


@pytest.mark.parametrize(
    ("options", "headers", "query", "status", "err_code"),
    [
        ({}, {}, MULAW_8K, 401, "INVALID_AUTH"),
        ({}, AUTH, f"{THALIA}&encoding=mulaw&sample_rate=24000", 400, "UNSUPPORTED_AUDIO_FORMAT"),
        ({}, AUTH, f"{THALIA}&encoding=opus&sample_rate=8000", 400, "UNSUPPORTED_AUDIO_FORMAT"),
        ({}, AUTH, "model=nova-3&encoding=mulaw&sample_rate=8000", 400, "Bad Request"),
        ({"outage": 503}, AUTH, MULAW_8K, 503, "SERVICE_UNAVAILABLE"),
    ],
)
async def test_ws_handshake_refusals(
    options: dict[str, int], headers: dict[str, str], query: str, status: int, err_code: str
) -> None:
    async with FakeDeepgramSpeak(KEY, **options) as fake:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{fake.base_url}/v1/speak?{query}", additional_headers=headers):
                pass

    response = refused.value.response
    assert response.status_code == status
    assert json.loads(response.body)["err_code"] == err_code


async def test_ws_flush_clear_and_close() -> None:
    async with (
        FakeDeepgramSpeak(KEY) as fake,
        connect(f"{fake.base_url}/v1/speak?{MULAW_8K}", additional_headers=AUTH) as ws,
    ):
        metadata = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "Speak", "text": "Hi there."}))
        await ws.send(json.dumps({"type": "Flush"}))
        spoken = b""
        while isinstance(message := await ws.recv(), bytes):
            spoken += message
        flushed = json.loads(message)
        await ws.send(json.dumps({"type": "Speak", "text": "Never mind."}))
        await ws.send(json.dumps({"type": "Clear"}))
        cleared = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "Flush"}))
        empty_flush = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "Close"}))
        await ws.wait_closed()

    assert metadata["type"] == "Metadata"
    assert metadata["model_name"] == "aura-2-thalia-en"
    assert len(spoken) == mulaw_bytes("Hi there.")
    assert flushed == {"type": "Flushed", "sequence_id": 0}
    assert cleared == {"type": "Cleared", "sequence_id": 1}
    assert empty_flush == {"type": "Flushed", "sequence_id": 2}
    assert ws.close_code == 1000
    assert fake.characters == len("Hi there.") + len("Never mind.")


async def test_rest_streams_raw_audio_with_deepgram_headers() -> None:
    text = "Thanks, see you soon."
    async with FakeDeepgramSpeak(KEY) as fake, aiohttp.ClientSession() as session:
        bodies: dict[str, bytes] = {}
        for encoding in ("mulaw", "linear16"):
            async with session.post(
                f"{fake.http_url}/v1/speak",
                params={**REST_MULAW_8K, "encoding": encoding},
                headers=AUTH,
                json={"text": text},
            ) as response:
                assert response.status == 200
                assert response.headers["dg-char-count"] == str(len(text))
                assert response.headers["dg-model-name"] == "aura-2-thalia-en"
                assert response.headers["dg-request-id"] == fake.requests[-1].request_id
                bodies[encoding] = await response.read()

    pcm = np.frombuffer(bodies["linear16"], dtype="<i2")
    assert len(pcm) == len(bodies["mulaw"]) == mulaw_bytes(text)
    assert np.sqrt(np.mean(pcm.astype(float) ** 2)) > 500, "a quiet tone, not silence"
    assert bodies["mulaw"] == ulaw_encode(pcm)
    assert fake.characters == 2 * len(text)


@pytest.mark.parametrize(
    ("query", "headers", "body", "status", "err_code"),
    [
        (REST_MULAW_8K, {}, {"text": "Hi."}, 401, "INVALID_AUTH"),
        # Aura's defaults are MP3 and a WAV container; the fake serves raw audio only.
        ({**REST_MULAW_8K, "encoding": "mp3"}, AUTH, {"text": "Hi."}, 400, "FAKE_UNSUPPORTED"),
        ({**REST_MULAW_8K, "container": "wav"}, AUTH, {"text": "Hi."}, 400, "FAKE_UNSUPPORTED"),
        (
            {**REST_MULAW_8K, "sample_rate": "22050"},
            AUTH,
            {"text": "Hi."},
            400,
            "UNSUPPORTED_AUDIO_FORMAT",
        ),
        (REST_MULAW_8K, AUTH, {"words": "Hi."}, 400, "Bad Request"),
    ],
)
async def test_rest_refusals(
    query: dict[str, str], headers: dict[str, str], body: dict[str, str], status: int, err_code: str
) -> None:
    async with FakeDeepgramSpeak(KEY) as fake, aiohttp.ClientSession() as session:
        async with session.post(
            f"{fake.http_url}/v1/speak", params=query, headers=headers, json=body
        ) as response:
            assert response.status == status
            assert (await response.json())["err_code"] == err_code
            assert response.headers["dg-error"]


async def test_rest_body_is_cut_after_the_allowed_requests() -> None:
    async with (
        FakeDeepgramSpeak(KEY, fail_after=1) as fake,
        aiohttp.ClientSession() as session,
    ):
        url = f"{fake.http_url}/v1/speak"
        async with session.post(
            url, params=REST_MULAW_8K, headers=AUTH, json={"text": "Hello there."}
        ) as response:
            assert len(await response.read()) == mulaw_bytes("Hello there.")
        async with session.post(
            url, params=REST_MULAW_8K, headers=AUTH, json={"text": "Hello again."}
        ) as response:
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()

    assert [record.dropped for record in fake.requests] == [False, True]


def test_g711_encoders_match_the_reference_codec() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop  # the reference codec: stdlib to 3.12, audioop-lts after

    pcm = np.arange(-32768, 32768, dtype=np.int16)
    assert ulaw_encode(pcm) == audioop.lin2ulaw(pcm.tobytes(), 2)
    assert alaw_encode(pcm) == audioop.lin2alaw(pcm.tobytes(), 2)
