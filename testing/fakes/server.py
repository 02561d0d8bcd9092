"""Shared base of the provider fakes: a real aiohttp server on 127.0.0.1 with a request log.

Each fake speaks one provider's wire protocol so that the real client code
(pipecat service → SDK → socket) runs unchanged against it. The base owns the
parts every fake needs: binding an ephemeral port, the handshake gate (injected
outage, auth, parameter checks), counting what the client sent, and dropping a
socket mid-stream, or dying outright, for failure and billing tests.
"""

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Self, TypeVar

from aiohttp import WSMsgType, web

#: Headers never copied into the request log, so a log can be printed or stored.
SECRET_HEADERS = frozenset({"authorization", "xi-api-key", "cookie", "proxy-authorization"})


class Rejection(Exception):
    """A request the real service refuses, with the HTTP status it answers."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class RequestRecord:
    """What one client sent: its handshake or HTTP request, then every message after it."""

    method: str
    path: str
    query: dict[str, str | list[str]]
    headers: dict[str, str]
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: HTTP status the fake answered: 101 for an accepted WebSocket upgrade.
    status: int = 0
    #: Text messages (or a REST body) as parsed JSON; text that isn't JSON stays a str.
    messages: list[Any] = field(default_factory=list)
    binary_messages: int = 0
    binary_bytes: int = 0
    #: JSON messages the fake sent back, in order.
    sent: list[dict[str, Any]] = field(default_factory=list)
    #: Audio bytes the fake sent back.
    audio_bytes_sent: int = 0
    #: True once the fake dropped the connection on purpose (`fail_after_messages`).
    dropped: bool = False
    #: Set once the fake is done with the request, so a test can read final counts.
    ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    @property
    def message_count(self) -> int:
        """Messages received from the client, text and binary."""
        return len(self.messages) + self.binary_messages


R = TypeVar("R", bound=RequestRecord)


class FakeServer(Generic[R]):
    """An aiohttp app on 127.0.0.1 at an ephemeral port; subclasses add the protocol."""

    #: The record class this fake logs each request as.
    record_type: type[R]

    def __init__(
        self,
        api_key: str,
        *,
        fail_connect: bool = False,
        fail_after_messages: int | None = None,
    ) -> None:
        """Configure the fake.

        Args:
            api_key: The only key the fake accepts.
            fail_connect: Refuse every handshake or request with 503, like an outage.
            fail_after_messages: Drop each WebSocket without a close frame once the
                client has sent this many messages (0 drops it right after the
                handshake); REST requests past this many have their body cut short.
        """
        self.api_key = api_key
        self.fail_connect = fail_connect
        self.fail_after_messages = fail_after_messages
        self.requests: list[R] = []
        self.failures: list[str] = []
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._transports: dict[asyncio.Transport, RequestRecord] = {}
        self._dead: list[Mapping[str, str]] = []

    def routes(self) -> list[web.RouteDef]:
        """The provider's endpoints."""
        raise NotImplementedError

    def authorized(self, request: web.Request) -> bool:
        """Whether the request carries the expected credentials."""
        raise NotImplementedError

    def error_response(self, rejection: Rejection, record: R) -> web.Response:
        """The provider's error body and headers for a refused request."""
        raise NotImplementedError

    async def start(self) -> None:
        """Bind 127.0.0.1 on a free port and start serving."""
        app = web.Application()
        app.add_routes(self.routes())
        # Short shutdown: a test must not wait on a client that never hung up.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Close open sockets (1001, going away) and stop serving."""
        for ws in list(self._sockets):
            if not ws.closed:
                await ws.close(code=1001, message=b"server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def kill(self, query: Mapping[str, str] | None = None) -> None:
        """Die as a crashed server does: every socket dropped without a close frame, and
        the port closed, so a client that reconnects is refused. What each socket took
        before stays in its record.

        With `query`, only the clients whose request had those query parameters lose
        their server (e.g. one model of two on the same endpoint): their sockets are
        dropped and their reconnections refused with 503, the others carry on."""
        if query is not None:
            self._dead.append(query)
            for transport, record in list(self._transports.items()):
                if _matches(record.query, query):
                    transport.abort()
            return
        for transport in list(self._transports):
            transport.abort()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound port; only valid after `start()`."""
        if self._port is None:
            raise RuntimeError("fake server not started")
        return self._port

    @property
    def base_url(self) -> str:
        """WebSocket base URL, e.g. ``ws://127.0.0.1:PORT``, to hand to the client."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def client_url(self) -> str:
        """Where the provider's real client connects (see `tollbridge.testing.cassette.ReplayServer`)."""
        return self.base_url

    @property
    def http_url(self) -> str:
        """HTTP base URL, e.g. ``http://127.0.0.1:PORT``, for REST endpoints."""
        return f"http://127.0.0.1:{self.port}"

    def open_record(self, request: web.Request) -> R:
        """Log a new request, with secrets left out of its headers."""
        query: dict[str, str | list[str]] = {}
        for key in request.query:
            values = request.query.getall(key)
            query[key] = values[0] if len(values) == 1 else values
        headers = {k: v for k, v in request.headers.items() if k.lower() not in SECRET_HEADERS}
        record = self.record_type(
            method=request.method, path=request.path, query=query, headers=headers
        )
        self.requests.append(record)
        return record

    def gate(self, request: web.Request) -> None:
        """Refuse like the real service would before looking at parameters: outage, then auth."""
        if self.fail_connect:
            raise Rejection(503, "SERVICE_UNAVAILABLE", "Injected outage (fail_connect).")
        if any(_matches(request.query, dead) for dead in self._dead):
            raise Rejection(503, "SERVICE_UNAVAILABLE", "Injected outage (kill).")
        if not self.authorized(request):
            raise Rejection(401, "INVALID_AUTH", "Invalid credentials.")

    def reject(self, rejection: Rejection, record: R) -> web.Response:
        """Log the refusal and build the provider's error response for it."""
        record.status = rejection.status
        record.ended.set()
        return self.error_response(rejection, record)

    async def accept(self, request: web.Request, record: RequestRecord) -> web.WebSocketResponse:
        """Complete the WebSocket upgrade and track the socket until it closes."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        record.status = 101
        self._sockets.add(ws)
        if request.transport is not None:
            self._transports[request.transport] = record
        return ws

    async def serve(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        record: RequestRecord,
        on_message: Callable[[Any], Awaitable[bool]],
        idle_timeout: float | None = None,
    ) -> None:
        """Log each client message and hand it to `on_message`, until either side closes.

        Binary messages are passed as bytes, text as parsed JSON (or the str itself
        when it isn't JSON); `on_message` returns False once it has closed the
        socket. Raises TimeoutError when `idle_timeout` passes without a message.
        Once `fail_after_messages` messages have been handled, drops the TCP
        connection without a close frame, as a crashed server would.
        """
        try:
            while True:
                if (
                    self.fail_after_messages is not None
                    and record.message_count >= self.fail_after_messages
                ):
                    record.dropped = True
                    if request.transport is not None:
                        request.transport.abort()
                    return
                msg = await ws.receive(timeout=idle_timeout)
                if msg.type == WSMsgType.TEXT:
                    try:
                        message = json.loads(msg.data)
                    except json.JSONDecodeError:
                        message = msg.data
                    record.messages.append(message)
                elif msg.type == WSMsgType.BINARY:
                    message = msg.data
                    record.binary_messages += 1
                    record.binary_bytes += len(message)
                else:
                    return
                if not await on_message(message):
                    return
        finally:
            self._sockets.discard(ws)
            if request.transport is not None:
                self._transports.pop(request.transport, None)
            record.ended.set()

    async def send_json(
        self, ws: web.WebSocketResponse, record: RequestRecord, message: dict[str, Any]
    ) -> None:
        """Send a JSON text message and log it."""
        record.sent.append(message)
        await ws.send_str(json.dumps(message))

    async def send_audio(
        self, ws: web.WebSocketResponse, record: RequestRecord, audio: bytes
    ) -> None:
        """Send a binary audio message and count it."""
        record.audio_bytes_sent += len(audio)
        await ws.send_bytes(audio)


def _matches(query: Mapping[str, str | list[str]], wanted: Mapping[str, str]) -> bool:
    return all(query.get(name) == value for name, value in wanted.items())


class DeepgramFakeServer(FakeServer[R]):
    """Deepgram's auth header and error format, shared by the /v1/listen and /v1/speak fakes."""

    def authorized(self, request: web.Request) -> bool:
        """`Authorization: Token <key>`; temporary Bearer tokens can't be checked offline."""
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "token" and key == self.api_key

    def error_response(self, rejection: Rejection, record: R) -> web.Response:
        """JSON `err_code`/`err_msg` body, the reason repeated in `dg-error` (pipecat logs it)."""
        body = {
            "err_code": rejection.code,
            "err_msg": rejection.message,
            "request_id": record.request_id,
        }
        headers = {"dg-error": rejection.message, "dg-request-id": record.request_id}
        return web.json_response(body, status=rejection.status, headers=headers)
