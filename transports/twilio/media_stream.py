"""Serving one Media Streams WebSocket: wait for `start`, run the call, read until it ends.

Bad input never takes the server down: a malformed message, an unknown
event, media before `start`, bad base64 or an oversize frame is logged and
skipped. A socket that never sends a usable `start` is closed; one that
names no known vertical, or that the bridge refuses (a call SID already live,
a server shutting down), is closed with a warning before any pipeline starts.
Twilio sends media every 20 ms while a call is up, silence included, so a
stream with no media for `idle_timeout_s` is a dead call: it ends (`idle`),
and leaves its record like any other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from tollbridge.config import Vertical
from tollbridge.logs import get_logger
from tollbridge.session import CallControl, CallSession, Pricer, UsageSink
from tollbridge.stage import CallContext
from tollbridge.transports.twilio import protocol
from tollbridge.transports.twilio.transport import MediaStreamConnection, TwilioTransport

START_TIMEOUT_S = 10.0
POLICY_VIOLATION = 1008
"""WebSocket close code for a stream refused at `start`."""
MAX_BAD_MESSAGES = 50
"""A peer that keeps sending garbage after this many bad messages is cut off."""

log = get_logger(component="media_stream")


async def _messages(ws: WebSocket) -> AsyncIterator[str | bytes]:
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("text")
        yield data if data is not None else message.get("bytes") or b""


class _Reader:
    """Parses the socket's messages, skipping (and counting) the bad ones."""

    def __init__(self, ws: WebSocket):
        self._raw = _messages(ws)
        self.bad = 0
        self.call_sid = ""
        self.last_media = time.monotonic()
        """When the last media frame came (or the reader started)."""

    async def next(self) -> protocol.Event | None:
        """The next usable event, or None when the socket has closed."""
        async for raw in self._raw:
            try:
                event = protocol.parse(raw)
            except protocol.ProtocolError as error:
                self.bad += 1
                log.warning("bad_message_skipped", call_sid=self.call_sid, reason=str(error))
                if self.bad >= MAX_BAD_MESSAGES:
                    log.error("too_many_bad_messages", call_sid=self.call_sid)
                    return None
                continue
            if event is None:
                log.info("unknown_event_skipped", call_sid=self.call_sid)
                continue
            return event
        return None


async def serve_media_stream(
    ws: WebSocket,
    *,
    find_vertical: Callable[[protocol.Start], Vertical | None],
    make_call: Callable[[Vertical, protocol.Start, MediaStreamConnection], CallContext],
    on_finished: UsageSink | None = None,
    pricer: Pricer | None = None,
    on_session: Callable[[CallSession], Awaitable[None]] | None = None,
    admit: Callable[[protocol.Start], str | None] | None = None,
    idle_timeout_s: float | None = None,
    control: CallControl | None = None,
) -> None:
    """Serve one accepted Media Streams socket until the call ends.

    `admit` may refuse the stream once its `start` names the call: it returns
    why, or None to let the call in."""
    reader = _Reader(ws)
    try:
        start = await asyncio.wait_for(_wait_for_start(reader), START_TIMEOUT_S)
    except (TimeoutError, WebSocketDisconnect):
        start = None
    if start is None:
        log.warning("stream_without_start_closed")
        await _close(ws)
        return
    reader.call_sid = start.call_sid
    vertical = find_vertical(start)
    if vertical is None:
        log.warning(
            "unknown_vertical", call_sid=start.call_sid, parameters=start.custom_parameters
        )
        await _close(ws)
        return
    refused = admit(start) if admit else None
    if refused:
        log.warning("stream_refused", call_sid=start.call_sid, reason=refused)
        await _close(ws, code=POLICY_VIOLATION, reason=refused[:120])
        return

    connection = MediaStreamConnection(ws.send_text, ws.close, start.stream_sid)
    session = CallSession(
        make_call(vertical, start, connection), on_finished=on_finished, pricer=pricer,
        control=control,
    )
    if on_session:
        await on_session(session)
    await session.run(_caller_side(reader, session, connection, idle_timeout_s))
    await connection.hang_up()


async def _wait_for_start(reader: _Reader) -> protocol.Start | None:
    while (event := await reader.next()) is not None:
        if isinstance(event, protocol.Start):
            return event
        if not isinstance(event, protocol.Connected):
            log.warning("event_before_start_skipped", kind=type(event).__name__.lower())
    return None


async def _caller_side(
    reader: _Reader,
    session: CallSession,
    connection: MediaStreamConnection,
    idle_timeout_s: float | None,
) -> str:
    """The socket's side of the call: its events, watched for media that stopped coming."""
    reader.last_media = time.monotonic()
    pump = asyncio.ensure_future(_pump(reader, session, connection))
    if idle_timeout_s is None:
        return await pump
    watch = asyncio.ensure_future(_until_idle(reader, idle_timeout_s))
    try:
        done, _ = await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pump, watch):
            task.cancel()
    if pump in done:
        return pump.result()
    log.warning("stream_idle", call_sid=reader.call_sid, idle_s=idle_timeout_s)
    return "idle"


async def _until_idle(reader: _Reader, idle_timeout_s: float) -> None:
    """Return once no media has come for `idle_timeout_s` (wakes once per timeout, not per frame)."""
    while (left := reader.last_media + idle_timeout_s - time.monotonic()) > 0:  # noqa: ASYNC110
        await asyncio.sleep(left)  # an Event set per 20 ms frame would cost every call


async def _pump(reader: _Reader, session: CallSession, connection: MediaStreamConnection) -> str:
    """Feed the call's events into its pipeline; return why the caller side ended."""
    transport = session.built.transport
    assert isinstance(transport, TwilioTransport), "a Media Stream feeds the twilio stage"
    try:
        while (event := await reader.next()) is not None:
            if isinstance(event, protocol.Media):
                reader.last_media = time.monotonic()
                await transport.input().audio(event.payload)
            elif isinstance(event, protocol.Mark):
                await transport.output().played(event.name)
            elif isinstance(event, protocol.Dtmf):
                await transport.input().dtmf(event.digit)
            elif isinstance(event, protocol.Stop):
                return "caller_hung_up"
            elif isinstance(event, protocol.Start):
                log.warning("second_start_skipped", call_sid=reader.call_sid)
    except WebSocketDisconnect:
        pass
    if connection.hung_up:
        return "agent"
    connection.closed = True
    return "disconnected" if reader.bad < MAX_BAD_MESSAGES else "protocol_error"


async def _close(ws: WebSocket, code: int = 1000, reason: str | None = None) -> None:
    if ws.client_state is WebSocketState.CONNECTED:
        try:
            await ws.close(code=code, reason=reason)
        except RuntimeError:
            pass
