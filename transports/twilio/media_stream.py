"""Serving one Media Streams WebSocket: wait for `start`, run the call, read until it ends.

Bad input never takes the server down: a malformed message, an unknown
event, media before `start`, bad base64 or an oversize frame is logged and
skipped. A socket that never sends a usable `start` is closed; one that
names no known vertical is closed with a warning.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from tollbridge.config import Vertical
from tollbridge.logs import get_logger
from tollbridge.session import CallSession, Pricer, UsageSink
from tollbridge.stage import CallContext
from tollbridge.transports.twilio import protocol
from tollbridge.transports.twilio.transport import MediaStreamConnection, TwilioTransport

START_TIMEOUT_S = 10.0
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
) -> None:
    """Serve one accepted Media Streams socket until the call ends."""
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

    connection = MediaStreamConnection(ws.send_text, ws.close, start.stream_sid)
    session = CallSession(
        make_call(vertical, start, connection), on_finished=on_finished, pricer=pricer
    )
    if on_session:
        await on_session(session)
    await session.run(_pump(reader, session, connection))
    await connection.hang_up()


async def _wait_for_start(reader: _Reader) -> protocol.Start | None:
    while (event := await reader.next()) is not None:
        if isinstance(event, protocol.Start):
            return event
        if not isinstance(event, protocol.Connected):
            log.warning("event_before_start_skipped", kind=type(event).__name__.lower())
    return None


async def _pump(reader: _Reader, session: CallSession, connection: MediaStreamConnection) -> str:
    """Feed the call's events into its pipeline; return why the caller side ended."""
    transport = session.built.transport
    assert isinstance(transport, TwilioTransport), "a Media Stream feeds the twilio stage"
    try:
        while (event := await reader.next()) is not None:
            if isinstance(event, protocol.Media):
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


async def _close(ws: WebSocket) -> None:
    if ws.client_state is WebSocketState.CONNECTED:
        try:
            await ws.close()
        except RuntimeError:
            pass
