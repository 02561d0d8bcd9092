"""Caller audio from the files people have: converted once to what a phone line carries."""

from __future__ import annotations

import wave

import numpy as np
import pytest
import soundfile

from tests.conftest import FIXTURES
from tollbridge.codec import mulaw_to_pcm16, pcm16_to_mulaw
from tollbridge.transports.twilio.caller_audio import AudioError, load_caller_audio

SAMPLE = FIXTURES / "calls" / "salon_barge_in_dtmf.wav"


def tone(rate: int, seconds: float = 1.0, hz: float = 440.0) -> np.ndarray:
    return (np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate) * 0.4).astype("float32")


def test_an_8khz_mono_wav_passes_through_sample_for_sample():
    with wave.open(str(SAMPLE)) as wav:
        expected = pcm16_to_mulaw(wav.readframes(wav.getnframes()))
    assert load_caller_audio(SAMPLE) == expected


@pytest.mark.parametrize(("name", "rate", "options"), [
    ("stereo.wav", 16000, {}),
    ("cd.wav", 44100, {"subtype": "PCM_24"}),
    ("float.wav", 48000, {"subtype": "FLOAT"}),
    ("voice.flac", 22050, {}),
    ("voice.mp3", 44100, {"format": "MP3"}),
    ("voice.ogg", 48000, {}),
])
def test_other_rates_channels_and_formats_are_converted(tmp_path, name, rate, options):
    left = tone(rate)
    soundfile.write(tmp_path / name, np.stack([left, left], axis=1), rate, **options)
    audio = load_caller_audio(tmp_path / name)
    assert abs(len(audio) - 8000) <= 1200  # a second at 8 kHz (MP3 pads its frames)
    pcm = np.frombuffer(mulaw_to_pcm16(audio), dtype="<i2")[1000:7000] / 32768
    spectrum = np.abs(np.fft.rfft(pcm))
    assert abs(np.argmax(spectrum) * 8000 / len(pcm) - 440) < 10  # still the same tone
    assert 0.2 < np.max(np.abs(pcm)) < 0.5  # both channels mixed, not summed


def test_files_that_are_not_caller_audio_are_named(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "garbage.mp3").write_bytes(b"not audio" * 20)
    soundfile.write(tmp_path / "none.wav", np.zeros((0, 1), "int16"), 8000)
    for name, message in (("empty.wav", "the file is empty"),
                          ("garbage.mp3", "not audio that can be read; use WAV, FLAC, MP3"),
                          ("none.wav", "holds no audio"), ("missing.wav", "no such file")):
        with pytest.raises(AudioError, match=f"{name}: {message}"):
            load_caller_audio(tmp_path / name)
