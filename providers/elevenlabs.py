"""ElevenLabs streaming TTS (`elevenlabs.tts`) over the multi-context WebSocket.

pipecat asks ElevenLabs for `pcm_<rate>` and leaves μ-law to the Twilio
serializer; we ask for `ulaw_8000`, which Twilio plays as is.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Literal

from pipecat.frames.frames import Frame
from pipecat.services.elevenlabs.tts import ElevenLabsTTSService
from pydantic import Field

from tollbridge import pipecat_internals
from tollbridge.phrase_cache import PhraseCaching
from tollbridge.providers.mulaw_tts import MulawAudio
from tollbridge.stage import (
    MULAW_8K,
    AudioFormat,
    Billing,
    CallContext,
    ProviderOptions,
    Role,
    StageKind,
)


class ElevenLabsTTSOptions(ProviderOptions):
    api_key_env: str = "ELEVENLABS_API_KEY"
    voice: str = Field("21m00Tcm4TlvDq8ikWAM", min_length=1)
    model: Literal[
        "eleven_flash_v2_5", "eleven_turbo_v2_5", "eleven_multilingual_v2", "eleven_v3"
    ] = "eleven_flash_v2_5"
    output: Literal["ulaw_8000", "pcm_8000", "pcm_16000", "pcm_24000"] = "ulaw_8000"
    language: str | None = None
    stability: float | None = Field(None, ge=0, le=1)
    similarity_boost: float | None = Field(None, ge=0, le=1)
    speed: float | None = Field(None, ge=0.7, le=1.2)


class MulawElevenLabsTTS(PhraseCaching, ElevenLabsTTSService):
    """Requests a fixed output format (μ-law 8 kHz by default) instead of pcm_<rate>."""

    def __init__(self, *, output_format: str, **kwargs):
        super().__init__(**kwargs)
        self._fixed_output_format = output_format
        self._spoken_contexts: set[str] = set()
        """Contexts text was sent in: the only ones ElevenLabs has opened."""

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        self._spoken_contexts.add(context_id)
        async for frame in super().run_tts(text, context_id):
            yield frame

    # overrides a pipecat private method, declared in tollbridge.pipecat_internals
    async def _connect_websocket(self):
        pipecat_internals.set_elevenlabs_output_format(self, self._fixed_output_format)
        await super()._connect_websocket()

    # overrides a pipecat private method, declared in tollbridge.pipecat_internals
    async def _close_context(self, context_id: str):
        # not one served from the phrase cache, nor a reply's own context when each of its
        # sentences was spoken in a context of its own: ElevenLabs never opened those
        if context_id in self._spoken_contexts and not self.served_from_cache(context_id):
            self._spoken_contexts.discard(context_id)
            await super()._close_context(context_id)


class MulawBytesElevenLabsTTS(MulawAudio, MulawElevenLabsTTS):
    """`ulaw_8000` output passed through byte for byte."""


class ElevenLabsTTS(StageKind):
    name = "elevenlabs.tts"
    role = Role.TTS
    options = ElevenLabsTTSOptions
    description = "ElevenLabs streaming TTS (ulaw_8000 out, nothing transcoded)"

    def build(self, options: ElevenLabsTTSOptions, call: CallContext) -> ElevenLabsTTSService:
        rate = self.audio_out(options).sample_rate
        settings = ElevenLabsTTSService.Settings(
            voice=options.voice,
            model=options.model,
            stability=options.stability,
            similarity_boost=options.similarity_boost,
            speed=options.speed,
        )
        service = MulawBytesElevenLabsTTS if options.output == "ulaw_8000" else MulawElevenLabsTTS
        return service(
            api_key=options.api_key(call.env),
            url=call.base_url(self.name, options.base_url) or "wss://api.elevenlabs.io",
            sample_rate=rate,
            output_format=options.output,
            settings=settings,
        )

    def billing(self, options: ElevenLabsTTSOptions) -> Billing:
        return Billing("elevenlabs", options.model)

    def audio_out(self, options: ElevenLabsTTSOptions) -> AudioFormat:
        if options.output == "ulaw_8000":
            return MULAW_8K
        return AudioFormat("pcm16", int(options.output.split("_")[1]))
