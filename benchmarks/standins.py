"""Stand-in STT, LLM and TTS with fixed, known delays, so provider time can be subtracted.

They are real pipecat services (`STTService`, `LLMService`, `TTSService`
subclasses), so a pipeline built with them does the same per-frame work a
provider-backed one does; only the network is gone. The same classes, logic
and delays serve tollbridge (μ-law in and out: no codec on the chain) and the
plain-pipecat reference (PCM16 in and out, since pipecat's Twilio serializer
transcodes). The bare relay uses `Endpointer` and the constants directly.

One turn, as the caller hears it: the caller's tone ends; after
`ENDPOINT_MS` of line silence the STT emits a final transcript; the user turn
ends `TURN_STOP_S` later (pipecat's transcript-based turn stop); the LLM
answers after `LLM_DELAY_S`; the TTS starts its `REPLY_S` of audio after
`TTS_DELAY_S`. Everything beyond `FIXED_DELAY_S` is what the bridge adds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import warnings
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, Literal

from pipecat.frames.frames import (
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
)
from pipecat.metrics.metrics import LLMTokenUsage
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings, ServiceSettings, STTSettings, TTSSettings
from pipecat.services.stt_service import STTService
from pipecat.services.tts_service import TTSService
from pipecat.utils.time import time_now_iso8601

from tollbridge.registry import Registry, default_registry
from tollbridge.stage import (
    MULAW_8K,
    AudioFormat,
    Billing,
    BrainOptions,
    CallContext,
    Role,
    StageKind,
    StageOptions,
)

with warnings.catch_warnings():  # stdlib audioop until 3.13, audioop-lts after
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

Encoding = Literal["mulaw", "pcm16"]

SAMPLE_RATE = 8000
ENDPOINT_MS = 200
"""Line silence after speech that makes the STT emit its final transcript."""
TURN_STOP_S = 0.2
"""The user turn ends this long after the final transcript (transcript-based turn stop)."""
LLM_DELAY_S = 0.15
TTS_DELAY_S = 0.10
FIXED_DELAY_S = ENDPOINT_MS / 1000 + TURN_STOP_S + LLM_DELAY_S + TTS_DELAY_S
"""Caller's last speech frame → first agent audio, if the bridge added nothing."""
REPLY_S = 2.0
REPLY_CHUNK_MS = 20
TRANSCRIPT = "I would like to book a haircut tomorrow."
REPLY_TEXT = "Sure, I can book that for you."
REPLY_TOKENS = LLMTokenUsage(prompt_tokens=120, completion_tokens=9, total_tokens=129)
LOUD = 500
"""Peak PCM16 amplitude above which a frame counts as speech."""

VERTICAL = Path(__file__).with_name("vertical.toml")


def tone(seconds: float, hz: float, amplitude: int = 8000) -> bytes:
    """A sine tone as PCM16 8 kHz: the caller's "speech" and the agent's "voice"."""
    samples = int(seconds * SAMPLE_RATE)
    return b"".join(
        int(amplitude * math.sin(2 * math.pi * hz * n / SAMPLE_RATE)).to_bytes(2, "little", signed=True)
        for n in range(samples)
    )


REPLY_PCM = tone(REPLY_S, 440)
REPLY_MULAW = audioop.lin2ulaw(REPLY_PCM, 2)
_MULAW_LOUD = bytes(
    int(abs(int.from_bytes(audioop.ulaw2lin(bytes([code]), 2), "little", signed=True)) > LOUD)
    for code in range(256)
)
"""μ-law code → 1 if it decodes above LOUD: a loudness test without decoding each frame."""


def reply_chunks(encoding: Encoding) -> list[bytes]:
    """The TTS reply cut into REPLY_CHUNK_MS pieces, in the stage's output encoding."""
    audio, width = (REPLY_MULAW, 1) if encoding == "mulaw" else (REPLY_PCM, 2)
    step = SAMPLE_RATE * REPLY_CHUNK_MS // 1000 * width
    return [audio[i : i + step] for i in range(0, len(audio), step)]


def _unsupported(kind: type[ServiceSettings]) -> Any:
    """Settings with every field None: a stand-in has no model, voice or language."""
    return kind(**{f.name: None for f in dataclasses.fields(kind) if f.name != "extra"})


class Endpointer:
    """Finds the end of the caller's utterance in the audio itself, by energy.

    Speech is any frame with a sample louder than `LOUD`; the utterance ends
    after `ENDPOINT_MS` of quiet audio following speech. μ-law is tested
    through a 256-entry table and PCM16 with `audioop.max`, so both cost one
    C-level pass per frame and neither transcodes.
    """

    def __init__(self, encoding: Encoding):
        self._mulaw = encoding == "mulaw"
        self._bytes_per_ms = SAMPLE_RATE // 1000 * (1 if self._mulaw else 2)
        self._speaking = False
        self._quiet_ms = 0.0

    def _loud(self, audio: bytes) -> bool:
        if self._mulaw:
            return b"\x01" in audio.translate(_MULAW_LOUD)
        return audioop.max(audio, 2) > LOUD

    def feed(self, audio: bytes) -> bool:
        """True when this frame completes ENDPOINT_MS of silence after speech."""
        if self._loud(audio):
            self._speaking, self._quiet_ms = True, 0.0
            return False
        if not self._speaking:
            return False
        self._quiet_ms += len(audio) / self._bytes_per_ms
        if self._quiet_ms < ENDPOINT_MS:
            return False
        self._speaking, self._quiet_ms = False, 0.0
        return True


class StandInSTT(STTService):
    """Emits a fixed final transcript when the Endpointer hears the caller stop."""

    def __init__(self, *, encoding: Encoding, **kwargs):
        super().__init__(
            sample_rate=SAMPLE_RATE,
            ttfs_p99_latency=ENDPOINT_MS / 1000,
            settings=_unsupported(STTSettings),
            **kwargs,
        )
        self._endpointer = Endpointer(encoding)

    def can_generate_metrics(self) -> bool:
        return True

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        if self._endpointer.feed(audio):
            await self.emit_stt_usage_metrics()
            yield TranscriptionFrame(TRANSCRIPT, self._user_id, time_now_iso8601(), finalized=True)


class StandInLLM(LLMService):
    """Answers every context with the same text after LLM_DELAY_S, and reports tokens."""

    def __init__(self, **kwargs):
        super().__init__(settings=_unsupported(LLMSettings), **kwargs)

    def can_generate_metrics(self) -> bool:
        return True

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if not isinstance(frame, LLMContextFrame):
            await self.push_frame(frame, direction)
            return
        await self.push_frame(LLMFullResponseStartFrame())
        await self.start_processing_metrics()
        await asyncio.sleep(LLM_DELAY_S)
        await self._push_llm_text(REPLY_TEXT)
        await self.start_llm_usage_metrics(REPLY_TOKENS)
        await self.stop_processing_metrics()
        await self.push_frame(LLMFullResponseEndFrame())


class StandInTTS(TTSService):
    """Speaks any text as REPLY_S of fixed audio, starting after TTS_DELAY_S."""

    def __init__(self, *, encoding: Encoding, **kwargs):
        super().__init__(
            sample_rate=SAMPLE_RATE,
            push_start_frame=True,
            push_stop_frames=True,
            settings=_unsupported(TTSSettings),
            **kwargs,
        )
        self._chunks = reply_chunks(encoding)

    def can_generate_metrics(self) -> bool:
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        await self.start_tts_usage_metrics(text)
        await asyncio.sleep(TTS_DELAY_S)
        for chunk in self._chunks:
            yield TTSAudioRawFrame(chunk, SAMPLE_RATE, 1, context_id=context_id)


class StandInOptions(StageOptions):
    """The stand-ins take no options: their delays are this module's constants."""


class StandInLLMOptions(StandInOptions, BrainOptions):
    """A brain's options (the builder reads its prompt and tools; a stand-in has none)."""


class _StandIn(StageKind):
    options = StandInOptions

    def billing(self, options: StandInOptions) -> Billing:
        """Metered like a provider, so the meter's work per call is the real one."""
        return Billing("bench", "stand-in")


class StandInSTTKind(_StandIn):
    name = "bench.stt"
    role = Role.STT
    description = "Benchmark stand-in STT (energy endpointing, μ-law 8 kHz in)"

    def build(self, options: StandInOptions, call: CallContext) -> StandInSTT:
        # As tollbridge's provider STT stages do: caller audio ends at the STT.
        return StandInSTT(encoding="mulaw", audio_passthrough=False)

    def audio_in(self, options: StandInOptions) -> AudioFormat:
        return MULAW_8K


class StandInLLMKind(_StandIn):
    name = "bench.llm"
    role = Role.LLM
    options = StandInLLMOptions
    description = "Benchmark stand-in LLM (fixed reply after a fixed delay)"

    def build(self, options: StandInOptions, call: CallContext) -> StandInLLM:
        return StandInLLM()


class StandInTTSKind(_StandIn):
    name = "bench.tts"
    role = Role.TTS
    description = "Benchmark stand-in TTS (fixed μ-law audio after a fixed delay)"

    def build(self, options: StandInOptions, call: CallContext) -> StandInTTS:
        return StandInTTS(encoding="mulaw")

    def audio_out(self, options: StandInOptions) -> AudioFormat:
        return MULAW_8K


def registry() -> Registry:
    """The installed kinds plus the stand-ins, for the benchmark process only."""
    kinds = Registry()
    for kind in (*default_registry().kinds(), StandInSTTKind, StandInLLMKind, StandInTTSKind):
        kinds.register(kind)
    return kinds
