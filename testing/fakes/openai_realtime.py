"""A local OpenAI Realtime server (GA WebSocket ``/v1/realtime?model=…``) for tests.

It speaks the GA event protocol that pipecat's ``OpenAIRealtimeLLMService`` uses:
``session.created``/``session.updated``, the input audio buffer with a server-VAD-like
turn detector, conversation items, and responses with audio, transcript, text and
function-call events, ending in ``response.done`` with usage. Replies come from a
`Script`; what the caller "said" in a speech turn is the scripted turn's ``heard`` text.
It refuses what the GA API refuses: a missing or wrong key, the ``OpenAI-Beta`` header,
beta session fields such as ``input_audio_format``.

Stand-ins, chosen to be deterministic:

- **Turn detection**: a 10 ms frame of caller audio counts as speech when its RMS
  (int16 scale) reaches ``threshold × 1000``. Speech starts at the first such frame
  (``audio_start_ms`` backs off by ``prefix_padding_ms``) and stops after
  ``silence_duration_ms`` without one; the turn is then committed and, unless
  ``create_response`` is false, answered. ``semantic_vad`` behaves the same. Speech
  that starts during a response cancels it when ``interrupt_response`` is on.
- **Speech out**: a quiet 440 Hz tone, 70 ms per character of the reply, in the
  session's output format: ``audio/pcm`` (24 kHz PCM16), ``audio/pcmu`` (8 kHz μ-law)
  or ``audio/pcma`` (8 kHz A-law), sent in 100 ms deltas.
- **Usage**, per response, with the whole conversation as input each time (tokens from
  `tollbridge.testing.fakes.tokens`): instructions, each tool and each text item count as text;
  caller audio counts 1 token per 100 ms and assistant audio 1 per 50 ms, as input and
  as output. Cached input follows OpenAI's automatic caching (longest prefix shared
  with an earlier response, from 1024 tokens, in steps of 128), split into text and
  audio in ``cached_tokens_details``.
"""

import asyncio
import audioop
import base64
import binascii
import contextlib
import hashlib
import itertools
import json
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from aiohttp import web

from tollbridge.testing.fakes.openai_chat import OpenAIFakeServer
from tollbridge.testing.fakes.script import Script, ScriptedTurn, ScriptMismatch, fragments, words
from tollbridge.testing.fakes.server import Rejection, RequestRecord, ServerErrors
from tollbridge.testing.fakes.tokens import (
    AutomaticPrefixCache,
    CachedTokens,
    Segment,
    audio_segment,
    count_tokens,
    text_segment,
)

FORMATS = {"audio/pcm": 24000, "audio/pcmu": 8000, "audio/pcma": 8000}
"""GA audio formats and their fixed sample rates."""

BETA_SESSION_FIELDS = frozenset(
    {
        "modalities",
        "voice",
        "input_audio_format",
        "output_audio_format",
        "input_audio_transcription",
        "input_audio_noise_reduction",
        "turn_detection",
        "max_response_output_tokens",
        "speed",
    }
)
"""Top-level beta session fields; GA moved them under ``audio`` (or renamed them)."""

MS_PER_CHARACTER = 70
"""Length of fake speech per character of reply text: about 14 characters a second."""
DELTA_MS = 100
INPUT_AUDIO_MS_PER_TOKEN = 100
OUTPUT_AUDIO_MS_PER_TOKEN = 50
VAD_FRAME_MS = 10
MIN_COMMIT_MS = 100

_SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"


def default_session(session_id: str, model: str) -> dict[str, Any]:
    """The session a GA connection starts with."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "prompt": None,
        "expires_at": int(time.time()) + 3600,
        "include": None,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 200,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "alloy",
                "speed": 1.0,
            },
        },
    }


def merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    """Apply a ``session.update``: nested objects merge, other values (null too) replace.

    An object with its own ``type`` (an audio format, a turn detector) is one choice of
    several, so it replaces the old one whole rather than inheriting its fields.
    """
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict) and "type" not in value:
            merge(into[key], value)
        else:
            into[key] = value


def speech(text: str, format_type: str) -> bytes:
    """Fake speech for ``text`` in a GA output format."""
    rate = FORMATS[format_type]
    t = np.arange(len(text) * MS_PER_CHARACTER * rate // 1000) / rate
    pcm = (3000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
    if format_type == "audio/pcmu":
        return audioop.lin2ulaw(pcm, 2)
    if format_type == "audio/pcma":
        return audioop.lin2alaw(pcm, 2)
    return pcm


def to_pcm16(audio: bytes, format_type: str) -> bytes:
    """Caller audio as PCM16 at the format's rate, for turn detection."""
    if format_type == "audio/pcmu":
        return audioop.ulaw2lin(audio, 2)
    if format_type == "audio/pcma":
        return audioop.alaw2lin(audio, 2)
    return audio


def bytes_per_ms(format_type: str) -> int:
    """Encoded bytes per millisecond: PCM16 at 24 kHz or one byte a sample at 8 kHz."""
    return FORMATS[format_type] // 1000 * (2 if format_type == "audio/pcm" else 1)


def _invalid(message: str, code: str, param: str | None = None) -> Rejection:
    """A client event the API refuses; becomes an ``error`` event."""
    return Rejection(400, code, message, param=param)


@dataclass
class _Response:
    """A response being generated: what has gone out so far, for usage and cancellation."""

    id: str
    turn: ScriptedTurn
    modality: str
    input_segments: list[Segment]
    cached: CachedTokens
    items: list[dict[str, Any]] = field(default_factory=list)
    text_out: str = ""
    audio_ms_out: int = 0
    task: asyncio.Task[None] | None = None


@dataclass
class _Speech:
    """A caller turn the detector is inside of."""

    item_id: str
    start_ms: int
    silence_ms: int = 0


class RealtimeSession:
    """One WebSocket connection: its session config, conversation and input buffer."""

    def __init__(
        self,
        fake: "OpenAIRealtimeFake",
        ws: web.WebSocketResponse,
        record: RequestRecord,
        model: str,
    ) -> None:
        self.fake = fake
        self.ws = ws
        self.record = record
        self.model = model
        self.config = default_session(fake.next_id("sess_"), model)
        self.items: list[dict[str, Any]] = []
        """The conversation, in order, as the API reports its items."""
        self.audio_bytes_received = 0
        self._audio_ms: dict[str, int] = {}  # audio length of audio items, by item id
        self._heard: dict[str, str] = {}  # transcript of caller audio items, by item id
        self._pcm = bytearray()  # caller audio not yet run through the detector
        self._session_ms = 0  # caller audio received in this session
        self._buffer_ms = 0  # caller audio since the last commit or clear
        self._speech: _Speech | None = None
        self._response: _Response | None = None
        self._send_lock = asyncio.Lock()
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "session.update": self._on_session_update,
            "input_audio_buffer.append": self._on_append,
            "input_audio_buffer.commit": self._on_commit,
            "input_audio_buffer.clear": self._on_clear,
            "conversation.item.create": self._on_item_create,
            "conversation.item.truncate": self._on_item_truncate,
            "conversation.item.delete": self._on_item_delete,
            "conversation.item.retrieve": self._on_item_retrieve,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
        }

    # -- plumbing ------------------------------------------------------------------

    async def send(self, event: dict[str, Any]) -> None:
        """Send and log a server event; once `fail_after` events have gone out, break off."""
        event = {"event_id": self.fake.next_id("event_"), **event}
        async with self._send_lock:
            if self.ws.closed:
                return
            if self.fake.failing(len(self.record.sent)):
                await self._break_off()
                return
            self.record.sent.append(_loggable(event))
            await self.ws.send_str(json.dumps(event))

    async def _refuse(self, error: Rejection, event: Any) -> None:
        """Answer a refused client event with an ``error`` event, and log the failure."""
        self.fake.failures.append(f"{error.code}: {error}")
        await self.send(
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "code": error.code,
                    "message": str(error),
                    "param": error.param,
                    "event_id": event.get("event_id") if isinstance(event, dict) else None,
                },
            }
        )

    async def on_message(self, event: Any) -> bool:
        """Handle one client event; binary messages are not part of the protocol."""
        if isinstance(event, bytes):
            return True
        kind = event.get("type") if isinstance(event, dict) else None
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        try:
            if handler is None:
                raise _invalid(
                    f"Invalid value: {kind!r}. Supported values are: "
                    + ", ".join(f"'{name}'" for name in self._handlers)
                    + ".",
                    "invalid_value",
                    "type",
                )
            await handler(event)
        except Rejection as e:
            await self._refuse(e, event)
        return True

    def stop(self) -> None:
        """The socket closed: stop generating."""
        if self._response and self._response.task:
            self._response.task.cancel()

    def _find(self, item_id: str) -> dict[str, Any] | None:
        return next((item for item in self.items if item["id"] == item_id), None)

    def _last_item_id(self) -> str | None:
        return self.items[-1]["id"] if self.items else None

    @property
    def _turn_detection(self) -> dict[str, Any] | None:
        return self.config["audio"]["input"].get("turn_detection")

    @property
    def _input_format(self) -> str:
        return self.config["audio"]["input"]["format"]["type"]

    # -- session -------------------------------------------------------------------

    async def _on_session_update(self, event: dict[str, Any]) -> None:
        session = event.get("session")
        if not isinstance(session, dict):
            raise _invalid(
                "Missing required parameter: 'session'.", "missing_required_parameter", "session"
            )
        for name in session:
            if name in BETA_SESSION_FIELDS:
                raise _invalid(
                    f"Unknown parameter: 'session.{name}'.", "unknown_parameter", f"session.{name}"
                )
        if "type" not in session:
            raise _invalid(
                "Missing required parameter: 'session.type'.",
                "missing_required_parameter",
                "session.type",
            )
        if session["type"] != "realtime":
            raise _invalid(
                f"Invalid value: {session['type']!r}. Supported values are: 'realtime'.",
                "invalid_value",
                "session.type",
            )
        for direction in ("input", "output"):
            audio_format = ((session.get("audio") or {}).get(direction) or {}).get("format")
            if audio_format is None:
                continue
            param = f"session.audio.{direction}.format.type"
            if audio_format.get("type") not in FORMATS:
                raise _invalid(
                    f"Invalid value: {audio_format.get('type')!r}. Supported values are: "
                    "'audio/pcm', 'audio/pcmu', and 'audio/pcma'.",
                    "invalid_value",
                    param,
                )
            if (
                audio_format.get("rate", FORMATS[audio_format["type"]])
                != FORMATS[audio_format["type"]]
            ):
                raise _invalid(
                    f"Invalid 'rate': {audio_format['rate']}. {audio_format['type']} is only "
                    f"supported at {FORMATS[audio_format['type']]} Hz.",
                    "invalid_value",
                    f"session.audio.{direction}.format.rate",
                )
        merge(self.config, session)
        await self.send({"type": "session.updated", "session": self.config})

    # -- input audio ---------------------------------------------------------------

    async def _on_append(self, event: dict[str, Any]) -> None:
        try:
            audio = base64.b64decode(event.get("audio", ""), validate=True)
        except binascii.Error as e:
            raise _invalid(
                "Invalid 'audio'. Expected base64-encoded audio bytes.", "invalid_value", "audio"
            ) from e
        self.audio_bytes_received += len(audio)
        self._pcm += to_pcm16(audio, self._input_format)
        frame_bytes = FORMATS[self._input_format] * VAD_FRAME_MS // 1000 * 2
        while len(self._pcm) >= frame_bytes:
            frame = bytes(self._pcm[:frame_bytes])
            del self._pcm[:frame_bytes]
            await self._detect(audioop.rms(frame, 2))

    async def _detect(self, rms: int) -> None:
        """Advance the turn detector by one 10 ms frame."""
        self._session_ms += VAD_FRAME_MS
        self._buffer_ms += VAD_FRAME_MS
        detection = self._turn_detection
        if not detection:
            return
        is_speech = rms >= (detection.get("threshold") or 0.5) * 1000
        if self._speech is None:
            if not is_speech:
                return
            padding = detection.get("prefix_padding_ms") or 300
            start = max(0, self._session_ms - VAD_FRAME_MS - padding)
            self._speech = _Speech(self.fake.next_id("item_"), start)
            await self.send(
                {
                    "type": "input_audio_buffer.speech_started",
                    "audio_start_ms": start,
                    "item_id": self._speech.item_id,
                }
            )
            if self._response and detection.get("interrupt_response") is not False:
                await self._cancel_response("turn_detected")
            return
        self._speech.silence_ms = 0 if is_speech else self._speech.silence_ms + VAD_FRAME_MS
        if self._speech.silence_ms < (detection.get("silence_duration_ms") or 500):
            return
        speech, self._speech = self._speech, None
        await self.send(
            {
                "type": "input_audio_buffer.speech_stopped",
                "audio_end_ms": self._session_ms,
                "item_id": speech.item_id,
            }
        )
        await self._commit(speech.item_id, self._session_ms - speech.start_ms)
        if detection.get("create_response") is not False and not self._response:
            await self._start_response({}, {})

    async def _on_commit(self, event: dict[str, Any]) -> None:
        if self._buffer_ms < MIN_COMMIT_MS:
            raise _invalid(
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {self._buffer_ms:.2f}ms of "
                "audio.",
                "input_audio_buffer_commit_empty",
            )
        self._speech = None
        await self._commit(self.fake.next_id("item_"), self._buffer_ms)

    async def _on_clear(self, event: dict[str, Any]) -> None:
        self._buffer_ms = 0
        self._speech = None
        self._pcm.clear()
        await self.send({"type": "input_audio_buffer.cleared"})

    async def _commit(self, item_id: str, duration_ms: int) -> None:
        """Turn the caller's buffered speech into a user item the script has "heard"."""
        upcoming = self.fake.script.upcoming() or {}
        heard = upcoming.get("heard", upcoming.get("match", ""))
        transcribing = bool(self.config["audio"]["input"].get("transcription"))
        previous = self._last_item_id()
        item: dict[str, Any] = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        self.items.append(item)
        self._audio_ms[item_id] = duration_ms
        self._heard[item_id] = heard
        self._buffer_ms = 0
        await self.send(
            {
                "type": "input_audio_buffer.committed",
                "previous_item_id": previous,
                "item_id": item_id,
            }
        )
        await self.send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item}
        )
        if transcribing:
            item["content"][0]["transcript"] = heard
            await self.send(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item_id,
                    "content_index": 0,
                    "transcript": heard,
                    "usage": {"type": "duration", "seconds": duration_ms / 1000},
                }
            )
        await self.send(
            {"type": "conversation.item.done", "previous_item_id": previous, "item": item}
        )

    # -- conversation items --------------------------------------------------------

    async def _on_item_create(self, event: dict[str, Any]) -> None:
        item = dict(event.get("item") or {})
        kind = item.get("type")
        if kind not in ("message", "function_call", "function_call_output"):
            raise _invalid(
                f"Invalid value: {kind!r}. Supported values are: 'message', 'function_call', "
                "and 'function_call_output'.",
                "invalid_value",
                "item.type",
            )
        if kind == "message" and item.get("role") not in ("user", "assistant", "system"):
            raise _invalid(
                f"Invalid value: {item.get('role')!r}. Supported values are: 'user', "
                "'assistant', and 'system'.",
                "invalid_value",
                "item.role",
            )
        if kind == "function_call_output" and not any(
            other.get("type") == "function_call" and other.get("call_id") == item.get("call_id")
            for other in self.items
        ):
            raise _invalid(
                f"Tool call ID '{item.get('call_id')}' not found in conversation.",
                "invalid_tool_call_id",
                "item.call_id",
            )
        previous = event.get("previous_item_id")
        if previous is not None and self._find(previous) is None:
            raise _invalid(
                f"Previous item with id '{previous}' does not exist.",
                "invalid_value",
                "previous_item_id",
            )
        item.setdefault("id", self.fake.next_id("item_"))
        item.update(object="realtime.item", status="completed")
        if previous is None:
            previous = self._last_item_id()
            self.items.append(item)
        else:
            position = next(i for i, other in enumerate(self.items) if other["id"] == previous)
            self.items.insert(position + 1, item)
        await self.send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item}
        )
        await self.send(
            {"type": "conversation.item.done", "previous_item_id": previous, "item": item}
        )

    async def _on_item_truncate(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id", "")
        item = self._find(item_id)
        if item is None or item.get("role") != "assistant" or item_id not in self._audio_ms:
            raise _invalid(
                f"Item '{item_id}' is not an assistant audio item in this conversation.",
                "invalid_value",
                "item_id",
            )
        end_ms = event.get("audio_end_ms", 0)
        if end_ms > self._audio_ms[item_id]:
            raise _invalid(
                f"Audio content of {self._audio_ms[item_id]}ms is already shorter than {end_ms}ms",
                "invalid_value",
                "audio_end_ms",
            )
        self._audio_ms[item_id] = end_ms
        for part in item.get("content", []):
            part["transcript"] = ""
        await self.send(
            {
                "type": "conversation.item.truncated",
                "item_id": item_id,
                "content_index": event.get("content_index", 0),
                "audio_end_ms": end_ms,
            }
        )

    async def _on_item_delete(self, event: dict[str, Any]) -> None:
        item = self._find(event.get("item_id", ""))
        if item is None:
            raise _invalid(
                f"Error deleting item: the item with id '{event.get('item_id')}' does not exist.",
                "item_delete_invalid_item_id",
                "item_id",
            )
        self.items.remove(item)
        await self.send({"type": "conversation.item.deleted", "item_id": item["id"]})

    async def _on_item_retrieve(self, event: dict[str, Any]) -> None:
        item = self._find(event.get("item_id", ""))
        if item is None:
            raise _invalid(
                f"Error retrieving item: the item with id '{event.get('item_id')}' does not exist.",
                "item_retrieve_invalid_item_id",
                "item_id",
            )
        await self.send({"type": "conversation.item.retrieved", "item": item})

    # -- responses -----------------------------------------------------------------

    async def _on_response_create(self, event: dict[str, Any]) -> None:
        if self._response:
            raise _invalid(
                "Conversation already has an active response in progress: "
                f"{self._response.id}. Wait until the response is finished before creating "
                "a new one.",
                "conversation_already_has_active_response",
            )
        await self._start_response(event.get("response") or {}, event)

    async def _on_response_cancel(self, event: dict[str, Any]) -> None:
        if not self._response:
            raise _invalid(
                "Cancellation failed: no active response found", "response_cancel_not_active"
            )
        await self._cancel_response("client_cancelled")

    def _last_user_or_tool_text(self) -> str:
        """The text a scripted turn's ``match`` is checked against: the last thing the model
        was told, by the caller, a tool or the client (a system message mid-session)."""
        for item in reversed(self.items):
            if item["type"] == "function_call_output":
                return str(item.get("output") or "")
            if item["type"] == "message" and item.get("role") in ("user", "system"):
                if item["id"] in self._heard:
                    return self._heard[item["id"]]
                return " ".join(
                    part.get("text") or "" for part in item.get("content") or []
                ).strip()
        return ""

    def _input_segments(self) -> list[Segment]:
        """The conversation as the model takes it in: instructions, tools, every item."""
        segments = [text_segment(self.config.get("instructions") or "")]
        segments += [text_segment(tool) for tool in self.config.get("tools") or []]
        for item in self.items:
            if item["id"] in self._heard:
                tokens = math.ceil(self._audio_ms[item["id"]] / INPUT_AUDIO_MS_PER_TOKEN)
                segments.append(audio_segment(item["id"], tokens))
            elif item["id"] in self._audio_ms:
                tokens = math.ceil(self._audio_ms[item["id"]] / OUTPUT_AUDIO_MS_PER_TOKEN)
                segments.append(audio_segment(item["id"], tokens))
            else:
                segments.append(
                    text_segment({k: v for k, v in item.items() if k not in ("id", "status")})
                )
        return segments

    async def _start_response(self, properties: dict[str, Any], event: dict[str, Any]) -> None:
        try:
            turn = self.fake.script.check(self._last_user_or_tool_text())
        except ScriptMismatch as e:
            await self._refuse(_invalid(str(e), "fake_script_mismatch"), event)
            return
        self.fake.script.advance()
        modalities = properties.get("output_modalities") or self.config["output_modalities"]
        segments = self._input_segments()
        response = _Response(
            id=self.fake.next_id("resp_"),
            turn=turn,
            modality="audio" if "audio" in modalities else "text",
            input_segments=segments,
            cached=self.fake.cache.lookup_and_store(self.model, segments),
        )
        self._response = response
        await self.send(
            {"type": "response.created", "response": self._response_body(response, "in_progress")}
        )
        if self._response is response:  # not broken off (`fail_after`) meanwhile
            response.task = asyncio.create_task(self._generate(response))

    def _response_body(
        self, response: _Response, status: str, reason: str | None = None
    ) -> dict[str, Any]:
        output_format = self.config["audio"]["output"]["format"]
        return {
            "object": "realtime.response",
            "id": response.id,
            "status": status,
            "status_details": {"type": status, "reason": reason} if reason else None,
            "output": response.items,
            "conversation_id": "conv_" + self.config["id"].removeprefix("sess_"),
            "output_modalities": [response.modality],
            "max_output_tokens": self.config.get("max_output_tokens", "inf"),
            "audio": {
                "output": {
                    "format": output_format,
                    "voice": self.config["audio"]["output"]["voice"],
                }
            },
            "usage": None if status == "in_progress" else self._usage(response),
            "metadata": None,
        }

    def _usage(self, response: _Response) -> dict[str, Any]:
        text_in = sum(s.tokens for s in response.input_segments if s.kind == "text")
        audio_in = sum(s.tokens for s in response.input_segments if s.kind == "audio")
        calls = [item for item in response.items if item["type"] == "function_call"]
        text_out = count_tokens(response.text_out) + sum(
            count_tokens(call["name"] + call["arguments"]) for call in calls
        )
        audio_out = math.ceil(response.audio_ms_out / OUTPUT_AUDIO_MS_PER_TOKEN)
        return {
            "total_tokens": text_in + audio_in + text_out + audio_out,
            "input_tokens": text_in + audio_in,
            "output_tokens": text_out + audio_out,
            "input_token_details": {
                "text_tokens": text_in,
                "audio_tokens": audio_in,
                "image_tokens": 0,
                "cached_tokens": response.cached.total,
                "cached_tokens_details": {
                    "text_tokens": response.cached.text,
                    "audio_tokens": response.cached.audio,
                    "image_tokens": 0,
                },
            },
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }

    async def _cancel_response(self, reason: str) -> None:
        response, self._response = self._response, None
        if response is None or response.task is None:
            return
        response.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await response.task
        for item in response.items:
            if item["status"] == "in_progress":
                item["status"] = "incomplete"
        await self.send(
            {
                "type": "response.done",
                "response": self._response_body(response, "cancelled", reason),
            }
        )

    async def _generate(self, response: _Response) -> None:
        """Send the scripted reply as output events, then ``response.done``."""
        turn = response.turn
        if turn.get("text"):
            await self._say(response, turn["text"])
        for call in turn.get("tool_calls", []):
            await self._call(
                response, call["name"], json.dumps(call["arguments"], ensure_ascii=False)
            )
        self._response = None
        await self.send(
            {"type": "response.done", "response": self._response_body(response, "completed")}
        )

    async def _add_output_item(self, response: _Response, item: dict[str, Any]) -> int:
        previous = self._last_item_id()
        response.items.append(item)
        self.items.append(item)
        index = len(response.items) - 1
        await self.send(
            {
                "type": "response.output_item.added",
                "response_id": response.id,
                "output_index": index,
                "item": item,
            }
        )
        await self.send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item}
        )
        return index

    async def _finish_output_item(self, response: _Response, index: int) -> None:
        item = response.items[index]
        item["status"] = "completed"
        await self.send(
            {
                "type": "response.output_item.done",
                "response_id": response.id,
                "output_index": index,
                "item": item,
            }
        )
        await self.send({"type": "conversation.item.done", "previous_item_id": None, "item": item})

    async def _say(self, response: _Response, text: str) -> None:
        """Stream a spoken (or text) reply."""
        audio = response.modality == "audio"
        item: dict[str, Any] = {
            "id": self.fake.next_id("item_"),
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        index = await self._add_output_item(response, item)
        where = {
            "response_id": response.id,
            "item_id": item["id"],
            "output_index": index,
            "content_index": 0,
        }
        part: dict[str, Any] = (
            {"type": "output_audio", "transcript": ""}
            if audio
            else {"type": "output_text", "text": ""}
        )
        item["content"].append(part)
        await self.send({"type": "response.content_part.added", **where, "part": dict(part)})

        pieces = words(text)
        if audio:
            self._audio_ms[item["id"]] = 0
            format_type = self.config["audio"]["output"]["format"]["type"]
            sound = speech(text, format_type)
            step = DELTA_MS * bytes_per_ms(format_type)
            chunks: list[Any] = [sound[i : i + step] for i in range(0, len(sound), step)]
        else:
            chunks = pieces
        sent_words = 0
        for n, chunk in enumerate(chunks, start=1):
            due = math.ceil(n * len(pieces) / len(chunks))
            for piece in pieces[sent_words:due]:
                response.text_out += piece
                kind = (
                    "response.output_audio_transcript.delta"
                    if audio
                    else "response.output_text.delta"
                )
                await self.send({"type": kind, **where, "delta": piece})
            sent_words = due
            if audio:
                await self.send(
                    {
                        "type": "response.output_audio.delta",
                        **where,
                        "delta": base64.b64encode(chunk).decode(),
                    }
                )
                chunk_ms = len(chunk) // bytes_per_ms(format_type)
                response.audio_ms_out += chunk_ms
                self._audio_ms[item["id"]] += chunk_ms
                await asyncio.sleep(chunk_ms / 1000 * self.fake.audio_pace)
            part["transcript" if audio else "text"] = response.text_out

        if audio:
            await self.send({"type": "response.output_audio.done", **where})
            await self.send(
                {"type": "response.output_audio_transcript.done", **where, "transcript": text}
            )
        else:
            await self.send({"type": "response.output_text.done", **where, "text": text})
        await self.send({"type": "response.content_part.done", **where, "part": dict(part)})
        await self._finish_output_item(response, index)

    async def _call(self, response: _Response, name: str, arguments: str) -> None:
        call_id = self.fake.next_id("call_")
        item = {
            "id": self.fake.next_id("item_"),
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": name,
            "call_id": call_id,
            "arguments": "",
        }
        index = await self._add_output_item(response, item)
        where = {
            "response_id": response.id,
            "item_id": item["id"],
            "output_index": index,
            "call_id": call_id,
        }
        for piece in fragments(arguments):
            item["arguments"] += piece
            await self.send(
                {"type": "response.function_call_arguments.delta", **where, "delta": piece}
            )
        await self.send(
            {
                "type": "response.function_call_arguments.done",
                **where,
                "name": name,
                "arguments": arguments,
            }
        )
        await self._finish_output_item(response, index)

    async def _break_off(self) -> None:
        """A server fault mid-stream (`fail_after`): an error event, a 1011 close, and the
        response's turn left for a retry. Called holding the send lock."""
        self.record.dropped = True
        response, self._response = self._response, None
        if response is not None:
            self.fake.script.give_back()
        error = {
            "event_id": self.fake.next_id("event_"),
            "type": "error",
            "error": {
                "type": "server_error",
                "code": None,
                "message": _SERVER_ERROR,
                "param": None,
                "event_id": None,
            },
        }
        self.record.sent.append(error)
        await self.ws.send_str(json.dumps(error))
        await self.ws.close(code=1011, message=b"server error")
        if response is not None and response.task is not None:
            response.task.cancel()  # last: it may be the task running this


_AUDIO_FIELDS = {"input_audio_buffer.append": "audio", "response.output_audio.delta": "delta"}


def _loggable(event: Any) -> Any:
    """An event for the log: audio is summarized by its size."""
    name = _AUDIO_FIELDS.get(event.get("type", "")) if isinstance(event, dict) else None
    if name and isinstance(event.get(name), str):
        return {**event, name: f"<{len(event[name]) * 3 // 4} bytes>"}
    return event


class OpenAIRealtimeFake(OpenAIFakeServer):
    """Fake GA Realtime endpoint; give pipecat ``ws_url`` as its ``base_url``.

    Args:
        script: Replies, one per response, in order (see `ScriptedTurn`; ``heard`` is
            what the caller says in the speech turn that leads to a reply).
        api_key: The key clients must send as ``Authorization: Bearer``.
        outage, fail_after: The fault options (see `FakeServer`); `fail_after` counts
            the events the fake sent on a connection, then it sends a ``server_error``
            event and closes the socket (1011).
        audio_pace: Wall-clock seconds spent per second of reply audio: 0 sends it as
            fast as possible; 1 paces it like the real service, so a test can barge in.

    Each connection's record logs its events both ways, audio summarized by size.
    """

    server_errors: ClassVar[ServerErrors] = {500: (None, _SERVER_ERROR)}

    def __init__(
        self,
        script: Sequence[ScriptedTurn],
        *,
        api_key: str = "sk-test-openai",
        outage: int | None = None,
        fail_after: int | None = None,
        audio_pace: float = 0.0,
    ) -> None:
        super().__init__(api_key, outage=outage, fail_after=fail_after)
        self.script = script if isinstance(script, Script) else Script(script)
        self.audio_pace = audio_pace
        self.cache = AutomaticPrefixCache()
        self.sessions: list[RealtimeSession] = []
        """Every connection, in order, with its config and conversation."""
        self._ids = itertools.count(1)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/realtime", self._handle)]

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:PORT/v1/realtime``; clients append ``?model=…``."""
        return f"{self.base_url}/v1/realtime"

    @property
    def client_url(self) -> str:
        return self.ws_url

    def next_id(self, prefix: str) -> str:
        return f"{prefix}{hashlib.sha1(str(next(self._ids)).encode()).hexdigest()[:20]}"

    def loggable(self, message: Any) -> Any:
        return _loggable(message)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        record = self.open_record(request)
        try:
            self.gate(request)
            if "OpenAI-Beta" in request.headers:
                raise Rejection(
                    400,
                    "invalid_value",
                    f"The GA Realtime API does not accept the OpenAI-Beta header "
                    f"(got {request.headers['OpenAI-Beta']!r}); remove it to use the GA "
                    "interface.",
                    param="OpenAI-Beta",
                )
            model = request.query.get("model")
            if not model:
                raise Rejection(
                    400,
                    "missing_required_parameter",
                    "Missing required parameter: 'model'.",
                    param="model",
                )
        except Rejection as rejection:
            return self.reject(rejection, record)
        ws = await self.accept(request, record)
        session = RealtimeSession(self, ws, record, model)
        self.sessions.append(session)
        await session.send({"type": "session.created", "session": session.config})
        try:
            await self.serve(request, ws, record, session.on_message)
        finally:
            session.stop()
        return ws
