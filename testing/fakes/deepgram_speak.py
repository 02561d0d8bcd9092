"""Local fake of Deepgram Aura text-to-speech: the WebSocket and the REST ``/v1/speak``.

One server answers both, as api.deepgram.com does: ``GET /v1/speak`` upgrades to
the streaming protocol (pipecat's ``DeepgramTTSService``), ``POST /v1/speak``
streams one utterance back (``DeepgramHttpTTSService``). The audio is a
deterministic tone whose length follows the text, and every character the
client sent is counted, since characters are what Aura bills.
"""

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tollbridge.testing.fakes.audio import BYTES_PER_SAMPLE, synthesize
from tollbridge.testing.fakes.server import (
    DeepgramFakeServer,
    Rejection,
    SpeakingFake,
    SpokenRecord,
)

#: Sample rates Aura accepts per encoding; the first is its default.
SAMPLE_RATES = {
    "linear16": (24000, 8000, 16000, 32000, 48000),
    "mulaw": (8000, 16000),
    "alaw": (8000, 16000),
}
#: Encodings only the REST endpoint offers; real, but the fake does not produce them.
_COMPRESSED = ("mp3", "opus", "flac", "aac")
_DEFAULT_MODEL = "aura-asteria-en"
_CHUNK_SECONDS = 0.1


@dataclass
class SpeakRecord(SpokenRecord):
    """One /v1/speak connection or REST request; its `characters` are the text received,
    what Aura bills."""


@dataclass
class _SpeakParams:
    """The query parameters the fake acts on, checked as Deepgram checks them."""

    model: str
    encoding: str
    sample_rate: int

    @classmethod
    def parse(cls, query: Mapping[str, str], *, rest: bool) -> "_SpeakParams":
        model = query.get("model", _DEFAULT_MODEL)
        if not model.startswith("aura-"):
            raise Rejection(400, "Bad Request", f"No such model: {model}")
        # Without `encoding`, REST answers MP3 and the WebSocket linear16.
        encoding = query.get("encoding", "mp3" if rest else "linear16")
        if rest and encoding in _COMPRESSED:
            raise Rejection(
                400, "FAKE_UNSUPPORTED", f"The fake serves raw audio only, not {encoding}."
            )
        if encoding not in SAMPLE_RATES:
            raise Rejection(
                400, "UNSUPPORTED_AUDIO_FORMAT", f"Unsupported audio format: {encoding}"
            )
        rate = query.get("sample_rate", str(SAMPLE_RATES[encoding][0]))
        if not rate.isdigit() or int(rate) not in SAMPLE_RATES[encoding]:
            raise Rejection(
                400,
                "UNSUPPORTED_AUDIO_FORMAT",
                f"Unsupported audio format: sample_rate={rate} is invalid for {encoding}.",
            )
        if rest and query.get("container", "wav") != "none":
            raise Rejection(400, "FAKE_UNSUPPORTED", "The fake serves container=none only.")
        return cls(model=model, encoding=encoding, sample_rate=int(rate))


def _audio_frames(text: str, params: _SpeakParams, chars_per_second: float) -> list[bytes]:
    """The audio for `text`, split into the short sample-aligned frames Aura streams."""
    audio = synthesize(
        text,
        encoding=params.encoding,
        sample_rate=params.sample_rate,
        chars_per_second=chars_per_second,
    )
    size = int(params.sample_rate * _CHUNK_SECONDS) * BYTES_PER_SAMPLE[params.encoding]
    return [audio[i : i + size] for i in range(0, len(audio), size)]


class FakeDeepgramSpeak(SpeakingFake[SpeakRecord], DeepgramFakeServer[SpeakRecord]):
    """Deepgram ``/v1/speak`` (WebSocket and REST) on 127.0.0.1."""

    record_type = SpeakRecord

    def __init__(self, api_key: str, **options: Any) -> None:
        """A REST request is one client message, so with `fail_after` the requests past that
        many get their body cut short (see `SpeakingFake` for the options)."""
        super().__init__(api_key, **options)
        self._rest_requests = 0

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/speak", self._websocket), web.post("/v1/speak", self._rest)]

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        record = self.open_record(request)
        try:
            self.gate(request)
            params = _SpeakParams.parse(request.query, rest=False)
        except Rejection as rejection:
            return self.reject(rejection, record)
        ws = await self.accept(request, record)
        session = _SpeakSession(self, ws, record, params)
        await session.start()
        await self.serve(request, ws, record, session.on_message)
        return ws

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        record = self.open_record(request)
        try:
            self.gate(request)
            params = _SpeakParams.parse(request.query, rest=True)
            text = await self._read_text(request, record)
        except Rejection as rejection:
            return self.reject(rejection, record)
        record.characters = len(text)
        cut_short = self.failing(self._rest_requests)
        self._rest_requests += 1
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "application/octet-stream",
                "dg-request-id": record.request_id,
                "dg-model-name": params.model,
                "dg-model-uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, params.model)),
                "dg-char-count": str(len(text)),
            },
        )
        await self.open_stream(request, record, response)
        try:
            for chunk in _audio_frames(text, params, self.chars_per_second):
                record.audio_bytes_sent += len(chunk)
                await response.write(chunk)
                if cut_short:
                    self.drop(request, record)
                    return response
            await response.write_eof()
        finally:
            self.done(request, record)
        return response

    async def _read_text(self, request: web.Request, record: SpeakRecord) -> str:
        """The `text` of the JSON body."""
        body = await self.read_body(request, record)
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            raise Rejection(
                400,
                "Bad Request",
                "Content-type was application/json, but we could not process the JSON payload.",
            )
        if not body["text"].strip():
            raise Rejection(400, "Bad Request", "Text must not be empty.")
        return body["text"]


class _SpeakSession:
    """One streaming connection: the text buffered since the last Flush, and the sequence ids."""

    def __init__(
        self,
        fake: FakeDeepgramSpeak,
        ws: web.WebSocketResponse,
        record: SpeakRecord,
        params: _SpeakParams,
    ) -> None:
        self._fake = fake
        self._ws = ws
        self._record = record
        self._params = params
        self._buffered = ""
        self._sequence_id = 0

    async def start(self) -> None:
        """Greet with Metadata, as Aura does on connect."""
        await self._send(
            {
                "type": "Metadata",
                "request_id": self._record.request_id,
                "model_name": self._params.model,
                "model_version": "fake",
                "model_uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, self._params.model)),
            }
        )

    async def on_message(self, message: Any) -> bool:
        """Handle one client message; False once the socket is closed."""
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "Speak" and isinstance(message.get("text"), str):
            self._buffered += message["text"]
            self._record.characters += len(message["text"])
        elif kind == "Flush":
            frames = _audio_frames(self._buffered, self._params, self._fake.chars_per_second)
            for chunk in frames:
                await self._fake.send_audio(self._ws, self._record, chunk)
            self._buffered = ""
            await self._send({"type": "Flushed", "sequence_id": self._next_sequence_id()})
        elif kind == "Clear":
            self._buffered = ""
            await self._send({"type": "Cleared", "sequence_id": self._next_sequence_id()})
        elif kind == "Close":
            await self._ws.close()
            return False
        else:
            self._fake.failures.append(f"UNKNOWN_MESSAGE: {message!r}")
            await self._send(
                {
                    "type": "Warning",
                    "description": f"Unknown or malformed message: {message!r}",
                    "code": "UNKNOWN_MESSAGE",
                }
            )
        return True

    def _next_sequence_id(self) -> int:
        sequence_id = self._sequence_id
        self._sequence_id += 1
        return sequence_id

    async def _send(self, message: dict[str, Any]) -> None:
        await self._fake.send_json(self._ws, self._record, message)
