"""Speech pacing: text reaches the TTS only a little ahead of what the caller hears.

A TTS synthesizes — and bills — every character it is sent, faster than
real time. Sent a whole reply at once, it is paid for in full even when the
caller talks over the first sentence. The pacer sits in front of the TTS and
lets text through a sentence at a time: the next once the TTS has ended the
last (one utterance in flight, so a provider that does not tag its audio with
its request never mixes two up) and the agent audio the caller has yet to
hear — at Twilio or waiting to be sent — is under the lead: what the next
sentence's first audio needs to arrive in time, so speech never stalls. A barge-in drops the text still held: never
synthesized, never billed.

Each sentence goes to the TTS as a speak frame of its own, inside the reply:
the TTS synthesizes (and, for Deepgram, flushes) each as it arrives, and the
context still keeps the reply as one message. A greeting or other phrase is
cut into sentences the same way (the phrase cache keys on sentences). Frames
keep their order: anything behind held text (the end of the reply, a hang-up)
waits behind it.
"""

from __future__ import annotations

import asyncio
from collections import deque

from pipecat.frames.frames import (
    AggregatedTextFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    StartFrame,
    SystemFrame,
    TTSSpeakFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.utils.string import match_endofsentence

from tollbridge.stage import Playback

FIRST_AUDIO_TIMEOUT_S = 2.0
QUIET_S = 1.0
"""A sentence with no audio after FIRST_AUDIO_TIMEOUT_S, or whose audio stopped QUIET_S ago
with no end reported, counts as ended (a TTS that failed, or never reports an end)."""
POLL_S = 0.05


def sentences(text: str) -> list[str]:
    """`text` cut after each sentence, whitespace trimmed."""
    parts, rest = [], text.strip()
    while rest:
        end = match_endofsentence(rest) or len(rest)
        parts.append(rest[:end].strip())
        rest = rest[end:].strip()
    return parts


class SpeechPacer(FrameProcessor):
    """Releases text to the TTS a sentence at a time, `lead_s` ahead of playback."""

    def __init__(self, playback: Playback, *, lead_s: float):
        super().__init__(name="speech.pacer")
        self._playback = playback
        self._lead_s = lead_s
        self._held: deque[tuple[Frame, FrameDirection]] = deque()
        self._text = ""  # reply text not yet cut into a sentence
        self._in_response = False
        self._more = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._in_flight = 0  # sentences released whose synthesis has not ended
        self._ended = 0  # utterances the transport had seen end when last looked
        self._received_s = 0.0
        self._released_at = 0.0
        self._audio_at = 0.0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            self._task = self.create_task(self._release_forever(), name="speech-pacer")
        elif isinstance(frame, CancelFrame):
            await self._stop()
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            self._drop_unspoken()
            await self.push_frame(frame, direction)
        elif isinstance(frame, SystemFrame) or direction is FrameDirection.UPSTREAM:
            await self.push_frame(frame, direction)
        elif isinstance(frame, LLMTextFrame) and not frame.skip_tts:
            self._text += frame.text
            self._hold_sentences(final=False)
        elif isinstance(frame, LLMFullResponseStartFrame):
            self._in_response = True
            self._hold(frame, direction)
        elif isinstance(frame, LLMFullResponseEndFrame | EndFrame):
            self._hold_sentences(final=True)
            self._in_response = False
            self._hold(frame, direction)
        elif isinstance(frame, TTSSpeakFrame):
            self._hold_speech(frame)
        else:
            self._hold(frame, direction)

    def _hold(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM) -> None:
        self._held.append((frame, direction))
        self._more.set()

    def _hold_sentences(self, *, final: bool) -> None:
        """Cut the reply's text into sentences; the last waits for what follows it unless
        the reply is over (a full stop may yet turn out to be a decimal point)."""
        while True:
            end = match_endofsentence(self._text)
            if not end or (end >= len(self._text.rstrip()) and not final):
                if final and self._text.strip():
                    self._hold(TTSSpeakFrame(self._text.strip()))
                if final:
                    self._text = ""
                return
            sentence, self._text = self._text[:end].strip(), self._text[end:]
            if sentence:
                self._hold(TTSSpeakFrame(sentence))

    def _hold_speech(self, frame: TTSSpeakFrame) -> None:
        """A phrase spoken on its own: a sentence per speak frame, inside one response."""
        parts = sentences(frame.text)
        if len(parts) <= 1:
            self._hold(frame)
            return
        alone = not self._in_response and frame.append_to_context
        bracket = (LLMFullResponseStartFrame(), LLMFullResponseEndFrame()) if alone else ()
        spoken = [TTSSpeakFrame(part, append_to_context=frame.append_to_context) for part in parts]
        for each in [*bracket[:1], *spoken, *bracket[1:]]:
            each.interruptible = frame.interruptible  # last words stay through a barge-in
            self._hold(each)

    def _drop_unspoken(self) -> None:
        """Barge-in: text not yet released is never synthesized; what must survive goes on."""
        self._text = ""
        self._in_response = False
        self._held = deque((f, d) for f, d in self._held if not f.interruptible)
        self._in_flight = 0
        if not self._held:
            self._more.clear()

    async def _release_forever(self) -> None:
        while True:
            await self._more.wait()
            if not self._held:
                self._more.clear()
                continue
            frame, direction = self._held[0]
            if _is_speech(frame):
                while not self._room():  # noqa: ASYNC110 - playback drains by the clock
                    await asyncio.sleep(POLL_S)
                if not self._held or self._held[0][0] is not frame:
                    continue  # dropped by a barge-in meanwhile
                self._in_flight += 1
                self._released_at = asyncio.get_running_loop().time()
            self._held.popleft()
            await self.push_frame(frame, direction)

    def _room(self) -> bool:
        """Whether the next sentence may go: the last one's synthesis has ended, and what
        the caller has yet to hear is under the lead."""
        now = asyncio.get_running_loop().time()
        ended = self._playback.utterances_ended()
        self._in_flight = max(0, self._in_flight - (ended - self._ended))
        self._ended = ended
        received = self._playback.received_seconds()
        if received > self._received_s:
            self._received_s, self._audio_at = received, now
        if self._in_flight:
            answered = self._audio_at > self._released_at
            if (answered and now - self._audio_at >= QUIET_S) or (
                not answered and now - self._released_at >= FIRST_AUDIO_TIMEOUT_S
            ):
                self._in_flight = 0
        return not self._in_flight and self._playback.unplayed_seconds() <= self._lead_s

    async def _stop(self) -> None:
        if self._task:
            await self.cancel_task(self._task)
            self._task = None

    async def cleanup(self) -> None:
        await self._stop()
        await super().cleanup()


def _is_speech(frame: Frame) -> bool:
    """Whether the frame asks the TTS to speak: what the pacer paces."""
    if isinstance(frame, AggregatedTextFrame):
        return not frame.skip_tts
    return isinstance(frame, TTSSpeakFrame)

