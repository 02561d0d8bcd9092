"""Offline recognisers on the fixture callers: how much each hears, and what it costs.

    python -m benchmarks.recognisers

Each fixture call (`tests/fixtures/calls/*.wav`) goes through μ-law, as from
Twilio, and is cut into utterances by `whisper.stt`'s own energy VAD; each
recogniser transcribes the same final cuts. Whisper tiny.en runs as the stage
runs it (int8, one thread); pocketsphinx (its bundled en-us model, 16 kHz, so
the audio is resampled) only if it is installed — it is not a dependency.
Every recogniser runs in a process of its own, so its load time and memory
are its own. Printed per fixture: content-word recall and word error rate
against the cassette transcripts, CPU seconds per second of call audio (the
real-time factor: finals only, then with the stage's interims as if the model
were never busy), the model's load time (for Whisper: the files' sha256 check
included) and the process's RSS, with what it grew by from before the load.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from tollbridge.providers.whisper import SAMPLE_RATE, Cut, Utterances, shared_model, transcribe
from tollbridge.testing.words import recall, said, word_error_rate
from tollbridge.transports.twilio.caller_audio import load_caller_audio

CALLS = Path(__file__).parent.parent / "tests" / "fixtures" / "calls"
Recogniser = Callable[[bytes], str]
"""PCM16 at 8 kHz → what was said."""


@dataclass
class Row:
    recogniser: str
    fixture: str
    recall: float
    wer: float
    rtf_finals: float
    rtf_interims: float
    load_s: float
    rss_mb: float
    loaded_mb: float
    """What the RSS grew by from before the model was loaded."""


def cuts(mulaw: bytes) -> list[Cut]:
    """The call cut as `whisper.stt` cuts it by default (interims included)."""
    utterances = Utterances(silence_ms=600, interim_every_s=1.0, speech_db=12.0)
    found = [c for at in range(0, len(mulaw), 160) for c in utterances.feed(mulaw[at : at + 160])]
    last = utterances.close()
    return found + ([last] if last else [])


def whisper() -> Recogniser:
    shared_model()
    return lambda pcm: transcribe(pcm, "en")


def pocketsphinx() -> Recogniser:
    from pocketsphinx import Decoder

    decoder = Decoder(loglevel="FATAL")

    def recognise(pcm: bytes) -> str:
        audio = soxr.resample(np.frombuffer(pcm, dtype=np.int16), SAMPLE_RATE, 16000)
        decoder.start_utt()
        decoder.process_raw(audio.astype(np.int16).tobytes(), full_utt=True)
        decoder.end_utt()
        return decoder.hyp().hypstr if decoder.hyp() else ""

    return recognise


RECOGNISERS: dict[str, Callable[[], Recogniser]] = {
    "whisper tiny.en": whisper,
    "pocketsphinx en-us": pocketsphinx,
}


def rss_mb() -> float:
    """The process's resident memory now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str) -> list[Row]:
    before = rss_mb()
    started = time.perf_counter()
    recognise = RECOGNISERS[name]()
    load_s = time.perf_counter() - started
    rows = []
    for wav in sorted(CALLS.glob("*.wav")):
        mulaw = load_caller_audio(wav)
        seconds = len(mulaw) / SAMPLE_RATE
        cpu = time.process_time()
        cut = cuts(mulaw)
        heard = " ".join(recognise(c.pcm) for c in cut if c.final)
        finals_cpu = time.process_time() - cpu
        for c in cut:
            if not c.final:
                recognise(c.pcm)
        all_cpu = time.process_time() - cpu
        spoken = " ".join(r["transcript"] for r in said(wav.with_suffix(".cassette.json")))
        rows.append(Row(
            name, wav.stem, recall(spoken, heard), word_error_rate(spoken, heard),
            finals_cpu / seconds, all_cpu / seconds, load_s, rss_mb(), rss_mb() - before,
        ))  # fmt: skip
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| recogniser | fixture | recall | WER | CPU s/s (finals) | CPU s/s (+interims) "
        "| load s | RSS MB | of it since load |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r.recogniser} | {r.fixture} | {r.recall:.2f} | {r.wer:.2f} | {r.rtf_finals:.3f} "
        f"| {r.rtf_interims:.3f} | {r.load_s:.2f} | {r.rss_mb:.0f} | {r.loaded_mb:.0f} |"
        for r in rows
    ]
    return "\n".join(lines)


def main() -> None:
    names = [
        name for name in RECOGNISERS
        if name != "pocketsphinx en-us" or importlib.util.find_spec("pocketsphinx")
    ]  # fmt: skip
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        rows = [row for name in names for row in pool.apply(measure, (name,))]
    print(table(rows))
    for name in names:
        mine = [r for r in rows if r.recogniser == name]
        print(
            f"{name}: mean recall {np.mean([r.recall for r in mine]):.2f}, "
            f"mean WER {np.mean([r.wer for r in mine]):.2f}, "
            f"mean CPU s/s {np.mean([r.rtf_finals for r in mine]):.3f} "
            f"(+interims {np.mean([r.rtf_interims for r in mine]):.3f})"
        )


if __name__ == "__main__":
    main()
