"""The small HTTP server the LLM fakes share, plus Server-Sent Events output.

Each fake is an aiohttp app on 127.0.0.1 with an ephemeral port, so tests run in
parallel without port clashes, and every request is logged with its secrets removed so
a test can assert on what the client really sent.
"""

import json
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from aiohttp import web

SECRET_HEADERS = frozenset(
    {"authorization", "x-api-key", "api-key", "cookie", "proxy-authorization"}
)
REDACTED = "<redacted>"


@dataclass
class RecordedRequest:
    """What a client sent, as the fake received it (header names lower-cased)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    """Parsed JSON, or the raw text when the body is not JSON."""


def parse_json(text: str) -> Any:
    """The JSON in ``text``, or ``text`` itself when it is not JSON."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class FakeHTTPServer:
    """Base for a fake: start/stop, ``async with``, ``base_url`` and the request log.

    Subclasses add their routes in `routes` and call `record` for each request.
    ``failures`` collects every request the fake rejected because the client got
    something wrong, so a test can end with ``assert fake.failures == []``.
    """

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.failures: list[str] = []
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    def routes(self) -> list[web.RouteDef]:
        """The endpoints this fake serves."""
        raise NotImplementedError

    async def on_shutdown(self, app: web.Application) -> None:
        """Close long-lived connections so `stop` does not wait for clients."""

    async def start(self) -> Self:
        """Listen on 127.0.0.1 with a free port."""
        app = web.Application()
        app.add_routes(self.routes())
        app.on_shutdown.append(self.on_shutdown)
        runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runner = runner
        self._port = runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Stop listening and drop open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """Root URL, e.g. ``http://127.0.0.1:50123``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def client_url(self) -> str:
        """Where the provider's real client connects (see `tollbridge.testing.cassette.ReplayServer`)."""
        return self.base_url

    def record(self, request: web.Request, body: Any) -> RecordedRequest:
        """Log a request, secrets replaced by ``<redacted>``."""
        headers = {
            name.lower(): REDACTED if name.lower() in SECRET_HEADERS else value
            for name, value in request.headers.items()
        }
        entry = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=headers,
            body=body,
        )
        self.requests.append(entry)
        return entry


async def open_sse(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """Start a ``text/event-stream`` response."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            **headers,
        }
    )
    await response.prepare(request)
    return response


async def send_sse(response: web.StreamResponse, data: Any, event: str | None = None) -> None:
    """Write one event: optional ``event:`` line, a ``data:`` line, a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    await response.write(f"{head}data: {payload}\n\n".encode())
