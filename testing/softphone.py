"""A Media Streams client that behaves like Twilio: a phone call with no phone.

It opens the bridge's WebSocket (signed like Twilio signs it), sends
`connected` and `start` with custom parameters, then caller audio as 20 ms
μ-law `media` frames paced on the audio clock — followed by line silence, as
a real call has — plus `dtmf` presses and finally `stop`. The other way it
plays the agent's audio on a simulated Twilio playback buffer: `mark`s are
echoed when the audio before them has been played, `clear` empties the
buffer and echoes every pending mark. What was played is written to a WAV.

The call ends when the script says hang up, when the bridge closes the
socket (the agent hung up), or once the caller's audio is over and the agent
has been quiet for `settle_s`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
import wave
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from tollbridge.codec import mulaw_to_pcm16
from tollbridge.transports.twilio.signature import SignatureChecker

FRAME_BYTES = 160  # 20 ms of μ-law at 8 kHz
FRAME_S = 0.02
UNDERRUN_S = 1.0
"""A pause in agent audio shorter than this is playback running dry, not a turn ending."""
MULAW_SILENCE = b"\xff"


def write_wav(path: str | Path, mulaw: bytes) -> None:
    """Save μ-law 8 kHz audio as a 16-bit PCM WAV any player opens."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(mulaw_to_pcm16(mulaw))


@dataclass
class CallScript:
    """What the caller does."""

    audio: bytes
    """Caller speech, μ-law 8 kHz."""
    parameters: dict[str, str] = field(default_factory=dict)
    dtmf: list[tuple[float, str]] = field(default_factory=list)
    """(seconds from start, digit) keypresses."""
    hang_up_at: float | None = None
    """Seconds from start at which the caller hangs up (mid-sentence if need be)."""
    settle_s: float = 2.0
    max_s: float = 120.0
    speed: float = 1.0
    """>1 plays faster than real time (fakes keyed on the audio clock don't mind)."""


@dataclass
class SoftphoneResult:
    """What the caller's side saw."""

    call_sid: str
    stream_sid: str
    agent_audio: bytes = b""
    """What Twilio would have played to the caller, in order."""
    caller_audio: bytes = b""
    """What the caller sent, frame by frame (speech, then line silence)."""
    media_received: int = 0
    marks_received: list[str] = field(default_factory=list)
    marks_echoed: list[str] = field(default_factory=list)
    clears: int = 0
    clear_times: list[float] = field(default_factory=list)
    frames_sent: int = 0
    ended_by: str = ""
    duration_s: float = 0.0
    first_agent_audio_s: float | None = None
    media_at: list[float] = field(default_factory=list)
    """When each media message arrived (`time.monotonic()`)."""
    bad_messages: list[str] = field(default_factory=list)
    lead_s: list[float] = field(default_factory=list)
    """Agent audio queued at Twilio, unplayed, at each 20 ms tick it held any."""
    cleared_s: float = 0.0
    """Agent audio sent but thrown away by `clear`s: never heard."""
    underruns: list[float] = field(default_factory=list)
    """Pauses inside agent speech (under UNDERRUN_S) for lack of audio: stalls a caller hears."""

    @property
    def max_lead_s(self) -> float:
        return max(self.lead_s, default=0.0)

    @property
    def p95_lead_s(self) -> float:
        ordered = sorted(self.lead_s)
        return ordered[int(0.95 * (len(ordered) - 1))] if ordered else 0.0

    @property
    def agent_audio_seconds(self) -> float:
        return len(self.agent_audio) / 8000


class _PlaybackBuffer:
    """Twilio's side of outbound audio: a queue played at 8000 bytes/s, with marks."""

    def __init__(self) -> None:
        self.queue: deque[bytes | str] = deque()  # audio chunks and mark names, in order
        self.played = bytearray()
        self.dry_ticks: int | None = None  # ticks since audio last played, once it has

    @property
    def queued_bytes(self) -> int:
        return sum(len(item) for item in self.queue if isinstance(item, bytes))

    def add_audio(self, audio: bytes) -> None:
        self.queue.append(audio)

    def add_mark(self, name: str) -> None:
        self.queue.append(name)

    def clear(self) -> list[str]:
        marks = [item for item in self.queue if isinstance(item, str)]
        self.queue.clear()
        self.dry_ticks = None  # a pause after a clear is the caller's turn
        return marks

    def play(self, nbytes: int) -> list[str]:
        """Play up to `nbytes`; return the marks reached."""
        reached: list[str] = []
        while self.queue:
            head = self.queue[0]
            if isinstance(head, str):
                reached.append(head)
                self.queue.popleft()
                continue
            if nbytes <= 0:
                break
            take = head[:nbytes]
            self.played += take
            nbytes -= len(take)
            if len(take) == len(head):
                self.queue.popleft()
            else:
                self.queue[0] = head[len(take):]
        return reached

    @property
    def busy(self) -> bool:
        return any(isinstance(item, bytes) for item in self.queue)


@dataclass
class Answer:
    """What a bridge's voice webhook answered an incoming call with."""

    stream_url: str
    """Where its TwiML connects the call's audio ("" when it did not: see `said`)."""
    parameters: dict[str, str]
    said: str = ""
    """What it says instead of connecting (e.g. the server is draining)."""


async def ring(
    voice_url: str, *, call_sid: str, caller: str, callee: str, auth_token: str | None,
    account_sid: str = "AC" + "0" * 32,
) -> Answer:
    """POST the voice webhook as Twilio does when a call comes in (signed with
    `auth_token`), and read the Media Stream its TwiML connects."""
    form = {"CallSid": call_sid, "AccountSid": account_sid, "From": caller, "To": callee,
            "Direction": "inbound", "CallStatus": "ringing"}
    headers = {"X-Twilio-Signature": SignatureChecker(auth_token).sign(voice_url, form)} \
        if auth_token else {}
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(voice_url, data=form, headers=headers)
    response.raise_for_status()
    twiml = ET.fromstring(response.text)
    stream = twiml.find("./Connect/Stream")
    if stream is None:
        return Answer("", {}, " ".join(say.text or "" for say in twiml.iter("Say")).strip())
    parameters = {p.get("name", ""): p.get("value", "") for p in stream.iter("Parameter")}
    return Answer(stream.get("url", ""), parameters)


class Softphone:
    """Places one simulated call against a bridge's Media Streams URL."""

    def __init__(self, url: str, *, auth_token: str | None = None, account_sid: str = "AC" + "0" * 32):
        self.url = url
        self.auth_token = auth_token
        self.account_sid = account_sid

    def _headers(self) -> dict[str, str]:
        if not self.auth_token:
            return {}
        return {"X-Twilio-Signature": SignatureChecker(self.auth_token).sign(self.url, {})}

    async def call(self, script: CallScript, *, call_sid: str | None = None) -> SoftphoneResult:
        call_sid = call_sid or "CA" + uuid.uuid4().hex
        result = SoftphoneResult(call_sid=call_sid, stream_sid="MZ" + uuid.uuid4().hex)
        async with websockets.connect(
            self.url, additional_headers=self._headers(), max_size=2**22
        ) as ws:
            await self._run(ws, script, result)
        return result

    async def _run(self, ws: ClientConnection, script: CallScript, result: SoftphoneResult) -> None:
        call = _Call(ws, script, result, self.account_sid)
        await call.dial()
        listener = asyncio.create_task(call.listen())
        try:
            await call.talk()
        except websockets.ConnectionClosed:
            result.ended_by = result.ended_by or "agent_hung_up"
        finally:
            call.finish()
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener


class _Call:
    """One call from the caller's side: what was sent, what is playing, since when."""

    def __init__(
        self, ws: ClientConnection, script: CallScript, result: SoftphoneResult, account_sid: str
    ):
        self.ws = ws
        self.script = script
        self.result = result
        self.account_sid = account_sid
        self.playback = _PlaybackBuffer()
        self.closed = asyncio.Event()
        """Set once the bridge has closed the socket."""
        self.dtmf = sorted(script.dtmf)
        self.sent = bytearray()
        self.sequence = 0
        self.chunk = 0
        self.offset = 0
        """How far into the caller's speech the frames sent so far reach."""
        self.quiet_since: float | None = None
        self.started = 0.0
        self._frame_s = FRAME_S / script.speed

    def message(self, event: str, **body) -> str:
        """A stream message with the next sequence number, as Twilio numbers them."""
        self.sequence += 1
        return json.dumps({"event": event, "sequenceNumber": str(self.sequence),
                           "streamSid": self.result.stream_sid, **body})

    async def dial(self) -> None:
        """Open the stream as Twilio does: `connected`, then `start` with the parameters."""
        result = self.result
        await self.ws.send(json.dumps({"event": "connected", "protocol": "Call",
                                       "version": "1.0.0"}))
        await self.ws.send(self.message("start", start={
            "streamSid": result.stream_sid, "accountSid": self.account_sid,
            "callSid": result.call_sid, "tracks": ["inbound"],
            "customParameters": self.script.parameters,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }))
        self.started = time.monotonic()

    async def listen(self) -> None:
        """Take in what the bridge sends until it closes the socket."""
        try:
            async for raw in self.ws:
                await self._heard(raw)
        except websockets.ConnectionClosed:
            pass
        self.closed.set()

    async def _heard(self, raw: str | bytes) -> None:
        result, data = self.result, json.loads(raw)
        event = data.get("event")
        if event == "media":
            audio = base64.b64decode(data["media"]["payload"])
            if result.first_agent_audio_s is None:
                result.first_agent_audio_s = time.monotonic() - self.started
            result.media_received += 1
            result.media_at.append(time.monotonic())
            self.playback.add_audio(audio)
        elif event == "mark":
            result.marks_received.append(data["mark"]["name"])
            self.playback.add_mark(data["mark"]["name"])
        elif event == "clear":
            result.clears += 1
            result.clear_times.append(time.monotonic() - self.started)
            result.cleared_s += self.playback.queued_bytes / 8000
            await self._echo(self.playback.clear())
        else:
            result.bad_messages.append(str(raw)[:200])

    async def _echo(self, marks: list[str]) -> None:
        """Tell the bridge these marks were reached, as Twilio does."""
        for name in marks:
            self.result.marks_echoed.append(name)
            await self.ws.send(self.message("mark", mark={"name": name}))

    async def talk(self) -> None:
        """Send the caller's side frame by frame on the audio clock until the call ends."""
        frame_s = self._frame_s
        while not self.closed.is_set():
            elapsed = self.chunk * FRAME_S
            ended_by = self._time_is_up(elapsed)
            if ended_by:
                self.result.ended_by = ended_by
                break
            await self._press_keys_due(elapsed)
            await self._send_frame(elapsed)
            await self._play_tick()
            if self._settled(elapsed):
                self.result.ended_by = "caller_finished"
                break
            next_at = self.started + self.chunk * frame_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if self.closed.is_set():
            self.result.ended_by = self.result.ended_by or "agent_hung_up"
        else:
            await self.ws.send(self.message("stop", stop={"accountSid": self.account_sid,
                                                          "callSid": self.result.call_sid}))

    async def _play_tick(self) -> None:
        """Play 20 ms of agent audio; note the lead at Twilio and any stall in the speech.

        Twilio plays on its own clock. A tick this loop runs late (a stall on a busy
        machine; the ticks after it catch up) is audio Twilio would already have played,
        so it is not counted as audio Twilio holds."""
        queued = self.playback.queued_bytes
        if queued:
            due = self.started + (self.chunk - 1) * self._frame_s
            late_s = max(0.0, time.monotonic() - due) * self.script.speed
            self.result.lead_s.append(max(0.0, queued / 8000 - late_s))
            playback = self.playback
            if playback.dry_ticks and playback.dry_ticks * FRAME_S < UNDERRUN_S:
                self.result.underruns.append(playback.dry_ticks * FRAME_S)
            playback.dry_ticks = 0
        elif self.playback.dry_ticks is not None:
            self.playback.dry_ticks += 1
        await self._echo(self.playback.play(FRAME_BYTES))

    def _time_is_up(self, elapsed: float) -> str | None:
        """Why the caller stops now, if the script's clock says so."""
        if self.script.hang_up_at is not None and elapsed >= self.script.hang_up_at:
            return "caller_hung_up"
        if elapsed >= self.script.max_s:
            return "max_duration"
        return None

    async def _press_keys_due(self, elapsed: float) -> None:
        while self.dtmf and self.dtmf[0][0] <= elapsed:
            _, digit = self.dtmf.pop(0)
            await self.ws.send(self.message("dtmf", dtmf={"track": "inbound_track",
                                                          "digit": digit}))

    async def _send_frame(self, elapsed: float) -> None:
        """The next 20 ms of speech, or of line silence once the speech is over."""
        frame = self.script.audio[self.offset:self.offset + FRAME_BYTES]
        self.offset += FRAME_BYTES
        frame = frame.ljust(FRAME_BYTES, MULAW_SILENCE)
        self.sent += frame
        self.chunk += 1
        await self.ws.send(self.message("media", media={
            "track": "inbound", "chunk": str(self.chunk),
            "timestamp": str(int(elapsed * 1000)),
            "payload": base64.b64encode(frame).decode(),
        }))
        self.result.frames_sent += 1

    def _settled(self, elapsed: float) -> bool:
        """Whether the caller has said everything and the agent has been quiet for `settle_s`."""
        caller_done = self.offset >= len(self.script.audio) and not self.dtmf
        if caller_done and not self.playback.busy and self.script.hang_up_at is None:
            if self.quiet_since is None:
                self.quiet_since = elapsed
            return elapsed - self.quiet_since >= self.script.settle_s
        self.quiet_since = None
        return False

    def finish(self) -> None:
        """Record what was played and sent, however the call ended."""
        self.result.duration_s = self.chunk * FRAME_S
        self.result.agent_audio = bytes(self.playback.played)
        self.result.caller_audio = bytes(self.sent)
