"""Turning finished calls into ledger records, off the audio path.

When a call ends the bookkeeper prices its usage with the catalog (plus the
vertical's negotiated rates) and hands the record to the spooling ledger in a
background task, so a slow or absent database never delays a hang-up and a
failed write is spooled, not lost. Twilio's status callbacks reconcile the
telephony lines to the billed duration the same way, its recording status
callbacks bill the recording, and where credentials allow, Twilio's own price
for the call is fetched and stored beside ours.

A callback for a call this ledger never records (its stream never reached a
bridge, or the bridge died before writing it) would wait in the ledger for
ever; after `pending_ttl_s` it is logged (`callback_expired`, with what it
carried) and dropped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path

from tollbridge.config import Vertical
from tollbridge.costs.catalog import Catalog
from tollbridge.costs.lineitem import CallCost
from tollbridge.costs.pricing import price_call
from tollbridge.costs.spool import SpoolingLedger
from tollbridge.costs.usage import CallUsage
from tollbridge.logs import get_logger
from tollbridge.vertical_prices import price_warnings, vertical_catalog

log = get_logger(component="bookkeeper")
EXPIRY_SWEEP_MAX_S = 300.0
"""Callbacks past their time-to-live are looked for at least this often."""


class Bookkeeper:
    """Prices calls and writes them to the ledger without blocking anyone."""

    def __init__(
        self,
        catalog: Catalog,
        verticals: list[Vertical],
        ledger: SpoolingLedger | None,
        *,
        twilio_price: Callable[[str], Awaitable[Decimal | None]] | None = None,
        pending_ttl_s: float | None = None,
    ):
        self.ledger = ledger
        self.pending_ttl_s = pending_ttl_s
        self.twilio_price = twilio_price
        """Where credentials allow: what Twilio charged for a call, read after it ended."""
        self._catalogs = {v.name: vertical_catalog(catalog, v.prices) for v in verticals}
        self._default = catalog
        self._writes: set[asyncio.Task] = set()
        self._lookups: set[asyncio.Task] = set()
        """Twilio price look-ups: informative, so shutdown does not wait for them."""
        self._expiry: asyncio.Task | None = None
        self.priced = 0
        """Calls priced (and handed to the ledger) by this process."""
        self.costs: dict[str, CallCost] = {}
        """The latest priced calls of this process, by call SID (bounded)."""

    @classmethod
    async def open(
        cls,
        verticals: list[Vertical],
        ledger_url: str | None,
        spool_path: Path | str,
        *,
        pending_ttl_s: float | None = None,
    ) -> Bookkeeper:
        ledger = await SpoolingLedger.open(ledger_url, spool_path) if ledger_url else None
        catalog = Catalog.load()
        for event, warning in price_warnings(verticals, catalog, dt.date.today()).items():
            log.warning(event, detail=warning)
        bookkeeper = cls(catalog, verticals, ledger, pending_ttl_s=pending_ttl_s)
        if ledger and pending_ttl_s:
            bookkeeper._expiry = asyncio.create_task(bookkeeper._expire_pending_forever())
        return bookkeeper

    def catalog_for(self, vertical: str) -> Catalog:
        return self._catalogs.get(vertical, self._default)

    def price(self, usage: CallUsage) -> CallCost:
        return price_call(usage, self.catalog_for(usage.vertical))

    async def call_finished(self, usage: CallUsage) -> CallCost:
        cost = self.price(usage)
        self.priced += 1
        self.costs[cost.call_sid] = cost
        while len(self.costs) > 1000:
            self.costs.pop(next(iter(self.costs)))
        if not cost.complete:
            log.warning(
                "call_priced_incomplete",
                call_sid=cost.call_sid,
                unpriced=[f"{line.item}: {line.unpriced}" for line in cost.unpriced_items],
            )
        log.info(
            "call_priced",
            call_sid=cost.call_sid,
            tenant=cost.tenant,
            vertical=cost.vertical,
            total_usd=str(cost.total_usd),
            usd_per_minute=str(cost.usd_per_minute),
            complete=cost.complete,
            ended_by=cost.ended_by,
        )
        if self.ledger:
            self._background(self.ledger.record(cost))
        return cost

    async def call_status(self, call_sid: str, billed_seconds: int | None, status: str) -> None:
        if self.ledger and billed_seconds is not None:
            self._background(self.ledger.reconcile(call_sid, billed_seconds, status))
        if self.ledger and self.twilio_price and status == "completed":
            self._background(self._store_twilio_price(call_sid), self._lookups)

    async def recording_finished(self, call_sid: str, recorded_seconds: int) -> None:
        """Twilio recorded `recorded_seconds` of the call: bill the recording."""
        if self.ledger:
            self._background(self.ledger.set_recording(call_sid, recorded_seconds))

    async def expire_pending(self) -> int:
        """Log and drop callbacks older than `pending_ttl_s` whose call was never recorded."""
        if not self.ledger or not self.pending_ttl_s:
            return 0
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.pending_ttl_s)
        expired = await self.ledger.expire_pending(cutoff)
        for row in expired:
            log.warning(
                "callback_expired",
                call_sid=row["call_sid"],
                detail=f"no call record after {self.pending_ttl_s:g} s; callback dropped",
                status=row["status"],
                billed_seconds=row["billed_seconds"],
                recorded_seconds=row["recorded_seconds"],
                twilio_price_usd=None if row["twilio_price_usd"] is None
                else str(row["twilio_price_usd"]),
                received_at=str(row["received_at"]),
            )
        return len(expired)

    async def _expire_pending_forever(self) -> None:
        assert self.pending_ttl_s
        every = min(self.pending_ttl_s, EXPIRY_SWEEP_MAX_S)
        while True:
            try:
                await self.expire_pending()
            except Exception as error:  # the database is down: the next sweep tries again
                log.warning("callback_expiry_failed", error=repr(error))
            await asyncio.sleep(every)

    async def _store_twilio_price(self, call_sid: str) -> None:
        assert self.ledger and self.twilio_price
        price = await self.twilio_price(call_sid)
        if price is not None:
            await self.ledger.set_twilio_price(call_sid, price)

    def _background(self, write, tasks: set[asyncio.Task] | None = None) -> None:
        tasks = self._writes if tasks is None else tasks
        task = asyncio.create_task(write)
        tasks.add(task)

        def done(task: asyncio.Task) -> None:
            tasks.discard(task)
            if not task.cancelled() and task.exception():
                log.error("ledger_write_failed", error=repr(task.exception()))

        task.add_done_callback(done)

    async def drain(self) -> None:
        """Wait for the writes and price look-ups in flight."""
        while self._writes or self._lookups:
            await asyncio.gather(*self._writes, *self._lookups, return_exceptions=True)

    async def close(self) -> None:
        """Write everything in flight, then close the ledger (price look-ups are dropped)."""
        chores = [*self._lookups, *([self._expiry] if self._expiry else [])]
        for task in chores:
            task.cancel()
        await asyncio.gather(*chores, return_exceptions=True)
        await self.drain()
        if self.ledger:
            await self.ledger.close()
