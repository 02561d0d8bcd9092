"""The real bridge running on this machine, with its providers replayed by local fakes.

One helper for everything that needs a live bridge without Twilio: `tollbridge
call`, the pytest plugin, the project's tests and benchmarks. The bridge
serves under uvicorn on 127.0.0.1; a `Softphone` from `softphone()` calls it
over a real WebSocket, signed as Twilio signs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tollbridge.bookkeeper import Bookkeeper
from tollbridge.config import Vertical
from tollbridge.costs.catalog import Catalog
from tollbridge.costs.usage import CallUsage
from tollbridge.session import CallSession, Pricer
from tollbridge.testing.cassette import Cassette, Replay, replay
from tollbridge.testing.softphone import Softphone
from tollbridge.transports.twilio.server import (
    Bridge,
    BridgeSettings,
    StatusUpdate,
    create_app,
    running,
)


@dataclass
class RunningBridge:
    """A bridge serving on 127.0.0.1, and what its calls left behind so far."""

    bridge: Bridge
    url: str
    auth_token: str
    fakes: Replay | None
    """The providers' fakes (None: the live providers)."""
    usages: list[CallUsage] = field(default_factory=list)
    sessions: list[CallSession] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    recorded: asyncio.Event = field(default_factory=asyncio.Event)
    """Set each time a call leaves its usage record."""

    def softphone(self, *, signed: bool = True) -> Softphone:
        return Softphone(self.bridge.media_url, auth_token=self.auth_token if signed else None)

    async def finished(self, count: int = 1, within: float = 10.0) -> list[CallUsage]:
        """Wait until `count` calls have left their usage record (TimeoutError after
        `within` seconds)."""
        async with asyncio.timeout(within):
            while len(self.usages) < count:
                self.recorded.clear()
                await self.recorded.wait()
        return self.usages


@contextlib.asynccontextmanager
async def running_bridge(
    vertical: Vertical,
    cassette: Cassette | None,
    *,
    brain: Any = None,
    auth_token: str | None = None,
    user_speech_timeout: float = 0.6,
    pricer: Pricer | None = None,
    on_finished: Callable[[CallUsage], Awaitable[None]] | None = None,
    on_session: Callable[[CallSession], Awaitable[None]] | None = None,
) -> AsyncIterator[RunningBridge]:
    """Serve `vertical` with its providers replayed from `cassette` (None: the live ones;
    `brain`: the brain's replies instead of the cassette's), until the block ends."""
    async with contextlib.AsyncExitStack() as stack:
        fakes = None
        if cassette is not None:
            fakes = await stack.enter_async_context(replay(cassette, vertical, brain=brain))
        state: list[RunningBridge] = []

        async def finished(usage: CallUsage) -> None:
            try:
                if on_finished is not None:
                    await on_finished(usage)
            finally:  # `finished()` returns once the caller's own bookkeeping is done
                state[0].usages.append(usage)
                state[0].recorded.set()

        async def started(session: CallSession) -> None:
            state[0].sessions.append(session)
            if on_session is not None:
                await on_session(session)

        async def status(update: StatusUpdate) -> None:
            state[0].statuses.append(update)

        token = auth_token or secrets.token_hex(16)
        settings = BridgeSettings(
            auth_token=token,
            base_urls=fakes.base_urls if fakes else {},
            env={**os.environ, **fakes.env} if fakes else None,
            user_speech_timeout=user_speech_timeout,
        )
        bridge = Bridge(
            [vertical], settings, on_finished=finished, on_session=started, on_status=status,
            pricer=pricer or Bookkeeper(Catalog.load(), [vertical], None).price,
        )
        await bridge.warm_up()  # a local model loads now, not during the first call
        async with running(create_app(bridge)) as url:
            bridge.settings.public_url = url
            state.append(RunningBridge(bridge=bridge, url=url, auth_token=token, fakes=fakes))
            yield state[0]
