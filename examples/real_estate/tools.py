"""OneRoof's tools: search the listings, describe one, and book a showing.

Listings are read from ``listings.json`` in the vertical's folder. Showings go
to the database named by ``ONEROOF_DB_URL`` (``sqlite:///…`` or
``postgresql://…``; default ``sqlite:///oneroof.db`` in the working directory).
A showing's (listing, day, time) is the table's primary key and is inserted
with ``ON CONFLICT DO NOTHING``, so of two callers asking for the same slot at
the same moment the database lets exactly one in, on either engine.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from tollbridge.costs.database import Database, connect
from tollbridge.spoken_time import WEEKDAYS, hhmm, parse_day, parse_time
from tollbridge.tools import Tool, ToolContext

TYPES = ("house", "apartment", "condo", "townhouse")
SHOWINGS_FROM, SHOWINGS_UNTIL = 10 * 60, 18 * 60
"""Showings start on the half hour from 10:00; the last one ends at 18:00."""
SHOWING_MINUTES = 30
DAYS_AHEAD = 14
SEARCH_RESULTS = 5
ALTERNATIVES = 3
FILLER = {"the", "a", "an", "on", "in", "at", "of", "one", "home", "place", "listing"}
"""Words a caller wraps an address in ("the one on Oak Avenue")."""

SHOWINGS_TABLE = """CREATE TABLE IF NOT EXISTS showings (
    listing_id TEXT NOT NULL,
    day TEXT NOT NULL,
    starts TEXT NOT NULL,
    name TEXT NOT NULL,
    phone TEXT NOT NULL,
    call_sid TEXT NOT NULL,
    PRIMARY KEY (listing_id, day, starts)
)"""


@dataclass(frozen=True)
class Listing:
    id: str
    address: str
    city: str
    price: Decimal
    bedrooms: int
    bathrooms: float
    sqft: int
    type: str
    status: str
    description: str

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "address": self.address,
            "city": self.city,
            "price_usd": f"{self.price:f}",
            "bedrooms": self.bedrooms,
            "bathrooms": self.bathrooms,
            "type": self.type,
            "status": self.status,
        }


@functools.cache
def load_listings(path: Path) -> tuple[Listing, ...]:
    """Read once per process, like the prompt: edit the file, then restart."""
    rows = json.loads(path.read_text(encoding="utf-8"))
    return tuple(Listing(**{**row, "price": Decimal(str(row["price"]))}) for row in rows)


def _listings(call: ToolContext) -> tuple[Listing, ...]:
    return load_listings(call.folder / "listings.json")


def today() -> dt.date:
    """OneRoof's today: ``ONEROOF_TODAY`` (an ISO date, for demos and tests) or the real one."""
    fixed = os.environ.get("ONEROOF_TODAY", "").strip()
    return dt.date.fromisoformat(fixed) if fixed else dt.date.today()


def _when(day: dt.date, start: int) -> dict[str, str]:
    return {"day": day.isoformat(), "weekday": WEEKDAYS[day.weekday()].title(), "time": hhmm(start)}


def database_url() -> str:
    return os.environ.get("ONEROOF_DB_URL") or "sqlite:///oneroof.db"


@asynccontextmanager
async def showings_db() -> AsyncIterator[Database]:
    """The showings database, for one tool call: a call books a showing or two at most,
    so no connection is kept between calls."""
    db = await connect(database_url())
    try:
        async with db.transaction() as tx:
            if db.migration_lock:  # PostgreSQL: two processes must not both create the table
                await tx.execute(db.migration_lock)
            await tx.execute(SHOWINGS_TABLE)
        yield db
    finally:
        await db.close()


def _find(listings: tuple[Listing, ...], text: str) -> list[Listing]:
    """Listings named by id ("OR-1003", "1003") or by words of the address ("oak avenue")."""
    wanted = text.strip().lower()
    number = re.fullmatch(r"(?:or)?[\s-]*(\d{3,})", wanted)
    if number:
        return [item for item in listings if item.id.lower() == f"or-{number[1]}"]
    words = [word for word in re.findall(r"[a-z0-9]+", wanted) if word not in FILLER]
    return [
        item
        for item in listings
        if words
        and all(word in f"{item.address} {item.city} {item.type}".lower() for word in words)
    ]


def _one(call: ToolContext, text: str) -> Listing:
    found = _find(_listings(call), text)
    if not found:
        raise LookupError(f'no listing matches "{text}"; search_listings shows what we have')
    if len(found) > 1:
        names = "; ".join(f"{item.id} {item.address}, {item.city}" for item in found)
        raise LookupError(f'"{text}" matches several listings ({names}); ask which one')
    return found[0]


def _number(value: Any, name: str) -> Decimal | None:
    """A dollar amount or a count as the model sent it (500000, "500,000", "$500000")."""
    if value is None or value == "":
        return None
    try:
        return Decimal(str(value).replace(",", "").replace("$", "").strip())
    except InvalidOperation:
        raise ValueError(f"{name} must be a number (got {value!r})") from None


def _earliest(day: dt.date) -> int:
    """The first minute of `day` still ahead: all of it, except today on the real clock."""
    if day != dt.date.today() or os.environ.get("ONEROOF_TODAY", "").strip():
        return 0
    clock = dt.datetime.now()
    return clock.hour * 60 + clock.minute + 1


async def search_listings(args: dict[str, Any], call: ToolContext) -> dict[str, Any]:
    max_price = _number(args.get("max_price"), "max_price")
    min_bedrooms = _number(args.get("min_bedrooms"), "min_bedrooms") or 0
    kind = str(args.get("type") or "").strip().lower().removesuffix("s")
    if kind and kind not in TYPES:
        raise ValueError(f'type must be one of {", ".join(TYPES)} (got "{args["type"]}")')
    city = str(args.get("city") or "").strip().lower()
    listings = _listings(call)
    matches = sorted(
        (
            item
            for item in listings
            if item.status != "sold"
            and (max_price is None or item.price <= max_price)
            and item.bedrooms >= min_bedrooms
            and (not kind or item.type == kind)
            and (not city or item.city.lower() == city)
        ),
        key=lambda item: item.price,
    )
    result: dict[str, Any] = {
        "count": len(matches),
        "listings": [item.summary() for item in matches[:SEARCH_RESULTS]],
    }
    if not matches:
        result["cities_we_cover"] = sorted({item.city for item in listings})
    return result


async def listing_details(args: dict[str, Any], call: ToolContext) -> dict[str, Any]:
    item = _one(call, str(args.get("listing") or ""))
    return item.summary() | {"sqft": item.sqft, "description": item.description}


async def schedule_showing(args: dict[str, Any], call: ToolContext) -> dict[str, Any]:
    item = _one(call, str(args.get("listing_id") or ""))
    if item.status != "active":
        raise ValueError(f"{item.address} is {item.status}; showings are only for active listings")
    name = str(args.get("name") or "").strip()
    if not name:
        raise ValueError("name is required: who is coming to the showing")
    first = today()
    day = parse_day(str(args.get("day") or ""), first)
    start = parse_time(str(args.get("time") or ""))
    if not first <= day < first + dt.timedelta(days=DAYS_AHEAD):
        raise ValueError(
            f"showings can be booked from today ({first}) up to {DAYS_AHEAD} days ahead"
        )
    if start % SHOWING_MINUTES or not SHOWINGS_FROM <= start <= SHOWINGS_UNTIL - SHOWING_MINUTES:
        raise ValueError(
            f"showings start on the hour or half hour from {hhmm(SHOWINGS_FROM)}; "
            f"the last one starts at {hhmm(SHOWINGS_UNTIL - SHOWING_MINUTES)}"
        )
    if start < _earliest(day):
        raise ValueError(f"{hhmm(start)} today has already passed")
    phone = str(args.get("phone") or "").strip() or call.caller
    async with showings_db() as db:
        async with db.transaction() as tx:
            inserted = await tx.fetch(
                "INSERT INTO showings (listing_id, day, starts, name, phone, call_sid) "
                "VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (listing_id, day, starts) DO NOTHING RETURNING listing_id",
                item.id,
                day.isoformat(),
                hhmm(start),
                name,
                phone,
                call.call_sid,
            )
        if inserted:
            return {
                "scheduled": True,
                "listing_id": item.id,
                "address": item.address,
                **_when(day, start),
                "name": name,
            }
        return {
            "scheduled": False,
            "reason": "that time is already taken for this listing",
            "requested": _when(day, start),
            "alternatives": await _free_near(db, item.id, day, start, first),
        }


async def _free_near(
    db: Database, listing_id: str, day: dt.date, start: int, first: dt.date
) -> list[dict[str, str]]:
    """The free showing times nearest to `start`: that day first, then the days after."""
    last = first + dt.timedelta(days=DAYS_AHEAD)
    async with db.transaction(write=False) as tx:
        rows = await tx.fetch(
            "SELECT day, starts FROM showings WHERE listing_id = ? AND day >= ? AND day < ?",
            listing_id,
            day.isoformat(),
            last.isoformat(),
        )
    taken = {(row["day"], row["starts"]) for row in rows}
    found: list[dict[str, str]] = []
    other = day
    while other < last:
        soonest = -(-_earliest(other) // SHOWING_MINUTES) * SHOWING_MINUTES
        times = range(max(SHOWINGS_FROM, soonest), SHOWINGS_UNTIL, SHOWING_MINUTES)
        for begin in sorted(times, key=lambda m: (abs(m - start), m)):
            if (other.isoformat(), hhmm(begin)) not in taken:
                found.append(_when(other, begin))
                if len(found) == ALTERNATIVES:
                    return found
        other += dt.timedelta(days=1)
    return found


async def end_call(args: dict[str, Any], call: ToolContext) -> dict[str, Any]:
    """Hang up once the goodbye the model is about to say has been heard."""
    if call.end_call:
        await call.end_call()
    return {"ending_call": True}


TOOLS = [
    Tool(
        name="search_listings",
        description=(
            "Search homes for sale (sold ones are left out), cheapest first. "
            "Every filter is optional."
        ),
        handler=search_listings,
        properties={
            "max_price": {"type": "number", "description": "Highest price in US dollars."},
            "min_bedrooms": {"type": "integer", "minimum": 0},
            "type": {"type": "string", "enum": list(TYPES)},
            "city": {"type": "string", "description": "Riverton, Lakeside or Cedar Hill."},
        },
    ),
    Tool(
        name="listing_details",
        description="Everything about one listing, including its description and size.",
        handler=listing_details,
        properties={
            "listing": {
                "type": "string",
                "description": "A listing id like OR-1003, or part of its address like 'Oak Avenue'.",
            }
        },
        required=["listing"],
    ),
    Tool(
        name="schedule_showing",
        description=(
            "Book a 30-minute showing of an active listing, 10:00 to 18:00 any day within two "
            "weeks. scheduled=false comes with free alternatives to offer."
        ),
        handler=schedule_showing,
        properties={
            "listing_id": {"type": "string", "description": "The listing id, like OR-1003."},
            "day": {
                "type": "string",
                "description": "A date as YYYY-MM-DD, or a weekday name such as 'saturday'.",
            },
            "time": {"type": "string", "description": "24-hour HH:MM, on the hour or half hour."},
            "name": {"type": "string", "description": "The caller's name."},
            "phone": {
                "type": "string",
                "description": "A callback number, only if different from the number they call from.",
            },
        },
        required=["listing_id", "day", "time", "name"],
    ),
    Tool(
        name="end_call",
        description="Hang up after your goodbye.",
        handler=end_call,
    ),
]
