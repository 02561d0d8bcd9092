"""Deterministic stand-in speech for the TTS fakes, in the encodings telephony uses.

The audio is a quiet tone with a syllable-rate swell: not silence (so silence
detection and level meters see something), but cheap and identical on every run.
Its length follows the text, so a test can predict the byte count exactly.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np

#: Bytes per sample for each raw encoding the fakes produce or count.
BYTES_PER_SAMPLE = {"linear16": 2, "mulaw": 1, "alaw": 1}

_TONE_HZ = 440.0
_SYLLABLES_PER_SECOND = 4.0
_PEAK = 0.1 * 32767  # about -20 dBFS: audible in a test, quiet on a real phone

# G.711 segment end points, as in the reference (Sun) codec that audioop uses.
_ULAW_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEGMENT_ENDS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def speaking_rate(script: Mapping[str, Any] | None) -> float:
    """A cassette's `tts` section → the characters per second its fake TTS speaks at."""
    return float((script or {}).get("chars_per_second", 14.0))


def speech_samples(text: str, sample_rate: int, chars_per_second: float) -> int:
    """How many samples the fakes speak for `text`: proportional to its length."""
    return round(len(text) * sample_rate / chars_per_second)


def synthesize(text: str, *, encoding: str, sample_rate: int, chars_per_second: float) -> bytes:
    """Speak `text` as raw mono audio in `encoding` ("linear16", "mulaw" or "alaw")."""
    t = np.arange(speech_samples(text, sample_rate, chars_per_second)) / sample_rate
    swell = 0.65 - 0.35 * np.cos(2 * np.pi * _SYLLABLES_PER_SECOND * t)
    pcm = np.round(_PEAK * swell * np.sin(2 * np.pi * _TONE_HZ * t)).astype(np.int16)
    if encoding == "linear16":
        return pcm.astype("<i2").tobytes()
    if encoding == "mulaw":
        return ulaw_encode(pcm)
    if encoding == "alaw":
        return alaw_encode(pcm)
    raise ValueError(f"no encoder for {encoding!r}")


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """G.711 μ-law from int16 samples, bit-exact with the reference codec."""
    x = pcm.astype(np.int32)
    mask = np.where(x < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(x >> 2), 8159) + 0x21
    segment = np.searchsorted(_ULAW_SEGMENT_ENDS, magnitude)
    code = (np.minimum(segment, 7) << 4) | ((magnitude >> (segment + 1)) & 0x0F)
    code = np.where(segment >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8).tobytes()


def alaw_encode(pcm: np.ndarray) -> bytes:
    """G.711 A-law from int16 samples, bit-exact with the reference codec."""
    x = pcm.astype(np.int32) >> 3
    mask = np.where(x >= 0, 0xD5, 0x55)
    magnitude = np.where(x >= 0, x, -x - 1)
    segment = np.searchsorted(_ALAW_SEGMENT_ENDS, magnitude)
    shift = np.where(segment < 2, 1, segment)
    code = (np.minimum(segment, 7) << 4) | ((magnitude >> shift) & 0x0F)
    code = np.where(segment >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8).tobytes()
