"""The ledger's read side: totals, pages of calls and daily series, computed by the database.

`costs report` and the dashboard ask the same questions, so they share these
queries. SQLite holds money as exact text, which SQL's SUM would add as floats;
but every amount is rounded to a millionth of a dollar when it is priced
(`round_usd`) and every duration to a millisecond, so the queries add integer
millionths, `CAST(ROUND(x * 1000000) AS BIGINT)`, exact on both databases, and
only the sums (a row per group, never a row per call) come back to Python.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any, Literal

from tollbridge.costs.database import Database
from tollbridge.costs.lineitem import round_usd

_SHARE_PLACES = Decimal("0.0001")
_MILLION = 1_000_000

Group = Literal["tenant", "vertical"]
LEGS = ("telephony", "stt", "llm", "tts", "realtime")
"""What a call pays for, by the part of the call that bills it (`leg_of`)."""


def leg_of(kind: str) -> str:
    """`stt`, `llm.cached_input`, `voice.inbound_local` → stt, llm, telephony."""
    family = kind.split(".")[0]
    return family if family in LEGS else "telephony"


def micros(column: str) -> str:
    """SQL for a stored money or seconds value in exact integer millionths."""
    return f"CAST(ROUND({column} * {_MILLION}) AS BIGINT)"


def _from_micros(value: Any) -> Decimal:
    return Decimal(0) if value is None else Decimal(value).scaleb(-6)


def _plain(quantity: Decimal) -> Decimal:
    """A summed quantity without the trailing zeros of its millionths (150, not 150.000000)."""
    return quantity.quantize(Decimal(1)) if quantity == quantity.to_integral() else quantity.normalize()


def _minutes(seconds: Decimal) -> Decimal:
    return (seconds / 60).quantize(_SHARE_PLACES)


def _per_minute(usd: Decimal, seconds: Decimal) -> Decimal | None:
    return round_usd(usd * 60 / seconds) if seconds else None


def _moment(value: Any) -> dt.datetime:
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)


# Twilio's billed seconds once known, our measurement before (`CallCost.seconds`).
_SECONDS = (
    f"CASE WHEN c.billed_seconds IS NULL THEN {micros('c.measured_seconds')} "
    f"ELSE c.billed_seconds * {_MILLION} END"
)


@dataclass(frozen=True)
class CallFilter:
    """Which calls a query covers; every field left None covers them all."""

    tenant: str | None = None
    vertical: str | None = None
    direction: str | None = None
    ended_by: str | None = None
    since: dt.datetime | None = None
    """Calls started at or after this instant."""
    until: dt.datetime | None = None
    """Calls started before this instant."""
    above: Decimal | None = None
    """Only calls whose $/min is above this (the margin floor)."""

    def where(self) -> tuple[str, list[Any]]:
        """A WHERE clause on `calls c` (or '') and its arguments."""
        clauses: list[str] = []
        args: list[Any] = []
        for column in ("tenant", "vertical", "direction", "ended_by"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"c.{column} = ?")
                args.append(value)
        if self.since is not None:
            clauses.append("c.started_at >= ?")
            args.append(self.since)
        if self.until is not None:
            clauses.append("c.started_at < ?")
            args.append(self.until)
        if self.above is not None:
            # $/min is stored in whole millionths: k > x exactly when k > floor(x)
            clauses.append(f"{micros('c.usd_per_minute')} > ?")
            args.append(int((self.above * _MILLION).to_integral_value(rounding="ROUND_FLOOR")))
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), args

    def to_dict(self) -> dict[str, str]:
        """The filters that are set, as text (a query string, a CSV file's name)."""
        return {
            name: value.isoformat() if isinstance(value, dt.datetime) else f"{value}"
            for name, value in asdict(self).items()
            if value is not None
        }


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
    incomplete_calls: int = 0
    """Calls with usage no price was known for: the totals count only their priced lines."""
    unheard_characters: Decimal = Decimal(0)
    """TTS characters synthesized (or cached) but never heard: the `tts.unheard` memos."""
    unheard_speech_usd: Decimal = Decimal(0)
    """Speech paid but not heard: each call's `CallCost.unheard_speech_usd`, summed."""
    legs: dict[str, Decimal] = field(default_factory=dict)
    """Dollars per leg (`LEGS`), for the stacked bars."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "key": self.key,
            "calls": self.calls,
            "incomplete_calls": self.incomplete_calls,
            "unheard_characters": f"{self.unheard_characters:f}",
            "unheard_speech_usd": f"{self.unheard_speech_usd:f}",
            "minutes": f"{self.minutes:f}",
            "total_usd": f"{self.total_usd:f}",
            "usd_per_minute": None if self.usd_per_minute is None else f"{self.usd_per_minute:f}",
            "shares": {kind: f"{share:f}" for kind, share in self.shares.items()},
        }


@dataclass(frozen=True)
class CallRow:
    """One call as a list shows it: who, when, how long, what it cost against Twilio's bill."""

    call_sid: str
    tenant: str
    vertical: str
    started_at: dt.datetime
    minutes: Decimal
    total_usd: Decimal
    usd_per_minute: Decimal | None
    complete: bool = True
    """False when some usage had no price: `total_usd` counts only the priced lines."""
    direction: str = ""
    ended_by: str = ""
    seconds: Decimal = Decimal(0)
    """Seconds that count: Twilio's billed seconds once known, our measurement before."""
    billed_minutes: int | None = None
    """Whole minutes Twilio bills (its seconds rounded up); None until its callback."""
    twilio_price_usd: Decimal | None = None
    drift_usd: Decimal | None = None
    """Twilio's own price minus our carrier-minute (`voice.*`) lines, once Twilio reported it."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "call_sid": self.call_sid,
            "tenant": self.tenant,
            "vertical": self.vertical,
            "started_at": self.started_at.isoformat(),
            "minutes": f"{self.minutes:f}",
            "total_usd": f"{self.total_usd:f}",
            "complete": self.complete,
            "usd_per_minute": None if self.usd_per_minute is None else f"{self.usd_per_minute:f}",
        }


@dataclass(frozen=True)
class AgentRow:
    """What one agent of a vertical cost: its LLM and TTS lines over the calls it spoke on."""

    vertical: str
    agent: str
    calls: int
    llm_usd: Decimal
    tts_usd: Decimal

    @property
    def total_usd(self) -> Decimal:
        return self.llm_usd + self.tts_usd

    def to_dict(self) -> dict[str, Any]:
        return {
            "vertical": self.vertical,
            "agent": self.agent,
            "calls": self.calls,
            "llm_usd": f"{self.llm_usd:f}",
            "tts_usd": f"{self.tts_usd:f}",
            "total_usd": f"{self.total_usd:f}",
        }


@dataclass(frozen=True)
class ItemRow:
    """One line item summed over calls: the dashboard's top spend."""

    item: str
    provider: str
    calls: int
    quantity: Decimal
    unit: str
    usd: Decimal


@dataclass(frozen=True)
class DayRow:
    """One UTC day's calls: spend, minutes and dollars per leg."""

    day: dt.date
    calls: int
    minutes: Decimal
    total_usd: Decimal
    legs: dict[str, Decimal]

    @property
    def usd_per_minute(self) -> Decimal | None:
        return _per_minute(self.total_usd, self.minutes * 60)


class Queries:
    """The questions asked of a ledger; each answer is computed by its database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def _fetch(self, sql: str, args: Iterable[Any]) -> list[dict[str, Any]]:
        async with self._db.transaction(write=False) as tx:
            return await tx.fetch(sql, *args)

    async def totals(self, by: Group, where: CallFilter = CallFilter()) -> list[ReportRow]:
        """One row per tenant (or vertical): calls, minutes, dollars, $/min, shares and legs."""
        clause, args = where.where()
        calls = await self._fetch(
            f"SELECT c.{by} AS key, COUNT(*) AS calls, SUM({_SECONDS}) AS seconds, "
            f"SUM({micros('c.total_usd')}) AS usd, "
            "SUM(CASE WHEN c.unpriced_items > 0 THEN 1 ELSE 0 END) AS incomplete, "
            f"SUM({micros('c.unheard_speech_usd')}) AS unheard_usd "
            f"FROM calls c{clause} GROUP BY c.{by} ORDER BY c.{by}",
            args,
        )
        items = await self._fetch(
            f"SELECT c.{by} AS key, l.item, SUM({micros('l.usd')}) AS usd, "
            f"SUM({micros('l.quantity')}) AS quantity "
            f"FROM calls c JOIN line_items l ON l.call_sid = c.call_sid{clause} "
            f"GROUP BY c.{by}, l.item",
            args,
        )
        kinds: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
        unheard_characters: dict[str, Decimal] = defaultdict(Decimal)
        for row in items:
            kind = row["item"].partition(":")[0]
            kinds[row["key"]][kind] += _from_micros(row["usd"])
            if kind == "tts.unheard":
                unheard_characters[row["key"]] += _from_micros(row["quantity"])
        out = []
        for row in calls:
            seconds, total = _from_micros(row["seconds"]), _from_micros(row["usd"])
            by_kind = kinds[row["key"]]
            out.append(ReportRow(
                group=by,
                key=row["key"],
                calls=int(row["calls"]),
                minutes=_minutes(seconds),
                total_usd=total,
                usd_per_minute=_per_minute(total, seconds),
                shares={
                    kind: (usd / total).quantize(_SHARE_PLACES) if total else Decimal(0)
                    for kind, usd in sorted(by_kind.items())
                },
                incomplete_calls=int(row["incomplete"]),
                unheard_characters=_plain(unheard_characters[row["key"]]),
                unheard_speech_usd=_from_micros(row["unheard_usd"]),
                legs=_legs(by_kind),
            ))
        return out

    async def agents(self, where: CallFilter = CallFilter()) -> list[AgentRow]:
        """Each agent's LLM and TTS dollars, per vertical, over the calls it spoke on."""
        clause, args = where.where()
        clause += (" AND" if clause else " WHERE") + " l.agent <> ''"
        rows = await self._fetch(
            "SELECT c.vertical, l.agent, COUNT(DISTINCT c.call_sid) AS calls, "
            f"SUM(CASE WHEN l.item LIKE 'tts%' THEN {micros('l.usd')} ELSE 0 END) AS tts, "
            f"SUM(CASE WHEN l.item LIKE 'tts%' THEN 0 ELSE {micros('l.usd')} END) AS llm "
            f"FROM calls c JOIN line_items l ON l.call_sid = c.call_sid{clause} "
            "GROUP BY c.vertical, l.agent ORDER BY c.vertical, l.agent",
            args,
        )
        return [
            AgentRow(r["vertical"], r["agent"], int(r["calls"]), _from_micros(r["llm"]),
                     _from_micros(r["tts"]))
            for r in rows
        ]

    async def count(self, where: CallFilter = CallFilter()) -> int:
        clause, args = where.where()
        [row] = await self._fetch(f"SELECT COUNT(*) AS n FROM calls c{clause}", args)
        return int(row["n"])

    async def calls(
        self,
        where: CallFilter = CallFilter(),
        *,
        newest_first: bool = True,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[CallRow]:
        """The calls `where` covers, a page at a time."""
        clause, args = where.where()
        order = "DESC" if newest_first else "ASC"
        page = ""
        if limit is not None:
            page = " LIMIT ? OFFSET ?"
            args = [*args, limit, offset]
        rows = await self._fetch(
            "SELECT c.call_sid, c.tenant, c.vertical, c.direction, c.ended_by, c.started_at, "
            "c.measured_seconds, c.billed_seconds, c.total_usd, c.usd_per_minute, "
            "c.unpriced_items, c.twilio_price_usd, c.drift_usd "
            f"FROM calls c{clause} ORDER BY c.started_at {order}, c.call_sid {order}{page}",
            args,
        )
        return [_call_row(row) for row in rows]

    async def days(self, where: CallFilter = CallFilter()) -> list[DayRow]:
        """Spend per UTC day, oldest first, with each day's dollars per leg."""
        clause, args = where.where()
        day = self._db.day_of("c.started_at")
        totals = await self._fetch(
            f"SELECT {day} AS day, COUNT(*) AS calls, SUM({_SECONDS}) AS seconds, "
            f"SUM({micros('c.total_usd')}) AS usd FROM calls c{clause} "
            f"GROUP BY {day} ORDER BY {day}",
            args,
        )
        items = await self._fetch(
            f"SELECT {day} AS day, l.item, SUM({micros('l.usd')}) AS usd "
            f"FROM calls c JOIN line_items l ON l.call_sid = c.call_sid{clause} "
            f"GROUP BY {day}, l.item",
            args,
        )
        kinds: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
        for row in items:
            kinds[row["day"]][row["item"].partition(":")[0]] += _from_micros(row["usd"])
        return [
            DayRow(
                dt.date.fromisoformat(row["day"]),
                int(row["calls"]),
                _minutes(_from_micros(row["seconds"])),
                _from_micros(row["usd"]),
                _legs(kinds[row["day"]]),
            )
            for row in totals
        ]

    async def top_items(self, where: CallFilter = CallFilter(), *, limit: int = 10) -> list[ItemRow]:
        """The line items that cost the most over the calls `where` covers."""
        clause, args = where.where()
        rows = await self._fetch(
            "SELECT l.item, l.provider, l.unit, COUNT(DISTINCT c.call_sid) AS calls, "
            f"SUM({micros('l.quantity')}) AS quantity, SUM({micros('l.usd')}) AS usd "
            f"FROM calls c JOIN line_items l ON l.call_sid = c.call_sid{clause} "
            "GROUP BY l.item, l.provider, l.unit ORDER BY usd DESC, l.item LIMIT ?",
            [*args, limit],
        )
        return [
            ItemRow(r["item"], r["provider"], int(r["calls"]), _plain(_from_micros(r["quantity"])),
                    r["unit"], _from_micros(r["usd"]))
            for r in rows
        ]

    async def distinct(self, column: Literal["tenant", "vertical", "direction", "ended_by"]
                       ) -> list[str]:
        """Every value a filter could take, for its menu."""
        rows = await self._fetch(f"SELECT DISTINCT {column} AS v FROM calls ORDER BY v", ())
        return [row["v"] for row in rows]


def _legs(kinds: Mapping[str, Decimal]) -> dict[str, Decimal]:
    legs = dict.fromkeys(LEGS, Decimal(0))
    for kind, usd in kinds.items():
        legs[leg_of(kind)] += usd
    return legs


def _call_row(row: Mapping[str, Any]) -> CallRow:
    billed = row["billed_seconds"]
    seconds = Decimal(billed) if billed is not None else Decimal(str(row["measured_seconds"]))
    per_minute = row["usd_per_minute"]
    twilio, drift = row["twilio_price_usd"], row["drift_usd"]
    return CallRow(
        call_sid=row["call_sid"],
        tenant=row["tenant"],
        vertical=row["vertical"],
        started_at=_moment(row["started_at"]),
        minutes=_minutes(seconds),
        total_usd=Decimal(str(row["total_usd"])),
        usd_per_minute=None if per_minute is None else Decimal(str(per_minute)),
        complete=not row["unpriced_items"],
        direction=row["direction"],
        ended_by=row["ended_by"],
        seconds=seconds,
        billed_minutes=None if billed is None else -(-billed // 60),
        twilio_price_usd=None if twilio is None else Decimal(str(twilio)),
        drift_usd=None if drift is None else Decimal(str(drift)),
    )
