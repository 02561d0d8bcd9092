"""The ledger's daily totals: what one stored call adds to them, and rebuilding them.

`daily_calls` and `daily_items` hold, per UTC day, tenant and vertical (and
outcome, or line item), the sums a report needs, in whole millionths of a
dollar or second. Storing a call subtracts what its previous record added and
adds what the new one adds, in the same transaction, so the totals always
equal the calls (`rebuild` recomputes them from the calls, for a ledger
migrated from before they existed or filled by hand).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from tollbridge.costs.database import Transaction
from tollbridge.costs.lineitem import CallCost

MILLION = 1_000_000

CALL_KEY = ("day", "tenant", "vertical", "ended_by")
CALL_SUMS = ("calls", "seconds_micros", "usd_micros", "incomplete_calls", "unheard_usd_micros")
ITEM_KEY = ("day", "tenant", "vertical", "item", "provider", "unit")
ITEM_SUMS = ("lines", "quantity_micros", "usd_micros")
CALL_GROUP = "c.tenant, c.vertical, c.ended_by"
ITEM_GROUP = "c.tenant, c.vertical, l.item, l.provider, l.unit"
ITEM_SOURCE = "FROM calls c JOIN line_items l ON l.call_sid = c.call_sid"

Totals = dict[tuple[str, ...], Counter[str]]
"""Sums per key, for one of the two tables."""


def micros(value: Decimal | int) -> int:
    """Exact for money and durations (rounded to a millionth when priced)."""
    return int(Decimal(value).scaleb(6).to_integral_value(ROUND_HALF_UP))


def from_micros(value: Any) -> Decimal:
    """A sum read back (int from SQLite, Decimal from PostgreSQL) in dollars or seconds."""
    return Decimal(0) if value is None else Decimal(value).scaleb(-6)


def micros_sql(column: str) -> str:
    """The same, in SQL, on a stored TEXT (SQLite) or NUMERIC (PostgreSQL) value."""
    return f"CAST(ROUND({column} * {MILLION}) AS BIGINT)"


def added_by(cost: CallCost) -> tuple[Totals, Totals]:
    """What one call adds to `daily_calls` and to `daily_items`."""
    day = utc_day(cost.started_at)
    calls: Totals = {(day, cost.tenant, cost.vertical, cost.ended_by): Counter(
        calls=1,
        seconds_micros=micros(cost.seconds),
        usd_micros=micros(cost.total_usd),
        incomplete_calls=0 if cost.complete else 1,
        unheard_usd_micros=micros(cost.unheard_speech_usd),
    )}
    items: Totals = {}
    for line in cost.items:
        key = (day, cost.tenant, cost.vertical, line.item, line.provider, line.unit)
        items.setdefault(key, Counter()).update(
            lines=1, quantity_micros=micros(line.quantity), usd_micros=micros(line.usd))
    return calls, items


def utc_day(moment: dt.datetime) -> str:
    """The UTC day a call is counted on, as the databases write it (a naive time is UTC)."""
    moment = moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment
    return moment.astimezone(dt.UTC).date().isoformat()


def change(old: CallCost | None, new: CallCost) -> tuple[Totals, Totals]:
    """What replacing `old` (None: a call not stored before) with `new` changes."""
    new_calls, new_items = added_by(new)
    if old is None:
        return new_calls, new_items
    old_calls, old_items = added_by(old)
    return _minus(new_calls, old_calls), _minus(new_items, old_items)


def _minus(plus: Totals, minus: Totals) -> Totals:
    out: Totals = {}
    for key in plus.keys() | minus.keys():
        delta = Counter(plus.get(key, Counter()))
        delta.subtract(minus.get(key, Counter()))
        if any(delta.values()):
            out[key] = delta
    return out


async def apply(tx: Transaction, calls: Totals, items: Totals) -> None:
    """Add `calls` and `items` to the tables; keys in sorted order, so two writers updating
    the same rows take their locks in the same order and never deadlock."""
    for table, key_columns, sums, totals in (
        ("daily_calls", CALL_KEY, CALL_SUMS, calls),
        ("daily_items", ITEM_KEY, ITEM_SUMS, items),
    ):
        columns = (*key_columns, *sums)
        upsert = (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
            f"ON CONFLICT ({', '.join(key_columns)}) DO UPDATE SET "
            + ", ".join(f"{s} = {table}.{s} + excluded.{s}" for s in sums)
        )
        for key in sorted(totals):
            delta = totals[key]
            await tx.execute(upsert, *key, *(delta[s] for s in sums))
        emptied = [key for key, delta in totals.items() if delta[sums[0]] < 0]
        for key in sorted(emptied):
            await tx.execute(
                f"DELETE FROM {table} WHERE {' AND '.join(f'{c} = ?' for c in key_columns)} "
                f"AND {sums[0]} = 0", *key)


def _seconds_sql() -> str:
    """`CallCost.seconds` in millionths: Twilio's billed seconds once known, else ours."""
    return (f"CASE WHEN c.billed_seconds IS NULL THEN {micros_sql('c.measured_seconds')} "
            f"ELSE c.billed_seconds * {MILLION} END")


def call_sums_sql(day: str) -> str:
    """The `daily_calls` columns, computed from `calls c` grouped by its key (`day`: the SQL
    for a call's UTC day)."""
    return (
        f"{day} AS day, c.tenant, c.vertical, c.ended_by, COUNT(*) AS calls, "
        f"SUM({_seconds_sql()}) AS seconds_micros, SUM({micros_sql('c.total_usd')}) AS usd_micros, "
        "SUM(CASE WHEN c.unpriced_items > 0 THEN 1 ELSE 0 END) AS incomplete_calls, "
        f"SUM({micros_sql('c.unheard_speech_usd')}) AS unheard_usd_micros"
    )


def item_sums_sql(day: str) -> str:
    """The `daily_items` columns, from `calls c JOIN line_items l` grouped by its key."""
    return (
        f"{day} AS day, c.tenant, c.vertical, l.item, l.provider, l.unit, COUNT(*) AS lines, "
        f"SUM({micros_sql('l.quantity')}) AS quantity_micros, "
        f"SUM({micros_sql('l.usd')}) AS usd_micros"
    )


async def drift(tx: Transaction) -> str:
    """How the tables disagree with the calls and line items stored ('' when they agree):
    their counts, and the calls' total dollars."""
    [kept] = await tx.fetch(
        "SELECT COALESCE(SUM(calls), 0) AS calls, COALESCE(SUM(usd_micros), 0) AS usd "
        "FROM daily_calls")
    [stored] = await tx.fetch(
        f"SELECT COUNT(*) AS calls, COALESCE(SUM({micros_sql('total_usd')}), 0) AS usd "
        "FROM calls")
    [kept_lines] = await tx.fetch("SELECT COALESCE(SUM(lines), 0) AS n FROM daily_items")
    [lines] = await tx.fetch("SELECT COUNT(*) AS n FROM line_items")
    found = []
    if int(kept["calls"]) != int(stored["calls"]) or int(kept["usd"]) != int(stored["usd"]):
        found.append(f"calls stored: {stored['calls']} for ${from_micros(stored['usd'])}, "
                     f"in the daily totals: {kept['calls']} for ${from_micros(kept['usd'])}")
    if int(kept_lines["n"]) != int(lines["n"]):
        found.append(f"{lines['n']} line items stored, {kept_lines['n']} in the daily totals")
    return "; ".join(found)


async def rebuild(tx: Transaction, day: str) -> None:
    """Recompute both tables from every stored call."""
    await tx.execute("DELETE FROM daily_calls")
    await tx.execute("DELETE FROM daily_items")
    await tx.execute(
        f"INSERT INTO daily_calls ({', '.join((*CALL_KEY, *CALL_SUMS))}) "
        f"SELECT {call_sums_sql(day)} FROM calls c GROUP BY {day}, {CALL_GROUP}"
    )
    await tx.execute(
        f"INSERT INTO daily_items ({', '.join((*ITEM_KEY, *ITEM_SUMS))}) "
        f"SELECT {item_sums_sql(day)} {ITEM_SOURCE} GROUP BY {day}, {ITEM_GROUP}"
    )


def as_totals(rows: Iterable[Mapping[str, Any]], key: tuple[str, ...], sums: tuple[str, ...]
              ) -> Totals:
    """Rows read back (from the tables or computed over calls) as `Totals`."""
    out: Totals = {}
    for row in rows:
        out.setdefault(tuple(row[k] for k in key), Counter()).update(
            {s: int(row[s]) for s in sums})
    return out
