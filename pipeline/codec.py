"""G.711 μ-law ↔ PCM16 and resampling, as pipeline stages inserted only where needed.

Twilio speaks μ-law 8 kHz. When the next stage takes the same (Deepgram STT
with `encoding=mulaw`, Aura-2 or ElevenLabs with μ-law output) the builder
inserts nothing. Otherwise exactly one stage converts, once: decode (and
resample) on the way in, (resample and) encode on the way out. Each stage
counts what it converted, so a benchmark can show how much codec work a chain
does per call-minute.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    OutputAudioRawFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from tollbridge.stage import AudioFormat

with warnings.catch_warnings():  # stdlib audioop until 3.13, audioop-lts after
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = ["AudioConverter", "codec_between", "mulaw_to_pcm16", "pcm16_to_mulaw"]


def mulaw_to_pcm16(data: bytes) -> bytes:
    """G.711 μ-law → 16-bit little-endian PCM (exact table lookup)."""
    return audioop.ulaw2lin(data, 2)


def pcm16_to_mulaw(data: bytes) -> bytes:
    """16-bit PCM → G.711 μ-law."""
    if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
        data = audioop.byteswap(data, 2)
    return audioop.lin2ulaw(data, 2)


class _Resampler:
    """Stateful PCM16 mono resampler: keeps filter state across 20 ms chunks."""

    def __init__(self, from_rate: int, to_rate: int):
        self.from_rate, self.to_rate = from_rate, to_rate
        self._state: Any = None  # audioop.ratecv's opaque filter state

    def __call__(self, pcm: bytes) -> bytes:
        if self.from_rate == self.to_rate:
            return pcm
        out, self._state = audioop.ratecv(pcm, 2, 1, self.from_rate, self.to_rate, self._state)
        return out


class AudioConverter(FrameProcessor):
    """Converts audio frames flowing one way from one format to another, once.

    `direction` tells which frames it touches: caller audio on the way in
    (InputAudioRawFrame) or agent audio on the way out (OutputAudioRawFrame).
    Everything else passes through untouched.
    """

    def __init__(self, source: AudioFormat, target: AudioFormat, *, inbound: bool):
        super().__init__(name=f"codec {source}→{target}")
        self.source, self.target, self.inbound = source, target, inbound
        self._resample = _Resampler(source.sample_rate, target.sample_rate)
        self.conversions = 0
        self.resamples = 0
        self.bytes_in = 0

    def convert(self, data: bytes) -> bytes:
        self.conversions += 1
        self.bytes_in += len(data)
        pcm = mulaw_to_pcm16(data) if self.source.encoding == "mulaw" else data
        if self.source.sample_rate != self.target.sample_rate:
            self.resamples += 1
            pcm = self._resample(pcm)
        return pcm16_to_mulaw(pcm) if self.target.encoding == "mulaw" else pcm

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        audio_type = InputAudioRawFrame if self.inbound else OutputAudioRawFrame
        if isinstance(frame, audio_type):
            frame.audio = self.convert(frame.audio)
            frame.sample_rate = self.target.sample_rate
            frame.num_frames = len(frame.audio) // (2 if self.target.encoding == "pcm16" else 1)
        await self.push_frame(frame, direction)


def codec_between(
    source: AudioFormat | None, target: AudioFormat | None, *, inbound: bool
) -> list[FrameProcessor]:
    """The converter stage between two formats, or none when they already agree."""
    if source is None or target is None or source == target:
        return []
    return [AudioConverter(source, target, inbound=inbound)]
