"""The caller's side of a local call, read from a file as Twilio would send it.

Twilio sends μ-law at 8 kHz, mono. A recording made elsewhere is WAV, FLAC,
MP3 or OGG at whatever rate and channel count the recorder chose, so it is
decoded (soundfile, i.e. libsndfile), mixed down to mono and resampled (soxr)
once, here; a 16-bit 8 kHz mono WAV passes through sample for sample. A
`.ulaw` file already is what a phone line carries and is taken as is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import soxr

from tollbridge.codec import pcm16_to_mulaw
from tollbridge.errors import TollbridgeError

RATE = 8000
RAW_SUFFIXES = (".ulaw", ".mulaw", ".raw")
SUPPORTED = "WAV, FLAC, MP3 or OGG (any rate and channels), or raw 8 kHz μ-law (.ulaw)"


class AudioError(TollbridgeError, ValueError):
    """A file that cannot be the caller's side of a call; the message names it and why."""


def load_caller_audio(path: str | Path) -> bytes:
    """The file's audio as μ-law 8 kHz mono, or an `AudioError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: the file is empty")
    if path.suffix.lower() in RAW_SUFFIXES:
        return path.read_bytes()
    try:  # as floats: libsndfile scales every encoding to ±1 (float files too), exactly
        samples, rate = soundfile.read(path, dtype="float64", always_2d=True)
    except soundfile.LibsndfileError:  # its own words for a bad file are seldom clearer
        raise AudioError(f"{path}: not audio that can be read; use {SUPPORTED}") from None
    if not len(samples):
        raise AudioError(f"{path}: holds no audio (0 samples)")
    mono = samples.mean(axis=1)  # every channel, as a phone line carries a stereo recording
    if rate != RATE:
        mono = soxr.resample(mono, rate, RATE)
    pcm = np.clip(np.round(mono * 32768), -32768, 32767).astype("<i2")
    return pcm16_to_mulaw(pcm.tobytes())
