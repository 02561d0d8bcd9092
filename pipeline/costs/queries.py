"""The ledger's read side: totals, pages of calls and daily series, computed by the database.

`costs report` and the dashboard ask the same questions, so they share these
queries. Totals come from the daily totals the ledger keeps as it stores
calls (`tollbridge.costs.daily`): whole days from those tables, and only the
calls of a day cut by a time in `since` or `until` from the calls
themselves. Either way SQL adds whole millionths, exact on both databases,
and what comes back to Python is a few rows per day, never a row per call.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any, Literal, get_args

from tollbridge.costs import daily
from tollbridge.costs.daily import MILLION, Totals, from_micros, micros_sql
from tollbridge.costs.database import Database
from tollbridge.costs.lineitem import round_usd
from tollbridge.costs.usage import Direction

_SHARE_PLACES = Decimal("0.0001")

Group = Literal["tenant", "vertical"]
LEGS = ("telephony", "stt", "llm", "tts", "realtime", "compute")
"""What a call pays for, by the part of the call that bills it (`leg_of`): Twilio, each
provider role, and the bridge's own CPU."""


def leg_of(kind: str) -> str:
    """`stt`, `llm.cached_input`, `voice.inbound_local` → stt, llm, telephony."""
    family = kind.split(".")[0]
    return family if family in LEGS else "telephony"


def _plain(quantity: Decimal) -> Decimal:
    """A summed quantity without the trailing zeros of its millionths (150, not 150.000000)."""
    return quantity.quantize(Decimal(1)) if quantity == quantity.to_integral() else quantity.normalize()


def minutes_of(seconds: Decimal) -> Decimal:
    """Minutes as reports show them: to four places."""
    return (seconds / 60).quantize(_SHARE_PLACES)


def per_minute(usd: Decimal, seconds: Decimal) -> Decimal | None:
    """$/min as `CallCost.usd_per_minute` computes it; None for no time at all."""
    return round_usd(usd * 60 / seconds) if seconds else None


def _moment(value: Any) -> dt.datetime:
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)


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
            clauses.append(f"{micros_sql('c.usd_per_minute')} > ?")
            args.append(int((self.above * MILLION).to_integral_value(rounding="ROUND_FLOOR")))
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
    seconds: Decimal = Decimal(0)
    """The calls' seconds, exact (`minutes` is rounded)."""

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
        return per_minute(self.total_usd, self.minutes * 60)


@dataclass(frozen=True)
class OutcomeRow:
    """How one vertical's calls ended (`ended_by`), and what they cost."""

    vertical: str
    ended_by: str
    calls: int
    total_usd: Decimal


@dataclass(frozen=True)
class Spend:
    """The daily sums over some calls (`Queries.spend`), and the totals a report or a page
    shows, each folded from them in Python: a few rows per day."""

    calls: Totals
    """`daily_calls` sums by day, tenant, vertical and outcome."""
    items: Totals
    """`daily_items` sums by day, tenant, vertical and line item."""

    def totals(self, by: Group) -> list[ReportRow]:
        """One row per tenant (or vertical): calls, minutes, dollars, $/min, shares and legs."""
        calls = _fold(self.calls, ("tenant", "vertical").index(by) + 1)
        items = self.items
        kinds: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
        unheard_characters: dict[str, Decimal] = defaultdict(Decimal)
        for (_, tenant, vertical, item, _, _), sums in items.items():
            key, kind = (tenant, vertical)[by == "vertical"], item.partition(":")[0]
            kinds[key][kind] += from_micros(sums["usd_micros"])
            if kind == "tts.unheard":
                unheard_characters[key] += from_micros(sums["quantity_micros"])
        out = []
        for key in sorted(calls):
            sums = calls[key]
            seconds, total = from_micros(sums["seconds_micros"]), from_micros(sums["usd_micros"])
            by_kind = kinds[key]
            out.append(ReportRow(
                group=by,
                key=key,
                calls=sums["calls"],
                minutes=minutes_of(seconds),
                total_usd=total,
                usd_per_minute=per_minute(total, seconds),
                shares={
                    kind: (usd / total).quantize(_SHARE_PLACES) if total else Decimal(0)
                    for kind, usd in sorted(by_kind.items())
                },
                incomplete_calls=sums["incomplete_calls"],
                unheard_characters=_plain(unheard_characters[key]),
                unheard_speech_usd=from_micros(sums["unheard_usd_micros"]),
                legs=_legs(by_kind),
                seconds=seconds,
            ))
        return out

    def days(self) -> list[DayRow]:
        """Spend per UTC day, oldest first, with each day's dollars per leg."""
        calls = _fold(self.calls, 0)
        kinds: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
        for (day, _, _, item, _, _), sums in self.items.items():
            kinds[day][item.partition(":")[0]] += from_micros(sums["usd_micros"])
        return [
            DayRow(
                dt.date.fromisoformat(day),
                calls[day]["calls"],
                minutes_of(from_micros(calls[day]["seconds_micros"])),
                from_micros(calls[day]["usd_micros"]),
                _legs(kinds[day]),
            )
            for day in sorted(calls)
        ]

    def top_items(self, limit: int = 10) -> list[ItemRow]:
        """The line items that cost the most."""
        items: dict[tuple[str, str, str], Counter[str]] = defaultdict(Counter)
        for (_, _, _, item, provider, unit), sums in self.items.items():
            items[(item, provider, unit)].update(sums)
        ranked = sorted(items.items(), key=lambda kv: (-kv[1]["usd_micros"], kv[0]))[:limit]
        return [
            ItemRow(item, provider, _plain(from_micros(sums["quantity_micros"])), unit,
                    from_micros(sums["usd_micros"]))
            for (item, provider, unit), sums in ranked
        ]

    def outcomes(self) -> list[OutcomeRow]:
        """Calls and dollars per vertical and the way the call ended."""
        rows: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        for (_, _, vertical, ended_by), sums in self.calls.items():
            rows[(vertical, ended_by)].update(sums)
        return [OutcomeRow(vertical, ended_by, sums["calls"], from_micros(sums["usd_micros"]))
                for (vertical, ended_by), sums in sorted(rows.items())]


class Queries:
    """The questions asked of a ledger; each answer is computed by its database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def _fetch(self, sql: str, args: Iterable[Any]) -> list[dict[str, Any]]:
        async with self._db.transaction(write=False) as tx:
            return await tx.fetch(sql, *args)

    async def spend(self, where: CallFilter = CallFilter()) -> Spend:
        """The daily sums over the calls `where` covers, read once for every total of a page."""
        return Spend(await self._daily_calls(where), await self._daily_items(where))

    async def totals(self, by: Group, where: CallFilter = CallFilter()) -> list[ReportRow]:
        return (await self.spend(where)).totals(by)

    async def _daily_calls(self, where: CallFilter) -> Totals:
        return await self._daily(where, "daily_calls", daily.CALL_KEY, daily.CALL_SUMS,
                                 "FROM calls c", daily.call_sums_sql, daily.CALL_GROUP)

    async def _daily_items(self, where: CallFilter) -> Totals:
        return await self._daily(where, "daily_items", daily.ITEM_KEY, daily.ITEM_SUMS,
                                 daily.ITEM_SOURCE, daily.item_sums_sql, daily.ITEM_GROUP)

    async def _daily(
        self, where: CallFilter, table: str, key: tuple[str, ...], sums: tuple[str, ...],
        source: str, sums_sql: Callable[[str], str], group: str,
    ) -> Totals:
        """Sums per key over the calls `where` covers: its whole days from `table`, the
        calls of a day cut by `since` or `until` from `source`."""
        if where.direction or where.ended_by or where.above is not None:
            raise ValueError("totals are kept per tenant, vertical and time: "
                             "direction, outcome and floor filter lists of calls only")
        first, last, edges = _whole_days(where.since, where.until)
        same: list[str] = []
        args: list[Any] = []
        for column in ("tenant", "vertical"):
            value = getattr(where, column)
            if value is not None:
                same.append(f"{column} = ?")
                args.append(value)
        clauses, day_args = list(same), list(args)
        if first is not None:
            clauses.append("day >= ?")
            day_args.append(first)
        if last is not None:
            clauses.append("day < ?")
            day_args.append(last)
        totals: Totals = {}
        if first is None or last is None or first < last:
            totals = daily.as_totals(await self._fetch(
                f"SELECT * FROM {table}" + (" WHERE " + " AND ".join(clauses) if clauses else ""),
                day_args), key, sums)
        day = self._db.day_of("c.started_at")
        for start, end in edges:
            rows = await self._fetch(
                f"SELECT {sums_sql(day)} {source} WHERE "
                + " AND ".join([*(f"c.{c}" for c in same), "c.started_at >= ?", "c.started_at < ?"])
                + f" GROUP BY {day}, {group}",
                [*args, start, end])
            for k, v in daily.as_totals(rows, key, sums).items():
                totals.setdefault(k, Counter()).update(v)
        return totals

    async def agents(self, where: CallFilter = CallFilter()) -> list[AgentRow]:
        """Each agent's LLM and TTS dollars, per vertical, over the calls it spoke on."""
        clause, args = where.where()
        clause += (" AND" if clause else " WHERE") + " l.agent <> ''"
        rows = await self._fetch(
            "SELECT c.vertical, l.agent, COUNT(DISTINCT c.call_sid) AS calls, "
            f"SUM(CASE WHEN l.item LIKE 'tts%' THEN {micros_sql('l.usd')} ELSE 0 END) AS tts, "
            f"SUM(CASE WHEN l.item LIKE 'tts%' THEN 0 ELSE {micros_sql('l.usd')} END) AS llm "
            f"FROM calls c JOIN line_items l ON l.call_sid = c.call_sid{clause} "
            "GROUP BY c.vertical, l.agent ORDER BY c.vertical, l.agent",
            args,
        )
        return [
            AgentRow(r["vertical"], r["agent"], int(r["calls"]), from_micros(r["llm"]),
                     from_micros(r["tts"]))
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
        after: CallRow | None = None,
    ) -> list[CallRow]:
        """The calls `where` covers, a page at a time: `offset` rows in, or the rows that
        come after `after` (a cursor that stays fast however deep the page)."""
        clause, args = where.where()
        order = "DESC" if newest_first else "ASC"
        if after is not None:
            clause += (" AND" if clause else " WHERE") + \
                f" (c.started_at, c.call_sid) {'<' if newest_first else '>'} (?, ?)"
            args = [*args, after.started_at, after.call_sid]
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

    async def choices(self) -> dict[str, list[str]]:
        """Every value the tenant, vertical, direction and ended_by filters can take."""
        menus = {"direction": list(get_args(Direction))}
        for column in ("tenant", "vertical", "ended_by"):  # from the totals: a few rows
            rows = await self._fetch(f"SELECT DISTINCT {column} AS v FROM daily_calls", ())
            menus[column] = sorted(row["v"] for row in rows)
        return menus

def _whole_days(since: dt.datetime | None, until: dt.datetime | None
                ) -> tuple[str | None, str | None, list[tuple[dt.datetime, dt.datetime]]]:
    """The whole UTC days in [since, until) as ISO days [first, last) (None: unbounded), and
    the parts of days cut by a time of day, which are read from the calls themselves."""
    def midnight(day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(), dt.UTC)

    first = last = None
    edges = []
    if since is not None:
        since = since.astimezone(dt.UTC)
        day = since.date()
        if since != midnight(day):
            day += dt.timedelta(days=1)
            edges.append((since, midnight(day)))
        first = day
    if until is not None:
        until = until.astimezone(dt.UTC)
        last = until.date()
        if until != midnight(last):
            edges.append((midnight(last), until))
    if first is not None and last is not None and first >= last:  # no whole day between
        assert since is not None and until is not None
        return first.isoformat(), first.isoformat(), [(since, until)] if since < until else []
    return (None if first is None else first.isoformat(),
            None if last is None else last.isoformat(), edges)


def _fold(totals: Totals, index: int) -> dict[str, Counter[str]]:
    """Sums per one part of the key (0: day, 1: tenant, 2: vertical)."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for key, sums in totals.items():
        out[key[index]].update(sums)
    return out


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
        minutes=minutes_of(seconds),
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
