"""The `twilio` stage: a pipecat transport over one Media Streams WebSocket.

pipecat's Twilio serializer ignores `mark` and `stop`, never sends marks and
always transcodes; its output transport paces audio with sleeps. This
transport is leaner and knows what the caller actually heard:

* caller audio goes into the pipeline as μ-law 8 kHz exactly as Twilio sent it;
* agent audio (already μ-law 8 kHz: the builder guarantees it) is sent to
  Twilio as it arrives, merged into 200 ms messages once Twilio has enough
  queued to play; Twilio queues and plays it, so nothing sleeps per frame;
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
    OutputAudioRawFrame,
    StartFrame,
    SystemFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_transport import BaseTransport

from tollbridge.stage import MULAW_8K, AudioFormat, CallContext, Role, StageKind, StageOptions
from tollbridge.transports.twilio import protocol

MARK_GRACE_S = 2.0
"""How long past its expected play-out time a mark may be late before we stop waiting."""
MULAW_BYTES_PER_S = 8000
SEND_AHEAD_S = 0.3
MERGE_BYTES = 1600
MERGE_WAIT_S = 0.1
"""Agent audio goes out at once while Twilio has under SEND_AHEAD_S left to play.
Beyond that nothing is urgent: chunks are merged into messages of MERGE_BYTES
(200 ms), or whatever MERGE_WAIT_S has gathered. A TTS streams faster than real
time in 20–40 ms chunks, so this sends a tenth of the messages, never late."""
EARLY_AUDIO_FRAMES = 250
"""Caller audio kept while the pipeline starts (5 s of 20 ms frames); beyond it, dropped."""


class TwilioOptions(StageOptions):
    """The transport takes no options yet; its settings are the bridge's."""


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
class _Pending:
    """A mark sent to Twilio and the frames waiting for the caller to hear it."""

    name: str
    due: float
    frames: list[tuple[Frame, FrameDirection]] = field(default_factory=list)


class TwilioOutput(FrameProcessor):
    """Sends agent audio to Twilio and releases what goes with it once it has been played.

    The frames between two marks form a segment: spoken text arrives just
    before its audio (pipecat queues a sentence's text ahead of the audio it
    becomes), the end of a response or of a TTS context right after it. A
    segment's frames go on down the pipeline when Twilio echoes the mark that
    closes it, i.e. once the caller has heard the whole segment.
    """

    def __init__(self, connection: MediaStreamConnection):
        super().__init__(name="twilio.out")
        self._connection = connection
        self._names = (f"m{n}" for n in itertools.count(1))
        self._pending: deque[_Pending] = deque()  # marks sent, not yet played
        self._open: list[tuple[Frame, FrameDirection]] = []  # the segment being sent
        self._unmarked_audio = False
        self._playback_end = 0.0  # monotonic time the audio sent so far finishes playing
        self._speaking = False
        self._watchdog: asyncio.Task | None = None
        self._outbox = bytearray()  # agent audio of the current burst, not yet sent
        self._flush_task: asyncio.Task | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction is FrameDirection.UPSTREAM:
            await self.push_frame(frame, direction)
        elif isinstance(frame, OutputAudioRawFrame):
            await self._send_audio(frame.audio)
        elif isinstance(frame, InterruptionFrame):
            await self._interrupt()
            await self.push_frame(frame, direction)
        elif isinstance(frame, CancelFrame):
            self._stop_watchdog()
            self._stop_flush()
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
        else:  # the end of a TTS context: its text waits for the audio sent before it, if any
            held, self._open = [*self._open, (frame, direction)], []
            if self._pending:
                self._pending[-1].frames += held
            else:
                for waiting, way in held:
                    await self._release(waiting, way)

    async def _send_audio(self, audio: bytes) -> None:
        if not audio:
            return
        self._connection.stats.audio_bytes_out += len(audio)
        self._outbox += audio
        now = time.monotonic()
        queued_s = self._playback_end - now  # what Twilio still has to play
        self._playback_end = max(self._playback_end, now) + len(audio) / MULAW_BYTES_PER_S
        if queued_s < SEND_AHEAD_S or len(self._outbox) >= MERGE_BYTES:
            await self._flush()
        elif self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_later())
        self._unmarked_audio = True
        if not self._speaking:
            self._speaking = True
            await self.push_frame(BotStartedSpeakingFrame())
            await self.push_frame(BotStartedSpeakingFrame(), FrameDirection.UPSTREAM)

    async def _flush_later(self) -> None:
        await asyncio.sleep(MERGE_WAIT_S)
        await self._flush()

    async def _flush(self) -> None:
        """Send the agent audio taken in so far as one media message."""
        while self._outbox:
            audio, self._outbox = bytes(self._outbox), bytearray()
            self._connection.stats.media_out += 1
            await self._connection.send(protocol.media_message(self._connection.stream_sid, audio))

    async def _close_segment(self) -> None:
        """Mark the end of the audio sent so far; its segment waits for the echo."""
        await self._flush()
        pending = _Pending(name=next(self._names), due=self._playback_end + MARK_GRACE_S)
        pending.frames, self._open = self._open, []
        self._pending.append(pending)
        self._unmarked_audio = False
        self._connection.stats.marks_sent += 1
        self._ensure_watchdog()
        await self._connection.send(protocol.mark_message(self._connection.stream_sid, pending.name))

    async def played(self, name: str) -> None:
        """Twilio echoed mark `name`: everything up to it has been heard."""
        if not any(p.name == name for p in self._pending):
            return  # echo of a mark we already cleared or timed out
        while self._pending:
            pending = self._pending.popleft()
            self._connection.stats.marks_played += 1
            for frame, direction in pending.frames:
                await self._release(frame, direction)
            if pending.name == name:
                break
        await self._maybe_stopped_speaking()

    async def _release(self, frame: Frame, direction: FrameDirection) -> None:
        await self.push_frame(frame, direction)
        if isinstance(frame, EndFrame):
            self._stop_watchdog()
            await self._flush()
            await self._connection.hang_up()

    async def _maybe_stopped_speaking(self) -> None:
        if self._speaking and not self._pending and not self._unmarked_audio:
            self._speaking = False
            await self.push_frame(BotStoppedSpeakingFrame())
            await self.push_frame(BotStoppedSpeakingFrame(), FrameDirection.UPSTREAM)

    async def _interrupt(self) -> None:
        """Barge-in: drop what the caller has not heard, keep what must survive."""
        self._outbox.clear()  # never sent, so nothing for Twilio to clear
        unplayed = self._unmarked_audio or bool(self._pending)
        if unplayed and time.monotonic() < self._playback_end:
            self._connection.stats.clears += 1
            await self._connection.send(protocol.clear_message(self._connection.stream_sid))
        held = [frame for pending in self._pending for frame in pending.frames] + self._open
        survivors = [(frame, direction) for frame, direction in held if not frame.interruptible]
        self._pending.clear()
        self._open = []
        self._unmarked_audio = False
        self._playback_end = time.monotonic()
        for frame, direction in survivors:
            await self._release(frame, direction)
        await self._maybe_stopped_speaking()

    def _ensure_watchdog(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = self.create_task(self._watch_marks(), name="twilio-mark-watchdog")

    def _stop_flush(self) -> None:
        if self._flush_task and not self._flush_task.done():
            self._flush_task.cancel()
        self._flush_task = None

    def _stop_watchdog(self) -> None:
        if self._watchdog and not self._watchdog.done():
            self._watchdog.cancel()
        self._watchdog = None

    async def _watch_marks(self) -> None:
        """Treat a mark overdue by MARK_GRACE_S as played (peer that drops echoes)."""
        while self._pending:
            overdue = self._pending[0].due - time.monotonic()
            if overdue > 0:
                await asyncio.sleep(overdue)
                continue
            await self.played(self._pending[0].name)

    async def cleanup(self) -> None:
        self._stop_watchdog()
        self._stop_flush()
        await super().cleanup()


class TwilioTransport(BaseTransport):
    """The input/output pair for one call: a pipecat transport.

    Its two halves are plain processors rather than pipecat's
    BaseInputTransport / BaseOutputTransport: those run an audio task and queue
    per direction and pace output with a sleep per chunk, costs paid on every
    20 ms frame of every call, while Twilio already queues and paces playback.
    """

    def __init__(self, connection: MediaStreamConnection):
        super().__init__(name="twilio")
        self.connection = connection
        self._input = TwilioInput(connection)
        self._output = TwilioOutput(connection)

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
        return TwilioTransport(call.connection)

    def audio_in(self, options: TwilioOptions) -> AudioFormat:
        return MULAW_8K

    def audio_out(self, options: TwilioOptions) -> AudioFormat:
        return MULAW_8K
