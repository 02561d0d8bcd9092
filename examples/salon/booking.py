"""GlamBook's appointment book: services, stylists, working hours and appointments.

A small async layer on SQLite or PostgreSQL, opened from a URL of the ledger's
form (``sqlite:///glambook.db``, ``postgresql://…``) through the ledger's own
`tollbridge.costs.database`, so one set of SQL runs on both.

Double booking is ruled out by the database, not by Python: each quarter hour an
appointment occupies is a row of ``appointment_slots`` keyed by (stylist, day,
slot), inserted in the same transaction as the appointment. Two calls racing for
one slot cannot both commit. On SQLite a writer takes the file's write lock up
front (``BEGIN IMMEDIATE``), so the second one sees the first one's rows; on
PostgreSQL the second insert waits for the first transaction, then violates the
key. The check before the insert makes the usual answer cheap and polite; the
key is what makes it true.

Times are the salon's wall clock ("2026-11-27", "10:00"), stored as ISO text on
both databases: a haircut at ten is at ten whatever the server's time zone.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import re
import sqlite3
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

from tollbridge.costs.database import Database, Transaction, connect
from tollbridge.spoken_time import WEEKDAYS, hhmm

SLOT_MINUTES = 15
OPENS, CLOSES = "09:00", "19:00"
OPEN_WEEKDAYS = (1, 2, 3, 4, 5)  # Tuesday to Saturday (Monday is 0)
STYLISTS = ("Maria", "Devon", "Priya")
SERVICES: dict[str, tuple[int, Decimal]] = {
    "women's haircut": (60, Decimal("65")),
    "men's haircut": (30, Decimal("35")),
    "beard trim": (15, Decimal("20")),
    "colour": (120, Decimal("140")),
    "balayage": (180, Decimal("220")),
    "blow-dry": (45, Decimal("45")),
}
SEED_DAYS = 7
"""Working hours are written a week ahead, from today."""
FIRST_REFERENCE = 101
ALTERNATIVES = 3
ATTEMPTS = 3
"""Tries per booking when another call's transaction wins a slot first."""

ANYONE = {"", "any", "anyone", "anybody", "no preference", "whoever", "whoever is free"}

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS services (
        name TEXT PRIMARY KEY,
        minutes INTEGER NOT NULL CHECK (minutes > 0 AND minutes % 15 = 0),
        price_usd {money} NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS stylists (name TEXT PRIMARY KEY)",
    """CREATE TABLE IF NOT EXISTS working_hours (
        stylist TEXT NOT NULL REFERENCES stylists (name),
        day TEXT NOT NULL,
        opens TEXT NOT NULL,
        closes TEXT NOT NULL,
        PRIMARY KEY (stylist, day)
    )""",
    "CREATE TABLE IF NOT EXISTS reference_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS appointments (
        reference TEXT PRIMARY KEY,
        service TEXT NOT NULL REFERENCES services (name),
        stylist TEXT NOT NULL REFERENCES stylists (name),
        day TEXT NOT NULL,
        starts TEXT NOT NULL,
        ends TEXT NOT NULL,
        customer_name TEXT NOT NULL,
        phone TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('booked', 'cancelled')),
        call_sid TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS appointment_slots (
        stylist TEXT NOT NULL REFERENCES stylists (name),
        day TEXT NOT NULL,
        slot TEXT NOT NULL,
        reference TEXT NOT NULL REFERENCES appointments (reference),
        PRIMARY KEY (stylist, day, slot)
    )""",
)

RETRY_ERRORS: tuple[type[BaseException], ...] = (
    sqlite3.IntegrityError,
    asyncpg.exceptions.UniqueViolationError,
    # Moving a booking frees its old slots while another call may be taking them:
    # PostgreSQL breaks such a cycle by failing one side, which simply tries again.
    asyncpg.exceptions.DeadlockDetectedError,
)


class _Moved(Exception):
    """The appointment changed between reading and updating it; read it again."""


def today() -> dt.date:
    """The salon's today: ``GLAMBOOK_TODAY`` (an ISO date, for demos and tests) or the real one."""
    fixed = os.environ.get("GLAMBOOK_TODAY", "").strip()
    return dt.date.fromisoformat(fixed) if fixed else dt.date.today()


def _earliest(day: dt.date) -> int | None:
    """The first bookable minute of `day` (None: in the past). With a fixed
    ``GLAMBOOK_TODAY`` all of that day is still ahead; otherwise the clock decides."""
    first = today()
    if day < first:
        return None
    if day > first or os.environ.get("GLAMBOOK_TODAY", "").strip():
        return 0
    clock = dt.datetime.now()
    return clock.hour * 60 + clock.minute


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def reference_of(text: str) -> str:
    """The reference as stored, from "GB-104", "gb 104", "G B dash 1 0 4" or "104"."""
    digits = re.sub(r"\D", "", text)
    if not digits:
        raise ValueError(f'"{text}" is not a booking reference (they look like GB-104)')
    return f"GB-{int(digits):03d}"


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _match(text: str, choices: list[str], what: str) -> str:
    """The one choice `text` names: exactly, as part of a name, or by a close spelling
    ("womens haircut", "trim", "color"); an error listing the choices otherwise."""
    wanted = _squash(text)
    squashed = {_squash(choice): choice for choice in choices}
    if wanted in squashed:
        return squashed[wanted]
    partial = [choice for key, choice in squashed.items() if wanted and wanted in key]
    if len(partial) == 1:
        return partial[0]
    if len(partial) > 1:
        raise ValueError(f'"{text}" could be {" or ".join(partial)}; ask which one')
    close = difflib.get_close_matches(wanted, list(squashed), n=1, cutoff=0.75)
    if close:
        return squashed[close[0]]
    raise ValueError(f'there is no {what} "{text}"; the {what}s are: {", ".join(choices)}')


def _day(day: dt.date) -> dict[str, str]:
    return {"day": day.isoformat(), "weekday": WEEKDAYS[day.weekday()].title()}


def _when(day: dt.date, start: int) -> dict[str, str]:
    return {**_day(day), "time": hhmm(start)}


@dataclass(frozen=True)
class Service:
    name: str
    minutes: int
    price_usd: Decimal


class Salon:
    """The appointment book on one database; share one per process."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._seeded_for: dt.date | None = None

    @classmethod
    async def open(cls, url: str) -> Salon:
        """Connect, create the tables if needed and seed a week from today."""
        salon = cls(await connect(url))
        try:
            await salon._prepare()
        except BaseException:
            await salon.close()
            raise
        return salon

    async def close(self) -> None:
        await self.db.close()

    async def _prepare(self) -> None:
        """Create the schema and seed services, stylists and the week's hours.

        Idempotent, and repeated when the date moves on, so a long-running
        process keeps a week of hours ahead.
        """
        first = today()
        if self._seeded_for == first:
            return
        async with self.db.transaction() as tx:
            if self.db.migration_lock:  # PostgreSQL: two processes must not both create tables
                await tx.execute(self.db.migration_lock)
            for statement in SCHEMA:
                await tx.execute(statement.format(**self.db.types))
            for name, (minutes, price) in SERVICES.items():
                await tx.execute(
                    "INSERT INTO services (name, minutes, price_usd) VALUES (?, ?, ?) "
                    "ON CONFLICT (name) DO NOTHING",
                    name,
                    minutes,
                    price,
                )
            for stylist in STYLISTS:
                await tx.execute(
                    "INSERT INTO stylists (name) VALUES (?) ON CONFLICT (name) DO NOTHING", stylist
                )
            await tx.execute(
                "INSERT INTO reference_counters (name, value) VALUES ('appointment', ?) "
                "ON CONFLICT (name) DO NOTHING",
                FIRST_REFERENCE - 1,
            )
            for offset in range(SEED_DAYS):
                day = first + dt.timedelta(days=offset)
                if day.weekday() not in OPEN_WEEKDAYS:
                    continue
                for stylist in STYLISTS:
                    await tx.execute(
                        "INSERT INTO working_hours (stylist, day, opens, closes) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (stylist, day) DO NOTHING",
                        stylist,
                        day.isoformat(),
                        OPENS,
                        CLOSES,
                    )
        self._seeded_for = first

    # What the receptionist can tell a caller.

    async def services(self) -> list[Service]:
        await self._prepare()
        async with self.db.transaction(write=False) as tx:
            return await self._services(tx)

    async def stylists(self) -> list[str]:
        await self._prepare()
        async with self.db.transaction(write=False) as tx:
            return await self._stylists(tx)

    async def week(self) -> list[dict[str, Any]]:
        """Each of the next seven days, open (with hours) or closed."""
        await self._prepare()
        first = today()
        async with self.db.transaction(write=False) as tx:
            rows = await tx.fetch(
                "SELECT day, MIN(opens) AS opens, MAX(closes) AS closes FROM working_hours "
                "WHERE day >= ? AND day < ? GROUP BY day",
                first.isoformat(),
                (first + dt.timedelta(days=SEED_DAYS)).isoformat(),
            )
        hours = {row["day"]: row for row in rows}
        days = []
        for offset in range(SEED_DAYS):
            day = first + dt.timedelta(days=offset)
            row = hours.get(day.isoformat())
            opening = {"opens": row["opens"], "closes": row["closes"]} if row else {"closed": True}
            days.append(_day(day) | opening)
        return days

    async def free_times(
        self, service: str, day: dt.date, stylist: str | None = None
    ) -> dict[str, Any]:
        """Start times on `day` when `stylist` (or anyone) is free for the whole service."""
        await self._prepare()
        async with self.db.transaction(write=False) as tx:
            found = await self._service(tx, service)
            wanted = await self._wanted(tx, stylist)
            free = await self._free(tx, day, found.minutes, wanted)
            result: dict[str, Any] = {
                "service": found.name,
                "minutes": found.minutes,
                **_day(day),
                "stylist": wanted[0] if len(wanted) == 1 else "anyone",
                "start_times": [hhmm(start) for start in free],
            }
            if not free:
                result["reason"] = await self._why_not(tx, day, None, found.minutes, wanted)
                result["alternatives"] = await self._alternatives(tx, day, 0, found.minutes, wanted)
            return result

    # Changing the book. Each write is one transaction that retries when another
    # call's transaction took a slot first (see the module docstring).

    async def book(
        self,
        service: str,
        day: dt.date,
        start: int,
        customer_name: str,
        *,
        stylist: str | None = None,
        phone: str = "",
        call_sid: str = "",
    ) -> dict[str, Any]:
        """Book the first free stylist asked for; `booked: false` with alternatives if none is."""
        if not customer_name.strip():
            raise ValueError("the customer's name is needed to book")
        _check_start(day, start)
        await self._prepare()
        for _ in range(ATTEMPTS):
            try:
                async with self.db.transaction() as tx:
                    found = await self._service(tx, service)
                    wanted = await self._wanted(tx, stylist)
                    free = (await self._free(tx, day, found.minutes, wanted)).get(start)
                    if not free:
                        result = await self._unavailable(
                            tx, "booked", day, start, found.minutes, wanted
                        )
                        if len(wanted) == 1:
                            everyone = await self._stylists(tx)
                            others = await self._free(tx, day, found.minutes, everyone)
                            result["other_stylists_free_then"] = others.get(start, [])
                        return result
                    [counter] = await tx.fetch(
                        "UPDATE reference_counters SET value = value + 1 "
                        "WHERE name = 'appointment' RETURNING value"
                    )
                    reference = f"GB-{counter['value']:03d}"
                    await tx.execute(
                        "INSERT INTO appointments (reference, service, stylist, day, starts, ends, "
                        "customer_name, phone, status, call_sid) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'booked', ?)",
                        reference,
                        found.name,
                        free[0],
                        day.isoformat(),
                        hhmm(start),
                        hhmm(start + found.minutes),
                        customer_name.strip(),
                        phone,
                        call_sid,
                    )
                    await _occupy(tx, free[0], day, start, found.minutes, reference)
            except RETRY_ERRORS:
                continue
            return {
                "booked": True,
                "reference": reference,
                "service": found.name,
                "stylist": free[0],
                **_when(day, start),
                "ends": hhmm(start + found.minutes),
                "price_usd": f"{found.price_usd:.2f}",
                "customer_name": customer_name.strip(),
            }
        raise RuntimeError("the appointment book is busy right now; please try again")

    async def reschedule(self, reference: str, day: dt.date, start: int) -> dict[str, Any]:
        """Move a booking to another time with the same stylist, or say when they are free."""
        reference = reference_of(reference)
        _check_start(day, start)
        await self._prepare()
        for _ in range(ATTEMPTS):
            try:
                async with self.db.transaction() as tx:
                    booked = await self._appointment(tx, reference)
                    minutes = _minutes(booked["ends"]) - _minutes(booked["starts"])
                    stylist = booked["stylist"]
                    free = await self._free(tx, day, minutes, [stylist], ignore=reference)
                    if start not in free:
                        return await self._unavailable(
                            tx, "rescheduled", day, start, minutes, [stylist], ignore=reference
                        )
                    # Only if nobody cancelled or moved it since we read it (this also
                    # locks the row on PostgreSQL until we commit).
                    moved = await tx.fetch(
                        "UPDATE appointments SET day = ?, starts = ?, ends = ? "
                        "WHERE reference = ? AND status = 'booked' AND day = ? AND starts = ? "
                        "RETURNING reference",
                        day.isoformat(),
                        hhmm(start),
                        hhmm(start + minutes),
                        reference,
                        booked["day"],
                        booked["starts"],
                    )
                    if not moved:
                        raise _Moved
                    await tx.execute("DELETE FROM appointment_slots WHERE reference = ?", reference)
                    await _occupy(tx, stylist, day, start, minutes, reference)
            except (*RETRY_ERRORS, _Moved):
                continue
            previous = dt.date.fromisoformat(booked["day"]), _minutes(booked["starts"])
            return {
                "rescheduled": True,
                "reference": reference,
                "service": booked["service"],
                "stylist": stylist,
                **_when(day, start),
                "ends": hhmm(start + minutes),
                "previously": _when(*previous),
            }
        raise RuntimeError("the appointment book is busy right now; please try again")

    async def cancel(self, reference: str) -> dict[str, Any]:
        """Cancel a booking and free its slots; its reference is never given out again."""
        reference = reference_of(reference)
        async with self.db.transaction() as tx:
            booked = await self._appointment(tx, reference)
            await tx.execute(
                "UPDATE appointments SET status = 'cancelled' WHERE reference = ?", reference
            )
            await tx.execute("DELETE FROM appointment_slots WHERE reference = ?", reference)
        return {
            "cancelled": True,
            "reference": reference,
            "service": booked["service"],
            "stylist": booked["stylist"],
            **_when(dt.date.fromisoformat(booked["day"]), _minutes(booked["starts"])),
        }

    # Queries inside a transaction.

    async def _services(self, tx: Transaction) -> list[Service]:
        rows = await tx.fetch(
            "SELECT name, minutes, price_usd FROM services ORDER BY minutes, name"
        )
        return [Service(r["name"], r["minutes"], Decimal(str(r["price_usd"]))) for r in rows]

    async def _service(self, tx: Transaction, name: str) -> Service:
        services = {service.name: service for service in await self._services(tx)}
        return services[_match(name, list(services), "service")]

    async def _stylists(self, tx: Transaction) -> list[str]:
        return [row["name"] for row in await tx.fetch("SELECT name FROM stylists ORDER BY name")]

    async def _wanted(self, tx: Transaction, stylist: str | None) -> list[str]:
        """The stylists a caller would accept: the one named, or everyone."""
        everyone = await self._stylists(tx)
        if stylist is None or stylist.strip().lower() in ANYONE:
            return everyone
        return [_match(stylist, everyone, "stylist")]

    async def _appointment(self, tx: Transaction, reference: str) -> dict[str, Any]:
        rows = await tx.fetch(
            "SELECT service, stylist, day, starts, ends, status FROM appointments WHERE reference = ?",
            reference,
        )
        if not rows:
            raise LookupError(
                f"there is no booking {reference}; check the reference with the caller"
            )
        if rows[0]["status"] != "booked":
            raise LookupError(f"booking {reference} was cancelled")
        return rows[0]

    async def _free(
        self, tx: Transaction, day: dt.date, minutes: int, stylists: list[str], *, ignore: str = ""
    ) -> dict[int, list[str]]:
        """Start minute → the `stylists` free for `minutes` from then on `day`, in order
        (ignoring the slots of booking `ignore`, which is being moved)."""
        earliest = _earliest(day)
        if earliest is None:
            return {}
        hours = await tx.fetch(
            "SELECT stylist, opens, closes FROM working_hours WHERE day = ? ORDER BY stylist",
            day.isoformat(),
        )
        taken = await tx.fetch(
            "SELECT stylist, slot FROM appointment_slots WHERE day = ? AND reference <> ?",
            day.isoformat(),
            ignore,
        )
        busy = {(row["stylist"], _minutes(row["slot"])) for row in taken}
        free: dict[int, list[str]] = {}
        for row in hours:
            stylist = row["stylist"]
            if stylist not in stylists:
                continue
            for start in range(
                _minutes(row["opens"]), _minutes(row["closes"]) - minutes + 1, SLOT_MINUTES
            ):
                slots = range(start, start + minutes, SLOT_MINUTES)
                if start >= earliest and not any((stylist, slot) in busy for slot in slots):
                    free.setdefault(start, []).append(stylist)
        return dict(sorted(free.items()))

    async def _alternatives(
        self,
        tx: Transaction,
        day: dt.date,
        start: int,
        minutes: int,
        stylists: list[str],
        *,
        ignore: str = "",
    ) -> list[dict[str, str]]:
        """The free times nearest to `start` on `day`, then on the closest days around it
        (the day after first: asked for a closed Monday, Tuesday comes before Saturday)."""
        found: list[dict[str, str]] = []
        for offset in sorted(range(1 - SEED_DAYS, SEED_DAYS), key=lambda n: (abs(n), n < 0)):
            other = day + dt.timedelta(days=offset)
            free = await self._free(tx, other, minutes, stylists, ignore=ignore)
            for begin in sorted(free, key=lambda m: (abs(m - start), m)):
                found.append({**_when(other, begin), "stylist": free[begin][0]})
                if len(found) == ALTERNATIVES:
                    return found
        return found

    async def _why_not(
        self, tx: Transaction, day: dt.date, start: int | None, minutes: int, stylists: list[str]
    ) -> str:
        """Why nobody in `stylists` can take a `minutes` appointment then, in words for the caller."""
        earliest = _earliest(day)
        if earliest is None:
            return "that day is in the past"
        if start is not None and start < earliest:
            return "that time has already passed"
        if day.weekday() not in OPEN_WEEKDAYS:
            return f"the salon is closed on {WEEKDAYS[day.weekday()].title()}s"
        hours = [
            row
            for row in await tx.fetch(
                "SELECT stylist, opens, closes FROM working_hours WHERE day = ?", day.isoformat()
            )
            if row["stylist"] in stylists
        ]
        if not hours:
            return (
                f"{stylists[0]} is not working that day"
                if len(stylists) == 1
                else "the book is only open a week ahead"
            )
        opens = min(_minutes(row["opens"]) for row in hours)
        closes = max(_minutes(row["closes"]) for row in hours)
        who = stylists[0] if len(stylists) == 1 else "every stylist"
        if start is None:
            return f"{who} is fully booked that day"
        if start < opens or start + minutes > closes:
            return (
                f"open {hhmm(opens)} to {hhmm(closes)} that day, and a {minutes}-minute "
                "appointment has to finish by closing"
            )
        return f"{who} is already booked then"

    async def _unavailable(
        self,
        tx: Transaction,
        key: str,
        day: dt.date,
        start: int,
        minutes: int,
        stylists: list[str],
        *,
        ignore: str = "",
    ) -> dict[str, Any]:
        """Why that time cannot be had, and the nearest times that can."""
        return {
            key: False,
            "requested": _when(day, start),
            "reason": await self._why_not(tx, day, start, minutes, stylists),
            "alternatives": await self._alternatives(
                tx, day, start, minutes, stylists, ignore=ignore
            ),
        }


def _check_start(day: dt.date, start: int) -> None:
    if start % SLOT_MINUTES:
        raise ValueError(
            f"{hhmm(start)} is not on the quarter hour; appointments start at :00, :15, :30 or :45"
        )
    if _earliest(day) is None:
        raise ValueError(f"{day.isoformat()} is in the past; today is {today().isoformat()}")


async def _occupy(
    tx: Transaction, stylist: str, day: dt.date, start: int, minutes: int, reference: str
) -> None:
    """One row per quarter hour, in time order, so overlapping bookings queue, not deadlock."""
    slots = range(start, start + minutes, SLOT_MINUTES)
    values = ", ".join("(?, ?, ?, ?)" for _ in slots)
    args = [value for slot in slots for value in (stylist, day.isoformat(), hhmm(slot), reference)]
    await tx.execute(
        f"INSERT INTO appointment_slots (stylist, day, slot, reference) VALUES {values}", *args
    )
