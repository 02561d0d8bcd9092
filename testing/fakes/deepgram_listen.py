"""Local fake of Deepgram live speech-to-text, the WebSocket ``/v1/listen``.

Transcripts are scripted and timed against the audio clock: each scripted
result goes out only once the client has sent that many seconds of audio,
never earlier, so a test sees the latency shape of a real call without
a real model. The fake counts the audio it received, which is what Deepgram
bills, so tests can hold pipecat's usage metrics against it.
"""

import hashlib
import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tollbridge.testing.fakes.audio import BYTES_PER_SAMPLE
from tollbridge.testing.fakes.server import DeepgramFakeServer, Rejection, RequestRecord

#: Model families that stream; anything else is refused like an unknown model.
MODEL_PREFIXES = ("nova-3", "nova-2", "nova", "enhanced", "base")

_NET0001 = (
    b"Deepgram did not receive audio data or a text message within the timeout window."
    b" See https://dpgr.am/net0001"
)
_CONFIDENCE = 0.99


@dataclass
class ListenRecord(RequestRecord):
    """One /v1/listen connection, with the audio it carried."""

    #: From the query: sample_rate x channels x bytes per sample of `encoding`.
    bytes_per_second: int = 0
    #: Audio seconds received when each message in `sent` went out.
    sent_at: list[float] = field(default_factory=list)

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio received, the quantity Deepgram bills."""
        return self.binary_bytes / self.bytes_per_second if self.bytes_per_second else 0.0


@dataclass(frozen=True)
class ScriptedResult:
    """A scripted transcript, due once `at` seconds of audio have arrived."""

    at: float
    transcript: str
    is_final: bool
    speech_final: bool
    start: float
    duration: float
    words: tuple[Mapping[str, Any], ...]

    @property
    def onset(self) -> float:
        """When the speech in this result begins: its first word, else its span."""
        return float(self.words[0]["start"]) if self.words else self.start

    @property
    def end(self) -> float:
        """When the speech in this result ends: its last word, else its span."""
        return float(self.words[-1]["end"]) if self.words else self.start + self.duration


@dataclass
class _ListenParams:
    """The query parameters the fake acts on, checked as Deepgram checks them."""

    model: str
    bytes_per_second: int
    channels: int
    interim_results: bool
    endpointing: bool
    vad_events: bool
    utterance_end_ms: int | None

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> "_ListenParams":
        model = query.get("model", "base")
        if not model.startswith(MODEL_PREFIXES):
            raise Rejection(400, "Bad Request", f"No such model: {model}")
        encoding = query.get("encoding")
        if encoding is None:
            raise Rejection(400, "Bad Request", "Raw audio requires `encoding`.")
        if encoding not in BYTES_PER_SAMPLE:
            raise Rejection(400, "Bad Request", f"Unsupported encoding: {encoding}")
        sample_rate = _positive_int(query, "sample_rate", default=None)
        channels = _positive_int(query, "channels", default=1)
        utterance_end_ms = query.get("utterance_end_ms")
        if utterance_end_ms is not None and not utterance_end_ms.isdigit():
            raise Rejection(400, "Bad Request", "`utterance_end_ms` must be an integer.")
        return cls(
            model=model,
            bytes_per_second=sample_rate * channels * BYTES_PER_SAMPLE[encoding],
            channels=channels,
            interim_results=query.get("interim_results") == "true",
            endpointing=query.get("endpointing") != "false",
            vad_events=query.get("vad_events") == "true",
            utterance_end_ms=int(utterance_end_ms) if utterance_end_ms is not None else None,
        )


def _positive_int(query: Mapping[str, str], name: str, default: int | None) -> int:
    value = query.get(name)
    if value is None:
        if default is None:
            raise Rejection(400, "Bad Request", f"Raw audio requires `{name}`.")
        return default
    if not value.isdigit() or int(value) == 0:
        raise Rejection(400, "Bad Request", f"`{name}` must be a positive integer.")
    return int(value)


def _script(results: Sequence[Mapping[str, Any]]) -> list[ScriptedResult]:
    """Fill in each result's span and words.

    A result spans from the end of the last final (or its own `start`) to `at`
    unless it says otherwise; words default to an even split of that span.
    """
    scripted: list[ScriptedResult] = []
    finalized_until = 0.0
    for result in results:
        at = float(result["at"])
        if scripted and at < scripted[-1].at:
            raise ValueError(f"scripted results must be in audio order; {at} comes after later")
        start = float(result.get("start", finalized_until))
        duration = float(result.get("duration", at - start))
        transcript = str(result["transcript"])
        words = result.get("words") or _even_words(transcript, start, duration)
        item = ScriptedResult(
            at=at,
            transcript=transcript,
            is_final=bool(result["is_final"]),
            speech_final=bool(result["speech_final"]),
            start=start,
            duration=duration,
            words=tuple(words),
        )
        if item.is_final:
            finalized_until = start + duration
        scripted.append(item)
    return scripted


def _even_words(transcript: str, start: float, duration: float) -> list[dict[str, Any]]:
    tokens = transcript.split()
    step = duration / len(tokens) if tokens else 0.0
    return [
        {
            "word": re.sub(r"[^\w']", "", token).lower() or token,
            "start": round(start + i * step, 3),
            "end": round(start + (i + 1) * step, 3),
            "confidence": _CONFIDENCE,
            "punctuated_word": token,
        }
        for i, token in enumerate(tokens)
    ]


@dataclass
class _Due:
    """A server message, or a scripted result, waiting for the audio clock to reach `at`."""

    at: float
    message: dict[str, Any] | None = None
    result: ScriptedResult | None = None


class FakeDeepgramListen(DeepgramFakeServer[ListenRecord]):
    """Deepgram ``/v1/listen`` on 127.0.0.1, answering from a script."""

    record_type = ListenRecord

    def __init__(
        self,
        api_key: str,
        results: Sequence[Mapping[str, Any]] = (),
        *,
        idle_timeout: float = 10.0,
        outage: int | None = None,
        fail_after: int | None = None,
    ) -> None:
        """Configure the fake.

        Args:
            api_key: The only key accepted in ``Authorization: Token <key>``.
            results: Scripted results, each ``{"at": seconds of audio, "transcript",
                "is_final", "speech_final"}`` plus optional ``start``, ``duration``
                (seconds) and ``words`` (Deepgram word dicts). Every connection
                replays the whole script, as it is when the connection's first
                audio arrives (see `use_script`).
            idle_timeout: Seconds without audio or any message before the fake
                closes the socket (1011, NET-0001), as Deepgram does after 10 s.
            outage, fail_after: The fault options (see `FakeServer`); `fail_after`
                counts the client's messages, audio and control.
        """
        super().__init__(api_key, outage=outage, fail_after=fail_after)
        self.script = _script(results)
        self.idle_timeout = idle_timeout

    def use_script(self, results: Sequence[Mapping[str, Any]]) -> None:
        """Replay `results` on connections whose audio starts from now on (e.g. a fallback
        model's connection that sat idle until its primary died)."""
        self.script = _script(results)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/listen", self._listen)]

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        record = self.open_record(request)
        try:
            self.gate(request)
            params = _ListenParams.parse(request.query)
        except Rejection as rejection:
            return self.reject(rejection, record)
        record.bytes_per_second = params.bytes_per_second
        ws = await self.accept(request, record)
        session = _ListenSession(self, ws, record, params)
        try:
            await self.serve(request, ws, record, session.on_message, self.idle_timeout)
        except TimeoutError:
            await ws.close(code=1011, message=_NET0001)
        return ws


class _ListenSession:
    """One connection's state: the audio received and the messages still due."""

    def __init__(
        self,
        fake: FakeDeepgramListen,
        ws: web.WebSocketResponse,
        record: ListenRecord,
        params: _ListenParams,
    ) -> None:
        self._fake = fake
        self._ws = ws
        self._record = record
        self._params = params
        self._model_uuid = str(uuid.uuid4())
        self._sha256 = hashlib.sha256()
        self._finalized_until = 0.0
        self._due: list[_Due] | None = None
        """Built when the first audio arrives: the script as it is then."""

    def _timeline(self) -> list[_Due]:
        """Every message the script will produce, in the order the audio clock releases them."""
        due: list[_Due] = []
        utterance_started = False
        channel = [0, self._params.channels]
        for result in self._fake.script:
            if not result.is_final and not self._params.interim_results:
                continue
            if self._params.vad_events and not utterance_started:
                started = {"type": "SpeechStarted", "channel": channel, "timestamp": result.onset}
                due.append(_Due(result.onset, message=started))
            utterance_started = not result.speech_final
            due.append(_Due(result.at, result=result))
            if result.speech_final and self._params.utterance_end_ms is not None:
                # Deepgram sees the gap only once that much audio has followed the last word.
                gap_heard = result.end + self._params.utterance_end_ms / 1000
                ended = {"type": "UtteranceEnd", "channel": channel, "last_word_end": result.end}
                due.append(_Due(max(result.at, gap_heard), message=ended))
        # Stable sort: a result's SpeechStarted and UtteranceEnd keep their places around it.
        return sorted(due, key=lambda item: item.at)

    @property
    def _received_seconds(self) -> float:
        return self._record.audio_seconds

    async def on_message(self, message: Any) -> bool:
        """Handle audio or a control message; False once the stream is closed."""
        if isinstance(message, bytes):
            await self._on_audio(message)
            return True
        return await self._on_control(message)

    async def _on_audio(self, audio: bytes) -> None:
        """Count the audio, then release every message its arrival makes due."""
        self._sha256.update(audio)
        self._due = self._timeline() if self._due is None else self._due
        received = self._record.binary_bytes
        bytes_per_second = self._params.bytes_per_second
        while self._due and received >= math.ceil(round(self._due[0].at * bytes_per_second, 6)):
            item = self._due.pop(0)
            if item.result is not None:
                await self._send_result(item.result, from_finalize=False)
            elif item.message is not None:
                await self._send(item.message)

    async def _on_control(self, message: Any) -> bool:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "KeepAlive":
            return True
        if kind == "Finalize":
            await self._flush(from_finalize=True)
            return True
        if kind == "CloseStream":
            await self._flush(from_finalize=False)
            await self._send(
                {
                    "type": "Metadata",
                    "transaction_key": "deprecated",
                    "request_id": self._record.request_id,
                    "sha256": self._sha256.hexdigest(),
                    "created": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "duration": round(self._received_seconds, 3),
                    "channels": self._params.channels,
                }
            )
            await self._ws.close()
            return False
        self._fake.failures.append(f"SchemaError: {message!r}")
        await self._send(
            {
                "type": "Error",
                "variant": "SchemaError",
                "description": "Could not parse the client message.",
                "message": message if isinstance(message, str) else json.dumps(message),
            }
        )
        return True

    async def _flush(self, *, from_finalize: bool) -> None:
        """Finalize the speech already heard: its pending finals go out now, interims are moot.

        With nothing pending, an empty final covers the audio since the last one,
        which is what Deepgram answers to a Finalize after silence.
        """
        heard = self._received_seconds
        self._due = self._timeline() if self._due is None else self._due
        finals: list[ScriptedResult] = []
        pending: list[_Due] = []
        for item in self._due:
            if item.result is None or item.result.onset >= heard:
                pending.append(item)
            elif item.result.is_final:
                finals.append(item.result)
        self._due = pending
        for result in finals:
            await self._send_result(result, from_finalize=from_finalize)
        if not finals:
            empty = ScriptedResult(
                at=heard,
                transcript="",
                is_final=True,
                speech_final=False,
                start=self._finalized_until,
                duration=max(heard - self._finalized_until, 0.0),
                words=(),
            )
            await self._send_result(empty, from_finalize=from_finalize)

    async def _send_result(self, result: ScriptedResult, *, from_finalize: bool) -> None:
        if result.is_final:
            self._finalized_until = result.start + result.duration
        await self._send(
            {
                "type": "Results",
                "channel_index": [0, self._params.channels],
                "duration": round(result.duration, 3),
                "start": round(result.start, 3),
                "is_final": result.is_final,
                "speech_final": result.speech_final and self._params.endpointing,
                "from_finalize": from_finalize,
                "channel": {
                    "alternatives": [
                        {
                            "transcript": result.transcript,
                            "confidence": _CONFIDENCE if result.transcript else 0.0,
                            "words": list(result.words),
                        }
                    ]
                },
                "metadata": {
                    "request_id": self._record.request_id,
                    "model_info": {"name": self._params.model, "version": "fake", "arch": "fake"},
                    "model_uuid": self._model_uuid,
                },
            }
        )

    async def _send(self, message: dict[str, Any]) -> None:
        self._record.sent_at.append(self._received_seconds)
        await self._fake.send_json(self._ws, self._record, message)
