"""`tollbridge serve`: the bridge as a long-running service.

It runs on uvloop when installed (uvicorn's `standard` extra brings it; about a
fifth less CPU per call in the benchmarks), and freezes everything allocated
at start-up out of the garbage collector's reach, so the collector's full
passes stay short while calls are live instead of stalling every call.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any

from tollbridge.bookkeeper import Bookkeeper
from tollbridge.config import Vertical
from tollbridge.settings import Settings
from tollbridge.tools import shutdown as shutdown_tools
from tollbridge.transports.twilio.rest import TwilioRest
from tollbridge.transports.twilio.server import (
    Bridge,
    BridgeSettings,
    StatusUpdate,
    create_app,
    running,
)


async def serve_forever(
    verticals: list[Vertical],
    *,
    host: str,
    port: int,
    public_url: str,
    settings: Settings,
    ledger_url: str,
    validate_signatures: bool,
    announce: Callable[[str], None] = print,
) -> None:
    bookkeeper = await Bookkeeper.open(verticals, ledger_url, settings.tollbridge_spool)

    async def on_status(update: StatusUpdate) -> None:
        await bookkeeper.call_status(update.call_sid, update.duration_seconds, update.status)

    bridge_settings = BridgeSettings(
        public_url=public_url,
        auth_token=settings.twilio_auth_token.get_secret_value(),
        validate_signatures=validate_signatures,
        api_token=settings.tollbridge_api_token.get_secret_value(),
    )
    dialer = None
    try:  # the ledger is open: whatever fails from here on must still close it
        if settings.can_dial:
            dialer = TwilioRest.from_settings(settings)
            bookkeeper.twilio_price = dialer.call_price
        bridge = Bridge(verticals, bridge_settings, on_finished=bookkeeper.call_finished,
                        on_status=on_status, pricer=bookkeeper.price, dialer=dialer)
        async with running(create_app(bridge), host, port) as url:
            freeze_startup_heap()
            announce(f"tollbridge listening on {url}")
            announce(f"voice webhook (paste into Twilio): {public_url.rstrip('/')}/voice")
            announce(f"status callback: {public_url.rstrip('/')}/status")
            for vertical in verticals:
                numbers = ", ".join(vertical.numbers) or "no numbers"
                announce(f"  {vertical.name} ({vertical.tenant}): {numbers}")
            if not validate_signatures:
                announce("WARNING: Twilio signatures are not checked (local development only)")
            await _forever()
    finally:
        if dialer:
            await dialer.close()
        await bookkeeper.close()
        await shutdown_tools()


def freeze_startup_heap() -> None:
    """Move what start-up allocated (SDKs, models, config) out of the collector's reach.

    Full collections then walk only what calls allocate, so they no longer
    stall every live call for a hundred milliseconds or more.
    """
    gc.collect()
    gc.freeze()


async def _forever() -> None:
    await asyncio.Event().wait()


def run_service(main: Coroutine[Any, Any, None]) -> None:
    """Run the service's coroutine on uvloop when it is installed, else on asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)
