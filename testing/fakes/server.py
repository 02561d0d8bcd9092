"""The one base of every provider fake: a real aiohttp server on 127.0.0.1 with a request log.

Each fake speaks one provider's wire protocol so that the real client code
(pipecat service → SDK → socket) runs unchanged against it. The base owns what
every fake needs, so that tests drive them all alike: an ephemeral port, the gate
every request passes (injected outage, killed clients, auth), one record per
request with its secrets redacted, one exception for refusals, the fault options,
and the two ways providers stream: a WebSocket loop and Server-Sent Events.
"""

import asyncio
import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Self, TypeVar

from aiohttp import WSMsgType, web
from multidict import CIMultiDict

#: Every provider's auth headers: logged with their value redacted, so a log can be
#: printed or stored and still show the client sent them.
SECRET_HEADERS = frozenset(
    {"authorization", "xi-api-key", "x-api-key", "api-key", "cookie", "proxy-authorization"}
)
REDACTED = "<redacted>"


class Rejection(Exception):
    """A request the provider refuses; each fake turns it into its provider's error body.

    Args:
        status: The HTTP status.
        code: The provider's error code (Deepgram's ``err_code``, Anthropic's error
            type, OpenAI's ``code``), None where the provider sends none.
        message: The provider's error message.
        param: The request field at fault, for providers that name it (OpenAI).
        injected: A fault the test asked for (outage, kill), so not a client failure.
    """

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        *,
        param: str | None = None,
        injected: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.injected = injected


@dataclass
class RequestRecord:
    """One request: its handshake or HTTP request, what the client sent, what the fake answered."""

    method: str
    path: str
    query: dict[str, str | list[str]]
    #: Looked up in any case; `SECRET_HEADERS` have the value `REDACTED`.
    headers: CIMultiDict[str]
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: HTTP status the fake answered: 101 for an accepted WebSocket upgrade.
    status: int = 0
    #: Text messages, or an HTTP request's body, as parsed JSON (a str when not JSON).
    messages: list[Any] = field(default_factory=list)
    binary_messages: int = 0
    binary_bytes: int = 0
    #: JSON messages, or streamed events, the fake sent back, in order.
    sent: list[Any] = field(default_factory=list)
    #: Audio bytes the fake sent back.
    audio_bytes_sent: int = 0
    #: True once the fake broke the connection or stream off on purpose (`fail_after`).
    dropped: bool = False
    #: Set once the fake is done with the request, so a test can read final counts.
    ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    @property
    def body(self) -> Any:
        """An HTTP request's body: its one message."""
        return self.messages[0] if self.messages else None

    @property
    def message_count(self) -> int:
        """Messages received from the client, text and binary."""
        return len(self.messages) + self.binary_messages


R = TypeVar("R", bound=RequestRecord)
#: (code, message) a provider answers its own failures with, by HTTP status.
ServerErrors = Mapping[int, tuple[str | None, str]]


def parse_json(text: str) -> Any:
    """The JSON in ``text``, or ``text`` itself when it is not JSON."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class FakeServer(ABC, Generic[R]):
    """A provider's endpoints on 127.0.0.1 at an ephemeral port; subclasses add the protocol.

    Fault options, the same on every fake and changeable while it serves:

    - ``outage``: refuse every request or handshake with this HTTP status (503; or
      e.g. 500, or Anthropic's 529) in the provider's error body; None to recover.
    - ``fail_after``: break each stream off after this many messages: the client's
      (audio or text it streams in) or, on fakes whose replies stream
      (`streams_replies`), the fake's events. A socket the client streams into is
      dropped without a close frame; a streamed reply ends with the provider's
      mid-stream error, and its scripted turn is left for a retry.
    - `kill`: the server crashes.
    """

    #: The record class this fake logs each request as.
    record_type: type[R]
    #: ``ws`` or ``http``: how the provider's client reaches `base_url`.
    scheme: ClassVar[str] = "ws"
    #: Whether `fail_after` counts the events the fake streams back, not the client's messages.
    streams_replies: ClassVar[bool] = False
    #: The provider's answers to its own failures; a status not listed answers as 500 does.
    server_errors: ClassVar[ServerErrors] = {
        500: ("INTERNAL_SERVER_ERROR", "Injected server error."),
        503: ("SERVICE_UNAVAILABLE", "Injected outage."),
    }
    #: (event name, data) a Server-Sent Events reply ends with when `fail_after` cuts it.
    sse_error: ClassVar[tuple[str | None, Any]]

    def __init__(
        self, api_key: str, *, outage: int | None = None, fail_after: int | None = None
    ) -> None:
        """Configure the fake.

        Args:
            api_key: The only key the fake accepts.
            outage: See the class docstring.
            fail_after: See the class docstring.
        """
        self.api_key = api_key
        self.outage = outage
        self.fail_after = fail_after
        self.requests: list[R] = []
        #: Requests refused, or messages not understood, through the client's fault.
        self.failures: list[str] = []
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._transports: dict[asyncio.Transport, R] = {}
        self._dead: list[Mapping[str, str]] = []

    # -- what each provider defines ------------------------------------------------------

    @abstractmethod
    def routes(self) -> list[web.RouteDef]:
        """The provider's endpoints."""

    @abstractmethod
    def authorize(self, request: web.Request) -> None:
        """Raise the provider's `Rejection` unless the request carries the expected key."""

    @abstractmethod
    def error_response(self, rejection: Rejection, record: R) -> web.Response:
        """The provider's error body and headers for a refused request."""

    # -- lifecycle -----------------------------------------------------------------------

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
        """Die as a crashed server does: every socket and stream dropped without a close
        frame, and the port closed, so a client that reconnects is refused. What each
        request took before stays in its record.

        With `query`, only the clients whose request had those query parameters lose
        their server (e.g. one model of two on the same endpoint): their connections are
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
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """Root URL in the client's `scheme`, e.g. ``ws://127.0.0.1:PORT``."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """HTTP root URL, e.g. ``http://127.0.0.1:PORT``, for REST endpoints."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def client_url(self) -> str:
        """Where the provider's real client connects (see `tollbridge.testing.cassette.ReplayServer`)."""
        return self.base_url

    # -- every request -------------------------------------------------------------------

    def open_record(self, request: web.Request) -> R:
        """Log a new request, with its secrets redacted."""
        query: dict[str, str | list[str]] = {}
        for key in request.query:
            values = request.query.getall(key)
            query[key] = values[0] if len(values) == 1 else values
        headers = CIMultiDict(
            (name, REDACTED if name.lower() in SECRET_HEADERS else value)
            for name, value in request.headers.items()
        )
        record = self.record_type(
            method=request.method, path=request.path, query=query, headers=headers
        )
        self.requests.append(record)
        return record

    def gate(self, request: web.Request) -> None:
        """Refuse as the real service would before reading the request: outage, a killed
        client, then auth."""
        if self.outage is not None:
            raise self.server_error(self.outage)
        if any(_matches(request.query, dead) for dead in self._dead):
            raise self.server_error(503)
        self.authorize(request)

    def server_error(self, status: int) -> Rejection:
        """The provider's answer when it fails on its side with `status`."""
        code, message = self.server_errors.get(status, self.server_errors[500])
        return Rejection(status, code, message, injected=True)

    def failing(self, count: int) -> bool:
        """Whether `fail_after` breaks a stream off once `count` messages have gone by."""
        return self.fail_after is not None and count >= self.fail_after

    def reject(self, rejection: Rejection, record: R) -> web.Response:
        """Log the refusal, a failure unless injected, and answer with the provider's error."""
        record.status = rejection.status
        record.ended.set()
        if not rejection.injected:
            code = f" {rejection.code}" if rejection.code else ""
            self.failures.append(f"{rejection.status}{code}: {rejection.message}")
        return self.error_response(rejection, record)

    async def read_body(self, request: web.Request, record: R) -> Any:
        """The request's body as parsed JSON (or its text), logged as the one message."""
        body = parse_json(await request.text())
        record.messages.append(body)
        return body

    def json_reply(self, record: R, data: Any, headers: Mapping[str, str]) -> web.Response:
        """A whole (not streamed) JSON reply, logged as sent."""
        record.status = 200
        record.sent.append(data)
        record.ended.set()
        return web.json_response(data, headers=headers)

    async def open_stream(
        self, request: web.Request, record: R, response: web.StreamResponse
    ) -> web.StreamResponse:
        """Send a streamed reply's status and headers; `kill()` drops it from now on."""
        await response.prepare(request)
        record.status = response.status
        if request.transport is not None:
            self._transports[request.transport] = record
        return response

    def done(self, request: web.Request, record: R) -> None:
        """The request is over: its record `ended`, nothing left for `kill()` to drop."""
        if request.transport is not None:
            self._transports.pop(request.transport, None)
        record.ended.set()

    def drop(self, request: web.Request, record: R) -> None:
        """Break the connection without a close frame or the rest of the body (`fail_after`)."""
        record.dropped = True
        if request.transport is not None:
            request.transport.abort()

    # -- WebSocket -----------------------------------------------------------------------

    async def accept(self, request: web.Request, record: R) -> web.WebSocketResponse:
        """Complete the WebSocket upgrade and track the socket until it closes."""
        ws = web.WebSocketResponse()
        await self.open_stream(request, record, ws)
        self._sockets.add(ws)
        return ws

    def loggable(self, message: Any) -> Any:
        """A client message as the record keeps it."""
        return message

    async def serve(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        record: R,
        on_message: Callable[[Any], Awaitable[bool]],
        idle_timeout: float | None = None,
    ) -> None:
        """Log each client message and hand it to `on_message`, until either side closes.

        Binary messages are passed as bytes, text as parsed JSON (or the str itself
        when it isn't JSON); `on_message` returns False once it has closed the
        socket. Raises TimeoutError when `idle_timeout` passes without a message.
        Unless the fake `streams_replies`, drops the socket once `fail_after`
        messages have been handled, as a crashed server would.
        """
        try:
            while True:
                if not self.streams_replies and self.failing(record.message_count):
                    self.drop(request, record)
                    return
                msg = await ws.receive(timeout=idle_timeout)
                if msg.type == WSMsgType.TEXT:
                    message = parse_json(msg.data)
                    record.messages.append(self.loggable(message))
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
            self.done(request, record)

    async def send_json(
        self, ws: web.WebSocketResponse, record: R, message: dict[str, Any]
    ) -> None:
        """Send a JSON text message and log it."""
        record.sent.append(message)
        await ws.send_str(json.dumps(message))

    async def send_audio(self, ws: web.WebSocketResponse, record: R, audio: bytes) -> None:
        """Send a binary audio message and count it."""
        record.audio_bytes_sent += len(audio)
        await ws.send_bytes(audio)

    # -- Server-Sent Events --------------------------------------------------------------

    async def open_sse(
        self, request: web.Request, record: R, headers: Mapping[str, str]
    ) -> web.StreamResponse:
        """Start a ``text/event-stream`` reply."""
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                **headers,
            }
        )
        return await self.open_stream(request, record, response)

    async def send_sse(
        self, response: web.StreamResponse, record: R, data: Any, event: str | None = None
    ) -> bool:
        """Write one event (optional ``event:`` line, ``data:`` line, blank line) and log it.

        Once `fail_after` events have gone out, writes the provider's `sse_error`
        instead and returns False: the reply is over.
        """
        cut = self.failing(len(record.sent))
        if cut:
            record.dropped = True
            event, data = self.sse_error
        record.sent.append(data)
        payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
        head = f"event: {event}\n" if event else ""
        await response.write(f"{head}data: {payload}\n\n".encode())
        return not cut


@dataclass
class SpokenRecord(RequestRecord):
    """A TTS fake's record: the characters of text it took, as the provider bills them."""

    characters: int = 0


S = TypeVar("S", bound=SpokenRecord)


class SpeakingFake(FakeServer[S]):
    """What the TTS fakes share: a speaking rate, and the characters they were sent."""

    def __init__(
        self,
        api_key: str,
        *,
        chars_per_second: float = 14.0,
        outage: int | None = None,
        fail_after: int | None = None,
    ) -> None:
        """`chars_per_second` is the speaking rate: text of N characters yields
        ``round(N * sample_rate / chars_per_second)`` samples; `outage` and `fail_after` are
        the fault options (see `FakeServer`)."""
        super().__init__(api_key, outage=outage, fail_after=fail_after)
        self.chars_per_second = chars_per_second

    @property
    def characters(self) -> int:
        """Characters billed across every connection and request so far."""
        return sum(record.characters for record in self.requests)


def _matches(query: Mapping[str, str | list[str]], wanted: Mapping[str, str]) -> bool:
    return all(query.get(name) == value for name, value in wanted.items())


class DeepgramFakeServer(FakeServer[R]):
    """Deepgram's auth header and error format, shared by the /v1/listen and /v1/speak fakes."""

    def authorize(self, request: web.Request) -> None:
        """`Authorization: Token <key>`; temporary Bearer tokens can't be checked offline."""
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "token" or key != self.api_key:
            raise Rejection(401, "INVALID_AUTH", "Invalid credentials.")

    def error_response(self, rejection: Rejection, record: R) -> web.Response:
        """JSON `err_code`/`err_msg` body, the reason repeated in `dg-error` (pipecat logs it)."""
        body = {
            "err_code": rejection.code,
            "err_msg": rejection.message,
            "request_id": record.request_id,
        }
        headers = {"dg-error": rejection.message, "dg-request-id": record.request_id}
        return web.json_response(body, status=rejection.status, headers=headers)
