"""The cost ledger: every priced call and its line items, in SQLite or PostgreSQL.

One row per call, one row per line item, money stored exactly (TEXT on SQLite,
NUMERIC on PostgreSQL) and read back as `Decimal`. Twilio's status callback
re-bills the call-time lines from its CallDuration, and the recording status
callback bills the recording from its RecordingDuration; a callback that
arrives before the call's own record waits in `pending_callbacks` and is
applied on record. One for a call never recorded expires from there
(`expire_pending`).
For writes that must survive a database outage, see `spool.SpoolingLedger`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import structlog

from tollbridge.costs import daily
from tollbridge.costs.database import Database, Transaction, connect
from tollbridge.costs.lineitem import CallCost, LineItem
from tollbridge.costs.migrations import BOOTSTRAP, MIGRATIONS
from tollbridge.costs.pricing import rebill, with_recording, with_twilio_price
from tollbridge.costs.queries import AgentRow, CallFilter, CallRow, Queries, ReportRow
from tollbridge.costs.usage import Handoff, Turn

log = structlog.get_logger(__name__)

_CALL_COLUMNS = (
    "call_sid",
    "tenant",
    "vertical",
    "direction",
    "number_type",
    "from_number",
    "to_number",
    "started_at",
    "ended_at",
    "measured_seconds",
    "billed_seconds",
    "total_usd",
    "usd_per_minute",
    "catalog_version",
    "ended_by",
    "twilio_price_usd",
    "drift_usd",
    "status",
    "recorded_seconds",
    "unpriced_items",
    "failed_provider",
    "answered_by",
    "unheard_speech_usd",
)
_ITEM_COLUMNS = (
    "item",
    "provider",
    "quantity",
    "unit",
    "unit_price_usd",
    "usd",
    "unpriced",
    "agent",
)


def _dec(value: Any) -> Decimal:
    """A stored number as Decimal: asyncpg returns Decimal, SQLite the TEXT we wrote."""
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _dec_or_none(value: Any) -> Decimal | None:
    return None if value is None else _dec(value)


def _moment(value: Any) -> dt.datetime:
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)


@dataclass(frozen=True)
class Report:
    """Per-tenant, per-vertical and per-agent totals, plus the calls above the $/min floor
    if one was given."""

    tenants: list[ReportRow]
    verticals: list[ReportRow]
    above_floor: list[CallRow]
    floor: Decimal | None = None
    agents: list[AgentRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "floor_usd_per_minute": None if self.floor is None else f"{self.floor:f}",
            "tenants": [row.to_dict() for row in self.tenants],
            "verticals": [row.to_dict() for row in self.verticals],
            "agents": [row.to_dict() for row in self.agents],
            "calls_above_floor": [row.to_dict() for row in self.above_floor],
        }


class Ledger:
    """Async store of priced calls. Open with `await Ledger.open(url)`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    async def open(cls, url: str, *, create: bool = True) -> Ledger:
        """Connect (`sqlite:///path.db` or `postgresql://…`) and apply pending migrations.

        With `create` false, a SQLite ledger that does not exist yet is a `LedgerError`."""
        db = await connect(url, create=create)
        ledger = cls(db)
        try:
            await ledger._migrate()
            await ledger._check_daily_totals()
        except BaseException:
            await db.close()
            raise
        return ledger

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._db.close()

    async def _migrate(self) -> None:
        async with self._db.transaction() as tx:
            if self._db.migration_lock:
                await tx.execute(self._db.migration_lock)
            await tx.execute(BOOTSTRAP.format(**self._db.types))
            applied = {
                r["version"]
                for r in await tx.fetch("SELECT version FROM schema_migrations ORDER BY version")
            }
            known = sorted(m.version for m in MIGRATIONS)
            if not applied <= set(known):
                raise RuntimeError(
                    f"ledger schema has migrations {sorted(applied)}, this code knows {known}: "
                    f"the database was migrated by a newer or different version of tollbridge"
                )
            missing = [m for m in MIGRATIONS if m.version not in applied]
            for migration in sorted(missing, key=lambda m: m.version):
                for statement in migration.statements:
                    await tx.execute(statement.format(**self._db.types))
                await tx.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    migration.version,
                    migration.name,
                    dt.datetime.now(dt.UTC),
                )
                if migration.version == 7:
                    await self._store_unheard_speech(tx)
                    await daily.rebuild(tx, self._db.day_of("c.started_at"))
                log.info("ledger migrated", version=migration.version, name=migration.name)

    async def _check_daily_totals(self) -> None:
        """Rebuild the daily totals if calls were written or deleted around the ledger (by
        hand, by another tool): reports would miss them. Counting costs a few milliseconds
        per 100,000 calls; the rebuild, about a second."""
        async with self._db.transaction(write=False) as tx:
            drift = await daily.drift(tx)
        if drift:
            log.warning("ledger_daily_totals_rebuilt", reason=drift)
            await self.rebuild_daily_totals()

    async def rebuild_daily_totals(self) -> None:
        """Recompute the daily totals reports read from every stored call (they are kept
        up to date as calls are stored; this is for a ledger whose calls were written by
        other means)."""
        async with self._db.transaction() as tx:
            await daily.rebuild(tx, self._db.day_of("c.started_at"))

    async def _store_unheard_speech(self, tx: Transaction) -> None:
        """Fill in `calls.unheard_speech_usd` for the calls recorded before it was stored."""
        rows = await tx.fetch(
            "SELECT DISTINCT call_sid FROM line_items WHERE item LIKE 'tts.unheard:%'")
        for row in rows:
            cost = await self._load(tx, row["call_sid"])
            if cost is not None and cost.unheard_speech_usd:
                await tx.execute("UPDATE calls SET unheard_speech_usd = ? WHERE call_sid = ?",
                                 cost.unheard_speech_usd, cost.call_sid)

    async def record(self, cost: CallCost) -> CallCost:
        """Store a priced call, replacing any earlier record of it (safe to repeat).

        A status callback or Twilio price already received for the call is
        applied first, so the stored call is the reconciled one.
        """
        async with self._db.transaction() as tx:
            await self._lock_call(tx, cost.call_sid)
            for table in ("calls", "pending_callbacks"):
                rows = await tx.fetch(
                    "SELECT billed_seconds, status, twilio_price_usd, recorded_seconds "
                    f"FROM {table} WHERE call_sid = ?",
                    cost.call_sid,
                )
                if rows:
                    cost = _apply_callbacks(cost, rows[0])
            await tx.execute("DELETE FROM pending_callbacks WHERE call_sid = ?", cost.call_sid)
            await self._store(tx, cost, await self._load(tx, cost.call_sid))
        return cost

    async def get(self, call_sid: str) -> CallCost | None:
        async with self._db.transaction(write=False) as tx:
            return await self._load(tx, call_sid)

    async def reconcile(self, call_sid: str, billed_seconds: int, status: str) -> CallCost | None:
        """Apply Twilio's CallDuration and CallStatus; None if the call is not recorded yet
        (the callback is kept and applied when the record arrives)."""
        async with self._db.transaction() as tx:
            await self._lock_call(tx, call_sid)
            cost = await self._load(tx, call_sid)
            if cost is None:
                await tx.execute(
                    "INSERT INTO pending_callbacks (call_sid, billed_seconds, status, received_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (call_sid) DO UPDATE SET "
                    "billed_seconds = excluded.billed_seconds, status = excluded.status",
                    call_sid,
                    billed_seconds,
                    status,
                    dt.datetime.now(dt.UTC),
                )
                return None
            rebilled = rebill(cost, billed_seconds, status)
            await self._store(tx, rebilled, cost)
            return rebilled

    async def set_twilio_price(self, call_sid: str, price_usd: Decimal) -> CallCost | None:
        """Store Twilio's own price for the call and our drift from it (kept if early)."""
        async with self._db.transaction() as tx:
            await self._lock_call(tx, call_sid)
            cost = await self._load(tx, call_sid)
            if cost is None:
                await tx.execute(
                    "INSERT INTO pending_callbacks (call_sid, twilio_price_usd, received_at) "
                    "VALUES (?, ?, ?) ON CONFLICT (call_sid) DO UPDATE SET "
                    "twilio_price_usd = excluded.twilio_price_usd",
                    call_sid,
                    Decimal(price_usd),
                    dt.datetime.now(dt.UTC),
                )
                return None
            priced = with_twilio_price(cost, Decimal(price_usd))
            await self._store(tx, priced, cost)
            return priced

    async def set_recording(self, call_sid: str, recorded_seconds: int) -> CallCost | None:
        """Bill the call's recording from Twilio's RecordingDuration (kept if early)."""
        async with self._db.transaction() as tx:
            await self._lock_call(tx, call_sid)
            cost = await self._load(tx, call_sid)
            if cost is None:
                await tx.execute(
                    "INSERT INTO pending_callbacks (call_sid, recorded_seconds, received_at) "
                    "VALUES (?, ?, ?) ON CONFLICT (call_sid) DO UPDATE SET "
                    "recorded_seconds = excluded.recorded_seconds",
                    call_sid,
                    recorded_seconds,
                    dt.datetime.now(dt.UTC),
                )
                return None
            recorded = with_recording(cost, recorded_seconds)
            await self._store(tx, recorded, cost)
            return recorded

    async def expire_pending(self, received_before: dt.datetime) -> list[dict[str, Any]]:
        """Drop, and return, callbacks received before `received_before` whose call was
        never recorded: Twilio billed a call that never reached a stream here."""
        async with self._db.transaction() as tx:
            rows = await tx.fetch(
                "SELECT * FROM pending_callbacks WHERE received_at < ? ORDER BY received_at",
                received_before,
            )
            if rows:
                await tx.execute(
                    "DELETE FROM pending_callbacks WHERE received_at < ?", received_before
                )
        return rows

    @property
    def queries(self) -> Queries:
        """Totals, pages and daily series, computed by the database (`costs report`, the
        dashboard)."""
        return Queries(self._db)

    async def report(
        self,
        tenant: str | None = None,
        vertical: str | None = None,
        since: dt.datetime | dt.date | None = None,
        floor: Decimal | None = None,
    ) -> Report:
        """Calls, minutes, dollars, $/min and each item kind's share, per tenant and vertical,
        each agent's spend, and the calls above the $/min floor if one is given."""
        if since is not None and not isinstance(since, dt.datetime):
            since = dt.datetime.combine(since, dt.time(), dt.UTC)
        where = CallFilter(tenant=tenant, vertical=vertical, since=since)
        spend = await self.queries.spend(where)
        return Report(
            tenants=spend.totals("tenant"),
            verticals=spend.totals("vertical"),
            above_floor=[] if floor is None else await self.queries.calls(
                replace(where, above=floor), newest_first=False),
            floor=floor,
            agents=await self.queries.agents(where),
        )

    async def _lock_call(self, tx: Transaction, call_sid: str) -> None:
        if self._db.call_lock:
            await tx.execute(self._db.call_lock, call_sid)

    async def _load(self, tx: Transaction, call_sid: str) -> CallCost | None:
        calls = await tx.fetch("SELECT * FROM calls WHERE call_sid = ?", call_sid)
        if not calls:
            return None
        row = calls[0]
        items = await tx.fetch(
            "SELECT * FROM line_items WHERE call_sid = ? ORDER BY position", call_sid
        )
        return CallCost(
            call_sid=row["call_sid"],
            tenant=row["tenant"],
            vertical=row["vertical"],
            direction=row["direction"],
            number_type=row["number_type"],
            from_number=row["from_number"],
            to_number=row["to_number"],
            started_at=_moment(row["started_at"]),
            ended_at=None if row["ended_at"] is None else _moment(row["ended_at"]),
            measured_seconds=_dec(row["measured_seconds"]),
            billed_seconds=row["billed_seconds"],
            catalog_version=row["catalog_version"],
            items=tuple(
                LineItem(
                    i["item"],
                    i["provider"],
                    _dec(i["quantity"]),
                    i["unit"],
                    _dec(i["unit_price_usd"]),
                    _dec(i["usd"]),
                    i["unpriced"],
                    i["agent"],
                )
                for i in items
            ),
            turns=tuple(
                Turn(_dec(t["at_seconds"]), t["first_audio_ms"], t["stt_ms"], t["llm_ms"],
                     t["tts_ms"], t["agent"])
                for t in await tx.fetch(
                    "SELECT * FROM turns WHERE call_sid = ? ORDER BY position", call_sid)
            ),
            handoffs=tuple(
                Handoff(_dec(h["at_seconds"]), h["from_agent"], h["to_agent"])
                for h in await tx.fetch(
                    "SELECT * FROM handoffs WHERE call_sid = ? ORDER BY position", call_sid)
            ),
            ended_by=row["ended_by"],
            status=row["status"],
            twilio_price_usd=_dec_or_none(row["twilio_price_usd"]),
            drift_usd=_dec_or_none(row["drift_usd"]),
            recorded_seconds=row["recorded_seconds"],
            failed_provider=row["failed_provider"],
            answered_by=row["answered_by"],
        )

    async def _store(self, tx: Transaction, cost: CallCost, old: CallCost | None) -> None:
        """Write `cost` over `old` (its stored record, None if new), daily totals included."""
        await daily.apply(tx, *daily.change(old, cost))
        values = (
            cost.call_sid,
            cost.tenant,
            cost.vertical,
            cost.direction,
            cost.number_type,
            cost.from_number,
            cost.to_number,
            cost.started_at,
            cost.ended_at,
            cost.measured_seconds,
            cost.billed_seconds,
            cost.total_usd,
            cost.usd_per_minute,
            cost.catalog_version,
            cost.ended_by,
            cost.twilio_price_usd,
            cost.drift_usd,
            cost.status,
            cost.recorded_seconds,
            len(cost.unpriced_items),
            cost.failed_provider,
            cost.answered_by,
            cost.unheard_speech_usd,
        )
        updates = ", ".join(f"{c} = excluded.{c}" for c in _CALL_COLUMNS[1:])
        await tx.execute(
            f"INSERT INTO calls ({', '.join(_CALL_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(_CALL_COLUMNS))}) "
            f"ON CONFLICT (call_sid) DO UPDATE SET {updates}",
            *values,
        )
        await _replace_rows(tx, "line_items", cost.call_sid, _ITEM_COLUMNS, [
            (line.item, line.provider, line.quantity, line.unit, line.unit_price_usd, line.usd,
             line.unpriced, line.agent) for line in cost.items])
        await _replace_rows(tx, "handoffs", cost.call_sid,
                            ("at_seconds", "from_agent", "to_agent"),
                            [(h.at_seconds, h.from_agent, h.to_agent) for h in cost.handoffs])
        await _replace_rows(tx, "turns", cost.call_sid,
                            ("at_seconds", "first_audio_ms", "stt_ms", "llm_ms", "tts_ms", "agent"),
                            [(t.at_seconds, t.first_audio_ms, t.stt_ms, t.llm_ms, t.tts_ms, t.agent)
                             for t in cost.turns])


async def _replace_rows(tx: Transaction, table: str, call_sid: str, columns: tuple[str, ...],
                        rows: list[tuple[Any, ...]]) -> None:
    """A call's rows of `table` (line items, handoffs, turns), in order, in place of the old."""
    await tx.execute(f"DELETE FROM {table} WHERE call_sid = ?", call_sid)
    names = ("call_sid", "position", *columns)
    insert = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    for position, row in enumerate(rows):
        await tx.execute(insert, call_sid, position, *row)

def _apply_callbacks(cost: CallCost, stored: Mapping[str, Any]) -> CallCost:
    """Carry a reconciliation or Twilio price the database already holds into a new record."""
    if stored["billed_seconds"] is not None and cost.billed_seconds is None:
        cost = rebill(cost, stored["billed_seconds"], stored["status"])
    price = _dec_or_none(stored["twilio_price_usd"])
    if price is not None and cost.twilio_price_usd is None:
        cost = with_twilio_price(cost, price)
    if stored["recorded_seconds"] is not None and cost.recorded_seconds is None:
        cost = with_recording(cost, stored["recorded_seconds"])
    return cost
