"""Turning finished calls into ledger records, off the audio path.

When a call ends the bookkeeper prices its usage with the catalog (plus the
vertical's negotiated rates) and hands the record to the spooling ledger in a
background task, so a slow or absent database never delays a hang-up and a
failed write is spooled, not lost. Twilio's status callbacks reconcile the
telephony lines to the billed duration the same way, and where credentials
allow, Twilio's own price for the call is fetched and stored beside ours.
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

log = get_logger(component="bookkeeper")


class Bookkeeper:
    """Prices calls and writes them to the ledger without blocking anyone."""

    def __init__(
        self,
        catalog: Catalog,
        verticals: list[Vertical],
        ledger: SpoolingLedger | None,
        *,
        twilio_price: Callable[[str], Awaitable[Decimal | None]] | None = None,
    ):
        self.ledger = ledger
        self.twilio_price = twilio_price
        """Where credentials allow: what Twilio charged for a call, read after it ended."""
        self._catalogs = {
            v.name: catalog.with_overrides(p.model_dump(exclude_none=True) for p in v.prices) for v in verticals
        }
        self._default = catalog
        self._writes: set[asyncio.Task] = set()
        self.costs: dict[str, CallCost] = {}
        """The latest priced calls of this process, by call SID (bounded)."""

    @classmethod
    async def open(
        cls, verticals: list[Vertical], ledger_url: str | None, spool_path: Path | str
    ) -> Bookkeeper:
        ledger = await SpoolingLedger.open(ledger_url, spool_path) if ledger_url else None
        catalog = Catalog.load()
        warning = catalog.age_warning(dt.date.today())
        if warning:
            log.warning("price_catalog_old", detail=warning)
        return cls(catalog, verticals, ledger)

    def catalog_for(self, vertical: str) -> Catalog:
        return self._catalogs.get(vertical, self._default)

    def price(self, usage: CallUsage) -> CallCost:
        return price_call(usage, self.catalog_for(usage.vertical))

    async def call_finished(self, usage: CallUsage) -> CallCost:
        cost = self.price(usage)
        self.costs[cost.call_sid] = cost
        while len(self.costs) > 1000:
            self.costs.pop(next(iter(self.costs)))
        log.info(
            "call_priced",
            call_sid=cost.call_sid,
            tenant=cost.tenant,
            vertical=cost.vertical,
            total_usd=str(cost.total_usd),
            usd_per_minute=str(cost.usd_per_minute),
            ended_by=cost.ended_by,
        )
        if self.ledger:
            self._background(self.ledger.record(cost))
        return cost

    async def call_status(self, call_sid: str, billed_seconds: int | None, status: str) -> None:
        if self.ledger and billed_seconds is not None:
            self._background(self.ledger.reconcile(call_sid, billed_seconds, status))
        if self.ledger and self.twilio_price and status == "completed":
            self._background(self._store_twilio_price(call_sid))

    async def _store_twilio_price(self, call_sid: str) -> None:
        assert self.ledger and self.twilio_price
        price = await self.twilio_price(call_sid)
        if price is not None:
            await self.ledger.set_twilio_price(call_sid, price)

    def _background(self, write) -> None:
        task = asyncio.create_task(write)
        self._writes.add(task)
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception():
            log.error("ledger_write_failed", error=repr(task.exception()))

    async def drain(self) -> None:
        """Wait for the writes in flight (before shutdown or in tests)."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    async def close(self) -> None:
        await self.drain()
        if self.ledger:
            await self.ledger.close()
