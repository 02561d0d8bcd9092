"""Deepgram: Nova-3 streaming STT (`deepgram.stt`) and Aura-2 TTS (`deepgram.tts`).

Both speak μ-law 8 kHz natively, so with the defaults Twilio's bytes go to
Deepgram untouched and Aura-2's bytes go back to Twilio untouched: no codec
runs on this chain at all.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Literal

from pipecat.frames.frames import ErrorFrame, Frame
from pipecat.services.deepgram.stt import DeepgramSTTService
from pipecat.services.deepgram.tts import DeepgramTTSService
from pipecat.transcriptions.language import Language
from pydantic import Field, field_validator

from tollbridge import pipecat_internals
from tollbridge.phrase_cache import PhraseCaching
from tollbridge.providers.mulaw_tts import MulawAudio
from tollbridge.providers.silence_gate import SilenceGate
from tollbridge.stage import (
    AudioFormat,
    Billing,
    CallContext,
    ProviderOptions,
    Role,
    StageKind,
    did_you_mean,
)

STT_MODELS = [
    "nova-3", "nova-3-general", "nova-3-medical", "nova-2", "nova-2-general",
    "nova-2-phonecall", "nova-2-meeting", "enhanced", "base",
]  # fmt: skip
AURA_2_VOICES = [
    "thalia", "andromeda", "helena", "apollo", "arcas", "aries", "amalthea", "asteria",
    "athena", "atlas", "aurora", "callista", "cora", "cordelia", "delia", "draco",
    "electra", "harmonia", "hera", "hermes", "hyperion", "iris", "janus", "juno",
    "jupiter", "luna", "mars", "minerva", "neptune", "odysseus", "ophelia", "orion",
    "orpheus", "pandora", "phoebe", "pluto", "saturn", "selene", "theia", "vesta", "zeus",
]  # fmt: skip


class DeepgramSTTOptions(ProviderOptions):
    api_key_env: str = "DEEPGRAM_API_KEY"
    model: str = "nova-3"
    language: str = "en"
    encoding: Literal["mulaw", "linear16"] = "mulaw"
    sample_rate: Literal[8000, 16000] = 8000
    interim_results: bool = True
    endpointing: int | Literal[False] = Field(300)
    utterance_end_ms: int | None = Field(1000, ge=1000)
    smart_format: bool = True
    keyterms: list[str] = Field(default_factory=list)
    skip_silence: bool = False
    """Hold the caller's line silence back instead of streaming (and paying for) it."""
    silence_threshold_dbfs: float = Field(-45.0, ge=-90, le=0)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in STT_MODELS:
            raise ValueError(
                f'unknown model "{value}" for deepgram.stt{did_you_mean(value, STT_MODELS)}'
            )
        return value


class MulawAwareDeepgramSTT(DeepgramSTTService):
    """Nova over the WebSocket, billed for exactly the audio its open stream took.

    Deepgram bills streaming by the audio sent over an open socket. pipecat counts
    every frame handed to the service, as PCM16 (2 bytes a sample), even while the
    socket is down and the frame is dropped. Here a frame counts once it was sent
    on a live connection, at the encoding's bytes a sample; silence held back by
    the gate is neither sent nor counted.
    """

    def __init__(self, *, bytes_per_sample: int, silence_gate: SilenceGate | None, **kwargs):
        super().__init__(**kwargs)
        self._bytes_per_sample = bytes_per_sample
        self.silence_gate = silence_gate

    # overrides a pipecat private method, declared in tollbridge.pipecat_internals
    def _record_stt_audio_usage(self, audio: bytes | bytearray) -> None:
        """Not here: handed over is not sent (see `run_stt`)."""

    def avoided_usage(self) -> float:
        """Seconds of silence the gate held back (see `tollbridge.stage.AvoidedUsage`)."""
        return self.silence_gate.withheld_seconds if self.silence_gate else 0.0

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        if self.silence_gate is not None:
            audio = self.silence_gate.admit(audio)
            if not audio:
                yield None
                return
        connection = pipecat_internals.live_stt_connection(self)
        async for frame in super().run_stt(audio):
            yield frame
        # pipecat drops the connection when a send fails: still the same one means it went out
        if connection is not None and pipecat_internals.live_stt_connection(self) is connection:
            self._count_sent(audio)

    def _count_sent(self, audio: bytes) -> None:
        if self.sample_rate > 0:
            seconds = len(audio) / (self.sample_rate * self._bytes_per_sample)
            pipecat_internals.add_stt_seconds(self, seconds)


class DeepgramTTSOptions(ProviderOptions):
    api_key_env: str = "DEEPGRAM_API_KEY"
    voice: str = "aura-2-thalia-en"
    encoding: Literal["mulaw", "linear16"] = "mulaw"
    sample_rate: Literal[8000, 16000, 24000] = 8000
    speed: float | None = Field(None, ge=0.7, le=1.5)

    @field_validator("voice")
    @classmethod
    def _known_voice(cls, value: str) -> str:
        name = value.removeprefix("aura-2-").removesuffix("-en").removesuffix("-es")
        if not value.startswith("aura-") or (value.startswith("aura-2-") and name not in AURA_2_VOICES):
            known = [f"aura-2-{v}-en" for v in AURA_2_VOICES]
            raise ValueError(f'unknown voice "{value}" for deepgram.tts{did_you_mean(value, known)}')
        return value


class MeteredDeepgramTTS(DeepgramTTSService):
    """Aura-2 over the WebSocket, reporting the characters the open socket took.

    pipecat's WebSocket service sends text without reporting usage (its HTTP
    sibling does). Aura bills the characters of text it accepts, so each piece
    counts once it was sent; a piece the service could not send (no connection,
    the connection refused, the send failed) is not billed.
    """

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        sent = True
        async for frame in super().run_tts(text, context_id):
            sent = sent and not isinstance(frame, ErrorFrame)  # the base's only failure signal
            yield frame
        if sent and text.strip():
            await self.start_tts_usage_metrics(text)


class CachedDeepgramTTS(PhraseCaching, MeteredDeepgramTTS):
    """Aura-2 whose fixed phrases are served from the phrase cache (not metered: not sent)."""


class MulawDeepgramTTS(MulawAudio, CachedDeepgramTTS):
    """Aura-2 with μ-law output passed through byte for byte."""


class DeepgramSTT(StageKind):
    name = "deepgram.stt"
    role = Role.STT
    options = DeepgramSTTOptions
    description = "Deepgram Nova streaming speech-to-text (μ-law 8 kHz taken as is)"

    def build(self, options: DeepgramSTTOptions, call: CallContext) -> DeepgramSTTService:
        settings = DeepgramSTTService.Settings(
            model=options.model,
            language=Language(options.language),
            interim_results=options.interim_results,
            punctuate=True,
            smart_format=options.smart_format,
            endpointing=options.endpointing,
            utterance_end_ms=options.utterance_end_ms,
        )
        if options.keyterms:
            settings.keyterm = options.keyterms
        return MulawAwareDeepgramSTT(
            api_key=options.api_key(call.env),
            base_url=call.base_url(self.name, options.base_url) or "",
            encoding=options.encoding,
            sample_rate=options.sample_rate,
            bytes_per_sample=1 if options.encoding == "mulaw" else 2,
            silence_gate=SilenceGate(
                encoding=options.encoding,
                sample_rate=options.sample_rate,
                threshold_dbfs=options.silence_threshold_dbfs,
                # long enough for Deepgram to hear the pause that ends an utterance
                hangover_s=max(1.5, (options.utterance_end_ms or 0) / 1000 + 0.5),
            ) if options.skip_silence else None,
            settings=settings,
            audio_passthrough=False,  # caller audio ends here: fewer hops per 20 ms frame
        )

    def billing(self, options: DeepgramSTTOptions) -> Billing:
        return Billing("deepgram", options.model)

    def audio_in(self, options: DeepgramSTTOptions) -> AudioFormat:
        return AudioFormat("pcm16" if options.encoding == "linear16" else "mulaw", options.sample_rate)


class DeepgramTTS(StageKind):
    name = "deepgram.tts"
    role = Role.TTS
    options = DeepgramTTSOptions
    description = "Deepgram Aura-2 text-to-speech (μ-law 8 kHz out, nothing transcoded)"

    def build(self, options: DeepgramTTSOptions, call: CallContext) -> DeepgramTTSService:
        service = MulawDeepgramTTS if options.encoding == "mulaw" else CachedDeepgramTTS
        return service(
            api_key=options.api_key(call.env),
            base_url=call.base_url(self.name, options.base_url) or "wss://api.deepgram.com",
            encoding=options.encoding,
            sample_rate=options.sample_rate,
            settings=DeepgramTTSService.Settings(voice=options.voice, speed=options.speed),
        )

    def billing(self, options: DeepgramTTSOptions) -> Billing:
        return Billing("deepgram", options.voice)

    def audio_out(self, options: DeepgramTTSOptions) -> AudioFormat:
        return AudioFormat("pcm16" if options.encoding == "linear16" else "mulaw", options.sample_rate)
