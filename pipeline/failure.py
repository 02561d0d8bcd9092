"""A provider failing mid-call with no fallback left: what failed, and the caller's last audio.

A stage with a fallback hands over on the first error (`tollbridge.failover`).
An error that still reaches the pipeline's worker comes from a stage with no
fallback left, and waiting for the provider to come back is silence on the
line, so the session ends the call: it names the failed provider in the
record, has the caller hear an apology (spoken by the TTS, or its audio
pre-rendered in the phrase cache when the TTS is the provider that failed),
then hangs up or transfers the call.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from pipecat.frames.frames import (
    BotStoppedSpeakingFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseStartFrame,
    OutputAudioRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from tollbridge.stage import Role


@dataclass(frozen=True)
class ProviderFailure:
    """Which provider failed, as the record and the log name it."""

    role: Role
    stage: str
    """The stage kind, e.g. "deepgram.stt"."""
    model: str
    """The model or voice it bills as ("" when the kind bills nothing)."""
    error: str

    @property
    def provider(self) -> str:
        """E.g. "deepgram.stt/nova-3": the `failed_provider` of the call's record."""
        return f"{self.stage}/{self.model}" if self.model else self.stage


PASSING_ERRORS = (re.compile(r"TTS context \S+ completed with no audio"),)
"""Errors pipecat reports that say nothing of whether the provider will work again: one
utterance that came back silent (many in a row are reported otherwise, as a failure)."""


def is_passing(error: str) -> bool:
    """An error to log and live with, rather than end the call for."""
    return any(pattern.fullmatch(error) for pattern in PASSING_ERRORS)


class LastWords(FrameProcessor):
    """Stands right after the stage that speaks: tells when the caller has heard the next
    thing said after `listen()`, and plays pre-rendered audio in place of a dead TTS.

    The next thing said is the next TTS context or reply to start (a reply
    still playing when `listen()` was called is not it); heard means its audio
    went past and then the transport reported the line quiet again
    (`BotStoppedSpeakingFrame`, sent once Twilio has played the last mark).
    From `listen()` on nothing interrupts it: a caller talking over the last
    words would otherwise have the transport clear them from Twilio's buffer.
    """

    def __init__(self) -> None:
        super().__init__(name="last-words")
        self._listening = False
        self._started = False
        self.spoke = asyncio.Event()
        """Its audio is on its way to the caller."""
        self.heard = asyncio.Event()
        """...and the caller has heard all of it."""

    def listen(self) -> None:
        self._listening = True

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if not self._listening:
            await self.push_frame(frame, direction)
            return
        downstream = direction is FrameDirection.DOWNSTREAM
        if not (downstream and isinstance(frame, InterruptionFrame)):
            await self.push_frame(frame, direction)
        if downstream:
            if isinstance(frame, TTSStartedFrame | LLMFullResponseStartFrame):
                self._started = True
            elif self._started and isinstance(frame, OutputAudioRawFrame):
                self.spoke.set()
        elif isinstance(frame, BotStoppedSpeakingFrame) and self.spoke.is_set():
            self.heard.set()

    async def play(self, chunks: tuple[bytes, ...], sample_rate: int) -> None:
        """Send recorded audio on towards the caller, as the TTS would have."""
        self._listening = self._started = True
        for chunk in chunks:
            await self.push_frame(TTSAudioRawFrame(chunk, sample_rate, 1))
        self.spoke.set()
        await self.push_frame(TTSStoppedFrame())  # closes the segment: the transport marks it
