"""Load generator: N simulated Twilio calls from one process, paced on the audio clock.

Each call does what Twilio does: `connected`, `start`, then a 20 ms μ-law
`media` frame every 20 ms for the whole call, both ways at once. The caller
speaks in turns — a 1 s tone, then line silence (0xFF) — and between turns
plays the agent's reply on a simulated Twilio playback buffer: `mark`s are
echoed when the audio before them has played, `clear` empties the buffer.

Per turn it records the latency the bridge added (caller's last speech frame
sent → first agent audio received, minus the stand-ins' fixed delays) and
checks the reply's audio against its own playback clock: a piece that
arrives more than `LATE_S` after the buffer ran dry is late (a gap the caller
hears), audio that never comes is missing.

It is lean on purpose, so that one core drives a few hundred calls: the
caller's messages are preformatted, one ticker task paces every call (calls
spread over four 5 ms slots, as real calls are not phase-aligned), and
received audio is only measured, never decoded into samples.
"""

from __future__ import annotations

import asyncio
import base64
import json
import multiprocessing
import os
import random
import resource
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection

import websockets
from websockets.asyncio.client import ClientConnection, connect

from benchmarks import standins
from tollbridge.codec import pcm16_to_mulaw

FRAME_S = 0.02
FRAME_BYTES = 160
SLOTS = 4
SPEECH_S = 1.0
PAUSES_S = (0.2, 1.0)
"""The caller speaks again after a pause drawn from this range once the reply has played,
so calls drift apart instead of answering in lockstep."""
LATE_S = 0.04
ANSWER_TIMEOUT_S = standins.FIXED_DELAY_S + 3.0
"""No agent audio this long after the caller stopped: the turn went unanswered."""
REPLY_BYTES = int(standins.REPLY_S * standins.SAMPLE_RATE)
TURN_S = SPEECH_S + standins.FIXED_DELAY_S + standins.REPLY_S + 0.5
"""Time a turn needs; a caller starts no turn it cannot finish before hanging up."""
RAMP_S_PER_CALL = 0.02

_SPEECH = pcm16_to_mulaw(standins.tone(SPEECH_S, 300))
SPEECH_PAYLOADS = [
    base64.b64encode(_SPEECH[i : i + FRAME_BYTES]).decode()
    for i in range(0, len(_SPEECH), FRAME_BYTES)
]
SILENCE_PAYLOAD = base64.b64encode(b"\xff" * FRAME_BYTES).decode()
ACCOUNT_SID = "AC" + "0" * 32


@dataclass
class CallReport:
    """What one caller saw; summed over calls into a LoadReport."""

    turns: int = 0
    unanswered: int = 0
    latencies: list[float] = field(default_factory=list)
    frames_received: float = 0.0
    late_frames: float = 0.0
    gap_s: float = 0.0
    missing_frames: float = 0.0
    extra_bytes: int = 0
    marks_echoed: int = 0
    seconds: float = 0.0
    failure: str = ""


@dataclass
class LoadReport:
    """What all callers of one run saw."""

    failures: list[str]
    call_seconds: float
    turns: int
    unanswered: int
    latencies: list[float]
    frames_received: float
    late_frames: float
    gap_s: float
    missing_frames: float
    extra_bytes: int
    marks_echoed: int
    client_cpu_s: float
    client_wall_s: float
    client_lag_max_ms: float


class Caller:
    """One simulated call: a turn-taking caller and Twilio's playback buffer."""

    def __init__(self, url: str, index: int, starts_at: float, seconds: float):
        self.url = url
        self.starts_at = starts_at
        self.ends_at = starts_at + seconds
        self._random = random.Random(index)  # the same schedule against every server
        # Callers start listening first, for a random part of a turn: their turns interleave.
        self._next_turn_at = starts_at + self._random.uniform(0, max(0.0, min(TURN_S, seconds - TURN_S)))
        self.call_sid = "CA" + uuid.uuid4().hex
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.ws: ClientConnection | None = None
        self.report = CallReport()
        self.done = asyncio.Event()
        self._seq = 0
        self._chunk = 0
        self._spoken = len(SPEECH_PAYLOADS)  # frames of the current utterance sent so far
        self._waiting = False  # caller has spoken and waits for (the end of) the reply
        self._last_speech_at = 0.0
        self._first_audio_at: float | None = None
        self._reply_bytes = 0
        self._play_end = 0.0  # when what Twilio has buffered finishes playing
        self._marks: deque[tuple[float, str]] = deque()  # (due, name)
        self._connected_at = 0.0

    def _message(self, event: str, body: str) -> str:
        self._seq += 1
        return (
            f'{{"event":"{event}","sequenceNumber":"{self._seq}",{body},'
            f'"streamSid":"{self.stream_sid}"}}'
        )

    async def open(self) -> None:
        self.ws = await connect(
            self.url, compression=None, proxy=None, ping_interval=None, max_queue=None,
            open_timeout=30,
        )
        self._connected_at = time.monotonic()
        await self.ws.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        start = {
            "streamSid": self.stream_sid, "accountSid": ACCOUNT_SID, "callSid": self.call_sid,
            "tracks": ["inbound"], "customParameters": {"vertical": "bench", "tenant": "bench"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
        await self.ws.send(self._message("start", f'"start":{json.dumps(start)}'))

    async def receive(self) -> None:
        """Measure the agent's audio against the playback clock; note marks and clears."""
        assert self.ws is not None
        try:
            async for raw in self.ws:
                now = time.monotonic()
                message = json.loads(raw)
                event = message.get("event")
                if event == "media":
                    self._audio(now, len(base64.b64decode(message["media"]["payload"])))
                elif event == "mark":
                    self._marks.append((max(now, self._play_end), message["mark"]["name"]))
                elif event == "clear":
                    self._play_end = now
                    self._marks = deque((now, name) for _, name in self._marks)
        except websockets.ConnectionClosed:
            pass
        if not self.done.is_set():
            self.report.failure = self.report.failure or "closed by the server"
            self.done.set()

    def _audio(self, now: float, size: int) -> None:
        report = self.report
        if not self._waiting or self._reply_bytes >= REPLY_BYTES:
            report.extra_bytes += size
            return
        if self._first_audio_at is None:
            self._first_audio_at = now
            report.latencies.append(now - self._last_speech_at - standins.FIXED_DELAY_S)
        elif now > self._play_end + LATE_S:
            report.late_frames += size / FRAME_BYTES
            report.gap_s += now - self._play_end
        self._play_end = max(self._play_end, now) + size / standins.SAMPLE_RATE
        self._reply_bytes += size
        report.frames_received += size / FRAME_BYTES

    def _turn_over(self, now: float) -> bool:
        """Whether the current turn is settled (played out, or given up on)."""
        if self._first_audio_at is None:
            if now - self._last_speech_at < ANSWER_TIMEOUT_S:
                return False
            self.report.unanswered += 1
        elif self._reply_bytes >= REPLY_BYTES:
            if now < self._play_end:
                return False
        elif now - self._first_audio_at < standins.REPLY_S + ANSWER_TIMEOUT_S:
            return False
        else:
            self.report.missing_frames += (REPLY_BYTES - self._reply_bytes) / FRAME_BYTES
        self._next_turn_at = now + self._random.uniform(*PAUSES_S)
        return True

    async def tick(self, now: float) -> None:
        """Send this call's next 20 ms frame (and any marks that have played)."""
        assert self.ws is not None
        if self.done.is_set():
            return
        try:
            if self._waiting and self._turn_over(now):
                self._waiting = False
            if not self._waiting and self._spoken == len(SPEECH_PAYLOADS):
                if now >= self.ends_at:
                    await self._hang_up(now)
                    return
                if self._next_turn_at <= now <= self.ends_at - TURN_S:
                    self._spoken, self._first_audio_at, self._reply_bytes = 0, None, 0
                    self.report.turns += 1
            while self._marks and self._marks[0][0] <= now:
                name = self._marks.popleft()[1]
                await self.ws.send(self._message("mark", f'"mark":{{"name":"{name}"}}'))
                self.report.marks_echoed += 1
            speaking = self._spoken < len(SPEECH_PAYLOADS)
            payload = SPEECH_PAYLOADS[self._spoken] if speaking else SILENCE_PAYLOAD
            self._chunk += 1
            await self.ws.send(self._message("media", (
                f'"media":{{"track":"inbound","chunk":"{self._chunk}",'
                f'"timestamp":"{self._chunk * 20}","payload":"{payload}"}}'
            )))
            if speaking:
                self._spoken += 1
                if self._spoken == len(SPEECH_PAYLOADS):
                    self._last_speech_at = time.monotonic()
                    self._waiting = True
        except websockets.ConnectionClosed:
            self.report.failure = self.report.failure or "closed by the server"
            self.done.set()

    async def _hang_up(self, now: float) -> None:
        assert self.ws is not None
        stop = {"accountSid": ACCOUNT_SID, "callSid": self.call_sid}
        await self.ws.send(self._message("stop", f'"stop":{json.dumps(stop)}'))
        self.report.seconds = now - self._connected_at
        self.done.set()


async def _run(url: str, calls: int, seconds: float) -> LoadReport:
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    began = time.monotonic()
    ramp = calls * RAMP_S_PER_CALL
    callers = [Caller(url, i, began + 0.1 + ramp * i / calls, seconds) for i in range(calls)]
    slots: list[list[Caller]] = [[] for _ in range(SLOTS)]
    lag_max = 0.0

    async def call(index: int, caller: Caller) -> None:
        await asyncio.sleep(caller.starts_at - time.monotonic())
        try:
            await caller.open()
        except (OSError, websockets.WebSocketException, TimeoutError) as error:
            caller.report.failure = f"connect: {error!r}"
            caller.done.set()
            return
        receiver = asyncio.create_task(caller.receive())
        slots[index % SLOTS].append(caller)
        await caller.done.wait()
        slots[index % SLOTS].remove(caller)
        assert caller.ws is not None
        await caller.ws.close()
        await receiver

    async def ticker() -> None:
        nonlocal lag_max
        tick, period = 0, FRAME_S / SLOTS
        while True:
            due = began + tick * period
            await asyncio.sleep(due - time.monotonic())
            now = time.monotonic()
            lag_max = max(lag_max, now - due)
            for caller in list(slots[tick % SLOTS]):
                await caller.tick(now)
            tick += 1

    pacing = asyncio.create_task(ticker())
    await asyncio.gather(*(call(i, c) for i, c in enumerate(callers)))
    pacing.cancel()
    used = resource.getrusage(resource.RUSAGE_SELF)
    reports = [c.report for c in callers]
    return LoadReport(
        failures=[r.failure for r in reports if r.failure],
        call_seconds=sum(r.seconds for r in reports),
        turns=sum(r.turns for r in reports),
        unanswered=sum(r.unanswered for r in reports),
        latencies=[x for r in reports for x in r.latencies],
        frames_received=sum(r.frames_received for r in reports),
        late_frames=sum(r.late_frames for r in reports),
        gap_s=sum(r.gap_s for r in reports),
        missing_frames=sum(r.missing_frames for r in reports),
        extra_bytes=sum(r.extra_bytes for r in reports),
        marks_echoed=sum(r.marks_echoed for r in reports),
        client_cpu_s=used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime,
        client_wall_s=time.monotonic() - began,
        client_lag_max_ms=lag_max * 1000,
    )


def _serve(core: int, conn: Connection) -> None:
    """The generator process: run each requested load, report, wait for the next."""
    import uvloop

    os.sched_setaffinity(0, {core})
    while (request := conn.recv()) is not None:
        url, calls, seconds = request
        conn.send(asdict(uvloop.run(_run(url, calls, seconds))))


class LoadGenerator:
    """A load-generator process pinned to one core, kept for many runs (it imports once)."""

    def __init__(self, core: int):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(core, child), name="bench-load",
                                         daemon=True)
        self._process.start()
        child.close()

    def run(self, url: str, *, calls: int, seconds: float) -> LoadReport:
        """`calls` concurrent calls of about `seconds` each against `url`."""
        limit = 60 + calls * RAMP_S_PER_CALL + seconds + TURN_S + 2 * ANSWER_TIMEOUT_S
        self._conn.send((url, calls, seconds))
        try:
            if not self._conn.poll(limit):
                raise EOFError
            return LoadReport(**self._conn.recv())
        except EOFError:
            self.close()
            raise RuntimeError(f"the load generator gave no report within {limit:.0f} s") from None

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send(None)
            except OSError:
                pass
            self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
