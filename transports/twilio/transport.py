"""The `twilio` stage: a pipecat transport over one Media Streams WebSocket.

pipecat's Twilio serializer ignores `mark` and `stop`, never sends marks and
always transcodes; its output transport paces audio with sleeps. This
transport is leaner and knows what the caller actually heard:

* caller audio goes into the pipeline as μ-law 8 kHz exactly as Twilio sent it;
* agent audio (already μ-law 8 kHz: the builder guarantees it) is sent to
  Twilio in messages of at most 200 ms, and only while Twilio holds less than
  `send_ahead_s` (1 s) of it unplayed; the rest waits here, where a barge-in
  drops it without a `clear`. What Twilio played is known from its mark
  echoes (a pacing mark follows each message sent while audio waits), and
  from the audio clock between them, so nothing sleeps per frame;
* after each piece of agent speech a `mark` is sent, and every frame that
  followed that audio in the pipeline (the spoken text, the end of the
  response, an EndFrame…) is held until Twilio echoes the mark, i.e. until
  the caller has heard it. The assistant's context therefore only ever holds
  what was played;
* on barge-in (an InterruptionFrame) a `clear` is sent only if something is
  still unplayed, and the held, unheard text is dropped;
* a peer that never echoes marks is detected by the audio clock: a mark
  overdue by `MARK_GRACE_S` counts as played, so a call never stalls.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    LLMMessagesTransformFrame,
    OutputAudioRawFrame,
    StartFrame,
    SystemFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_transport import BaseTransport
from pipecat.utils.text.base_text_aggregator import TextType
from pydantic import Field

from tollbridge.stage import (
    MULAW_8K,
    AudioFormat,
    CallContext,
    Heard,
    Role,
    StageKind,
    StageOptions,
)
from tollbridge.transports.twilio import protocol

MARK_GRACE_S = 2.0
"""How long past its expected play-out time a mark may be late before we stop waiting."""
MULAW_BYTES_PER_S = 8000
SEND_AHEAD_S = 1.0
"""Default bound on agent audio queued at Twilio, unplayed (the `send_ahead_s` option)."""
CLOCK_SLACK_S = 0.04
"""Twilio plays in 20 ms frames: our clock may run a frame or two ahead of its playback."""
PACING_BYTES = 4000
"""While audio waits for room at Twilio, a mark at least every 0.5 s of it: the echoes say
how fast Twilio really plays (a peer may play faster or later than our clock)."""
URGENT_S = 0.3
MERGE_BYTES = 1600
MERGE_WAIT_S = 0.1
"""Agent audio goes out at once while Twilio has under URGENT_S left to play.
Beyond that nothing is urgent: chunks are merged into messages of MERGE_BYTES
(200 ms), or whatever MERGE_WAIT_S has gathered. A TTS streams faster than real
time in 20–40 ms chunks, so this sends a tenth of the messages, never late."""
EARLY_AUDIO_FRAMES = 250
"""Caller audio kept while the pipeline starts (5 s of 20 ms frames); beyond it, dropped."""


class TwilioOptions(StageOptions):
    send_ahead_s: float = Field(default=SEND_AHEAD_S, ge=0.4, le=30)
    """Most agent audio Twilio may hold unplayed; what a barge-in `clear` throws away."""


class MediaStreamConnection:
    """What the transport needs from the socket: send text, close."""

    def __init__(
        self,
        send_text: Callable[[str], Awaitable[None]],
        close: Callable[[], Awaitable[None]],
        stream_sid: str,
    ):
        self.send_text = send_text
        self.close = close
        self.stream_sid = stream_sid
        self.closed = False
        self.hung_up = False
        """True once we closed the socket: the agent ended the call."""
        self.stats = ConnectionStats()

    async def send(self, text: str) -> None:
        if self.closed:
            return
        try:
            await self.send_text(text)
        except Exception:  # the caller hung up; the reader will notice and end the call
            self.closed = True

    async def hang_up(self) -> None:
        """Closing the socket ends `<Connect>`, which hangs up the call."""
        if not self.closed:
            self.closed = self.hung_up = True
            try:
                await self.close()
            except Exception:
                pass


@dataclass
class ConnectionStats:
    """What crossed the socket, for the call record, tests and benchmarks."""

    media_in: int = 0
    audio_bytes_in: int = 0
    media_out: int = 0
    audio_bytes_out: int = 0
    marks_sent: int = 0
    marks_played: int = 0
    clears: int = 0
    dtmf: list[str] = field(default_factory=list)
    lead_ms: list[int] = field(default_factory=list)
    """Agent audio queued at Twilio, unplayed, right after each message sent (its peaks)."""
    heard_characters: int = 0
    """Characters of agent text whose audio Twilio played (interrupted replies: the words played)."""


class TwilioInput(FrameProcessor):
    """Pushes caller audio and keypresses into the pipeline, as the socket reader gets them."""

    def __init__(self, connection: MediaStreamConnection):
        super().__init__(name="twilio.in")
        self._connection = connection
        self._started = False
        self._early: list[bytes] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._started = True
            early, self._early = self._early, []
            for payload in early:
                await self._push_audio(payload)

    async def audio(self, payload: bytes) -> None:
        self._connection.stats.media_in += 1
        self._connection.stats.audio_bytes_in += len(payload)
        if self._started:
            await self._push_audio(payload)
        elif len(self._early) < EARLY_AUDIO_FRAMES:
            self._early.append(payload)  # the pipeline is still starting: keep the caller's words

    async def _push_audio(self, payload: bytes) -> None:
        await self.push_frame(
            InputAudioRawFrame(audio=payload, sample_rate=MULAW_8K.sample_rate, num_channels=1)
        )

    async def dtmf(self, digit: str) -> None:
        self._connection.stats.dtmf.append(digit)
        if self._started:
            await self.push_frame(InputDTMFFrame(button=KeypadEntry(digit)))


@dataclass
class _Mark:
    """A mark for Twilio and the frames waiting for the caller to hear the audio before it.

    A segment's mark carries the frames that went with its audio (its spoken
    text, the end of the response…); a pacing mark carries none and only tells
    when Twilio has played up to it. Positions count agent audio bytes.
    """

    name: str
    start: int
    """Where the segment's audio begins (a pacing mark: where it stands)."""
    end: int
    frames: list[tuple[Frame, FrameDirection]] = field(default_factory=list)
    due: float = 0.0
    """Once sent: when it should have been played, plus MARK_GRACE_S."""


class TwilioOutput(FrameProcessor):
    """Sends agent audio to Twilio and releases what goes with it once it has been played.

    The frames between two marks form a segment: spoken text arrives just
    before its audio (pipecat queues a sentence's text ahead of the audio it
    becomes), the end of a response or of a TTS context right after it. A
    segment's frames go on down the pipeline when Twilio echoes the mark that
    closes it, i.e. once the caller has heard the whole segment. Interrupted,
    a segment releases the words of its text that were played, estimated
    from the share of its audio Twilio had played, marked as interrupted.
    """

    def __init__(self, connection: MediaStreamConnection, *, send_ahead_s: float = SEND_AHEAD_S):
        super().__init__(name="twilio.out")
        self._connection = connection
        self._limit = int((send_ahead_s - CLOCK_SLACK_S) * MULAW_BYTES_PER_S)
        self._names = (f"m{n}" for n in itertools.count(1))
        self._outbox: deque[bytes | _Mark] = deque()  # audio and marks not yet sent
        self._waiting = 0  # audio bytes in the outbox
        self._marks_waiting = 0  # marks in the outbox
        self._pending: deque[_Mark] = deque()  # marks sent, not yet played
        self._open: list[tuple[Frame, FrameDirection]] = []  # the segment being received
        self._unmarked_audio = False
        self._received = 0  # position of the last agent audio byte received
        self._segment_start = 0
        self._sent = 0  # position of the last byte sent to Twilio
        self._anchor = (0, 0.0)  # (position, monotonic time) Twilio is known to have played to
        self._last_mark_at = 0  # position of the last mark sent
        self._speaking = False
        self._watchdog: asyncio.Task | None = None
        self._wake: asyncio.TimerHandle | None = None
        self._pump_lock = asyncio.Lock()
        self._utterances_ended = 0

    # What the caller hears, for the speech pacer (see tollbridge.stage.Playback).

    def unplayed_seconds(self) -> float:
        """Agent audio received here that the caller has not heard yet."""
        return (self._received - self._played(time.monotonic())) / MULAW_BYTES_PER_S

    def received_seconds(self) -> float:
        return self._connection.stats.audio_bytes_out / MULAW_BYTES_PER_S

    def utterances_ended(self) -> int:
        return self._utterances_ended

    def heard(self) -> Heard:
        stats = self._connection.stats
        lead = sorted(stats.lead_ms)
        p95 = lead[int(0.95 * (len(lead) - 1))] if lead else 0
        return Heard(stats.heard_characters, (lead[-1] if lead else 0) / 1000, p95 / 1000)

    def _played(self, now: float) -> int:
        """How far Twilio has played: its last echo, then the audio clock, never past what was sent."""
        position, since = self._anchor
        return min(self._sent, max(position, position + int((now - since) * MULAW_BYTES_PER_S)))

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSStoppedFrame) and direction is FrameDirection.DOWNSTREAM:
            self._utterances_ended += 1
        if direction is FrameDirection.UPSTREAM:
            await self.push_frame(frame, direction)
        elif isinstance(frame, OutputAudioRawFrame):
            await self._take_audio(frame.audio)
        elif isinstance(frame, InterruptionFrame):
            after = await self._interrupt()
            await self.push_frame(frame, direction)
            for waiting, way in after:  # behind the interruption, which overtakes data frames
                await self._release(waiting, way)
        elif isinstance(frame, CancelFrame):
            self._stop_timers()
            await self.push_frame(frame, direction)
        elif isinstance(frame, SystemFrame):
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSTextFrame):
            if self._unmarked_audio:
                await self._close_segment()
            self._open.append((frame, direction))  # waits for the audio that follows it
        elif self._unmarked_audio:
            self._open.append((frame, direction))
            await self._close_segment()
        elif self._open and not isinstance(frame, TTSStoppedFrame | EndFrame):
            self._open.append((frame, direction))
        else:  # the end of a TTS context: its text waits for the audio before it, if any
            held, self._open = [*self._open, (frame, direction)], []
            if last := self._last_segment():
                last.frames += held
            else:
                for waiting, way in held:
                    await self._release(waiting, way)

    def _last_segment(self) -> _Mark | None:
        """The last mark not yet played, sent or waiting: where frames after its audio wait.
        (With no unmarked audio, the outbox is empty or ends with a mark.)"""
        if self._outbox and isinstance(self._outbox[-1], _Mark):
            return self._outbox[-1]
        return self._pending[-1] if self._pending else None

    async def _take_audio(self, audio: bytes) -> None:
        if not audio:
            return
        self._connection.stats.audio_bytes_out += len(audio)
        self._received += len(audio)
        self._outbox.append(audio)
        self._waiting += len(audio)
        self._unmarked_audio = True
        if not self._speaking:
            self._speaking = True
            await self.push_frame(BotStartedSpeakingFrame())
            await self.push_frame(BotStartedSpeakingFrame(), FrameDirection.UPSTREAM)
        await self._pump()

    async def _close_segment(self) -> None:
        """Mark the end of the audio received so far; its segment waits for the echo."""
        mark = _Mark(next(self._names), self._segment_start, self._received)
        mark.frames, self._open = self._open, []
        self._segment_start = self._received
        self._unmarked_audio = False
        self._outbox.append(mark)
        self._marks_waiting += 1
        await self._pump()

    async def _pump(self) -> None:
        """Send what the outbox holds, as far as Twilio's bound allows, in 200 ms messages."""
        async with self._pump_lock:
            while self._outbox:
                head = self._outbox[0]
                if isinstance(head, _Mark):
                    self._outbox.popleft()
                    self._marks_waiting -= 1
                    await self._send_mark(head)
                    continue
                now = time.monotonic()
                queued = self._sent - self._played(now)
                mark_follows = self._marks_waiting > 0
                want = min(MERGE_BYTES, self._waiting)
                if queued + want > self._limit:
                    if self._sent - self._last_mark_at >= PACING_BYTES:  # its echo says when to go on
                        await self._send_mark(_Mark(next(self._names), self._sent, self._sent))
                    self._wake_in((queued + want - self._limit) / MULAW_BYTES_PER_S)
                    return
                if want < MERGE_BYTES and not mark_follows and queued >= URGENT_S * MULAW_BYTES_PER_S:
                    self._wake_in(MERGE_WAIT_S)  # not urgent: gather a fuller message
                    return
                await self._send_media(self._take(want), now)

    def _take(self, size: int) -> bytes:
        """The next `size` bytes of waiting audio (up to the next mark)."""
        parts: list[bytes] = []
        while size and self._outbox and isinstance(head := self._outbox[0], bytes):
            self._outbox.popleft()
            if len(head) > size:
                self._outbox.appendleft(head[size:])
                head = head[:size]
            parts.append(head)
            size -= len(head)
        chunk = b"".join(parts)
        self._waiting -= len(chunk)
        return chunk

    async def _send_media(self, audio: bytes, now: float) -> None:
        if self._played(now) >= self._sent:  # Twilio had nothing left: playback starts now
            self._anchor = (self._sent, now)
        self._sent += len(audio)
        stats = self._connection.stats
        stats.media_out += 1
        stats.lead_ms.append(int(1000 * (self._sent - self._played(now)) / MULAW_BYTES_PER_S))
        await self._connection.send(protocol.media_message(self._connection.stream_sid, audio))

    async def _send_mark(self, mark: _Mark) -> None:
        now = time.monotonic()
        mark.due = now + (self._sent - self._played(now)) / MULAW_BYTES_PER_S + MARK_GRACE_S
        self._pending.append(mark)
        self._last_mark_at = self._sent
        self._connection.stats.marks_sent += 1
        self._ensure_watchdog()
        await self._connection.send(protocol.mark_message(self._connection.stream_sid, mark.name))

    def _wake_in(self, seconds: float) -> None:
        if self._wake is not None:
            self._wake.cancel()
        loop = asyncio.get_running_loop()
        self._wake = loop.call_later(max(seconds, 0.005), lambda: self.create_task(self._pump()))

    async def played(self, name: str) -> None:
        """Twilio echoed mark `name`: everything up to it has been heard."""
        if not any(p.name == name for p in self._pending):
            return  # echo of a mark we already cleared or timed out
        now = time.monotonic()
        while self._pending:
            mark = self._pending.popleft()
            if mark.name.startswith("m"):
                self._connection.stats.marks_played += 1
            if mark.end > self._played(now):
                self._anchor = (mark.end, now)
            for frame, direction in mark.frames:
                await self._release(frame, direction)
            if mark.name == name:
                break
        await self._maybe_stopped_speaking()
        await self._pump()

    async def _release(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, TTSTextFrame):
            self._connection.stats.heard_characters += _spoken_length(frame)
        await self.push_frame(frame, direction)
        if isinstance(frame, EndFrame):
            self._stop_timers()
            await self._connection.hang_up()

    async def _maybe_stopped_speaking(self) -> None:
        if self._speaking and not self._pending and not self._unmarked_audio and not self._outbox:
            self._speaking = False
            await self.push_frame(BotStoppedSpeakingFrame())
            await self.push_frame(BotStoppedSpeakingFrame(), FrameDirection.UPSTREAM)

    async def _interrupt(self) -> list[tuple[Frame, FrameDirection]]:
        """Barge-in: drop what the caller has not heard. Returns what goes on behind the
        interruption: the frames that must survive it, then the words heard, for the context."""
        now = time.monotonic()
        played = self._played(now)
        if played < self._sent:
            self._connection.stats.clears += 1
            await self._connection.send(protocol.clear_message(self._connection.stream_sid))
        segments = [*self._pending, *(m for m in self._outbox if isinstance(m, _Mark))]
        if self._open or self._unmarked_audio:
            segments.append(_Mark("", self._segment_start, self._received, self._open))
        self._pending.clear()
        self._outbox.clear()
        self._waiting = self._marks_waiting = 0
        self._open = []
        self._unmarked_audio = False
        self._received = self._segment_start = self._sent
        self._anchor = (self._sent, now)  # Twilio's buffer is empty now
        await self._maybe_stopped_speaking()
        after = [(f, d) for m in segments for f, d in m.frames if not f.interruptible]
        heard = " ".join(words for m in segments if (words := _words_heard(m, played)))
        if heard or any(m.start < played for m in segments):
            heard = f"{heard} {INTERRUPTED}".lstrip()
            self._connection.stats.heard_characters += len(heard) - len(INTERRUPTED)
            after.append((LLMMessagesTransformFrame(_remember_said(heard)), FrameDirection.DOWNSTREAM))
        return after

    def _ensure_watchdog(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = self.create_task(self._watch_marks(), name="twilio-mark-watchdog")

    def _stop_timers(self) -> None:
        if self._watchdog and not self._watchdog.done():
            self._watchdog.cancel()
        self._watchdog = None
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None

    async def _watch_marks(self) -> None:
        """Treat a mark overdue by MARK_GRACE_S as played (peer that drops echoes)."""
        while self._pending:
            overdue = self._pending[0].due - time.monotonic()
            if overdue > 0:
                await asyncio.sleep(overdue)
                continue
            await self.played(self._pending[0].name)

    async def cleanup(self) -> None:
        self._stop_timers()
        await super().cleanup()


INTERRUPTED = "[interrupted]"
"""Ends the assistant's words in the context when the caller cut the reply short."""


def _spoken_length(frame: TTSTextFrame) -> int:
    """Characters as the TTS billed them: a word reported alone also had its space."""
    return len(frame.text.strip()) + (frame.text_type == TextType.WORD)


def _words_heard(segment: _Mark, played: int) -> str:
    """The words of a segment's text that were played: all once its audio was, else the
    share of its text that the share of its audio played carries (speech is even enough)."""
    text = " ".join(f.text.strip() for f, _ in segment.frames if isinstance(f, TTSTextFrame))
    if segment.end <= played:
        return text
    if played <= segment.start:
        return ""
    cut = (played - segment.start) / (segment.end - segment.start) * len(text)
    words, end = [], 0
    for word in text.split():
        end = text.index(word, end) + len(word)
        if end > cut:
            break
        words.append(word)
    return " ".join(words)


def _remember_said(heard: str) -> Callable[[list[Any]], list[Any]]:
    """A context transform: the assistant's interrupted turn ends with the words heard."""

    def transform(messages: list[Any]) -> list[Any]:
        last = messages[-1] if messages else None
        if last and last.get("role") == "assistant" and isinstance(last.get("content"), str):
            return [*messages[:-1], {**last, "content": f"{last['content']} {heard}"}]
        return [*messages, {"role": "assistant", "content": heard}]

    return transform


class TwilioTransport(BaseTransport):
    """The input/output pair for one call: a pipecat transport.

    Its two halves are plain processors rather than pipecat's
    BaseInputTransport / BaseOutputTransport: those run an audio task and queue
    per direction and pace output with a sleep per chunk, costs paid on every
    20 ms frame of every call, while Twilio already queues and paces playback.
    """

    def __init__(self, connection: MediaStreamConnection, *, send_ahead_s: float = SEND_AHEAD_S):
        super().__init__(name="twilio")
        self.connection = connection
        self._input = TwilioInput(connection)
        self._output = TwilioOutput(connection, send_ahead_s=send_ahead_s)

    def input(self) -> TwilioInput:
        return self._input

    def output(self) -> TwilioOutput:
        return self._output


class TwilioKind(StageKind):
    name = "twilio"
    role = Role.TRANSPORT
    options = TwilioOptions
    description = "Twilio Media Streams (bidirectional), μ-law 8 kHz, marks and clear"

    def build(self, options: TwilioOptions, call: CallContext) -> TwilioTransport:
        if not isinstance(call.connection, MediaStreamConnection):
            raise RuntimeError("the twilio stage runs behind the bridge's Media Streams socket")
        return TwilioTransport(call.connection, send_ahead_s=options.send_ahead_s)

    def audio_in(self, options: TwilioOptions) -> AudioFormat:
        return MULAW_8K

    def audio_out(self, options: TwilioOptions) -> AudioFormat:
        return MULAW_8K
