"""Each provider's usage is billed as the provider bills it: what its fake took, not what was
handed to the service. The fakes die mid-stream here and the meter must follow what they got."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from pipecat.frames.frames import (
    ErrorFrame,
    InputAudioRawFrame,
    MetricsFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameProcessor

from tests.conftest import RunningBridge, running_bridge
from tests.providers.harness import RunningPipeline, run_pipeline
from tollbridge.config import Vertical
from tollbridge.meter import CostMeter
from tollbridge.providers.deepgram import (
    DeepgramSTT,
    DeepgramSTTOptions,
    DeepgramTTS,
    DeepgramTTSOptions,
)
from tollbridge.providers.elevenlabs import ElevenLabsTTS, ElevenLabsTTSOptions
from tollbridge.stage import CallContext, StageKind
from tollbridge.testing.cassette import Cassette
from tollbridge.testing.fakes.deepgram_listen import FakeDeepgramListen
from tollbridge.testing.fakes.deepgram_speak import FakeDeepgramSpeak
from tollbridge.testing.fakes.elevenlabs import FakeElevenLabs
from tollbridge.testing.softphone import CallScript

KEY = "billing-test-key"
ENV = {"DEEPGRAM_API_KEY": KEY, "ELEVENLABS_API_KEY": KEY}
CHUNK = bytes(range(1, 161)) * 5
"""100 ms of μ-law 8 kHz (not silence, so a silence gate would pass it)."""


def build(kind: StageKind, options: object, vertical: Vertical, url: str) -> tuple[FrameProcessor, CostMeter]:
    """The stage's service as a call builds it, pointed at `url`, with a meter attached."""
    call = CallContext(vertical=vertical, call_sid="CAbilling", base_urls={kind.name: url}, env=ENV)
    service = kind.build(options, call)
    meter = CostMeter(call)
    billing = kind.billing(options)
    assert billing is not None
    meter.attach(service, billing, kind.role)
    return service, meter


async def metered(meter: CostMeter, running: RunningPipeline) -> CostMeter:
    """Hand the meter every metrics frame that reached the end, as the call's worker does."""
    for frame in running.downstream.of_type(MetricsFrame):
        await meter.on_metrics(frame)
    return meter


async def until(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.005)


async def stream_audio(running: RunningPipeline, chunks: int) -> None:
    """Caller audio a chunk at a time, with a breath between, as a live call sends it."""
    for _ in range(chunks):
        await running.queue(InputAudioRawFrame(CHUNK, sample_rate=8000, num_channels=1))
        await asyncio.sleep(0.01)


async def test_stt_bills_the_audio_the_live_stream_took_not_what_followed_its_death(
    frontdesk: Vertical,
) -> None:
    async with FakeDeepgramListen(KEY) as fake:
        stt, meter = build(DeepgramSTT(), DeepgramSTTOptions(), frontdesk, fake.base_url)
        async with run_pipeline([stt]) as running:
            await stream_audio(running, 10)
            await until(lambda: sum(r.binary_bytes for r in fake.requests) == 10 * len(CHUNK))
            await fake.kill()
            await stream_audio(running, 15)  # handed to the service while its socket is gone
            await running.upstream.wait_for(ErrorFrame)

    [usage] = (await metered(meter, running)).usage().stt
    took = sum(record.audio_seconds for record in fake.requests)
    assert took == 1.0
    assert usage.audio_seconds == Decimal(str(took)), "billed what Deepgram received, no more"


async def test_stt_with_a_silence_gate_bills_only_what_it_sent(frontdesk: Vertical) -> None:
    async with FakeDeepgramListen(KEY) as fake:
        options = DeepgramSTTOptions(skip_silence=True)
        stt, meter = build(DeepgramSTT(), options, frontdesk, fake.base_url)
        async with run_pipeline([stt]) as running:
            await stream_audio(running, 4)
            await until(lambda: sum(r.binary_bytes for r in fake.requests) == 4 * len(CHUNK))
            await fake.kill()
            await stream_audio(running, 6)
            await running.upstream.wait_for(ErrorFrame)

    [usage] = (await metered(meter, running)).usage().stt
    assert usage.audio_seconds == Decimal(str(sum(r.audio_seconds for r in fake.requests))) == Decimal("0.4")


FIRST = "Thanks for calling, how can I help?"


def spoken_characters(fake: FakeDeepgramSpeak | FakeElevenLabs) -> int:
    """The first sentence, as the service sent it (Aura's with pipecat's trailing space)."""
    texts = [m["text"] for r in fake.requests for m in r.messages if m.get("text", "").strip()]
    assert "".join(texts).strip() == FIRST, "the fake died after the first sentence"
    return sum(map(len, texts))


async def speak_until_the_synthesizer_dies(
    service: FrameProcessor, fake: FakeDeepgramSpeak | FakeElevenLabs
) -> RunningPipeline:
    """One sentence spoken in full, then the fake dies and two more sentences are refused."""
    async with run_pipeline([service]) as running:
        await running.queue(TTSSpeakFrame(FIRST))
        await running.downstream.wait_for(TTSStoppedFrame)
        await fake.kill()
        await running.queue(TTSSpeakFrame("Sorry, I did not catch that."))
        await running.queue(TTSSpeakFrame("Could you say it again?"))
        await running.upstream.wait_for(ErrorFrame, count=2)
        # the caller hangs up: the turns that failed leave contexts an EndFrame would wait on
        await running.worker.cancel()
    return running


async def test_aura_bills_the_characters_it_took_not_those_sent_after_it_died(
    frontdesk: Vertical,
) -> None:
    async with FakeDeepgramSpeak(KEY) as fake:
        tts, meter = build(DeepgramTTS(), DeepgramTTSOptions(), frontdesk, fake.base_url)
        running = await speak_until_the_synthesizer_dies(tts, fake)

    [usage] = (await metered(meter, running)).usage().tts
    assert usage.characters == fake.characters == spoken_characters(fake)


async def test_elevenlabs_bills_the_characters_it_took_not_those_sent_after_it_died(
    frontdesk: Vertical,
) -> None:
    async with FakeElevenLabs(KEY) as fake:
        tts, meter = build(ElevenLabsTTS(), ElevenLabsTTSOptions(), frontdesk, fake.base_url)
        running = await speak_until_the_synthesizer_dies(tts, fake)

    [usage] = (await metered(meter, running)).usage().tts
    assert usage.characters == fake.characters == spoken_characters(fake)


async def test_a_synthesizer_that_refuses_the_connection_bills_nothing(frontdesk: Vertical) -> None:
    async with FakeDeepgramSpeak(KEY, outage=503) as fake:
        tts, meter = build(DeepgramTTS(), DeepgramTTSOptions(), frontdesk, fake.base_url)
        async with run_pipeline([tts]) as running:
            await running.queue(TTSSpeakFrame("Thanks for calling GlamBook salon."))
            await running.upstream.wait_for(ErrorFrame, count=2)

    assert fake.requests and all(record.status == 503 for record in fake.requests)
    assert (await metered(meter, running)).usage().tts == []


# --- Whole calls through the bridge: the ledger record follows what the fakes took ------------

PARAMS = {"vertical": "frontdesk", "tenant": "acme"}
SPEECH = b"\x10\x90" * 8000 * 2
"""4 s of a tone in μ-law, so a final transcript is due within it."""


async def call_while(running: RunningBridge, kill_when: Callable[[], bool], fake: Any) -> None:
    """Place a call; kill `fake` as soon as `kill_when()` holds."""
    phone = asyncio.create_task(running.softphone().call(
        CallScript(audio=SPEECH, parameters=PARAMS, settle_s=1.0, speed=2.0, max_s=20)
    ))
    await until(kill_when, seconds=10)
    await fake.kill()
    await phone


async def test_a_call_whose_stt_dies_bills_the_seconds_deepgram_received(frontdesk: Vertical) -> None:
    cassette = Cassette(stt=[{"at": 3.5, "transcript": "hello", "is_final": True, "speech_final": True}])
    async with running_bridge(frontdesk, cassette) as running:
        listen = running.fakes.fakes["deepgram.stt"]
        await call_while(running, lambda: sum(r.audio_seconds for r in listen.requests) >= 1.0, listen)
        [usage] = await running.finished()

    took = sum(record.audio_seconds for record in listen.requests)
    assert 1.0 <= took < 2.0, "the socket died a second into a four-second call"
    [stt] = usage.stt
    # frames the socket accepted after the server died, before the client saw it die, are
    # billed but were never read: the client cannot tell. A few frames (0.1 s) on a loaded
    # machine; Deepgram would not bill them.
    received = Decimal(str(round(took, 6)))
    assert received <= stt.audio_seconds <= received + Decimal("0.1")


async def test_a_call_whose_tts_dies_bills_the_characters_aura_took(frontdesk: Vertical) -> None:
    cassette = Cassette(
        stt=[{"at": 2.5, "transcript": "what are your opening hours", "is_final": True, "speech_final": True}],
        llm=[{"match": "opening hours", "text": "We are open Monday to Friday, eight to six."}],
    )
    async with running_bridge(frontdesk, cassette) as running:
        speak = running.fakes.fakes["deepgram.tts"]
        await call_while(running, lambda: speak.characters > 0, speak)
        [usage] = await running.finished()

    assert usage.failed_provider == "deepgram.tts/aura-2-thalia-en", "the call ended with it"
    [tts] = usage.tts
    assert 0 < tts.characters == speak.characters
