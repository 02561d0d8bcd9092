"""The ElevenLabs multi-context TTS fake, driven by pipecat's ElevenLabsTTSService and a raw socket."""

import asyncio
import base64
import json

import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.metrics.metrics import TTSUsageMetricsData
from pipecat.services.elevenlabs.tts import ElevenLabsTTSService
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from tests.providers.harness import run_pipeline
from tollbridge.providers.elevenlabs import MulawBytesElevenLabsTTS, MulawElevenLabsTTS
from tollbridge.testing.fakes.elevenlabs import FakeElevenLabs

KEY = "xi-test-key"
VOICE = "voice-1"
VOICE_SETTINGS = {"stability": 0.5, "similarity_boost": 0.8}
XI_KEY = {"xi-api-key": KEY}
FLASH = "model_id=eleven_flash_v2_5"
ULAW_8K = f"{FLASH}&output_format=ulaw_8000&auto_mode=false"


def samples(text: str) -> int:
    """What the fake speaks for `text` at its default 14 characters a second, at 8 kHz."""
    return round(len(text) * 8000 / 14)


def tts_for(fake: FakeElevenLabs, key: str = KEY) -> ElevenLabsTTSService:
    return ElevenLabsTTSService(
        api_key=key, url=fake.base_url, settings=ElevenLabsTTSService.Settings(voice=VOICE)
    )


def stream(fake: FakeElevenLabs, query: str = ULAW_8K) -> connect:
    return connect(
        f"{fake.base_url}/v1/text-to-speech/{VOICE}/multi-stream-input?{query}",
        additional_headers=XI_KEY,
    )


async def test_audio_alignment_and_usage_through_pipecat() -> None:
    async with FakeElevenLabs(KEY) as fake:
        async with run_pipeline([tts_for(fake)]) as pipeline:
            await pipeline.queue(
                TTSSpeakFrame("Hello there, caller."),
                LLMFullResponseStartFrame(),
                LLMTextFrame("How can I help? "),
                LLMTextFrame("I am here."),
                LLMFullResponseEndFrame(),
            )
            await pipeline.downstream.wait_for(TTSStoppedFrame, count=2)

    audio: dict[str | None, int] = {}
    for frame in pipeline.downstream.of_type(TTSAudioRawFrame):
        audio[frame.context_id] = audio.get(frame.context_id, 0) + len(frame.audio)
    # pcm_8000: two bytes a sample, one audio message per sentence sent.
    expected = [samples("Hello there, caller."), samples("How can I help?") + samples("I am here.")]
    assert list(audio.values()) == [2 * n for n in expected]
    words = [frame.text for frame in pipeline.downstream.of_type(TTSTextFrame)]
    assert words[:3] == ["Hello", "there,", "caller."]
    usage = [m.value for m in pipeline.metrics(TTSUsageMetricsData)]
    assert sum(usage) == fake.characters == len("Hello there, caller.How can I help?I am here.")
    record = fake.requests[0]
    assert record.path == f"/v1/text-to-speech/{VOICE}/multi-stream-input"
    assert record.query["output_format"] == "pcm_8000"
    assert record.headers["xi-api-key"] == "<redacted>"
    assert record.messages[-1] == {"close_socket": True}


@pytest.mark.parametrize(
    ("service", "output", "rate", "width"),
    [(MulawBytesElevenLabsTTS, "ulaw_8000", 8000, 1), (MulawElevenLabsTTS, "pcm_16000", 16000, 2)],
)
async def test_our_service_asks_for_its_output_format(
    service: type[MulawElevenLabsTTS], output: str, rate: int, width: int
) -> None:
    """Not pcm_<rate> as pipecat would; μ-law's odd byte count passes as sent, unpadded."""
    text = "Hello there, caller."  # 11429 samples at 8 kHz: an odd number of μ-law bytes
    async with FakeElevenLabs(KEY) as fake:
        tts = service(
            api_key=KEY, url=fake.base_url, sample_rate=rate, output_format=output,
            settings=ElevenLabsTTSService.Settings(voice=VOICE),
        )
        async with run_pipeline([tts]) as pipeline:
            await pipeline.queue(TTSSpeakFrame(text))
            await pipeline.downstream.wait_for(TTSStoppedFrame)

    assert [record.query["output_format"] for record in fake.requests] == [output]
    audio = sum(len(frame.audio) for frame in pipeline.downstream.of_type(TTSAudioRawFrame))
    assert audio == round(len(text) * rate / 14) * width


async def test_wrong_key_is_refused_at_the_handshake() -> None:
    async with FakeElevenLabs(KEY) as fake:
        async with run_pipeline([tts_for(fake, key="not-the-key")]) as pipeline:
            await pipeline.upstream.wait_for(ErrorFrame)

    assert any("401" in error for error in pipeline.errors())
    assert fake.requests[0].status == 401


@pytest.mark.parametrize(
    ("options", "headers", "query", "status", "detail"),
    [
        ({}, {}, ULAW_8K, 401, "invalid_auth"),
        ({}, XI_KEY, f"{FLASH}&output_format=pcm_12345", 400, "invalid_output_format"),
        ({}, XI_KEY, f"{FLASH}&output_format=mp3_44100_128", 400, "fake_unsupported"),
        ({}, XI_KEY, "model_id=tts-1&output_format=ulaw_8000", 400, "model_not_found"),
        ({"outage": 503}, XI_KEY, ULAW_8K, 503, "service_unavailable"),
    ],
)
async def test_handshake_refusals(
    options: dict[str, int], headers: dict[str, str], query: str, status: int, detail: str
) -> None:
    async with FakeElevenLabs(KEY, **options) as fake:
        url = f"{fake.base_url}/v1/text-to-speech/{VOICE}/multi-stream-input?{query}"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, additional_headers=headers):
                pass

    response = refused.value.response
    assert response.status_code == status
    assert json.loads(response.body)["detail"]["status"] == detail


async def test_contexts_flush_close_and_close_socket() -> None:
    async with FakeElevenLabs(KEY) as fake, stream(fake) as ws:
        for message in (
            {"text": " ", "context_id": "a", "voice_settings": VOICE_SETTINGS},
            {"text": "Hi there. ", "context_id": "a"},
            {"text": "", "context_id": "a"},
            {"text": " ", "context_id": "b", "voice_settings": VOICE_SETTINGS},
            {"text": "Bye now. ", "context_id": "b"},
        ):
            await ws.send(json.dumps(message))
        with pytest.raises(TimeoutError):  # without auto_mode, text waits for a flush
            await asyncio.wait_for(ws.recv(), 0.2)
        await ws.send(json.dumps({"context_id": "a", "flush": True}))
        spoken = json.loads(await ws.recv())
        await ws.send(json.dumps({"context_id": "a", "close_context": True}))
        closed_a = json.loads(await ws.recv())
        await ws.send(json.dumps({"close_socket": True}))
        rest = [json.loads(message) async for message in ws]

    assert spoken["contextId"] == "a"
    assert spoken["isFinal"] is None
    assert len(base64.b64decode(spoken["audio"])) == samples("Hi there. ")  # μ-law: a byte each
    alignment = spoken["alignment"]
    assert alignment["chars"] == list("Hi there. ")
    assert alignment["charStartTimesMs"][0] == 0
    assert sum(alignment["charDurationsMs"]) == round(len("Hi there. ") * 1000 / 14)
    assert closed_a == {"isFinal": True, "contextId": "a"}
    assert [(m["contextId"], m["isFinal"]) for m in rest] == [("b", None), ("b", True)]
    assert ws.close_code == 1000
    assert fake.characters == len("Hi there. ") + len("Bye now. ")


async def test_voice_settings_after_a_context_opened_are_refused() -> None:
    async with FakeElevenLabs(KEY) as fake, stream(fake) as ws:
        await ws.send(json.dumps({"text": "", "context_id": "c"}))
        await ws.send(
            json.dumps({"text": " ", "context_id": "c", "voice_settings": VOICE_SETTINGS})
        )
        await ws.wait_closed()

    assert ws.close_code == 1008
    assert fake.characters == 0
    assert fake.failures == ["1008: voice_settings are only accepted in a context's first message"]


async def test_fail_after_drops_the_socket_mid_stream() -> None:
    async with FakeElevenLabs(KEY, fail_after=2) as fake, stream(fake) as ws:
        await ws.send(
            json.dumps({"text": " ", "context_id": "a", "voice_settings": VOICE_SETTINGS})
        )
        await ws.send(json.dumps({"text": "Hello. ", "context_id": "a", "flush": True}))
        received = []
        with pytest.raises(ConnectionClosedError):
            async for message in ws:
                received.append(json.loads(message))

    assert [m["contextId"] for m in received] == ["a"]
    assert fake.requests[0].dropped
