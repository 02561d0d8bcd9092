"""Twilio Media Streams messages: parse what Twilio sends, build what we send back.

Parsing is strict about what we rely on and tolerant of what we don't: a
message we cannot use raises `ProtocolError` saying why, and the caller logs
it and goes on with the next one. Numeric-looking fields arrive as strings.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

MAX_MESSAGE_BYTES = 64 * 1024
"""Twilio sends 20 ms frames (~300 bytes of JSON); anything this large is hostile or broken."""
MAX_MEDIA_BYTES = 16 * 1024
"""Largest decoded media payload accepted (2 s of μ-law)."""


class ProtocolError(ValueError):
    """A message that cannot be used; the text says what is wrong with it."""


@dataclass(frozen=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    custom_parameters: dict[str, str]
    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000
    channels: int = 1
    tracks: list[str] = field(default_factory=lambda: ["inbound"])


@dataclass(frozen=True)
class Media:
    payload: bytes
    chunk: int
    timestamp_ms: int
    track: str = "inbound"


@dataclass(frozen=True)
class Dtmf:
    digit: str


@dataclass(frozen=True)
class Mark:
    name: str


@dataclass(frozen=True)
class Stop:
    call_sid: str


Event = Connected | Start | Media | Dtmf | Mark | Stop
DTMF_DIGITS = set("0123456789*#ABCDabcd")
_SID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


def _sid(obj: Any, key: str, where: str) -> str:
    value = _text(obj, key, where)
    if not _SID.match(value):
        raise ProtocolError(f"{where}.{key}: {value[:80]!r} is not a Twilio SID")
    return value


def _require(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ProtocolError(f"{where}: missing {key!r}")
    return obj[key]


def _text(obj: Any, key: str, where: str) -> str:
    value = _require(obj, key, where)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"{where}.{key}: expected a non-empty string, got {value!r}")
    return value


def _int(obj: dict[str, Any], key: str, where: str, default: int = 0) -> int:
    value = obj.get(key, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ProtocolError(f"{where}.{key}: expected a number, got {value!r}") from None


def parse(raw: str | bytes) -> Event | None:
    """Parse one WebSocket message. None for an event we ignore (unknown kinds)."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        message = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ProtocolError(f"not JSON: {error}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"expected a JSON object, got {type(message).__name__}")
    event = message.get("event")
    if event == "media":
        media = _require(message, "media", "media")
        try:
            payload = base64.b64decode(_text(media, "payload", "media"), validate=True)
        except binascii.Error as error:
            raise ProtocolError(f"media.payload: bad base64: {error}") from None
        if len(payload) > MAX_MEDIA_BYTES:
            raise ProtocolError(f"media.payload: {len(payload)} bytes exceeds {MAX_MEDIA_BYTES}")
        return Media(
            payload=payload,
            chunk=_int(media, "chunk", "media"),
            timestamp_ms=_int(media, "timestamp", "media"),
            track=str(media.get("track", "inbound")),
        )
    if event == "mark":
        return Mark(name=_text(_require(message, "mark", "mark"), "name", "mark"))
    if event == "dtmf":
        digit = _text(_require(message, "dtmf", "dtmf"), "digit", "dtmf")
        if digit not in DTMF_DIGITS:
            raise ProtocolError(f"dtmf.digit: {digit!r} is not a keypad digit")
        return Dtmf(digit=digit)
    if event == "start":
        start = _require(message, "start", "start")
        params = start.get("customParameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError("start.customParameters: expected an object")
        media_format = start.get("mediaFormat") or {}
        return Start(
            stream_sid=_sid(start, "streamSid", "start"),
            call_sid=_sid(start, "callSid", "start"),
            account_sid=str(start.get("accountSid", "")),
            custom_parameters={str(k): str(v) for k, v in params.items()},
            encoding=str(media_format.get("encoding", "audio/x-mulaw")),
            sample_rate=_int(media_format, "sampleRate", "start.mediaFormat", 8000),
            channels=_int(media_format, "channels", "start.mediaFormat", 1),
            tracks=list(start.get("tracks") or ["inbound"]),
        )
    if event == "stop":
        stop = message.get("stop") or {}
        return Stop(call_sid=str(stop.get("callSid", "")) if isinstance(stop, dict) else "")
    if event == "connected":
        return Connected(
            protocol=str(message.get("protocol", "")), version=str(message.get("version", ""))
        )
    if isinstance(event, str):
        return None
    raise ProtocolError("missing 'event'")


def media_message(stream_sid: str, audio: bytes) -> str:
    payload = base64.b64encode(audio).decode("ascii")
    return f'{{"event":"media","streamSid":"{stream_sid}","media":{{"payload":"{payload}"}}}}'


def mark_message(stream_sid: str, name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> str:
    return json.dumps({"event": "clear", "streamSid": stream_sid})
