"""The cost ledger: every priced call and its line items, in SQLite or PostgreSQL.

One row per call, one row per line item, money stored exactly (TEXT on SQLite,
NUMERIC on PostgreSQL) and read back as `Decimal`. Twilio's status callback
re-bills the call-time lines from its CallDuration; when it arrives before the
call's own record, it waits in `pending_callbacks` and is applied on record.

`SpoolingLedger` wraps a ledger so that no write is lost while the database is
unreachable: the write goes to a JSON-lines spool file and is replayed, in
order, once the database answers again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import sqlite3
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiosqlite
import asyncpg
import structlog

from pipeline.costs.lineitem import CallCost, LineItem, round_usd
from pipeline.costs.migrations import BOOTSTRAP, MIGRATIONS
from pipeline.costs.pricing import rebill, with_twilio_price

log = structlog.get_logger(__name__)

# Errors that mean "the database is not reachable right now", as opposed to a bug.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    sqlite3.OperationalError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)

_CALL_COLUMNS = (
    "call_sid", "tenant", "vertical", "direction", "number_type", "from_number", "to_number",
    "started_at", "ended_at", "measured_seconds", "billed_seconds", "total_usd", "usd_per_minute",
    "catalog_version", "ended_by", "twilio_price_usd", "drift_usd", "status",
)
_ITEM_COLUMNS = ("call_sid", "position", "item", "provider", "quantity", "unit", "unit_price_usd", "usd")
_SHARE_PLACES = Decimal("0.0001")


class _Tx(Protocol):
    """A transaction on either database; SQL uses `?` placeholders."""

    async def execute(self, sql: str, *args: Any) -> None: ...

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]: ...


class _Database(Protocol):
    types: Mapping[str, str]
    migration_lock: str | None

    def transaction(self) -> Any: ...

    async def close(self) -> None: ...


def _utc(moment: dt.datetime) -> dt.datetime:
    """Naive datetimes are taken as UTC, so every stored instant is comparable."""
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


class _SQLite:
    """One aiosqlite connection; a lock keeps each transaction to itself."""

    types: Mapping[str, str] = {"money": "TEXT", "timestamp": "TEXT"}
    migration_lock = None  # BEGIN IMMEDIATE already locks the file

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, path: str) -> _SQLite:
        conn = await aiosqlite.connect(path, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        for pragma in ("foreign_keys = ON", "journal_mode = WAL", "busy_timeout = 5000"):
            await conn.execute(f"PRAGMA {pragma}")
        return cls(conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SQLite]:
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            await self._conn.execute("COMMIT")

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(sql, [self._param(a) for a in args])

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        async with self._conn.execute(sql, [self._param(a) for a in args]) as cursor:
            return [dict(row) for row in await cursor.fetchall()]

    @staticmethod
    def _param(value: Any) -> Any:
        if isinstance(value, Decimal):
            return f"{value:f}"
        if isinstance(value, dt.datetime):
            return _utc(value).isoformat(timespec="microseconds")
        return value

    async def close(self) -> None:
        await self._conn.close()


class _PgTx:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(_numbered(sql), *map(self._param, args))

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return [dict(row) for row in await self._conn.fetch(_numbered(sql), *map(self._param, args))]

    @staticmethod
    def _param(value: Any) -> Any:
        return _utc(value) if isinstance(value, dt.datetime) else value


class _Postgres:
    """An asyncpg pool; the pool replaces connections a restarted server dropped."""

    types: Mapping[str, str] = {"money": "NUMERIC", "timestamp": "TIMESTAMPTZ"}
    # Two processes opening the same database must not both run a migration.
    migration_lock = "SELECT pg_advisory_xact_lock(hashtext('tollbridge.ledger'))"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, dsn: str) -> _Postgres:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4, timeout=5, command_timeout=10)
        return cls(pool)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PgTx]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield _PgTx(conn)

    async def close(self) -> None:
        await self._pool.close()


def _numbered(sql: str) -> str:
    """`?` placeholders to PostgreSQL's `$1, $2, …`."""
    counter = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


def safe_url(url: str) -> str:
    """The URL with any password masked, for logs and error messages."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


async def _connect(url: str) -> _Database:
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return await _SQLite.connect(url[len("sqlite:///"):])
    if url.startswith(("postgresql://", "postgres://")):
        return await _Postgres.connect(url)
    raise ValueError(
        f"unsupported ledger URL {safe_url(url)!r}: use sqlite:///relative.db, "
        f"sqlite:////absolute/path.db or postgresql://user@host:port/db"
    )


def _dec(value: Any) -> Decimal | None:
    if value is None or isinstance(value, Decimal):
        return value
    return Decimal(str(value))


def _moment(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(value)


@dataclass(frozen=True)
class ReportRow:
    """Totals for one tenant or one vertical; `shares` maps item kind to fraction of the total."""

    group: str
    key: str
    calls: int
    minutes: Decimal
    total_usd: Decimal
    usd_per_minute: Decimal | None
    shares: dict[str, Decimal] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "key": self.key,
            "calls": self.calls,
            "minutes": f"{self.minutes:f}",
            "total_usd": f"{self.total_usd:f}",
            "usd_per_minute": None if self.usd_per_minute is None else f"{self.usd_per_minute:f}",
            "shares": {kind: f"{share:f}" for kind, share in self.shares.items()},
        }


@dataclass(frozen=True)
class CallRow:
    """One call in a report: what the margin floor is checked against."""

    call_sid: str
    tenant: str
    vertical: str
    started_at: dt.datetime
    minutes: Decimal
    total_usd: Decimal
    usd_per_minute: Decimal | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "call_sid": self.call_sid,
            "tenant": self.tenant,
            "vertical": self.vertical,
            "started_at": self.started_at.isoformat(),
            "minutes": f"{self.minutes:f}",
            "total_usd": f"{self.total_usd:f}",
            "usd_per_minute": None if self.usd_per_minute is None else f"{self.usd_per_minute:f}",
        }


@dataclass(frozen=True)
class Report:
    """Per-tenant and per-vertical totals, plus the calls above the $/min floor if one was given."""

    tenants: list[ReportRow]
    verticals: list[ReportRow]
    above_floor: list[CallRow]
    floor: Decimal | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "floor_usd_per_minute": None if self.floor is None else f"{self.floor:f}",
            "tenants": [row.to_dict() for row in self.tenants],
            "verticals": [row.to_dict() for row in self.verticals],
            "calls_above_floor": [row.to_dict() for row in self.above_floor],
        }


class Ledger:
    """Async store of priced calls. Open with `await Ledger.open(url)`."""

    def __init__(self, db: _Database) -> None:
        self._db = db

    @classmethod
    async def open(cls, url: str) -> Ledger:
        """Connect (`sqlite:///path.db` or `postgresql://…`) and apply pending migrations."""
        db = await _connect(url)
        ledger = cls(db)
        try:
            await ledger._migrate()
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
            applied = [r["version"] for r in
                       await tx.fetch("SELECT version FROM schema_migrations ORDER BY version")]
            known = [m.version for m in MIGRATIONS]
            if applied != known[: len(applied)]:
                raise RuntimeError(
                    f"ledger schema has migrations {applied}, this code knows {known}: "
                    f"the database was migrated by a newer or different version of tollbridge"
                )
            for migration in MIGRATIONS[len(applied):]:
                for statement in migration.statements:
                    await tx.execute(statement.format(**self._db.types))
                await tx.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    migration.version, migration.name, dt.datetime.now(dt.UTC),
                )
                log.info("ledger migrated", version=migration.version, name=migration.name)

    async def record(self, cost: CallCost) -> CallCost:
        """Store a priced call, replacing any earlier record of it (safe to repeat).

        A status callback or Twilio price already received for the call is
        applied first, so the stored call is the reconciled one.
        """
        async with self._db.transaction() as tx:
            for table in ("calls", "pending_callbacks"):
                rows = await tx.fetch(
                    f"SELECT billed_seconds, status, twilio_price_usd FROM {table} WHERE call_sid = ?",
                    cost.call_sid,
                )
                if rows:
                    cost = _apply_callbacks(cost, rows[0])
            await tx.execute("DELETE FROM pending_callbacks WHERE call_sid = ?", cost.call_sid)
            await self._store(tx, cost)
        return cost

    async def get(self, call_sid: str) -> CallCost | None:
        async with self._db.transaction() as tx:
            return await self._load(tx, call_sid)

    async def reconcile(self, call_sid: str, billed_seconds: int, status: str) -> CallCost | None:
        """Apply Twilio's CallDuration and CallStatus; None if the call is not recorded yet
        (the callback is kept and applied when the record arrives)."""
        async with self._db.transaction() as tx:
            cost = await self._load(tx, call_sid)
            if cost is None:
                await tx.execute(
                    "INSERT INTO pending_callbacks (call_sid, billed_seconds, status, received_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (call_sid) DO UPDATE SET "
                    "billed_seconds = excluded.billed_seconds, status = excluded.status",
                    call_sid, billed_seconds, status, dt.datetime.now(dt.UTC),
                )
                return None
            cost = rebill(cost, billed_seconds, status)
            await self._store(tx, cost)
            return cost

    async def set_twilio_price(self, call_sid: str, price_usd: Decimal) -> CallCost | None:
        """Store Twilio's own price for the call and our drift from it (kept if early)."""
        async with self._db.transaction() as tx:
            cost = await self._load(tx, call_sid)
            if cost is None:
                await tx.execute(
                    "INSERT INTO pending_callbacks (call_sid, twilio_price_usd, received_at) "
                    "VALUES (?, ?, ?) ON CONFLICT (call_sid) DO UPDATE SET "
                    "twilio_price_usd = excluded.twilio_price_usd",
                    call_sid, Decimal(price_usd), dt.datetime.now(dt.UTC),
                )
                return None
            cost = with_twilio_price(cost, Decimal(price_usd))
            await self._store(tx, cost)
            return cost

    async def report(
        self,
        tenant: str | None = None,
        vertical: str | None = None,
        since: dt.datetime | dt.date | None = None,
        floor: Decimal | None = None,
    ) -> Report:
        """Calls, minutes, dollars, $/min and each item kind's share, per tenant and vertical.

        Sums are done here in Decimal, not in SQL, because SQLite would sum TEXT as floats.
        """
        where, args = [], []
        for column, value in (("tenant", tenant), ("vertical", vertical)):
            if value is not None:
                where.append(f"c.{column} = ?")
                args.append(value)
        if since is not None:
            if not isinstance(since, dt.datetime):
                since = dt.datetime.combine(since, dt.time(), dt.UTC)
            where.append("c.started_at >= ?")
            args.append(since)
        sql = (
            "SELECT c.call_sid, c.tenant, c.vertical, c.started_at, c.measured_seconds, "
            "c.billed_seconds, c.total_usd, l.item, l.usd FROM calls c "
            "LEFT JOIN line_items l ON l.call_sid = c.call_sid"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY c.started_at, c.call_sid, l.position"
        )
        async with self._db.transaction() as tx:
            rows = await tx.fetch(sql, *args)
        return _summarise(rows, floor)

    async def _load(self, tx: _Tx, call_sid: str) -> CallCost | None:
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
            started_at=_moment(row["started_at"]),  # type: ignore[arg-type]
            ended_at=_moment(row["ended_at"]),
            measured_seconds=_dec(row["measured_seconds"]),  # type: ignore[arg-type]
            billed_seconds=row["billed_seconds"],
            catalog_version=row["catalog_version"],
            items=tuple(
                LineItem(i["item"], i["provider"], _dec(i["quantity"]), i["unit"],  # type: ignore[arg-type]
                         _dec(i["unit_price_usd"]), _dec(i["usd"]))  # type: ignore[arg-type]
                for i in items
            ),
            ended_by=row["ended_by"],
            status=row["status"],
            twilio_price_usd=_dec(row["twilio_price_usd"]),
            drift_usd=_dec(row["drift_usd"]),
        )

    async def _store(self, tx: _Tx, cost: CallCost) -> None:
        values = (
            cost.call_sid, cost.tenant, cost.vertical, cost.direction, cost.number_type,
            cost.from_number, cost.to_number, cost.started_at, cost.ended_at,
            cost.measured_seconds, cost.billed_seconds, cost.total_usd, cost.usd_per_minute,
            cost.catalog_version, cost.ended_by, cost.twilio_price_usd, cost.drift_usd, cost.status,
        )
        updates = ", ".join(f"{c} = excluded.{c}" for c in _CALL_COLUMNS[1:])
        await tx.execute(
            f"INSERT INTO calls ({', '.join(_CALL_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(_CALL_COLUMNS))}) "
            f"ON CONFLICT (call_sid) DO UPDATE SET {updates}",
            *values,
        )
        await tx.execute("DELETE FROM line_items WHERE call_sid = ?", cost.call_sid)
        insert = (f"INSERT INTO line_items ({', '.join(_ITEM_COLUMNS)}) "
                  f"VALUES ({', '.join('?' * len(_ITEM_COLUMNS))})")
        for position, line in enumerate(cost.items):
            await tx.execute(insert, cost.call_sid, position, line.item, line.provider,
                             line.quantity, line.unit, line.unit_price_usd, line.usd)


def _apply_callbacks(cost: CallCost, stored: Mapping[str, Any]) -> CallCost:
    """Carry a reconciliation or Twilio price the database already holds into a new record."""
    if stored["billed_seconds"] is not None and cost.billed_seconds is None:
        cost = rebill(cost, stored["billed_seconds"], stored["status"])
    price = _dec(stored["twilio_price_usd"])
    if price is not None and cost.twilio_price_usd is None:
        cost = with_twilio_price(cost, price)
    return cost


def _summarise(rows: list[dict[str, Any]], floor: Decimal | None) -> Report:
    calls: dict[str, CallRow] = {}
    seconds: dict[str, Decimal] = {}
    kinds: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for row in rows:
        sid = row["call_sid"]
        if sid not in calls:
            billed = row["billed_seconds"]
            secs = Decimal(billed) if billed is not None else _dec(row["measured_seconds"])
            total = _dec(row["total_usd"])
            seconds[sid] = secs  # type: ignore[assignment]
            calls[sid] = CallRow(
                sid, row["tenant"], row["vertical"], _moment(row["started_at"]),  # type: ignore[arg-type]
                (secs / 60).quantize(_SHARE_PLACES), total,  # type: ignore[operator, arg-type]
                round_usd(total * 60 / secs) if secs else None,  # type: ignore[operator]
            )
        if row["item"] is not None:
            kinds[sid][row["item"].partition(":")[0]] += _dec(row["usd"])  # type: ignore[operator]

    def group(name: str) -> list[ReportRow]:
        members: dict[str, list[str]] = defaultdict(list)
        for sid, call in calls.items():
            members[getattr(call, name)].append(sid)
        out = []
        for key in sorted(members):
            sids = members[key]
            secs = sum((seconds[s] for s in sids), Decimal(0))
            total = sum((calls[s].total_usd for s in sids), Decimal(0))
            by_kind: dict[str, Decimal] = defaultdict(Decimal)
            for s in sids:
                for kind, usd in kinds[s].items():
                    by_kind[kind] += usd
            out.append(ReportRow(
                group=name,
                key=key,
                calls=len(sids),
                minutes=(secs / 60).quantize(_SHARE_PLACES),
                total_usd=total,
                usd_per_minute=round_usd(total * 60 / secs) if secs else None,
                shares={k: (v / total).quantize(_SHARE_PLACES) if total else Decimal(0)
                        for k, v in sorted(by_kind.items())},
            ))
        return out

    above = [] if floor is None else [
        call for call in calls.values()
        if call.usd_per_minute is not None and call.usd_per_minute > floor
    ]
    return Report(tenants=group("tenant"), verticals=group("vertical"), above_floor=above, floor=floor)


class SpoolingLedger:
    """A ledger whose writes survive a database outage.

    A write that fails because the database is unreachable is appended to a
    JSON-lines spool file (fsynced) and replayed in order by a background task
    with exponential backoff. While the spool holds anything, new writes queue
    behind it, so an older write never lands after a newer one. A spooled write
    the database rejects for another reason (a bug, bad data) is moved to
    `<spool>.rejected` and logged, so it cannot block the queue. One process
    per spool file.
    """

    def __init__(
        self,
        url: str,
        spool_path: Path | str,
        *,
        retry_initial: float = 0.5,
        retry_max: float = 60.0,
    ) -> None:
        self._url = url
        self._spool = Path(spool_path)
        self._rejected = self._spool.with_name(self._spool.name + ".rejected")
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._ledger: Ledger | None = None
        self._lock = asyncio.Lock()
        self._retry: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, spool_path: Path | str, **options: float) -> SpoolingLedger:
        """Start: replay anything a previous run left in the spool. Never fails for an
        unreachable database; it just keeps retrying in the background."""
        spooling = cls(url, spool_path, **options)
        if not await spooling.flush():
            spooling._schedule_retry()
        return spooling

    @property
    def spool_path(self) -> Path:
        return self._spool

    async def pending(self) -> int:
        """How many writes are waiting in the spool."""
        return len(await asyncio.to_thread(self._read_spool))

    async def record(self, cost: CallCost) -> None:
        await self._write({"op": "record", "cost": cost.to_dict()})

    async def reconcile(self, call_sid: str, billed_seconds: int, status: str) -> None:
        await self._write({"op": "reconcile", "call_sid": call_sid,
                           "billed_seconds": billed_seconds, "status": status})

    async def set_twilio_price(self, call_sid: str, price_usd: Decimal) -> None:
        await self._write({"op": "twilio_price", "call_sid": call_sid,
                           "price_usd": f"{Decimal(price_usd):f}"})

    async def get(self, call_sid: str) -> CallCost | None:
        """Read through to the database (raises if it is unreachable)."""
        return await (await self._connected()).get(call_sid)

    async def report(self, **filters: Any) -> Report:
        return await (await self._connected()).report(**filters)

    async def flush(self) -> bool:
        """Replay the spool now; True when it is empty and the database reachable."""
        async with self._lock:
            lines = await asyncio.to_thread(self._read_spool)
            done = 0
            try:
                await self._connected()
                for line in lines:
                    await self._replay(line)
                    done += 1
            except TRANSIENT_ERRORS as exc:
                log.warning("ledger unreachable; keeping spool", url=safe_url(self._url),
                            spooled=len(lines) - done, error=repr(exc))
                return False
            finally:
                if done:
                    await asyncio.to_thread(self._rewrite_spool, lines[done:])
            if done:
                log.info("ledger spool flushed", writes=done)
            return True

    async def close(self) -> None:
        """Stop retrying and close the database; the spool stays on disk for the next run."""
        if self._retry is not None:
            self._retry.cancel()
            await asyncio.gather(self._retry, return_exceptions=True)
        if self._ledger is not None:
            await self._ledger.close()
            self._ledger = None

    async def __aenter__(self) -> SpoolingLedger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _write(self, op: dict[str, Any]) -> None:
        async with self._lock:
            if not await asyncio.to_thread(self._read_spool):
                try:
                    await self._apply(op)
                    return
                except TRANSIENT_ERRORS as exc:
                    log.warning("ledger write failed; spooling it", url=safe_url(self._url),
                                op=op["op"], error=repr(exc))
            op = {**op, "spooled_at": dt.datetime.now(dt.UTC).isoformat()}
            await asyncio.to_thread(self._append, json.dumps(op))
        self._schedule_retry()

    async def _connected(self) -> Ledger:
        if self._ledger is None:
            self._ledger = await Ledger.open(self._url)
        return self._ledger

    async def _apply(self, op: Mapping[str, Any]) -> None:
        ledger = await self._connected()
        if op["op"] == "record":
            await ledger.record(CallCost.from_dict(op["cost"]))
        elif op["op"] == "reconcile":
            await ledger.reconcile(op["call_sid"], op["billed_seconds"], op["status"])
        elif op["op"] == "twilio_price":
            await ledger.set_twilio_price(op["call_sid"], Decimal(op["price_usd"]))
        else:
            raise ValueError(f"unknown spooled operation {op['op']!r}")

    async def _replay(self, line: str) -> None:
        try:
            await self._apply(json.loads(line))
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:  # a write that can never succeed must not block the rest
            log.error("spooled ledger write rejected", error=repr(exc), file=str(self._rejected))
            await asyncio.to_thread(self._append, line, self._rejected)

    def _schedule_retry(self) -> None:
        if self._retry is None or self._retry.done():
            self._retry = asyncio.create_task(self._retry_loop())

    async def _retry_loop(self) -> None:
        delay = self._retry_initial
        while True:
            await asyncio.sleep(delay)
            if await self.flush():
                return
            delay = min(delay * 2, self._retry_max)

    def _read_spool(self) -> list[str]:
        try:
            text = self._spool.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if line.strip()]

    def _append(self, line: str, path: Path | None = None) -> None:
        path = path or self._spool
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as spool:
            spool.write(line + "\n")
            spool.flush()
            os.fsync(spool.fileno())

    def _rewrite_spool(self, lines: list[str]) -> None:
        """Replace the spool atomically, so a crash leaves the old or the new one, never half."""
        tmp = self._spool.with_name(self._spool.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, self._spool)
