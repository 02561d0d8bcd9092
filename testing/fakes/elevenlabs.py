"""Local fake of ElevenLabs streaming TTS, the multi-context WebSocket ``multi-stream-input``.

This is the protocol pipecat's ``ElevenLabsTTSService`` speaks: one socket,
several contexts (one per bot turn), each opened by its first message and
ended by ``close_context``. The fake answers each context's text with a
deterministic tone whose length follows the text, plus character alignment,
and counts the characters billed.
"""

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from aiohttp import web

from tollbridge.testing.fakes.audio import synthesize
from tollbridge.testing.fakes.server import (
    Rejection,
    SpeakingFake,
    SpokenRecord,
)

#: Output formats the fake produces: (encoding, sample rate).
OUTPUT_FORMATS = {
    "ulaw_8000": ("mulaw", 8000),
    "alaw_8000": ("alaw", 8000),
    **{
        f"pcm_{rate}": ("linear16", rate)
        for rate in (8000, 16000, 22050, 24000, 32000, 44100, 48000)
    },
}
#: Formats ElevenLabs offers that the fake does not encode.
_COMPRESSED_PREFIXES = ("mp3_", "opus_")
_DEFAULT_CONTEXT = "default"


@dataclass
class ElevenLabsRecord(SpokenRecord):
    """One multi-stream-input connection; its `characters` are the non-blank text received,
    what ElevenLabs bills."""


@dataclass
class _StreamParams:
    """The query parameters the fake acts on, checked as ElevenLabs checks them."""

    encoding: str
    sample_rate: int
    auto_mode: bool

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> "_StreamParams":
        model = query.get("model_id", "eleven_multilingual_v2")
        if not model.startswith("eleven_"):
            raise Rejection(400, "model_not_found", f"A model with model ID {model} not found.")
        output_format = query.get("output_format", "mp3_44100_128")
        if output_format.startswith(_COMPRESSED_PREFIXES):
            raise Rejection(
                400, "fake_unsupported", f"The fake serves raw audio only, not {output_format}."
            )
        if output_format not in OUTPUT_FORMATS:
            raise Rejection(
                400, "invalid_output_format", f"Invalid output format: {output_format}."
            )
        encoding, sample_rate = OUTPUT_FORMATS[output_format]
        return cls(
            encoding=encoding,
            sample_rate=sample_rate,
            auto_mode=query.get("auto_mode") == "true",
        )


class FakeElevenLabs(SpeakingFake[ElevenLabsRecord]):
    """ElevenLabs ``/v1/text-to-speech/{voice_id}/multi-stream-input`` on 127.0.0.1."""

    record_type = ElevenLabsRecord

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/text-to-speech/{voice_id}/multi-stream-input", self._stream)]

    def authorize(self, request: web.Request) -> None:
        if request.headers.get("xi-api-key") != self.api_key:
            raise Rejection(401, "INVALID_AUTH", "Invalid credentials.")

    def error_response(self, rejection: Rejection, record: ElevenLabsRecord) -> web.Response:
        """ElevenLabs' ``{"detail": {"status", "message"}}`` error body."""
        body = {"detail": {"status": (rejection.code or "").lower(), "message": rejection.message}}
        return web.json_response(body, status=rejection.status)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        record = self.open_record(request)
        try:
            self.gate(request)
            params = _StreamParams.parse(request.query)
        except Rejection as rejection:
            return self.reject(rejection, record)
        ws = await self.accept(request, record)
        session = _StreamSession(self, ws, record, params)
        await self.serve(request, ws, record, session.on_message)
        return ws


class _StreamSession:
    """One connection's contexts: which are open and the text each has buffered."""

    def __init__(
        self,
        fake: FakeElevenLabs,
        ws: web.WebSocketResponse,
        record: ElevenLabsRecord,
        params: _StreamParams,
    ) -> None:
        self._fake = fake
        self._ws = ws
        self._record = record
        self._params = params
        self._buffers: dict[str, str] = {}

    async def on_message(self, message: Any) -> bool:
        """Handle one client message; False once the socket is closed."""
        if not isinstance(message, dict):
            return await self._refuse("Invalid message: expected a JSON object")
        if message.get("close_socket"):
            for context_id in list(self._buffers):
                await self._close_context(context_id)
            await self._ws.close()
            return False
        context_id = str(message.get("context_id", _DEFAULT_CONTEXT))
        opening = context_id not in self._buffers
        if "voice_settings" in message and not opening:
            # A context's settings are fixed by its first message; ElevenLabs refuses later ones.
            return await self._refuse(
                "voice_settings are only accepted in a context's first message"
            )
        text = message.get("text")
        if isinstance(text, str) and (opening or text.strip()):
            # Blank text opens a context or keeps it alive; it is neither spoken nor billed.
            self._buffers.setdefault(context_id, "")
            if text.strip():
                self._buffers[context_id] += text
                self._record.characters += len(text)
                if self._params.auto_mode:
                    await self._generate(context_id)
        if context_id in self._buffers and message.get("flush"):
            await self._generate(context_id)
        if context_id in self._buffers and message.get("close_context"):
            await self._close_context(context_id)
        return True

    async def _refuse(self, reason: str) -> bool:
        """Close the socket (1008) as ElevenLabs does on a message it refuses; a client failure."""
        self._fake.failures.append(f"1008: {reason}")
        await self._ws.close(code=1008, message=reason.encode())
        return False

    async def _generate(self, context_id: str) -> None:
        """Speak what the context has buffered: one audio message with its alignment."""
        text = self._buffers[context_id]
        if not text:
            return
        self._buffers[context_id] = ""
        audio = synthesize(
            text,
            encoding=self._params.encoding,
            sample_rate=self._params.sample_rate,
            chars_per_second=self._fake.chars_per_second,
        )
        # Character boundaries in ms; times restart at 0 in every message, as ElevenLabs' do.
        bounds = [round(i * 1000 / self._fake.chars_per_second) for i in range(len(text) + 1)]
        alignment = {
            "chars": list(text),
            "charStartTimesMs": bounds[:-1],
            "charDurationsMs": [end - start for start, end in pairwise(bounds)],
        }
        self._record.audio_bytes_sent += len(audio)
        await self._fake.send_json(
            self._ws,
            self._record,
            {
                "audio": base64.b64encode(audio).decode(),
                "isFinal": None,
                "contextId": context_id,
                "alignment": alignment,
                "normalizedAlignment": alignment,
            },
        )

    async def _close_context(self, context_id: str) -> None:
        """Speak the rest of the context's text, then mark it final."""
        await self._generate(context_id)
        del self._buffers[context_id]
        await self._fake.send_json(
            self._ws, self._record, {"isFinal": True, "contextId": context_id}
        )
