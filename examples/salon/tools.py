"""GlamBook's tools: the receptionist's hands on the appointment book (booking.py).

The book lives in the database named by ``GLAMBOOK_DB_URL`` (``sqlite:///…`` or
``postgresql://…``; default ``sqlite:///glambook.db`` in the working directory),
opened once per process and shared by every call.
"""

from __future__ import annotations

import os
from typing import Any

from tollbridge.spoken_time import parse_day, parse_time
from tollbridge.tools import Tool, ToolContext, at_shutdown

from . import booking

_salons: dict[str, booking.Salon] = {}


def database_url() -> str:
    return os.environ.get("GLAMBOOK_DB_URL") or "sqlite:///glambook.db"


async def salon() -> booking.Salon:
    """The shared `Salon` for the configured URL, opened on first use."""
    url = database_url()
    if url not in _salons:
        opened = await booking.Salon.open(url)
        if _salons.setdefault(url, opened) is not opened:  # another call opened it meanwhile
            await opened.close()
    return _salons[url]


@at_shutdown
async def close_salons() -> None:
    """Close the shared appointment books (at shutdown, or between tests)."""
    while _salons:
        _, opened = _salons.popitem()
        await opened.close()


def _text(args: dict[str, Any], name: str) -> str:
    value = args.get(name)
    if value is None or not str(value).strip():
        raise ValueError(f"{name} is required")
    return str(value).strip()


async def services_and_prices(args: dict[str, Any], call: ToolContext) -> dict[str, Any]:
    book = await salon()
    return {
        "services": [
            {"name": s.name, "minutes": s.minutes, "price_usd": f"{s.price_usd:.2f}"}
            for s in await book.services()
        ],
        "stylists": await book.stylists(),
    }


async def opening_hours(args: dict[str, Any], call: ToolContext) -> dict[str, Any]:
    book = await salon()
    return {"today": booking.today().isoformat(), "days": await book.week()}


async def find_slots(args: dict[str, Any], call: ToolContext) -> dict[str, Any]:
    book = await salon()
    day = parse_day(_text(args, "day"), booking.today())
    return await book.free_times(_text(args, "service"), day, args.get("stylist"))


async def book_appointment(args: dict[str, Any], call: ToolContext) -> dict[str, Any]:
    book = await salon()
    return await book.book(
        _text(args, "service"),
        parse_day(_text(args, "day"), booking.today()),
        parse_time(_text(args, "time")),
        _text(args, "customer_name"),
        stylist=args.get("stylist"),
        phone=call.caller,
        call_sid=call.call_sid,
    )


async def reschedule(args: dict[str, Any], call: ToolContext) -> dict[str, Any]:
    book = await salon()
    return await book.reschedule(
        _text(args, "reference"),
        parse_day(_text(args, "day"), booking.today()),
        parse_time(_text(args, "time")),
    )


async def cancel(args: dict[str, Any], call: ToolContext) -> dict[str, Any]:
    book = await salon()
    return await book.cancel(_text(args, "reference"))


async def end_call(args: dict[str, Any], call: ToolContext) -> dict[str, Any]:
    """Hang up once the goodbye the model is about to say has been heard."""
    if call.end_call:
        await call.end_call()
    return {"ending_call": True}


_SERVICE = {"type": "string", "description": "A service name from services_and_prices."}
_DAY = {
    "type": "string",
    "description": "A date as YYYY-MM-DD, or a weekday name such as 'friday' (the next one).",
}
_TIME = {"type": "string", "description": "Start time, 24-hour HH:MM, on the quarter hour."}
_STYLIST = {
    "type": "string",
    "description": "Maria, Devon or Priya; leave out if the caller has no preference.",
}
_REFERENCE = {"type": "string", "description": "The booking reference, like GB-104."}

TOOLS = [
    Tool(
        name="services_and_prices",
        description="The salon's services with their length in minutes and price, and the stylists.",
        handler=services_and_prices,
    ),
    Tool(
        name="opening_hours",
        description="Today's date and the opening hours of each of the next seven days.",
        handler=opening_hours,
    ),
    Tool(
        name="find_slots",
        description="Free start times for a service on one day, with one stylist or anyone.",
        handler=find_slots,
        properties={"service": _SERVICE, "day": _DAY, "stylist": _STYLIST},
        required=["service", "day"],
    ),
    Tool(
        name="book",
        description=(
            "Book an appointment. Returns the booking reference, or booked=false with "
            "the nearest free alternatives to offer the caller."
        ),
        handler=book_appointment,
        properties={
            "service": _SERVICE,
            "day": _DAY,
            "time": _TIME,
            "customer_name": {"type": "string", "description": "The caller's name."},
            "stylist": _STYLIST,
        },
        required=["service", "day", "time", "customer_name"],
    ),
    Tool(
        name="reschedule",
        description=(
            "Move a booking to another day and time with the same stylist; "
            "rescheduled=false comes with free alternatives."
        ),
        handler=reschedule,
        properties={"reference": _REFERENCE, "day": _DAY, "time": _TIME},
        required=["reference", "day", "time"],
    ),
    Tool(
        name="cancel",
        description="Cancel a booking.",
        handler=cancel,
        properties={"reference": _REFERENCE},
        required=["reference"],
    ),
    Tool(
        name="end_call",
        description="Hang up after your goodbye. Call it when the caller has nothing else.",
        handler=end_call,
    ),
]
