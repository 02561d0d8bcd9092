"""`tollbridge serve`: the bridge as a long-running service.

It runs on uvloop when installed (uvicorn's `standard` extra brings it; about a
fifth less CPU per call in the benchmarks), and freezes everything allocated
at start-up out of the garbage collector's reach, so the collector's full
passes stay short while calls are live instead of stalling every call.

SIGTERM or SIGINT drains the bridge rather than dropping its calls: it stops
taking calls (the webhook asks callers to call back, new streams are
refused), lets the calls in flight finish for up to the grace period, then
ends the rest with a spoken farewell (`ended_by = server_shutdown`). A second
signal ends every call at once. Either way every record is priced and
written (or spooled) and the ledger closed before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import Callable, Coroutine
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from tollbridge import telemetry
from tollbridge.bookkeeper import Bookkeeper
from tollbridge.config import Vertical
from tollbridge.costs.catalog import Catalog
from tollbridge.dashboard import Dashboard
from tollbridge.logs import get_logger
from tollbridge.settings import Settings
from tollbridge.tools import shutdown as shutdown_tools
from tollbridge.transports.twilio.rest import TwilioRest
from tollbridge.transports.twilio.server import (
    SHUTDOWN_FAREWELL,
    Bridge,
    BridgeSettings,
    RecordingUpdate,
    StatusUpdate,
    create_app,
    running,
)

if TYPE_CHECKING:
    from tollbridge.testing.cassette import Replay

log = get_logger(component="serve")
SHUTDOWN_REASON = "server_shutdown"
FAREWELL_WAIT_S = 15.0
"""After the grace, how long the farewell may take to play before calls are cut."""
HANG_UP_WAIT_S = 10.0
"""How long calls cut at once may take to end and hand over their records."""


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
    grace_s: float | None = None,
    offline: bool = False,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain (`grace_s`, else the setting) and stop.

    `offline`: the verticals' providers are local fakes (`tollbridge.testing.offline`)."""
    grace_s = settings.tollbridge_drain_grace_s if grace_s is None else grace_s
    with ShutdownSignals() as signals:
        async with contextlib.AsyncExitStack() as stack:
            fakes = await stack.enter_async_context(_offline_fakes(verticals)) if offline \
                else None
            await _serve(verticals, host=host, port=port, public_url=public_url,
                         settings=settings, ledger_url=ledger_url,
                         validate_signatures=validate_signatures, announce=announce,
                         grace_s=grace_s, signals=signals, fakes=fakes)


def _offline_fakes(verticals: list[Vertical]) -> contextlib.AbstractAsyncContextManager[Replay]:
    """The providers of an offline vertical: its LLM improvising, its TTS synthesizing tones."""
    from tollbridge.testing.cassette import Cassette, replay
    from tollbridge.testing.offline import brain_script

    (vertical,) = verticals
    return replay(Cassette(), vertical, brain=brain_script(vertical, None))


async def _serve(
    verticals: list[Vertical],
    *,
    host: str,
    port: int,
    public_url: str,
    settings: Settings,
    ledger_url: str,
    validate_signatures: bool,
    announce: Callable[[str], None],
    grace_s: float,
    signals: ShutdownSignals,
    fakes: Replay | None,
) -> None:
    bookkeeper = await Bookkeeper.open(
        verticals, ledger_url, settings.tollbridge_spool,
        pending_ttl_s=settings.tollbridge_pending_callback_ttl_s,
    )

    async def on_status(update: StatusUpdate) -> None:
        await bookkeeper.call_status(update.call_sid, update.duration_seconds, update.status)

    async def on_recording(update: RecordingUpdate) -> None:
        assert update.duration_seconds is not None
        await bookkeeper.recording_finished(update.call_sid, update.duration_seconds)

    bridge_settings = BridgeSettings(
        public_url=public_url,
        auth_token=settings.twilio_auth_token.get_secret_value(),
        validate_signatures=validate_signatures,
        api_token=settings.tollbridge_api_token.get_secret_value(),
        idle_timeout_s=settings.tollbridge_idle_stream_s,
        base_urls=fakes.base_urls if fakes else {},
        env={**os.environ, **fakes.env} if fakes else None,
    )
    dashboard = Dashboard(
        ledger_url, token=lambda: bridge_settings.api_token,
        floor=settings.tollbridge_margin_floor,
        catalogs=_catalogs({v.name: bookkeeper.catalog_for(v.name) for v in verticals}),
        budgets={v.name: v.budget_usd for v in verticals if v.budget_usd is not None},
    )
    dialer = None
    try:  # the ledger is open: whatever fails from here on must still close it
        if settings.can_dial and fakes is None:  # offline: no call reaches Twilio's API
            dialer = TwilioRest.from_settings(settings)
            bookkeeper.twilio_price = dialer.call_price
        for vertical in verticals:
            if vertical.on_failure.transfer_to and dialer is None:
                log.warning("transfer_unavailable", vertical=vertical.name,
                            detail="on_failure.transfer_to needs TWILIO_ACCOUNT_SID; "
                            "a call whose provider fails is hung up instead")
        bridge = Bridge(verticals, bridge_settings, on_finished=bookkeeper.call_finished,
                        on_status=on_status, on_recording=on_recording,
                        pricer=bookkeeper.price, dialer=dialer)
        app = create_app(bridge)
        app.mount("/dashboard", dashboard.app)
        async with running(app, host, port) as url:
            rendering = asyncio.create_task(bridge.prepare())  # calls need not wait
            freeze_startup_heap()
            announce(f"tollbridge listening on {url}")
            announce(f"voice webhook (paste into Twilio): {public_url.rstrip('/')}/voice")
            announce(f"status callback: {public_url.rstrip('/')}/status")
            announce(f"dashboard: {url}/dashboard (sign in with TOLLBRIDGE_API_TOKEN)"
                     if bridge_settings.api_token
                     else "dashboard, /metrics and POST /calls off: set TOLLBRIDGE_API_TOKEN")
            for vertical in verticals:
                numbers = ", ".join(vertical.numbers) or "no numbers"
                announce(f"  {vertical.name} ({vertical.tenant}): {numbers}")
            if not validate_signatures:
                announce("WARNING: Twilio signatures are not checked (local development only)")
            if fakes is not None:
                announce("offline: the caller is recognised locally, the LLM and TTS are local "
                         "fakes; no provider account is used. Call it:")
                announce(f"  tollbridge call {verticals[0].path} --audio caller.wav "
                         f"--bridge {public_url}")
            await signals.drain.wait()
            rendering.cancel()
            await drain(bridge, grace_s=grace_s, now=signals.now)
    finally:
        await dashboard.close()
        if dialer:
            await dialer.close()
        await bookkeeper.close()
        spooled = bookkeeper.ledger.pending if bookkeeper.ledger else 0
        log.warning("ledger_closed", records_priced=bookkeeper.priced, spooled=spooled)
        await shutdown_tools()
        if (watching := telemetry.active()) is not None:
            watching.shutdown()  # the last calls' spans and metrics, exported now


def _catalogs(by_vertical: dict[str, Catalog]) -> dict[str, Catalog]:
    """Each distinct catalog once, named by the verticals that price with it."""
    shared: dict[int, tuple[list[str], Catalog]] = {}
    for name, catalog in by_vertical.items():
        shared.setdefault(id(catalog), ([], catalog))[0].append(name)
    return {", ".join(names): catalog for names, catalog in shared.values()}


async def serve_dashboard(
    ledger_url: str,
    *,
    host: str,
    port: int,
    token: str,
    floor: Decimal | None,
    catalog: Catalog,
    announce: Callable[[str], None] = print,
) -> None:
    """`tollbridge dashboard`: the dashboard alone on a ledger, until SIGTERM or SIGINT."""
    dashboard = Dashboard(ledger_url, token=lambda: token, floor=floor,
                          catalogs={"catalog": catalog})
    try:
        await dashboard.ledger()  # a ledger that is not there stops the command now
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        app.mount("/dashboard", dashboard.app)

        @app.get("/")
        async def home() -> RedirectResponse:
            return RedirectResponse("/dashboard/")

        stop = asyncio.Event()  # no calls to drain: the first signal stops it
        loop = asyncio.get_running_loop()
        for sig in ShutdownSignals.SIGNALS:
            loop.add_signal_handler(sig, stop.set)
        try:
            async with running(app, host, port) as url:
                announce(f"dashboard on {url}/dashboard/ (sign in with TOLLBRIDGE_API_TOKEN)")
                await stop.wait()
        finally:
            for sig in ShutdownSignals.SIGNALS:
                loop.remove_signal_handler(sig)
    finally:
        await dashboard.close()


class ShutdownSignals:
    """SIGTERM and SIGINT as events: the first asks for a drain, the second to end now."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.drain = asyncio.Event()
        self.now = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> ShutdownSignals:
        self._loop = asyncio.get_running_loop()
        for sig in self.SIGNALS:
            self._loop.add_signal_handler(sig, self._received, sig)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._loop is not None
        for sig in self.SIGNALS:
            self._loop.remove_signal_handler(sig)

    def _received(self, sig: signal.Signals) -> None:
        if not self.drain.is_set():
            log.warning("shutdown_requested", signal=sig.name,
                        detail="draining; signal again to end the calls now")
            self.drain.set()
        elif not self.now.is_set():
            log.warning("shutdown_forced", signal=sig.name, detail="ending every call now")
            self.now.set()
        else:
            log.warning("shutdown_already_forced", signal=sig.name)


async def drain(
    bridge: Bridge,
    *,
    grace_s: float,
    now: asyncio.Event,
    farewell: str = SHUTDOWN_FAREWELL,
    farewell_wait_s: float = FAREWELL_WAIT_S,
) -> None:
    """Stop taking calls, let those in flight finish for `grace_s`, then say `farewell`
    on the rest and hang up; `now` set (a second signal) ends them at once."""
    bridge.draining = True
    log.warning("drain_started", calls=len(bridge.sessions), grace_s=grace_s)
    if await _quiet_within(bridge, grace_s, now):
        log.warning("drain_done", detail="every call finished on its own")
        return
    if not now.is_set():
        log.warning("drain_grace_over", calls=len(bridge.sessions),
                    detail="ending the remaining calls with a farewell")
        await bridge.end_calls(farewell, reason=SHUTDOWN_REASON)
        if await _quiet_within(bridge, farewell_wait_s, now):
            log.warning("drain_done", detail="the remaining calls were ended with a farewell")
            return
    log.warning("calls_cut", calls=len(bridge.sessions),
                detail="second signal" if now.is_set() else "the farewell did not finish in time")
    bridge.hang_up_all(SHUTDOWN_REASON)
    try:
        async with asyncio.timeout(HANG_UP_WAIT_S):
            await bridge.until_quiet()
    except TimeoutError:
        log.error("streams_still_open", streams=bridge.streams)
    log.warning("drain_done", detail="the remaining calls were cut")


async def _quiet_within(bridge: Bridge, timeout_s: float, now: asyncio.Event) -> bool:
    """Whether every stream closed within `timeout_s` (given up at once if `now` gets set)."""
    quiet = asyncio.ensure_future(bridge.until_quiet())
    hurry = asyncio.ensure_future(now.wait())
    try:
        await asyncio.wait({quiet, hurry}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        quiet.cancel()
        hurry.cancel()
    return bridge.streams == 0


def freeze_startup_heap() -> None:
    """Move what start-up allocated (SDKs, models, config) out of the collector's reach.

    Full collections then walk only what calls allocate, so they no longer
    stall every live call for a hundred milliseconds or more.
    """
    gc.collect()
    gc.freeze()


def run_service(main: Coroutine[Any, Any, None]) -> None:
    """Run the service's coroutine on uvloop when it is installed, else on asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)
