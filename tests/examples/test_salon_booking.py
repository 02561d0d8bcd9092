"""GlamBook's booking tools on a real SQLite file and the real PostgreSQL server."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tollbridge.spoken_time import parse_day, parse_time

from .conftest import ExampleTools

TODAY = "2026-11-24"  # a Tuesday: the book runs Tuesday 24 to Monday 30, closed Sunday and Monday
FRIDAY = "2026-11-27"
HAIRCUT = {"service": "women's haircut", "day": "friday", "time": "10:00", "stylist": "Maria"}


@pytest.fixture
async def salon(db_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ExampleTools]:
    monkeypatch.setenv("GLAMBOOK_DB_URL", db_url)
    monkeypatch.setenv("GLAMBOOK_TODAY", TODAY)
    vertical = ExampleTools("salon", "glambook")
    try:
        yield vertical
    finally:
        await vertical.module.close_salons()


async def rows(salon: ExampleTools, sql: str, *args: Any) -> list[dict[str, Any]]:
    book = await salon.module.salon()
    async with book.db.transaction(write=False) as tx:
        return await tx.fetch(sql, *args)


async def test_services_prices_and_hours_come_from_the_seeded_database(salon: ExampleTools) -> None:
    listed = await salon.run("services_and_prices")
    prices = {s["name"]: (s["minutes"], s["price_usd"]) for s in listed["services"]}
    assert prices == {
        "women's haircut": (60, "65.00"),
        "men's haircut": (30, "35.00"),
        "beard trim": (15, "20.00"),
        "colour": (120, "140.00"),
        "balayage": (180, "220.00"),
        "blow-dry": (45, "45.00"),
    }
    assert listed["stylists"] == ["Devon", "Maria", "Priya"]
    hours = await salon.run("opening_hours")
    assert hours["today"] == TODAY
    closed = [d["weekday"] for d in hours["days"] if d.get("closed")]
    assert closed == ["Sunday", "Monday"]
    assert {(d["opens"], d["closes"]) for d in hours["days"] if not d.get("closed")} == {
        ("09:00", "19:00")
    }
    # Seeding again (a second process, a restart) adds nothing.
    again = await salon.module.booking.Salon.open(salon.module.database_url())
    await again.close()
    [count] = await rows(salon, "SELECT COUNT(*) AS n FROM working_hours")
    assert count["n"] == 5 * 3


async def test_booking_writes_an_appointment_and_its_slots(salon: ExampleTools) -> None:
    call = salon.call(call_sid="CAbooking")
    booked = await salon.run("book", call, **HAIRCUT, customer_name="Jane Doe")
    assert booked == {
        "booked": True,
        "reference": "GB-101",
        "service": "women's haircut",
        "stylist": "Maria",
        "day": FRIDAY,
        "weekday": "Friday",
        "time": "10:00",
        "ends": "11:00",
        "price_usd": "65.00",
        "customer_name": "Jane Doe",
    }
    [row] = await rows(salon, "SELECT * FROM appointments")
    assert row == {
        "reference": "GB-101",
        "service": "women's haircut",
        "stylist": "Maria",
        "day": FRIDAY,
        "starts": "10:00",
        "ends": "11:00",
        "customer_name": "Jane Doe",
        "phone": call.caller,
        "status": "booked",
        "call_sid": "CAbooking",
    }
    slots = await rows(salon, "SELECT slot FROM appointment_slots ORDER BY slot")
    assert [s["slot"] for s in slots] == ["10:00", "10:15", "10:30", "10:45"]

    free = await salon.run("find_slots", service="womens haircut", day=FRIDAY, stylist="maria")
    assert "09:00" in free["start_times"] and "11:00" in free["start_times"]
    assert not {"09:15", "09:30", "10:00", "10:45"} & set(free["start_times"])


async def test_the_database_itself_refuses_a_second_booking_of_a_slot(salon: ExampleTools) -> None:
    await salon.run("book", **HAIRCUT, customer_name="Jane Doe")
    book = await salon.module.salon()
    with pytest.raises((sqlite3.IntegrityError, asyncpg.UniqueViolationError)):
        async with book.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO appointment_slots (stylist, day, slot, reference) "
                "VALUES ('Maria', ?, '10:30', 'GB-101')",
                FRIDAY,
            )


async def test_a_stale_check_is_still_stopped_by_the_database(
    salon: ExampleTools, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller whose availability check missed the other booking cannot commit over it."""
    await salon.run("book", **HAIRCUT, customer_name="Jane Doe")
    late = await salon.module.booking.Salon.open(salon.module.database_url())
    real_free = late._free
    fooled: list[bool] = []

    async def stale_free(tx: Any, day: dt.date, minutes: int, stylists: list[str], **kw: Any):
        if not fooled:
            fooled.append(True)
            return {10 * 60: ["Maria"]}  # as if read before the first booking committed
        return await real_free(tx, day, minutes, stylists, **kw)

    monkeypatch.setattr(late, "_free", stale_free)
    try:
        result = await late.book(
            "women's haircut", dt.date(2026, 11, 27), 10 * 60, "Ann Lee", stylist="Maria"
        )
    finally:
        await late.close()
    assert fooled and result["booked"] is False
    assert result["alternatives"]
    assert len(await rows(salon, "SELECT reference FROM appointments")) == 1


async def test_two_calls_racing_for_one_slot_exactly_one_wins(salon: ExampleTools) -> None:
    """Two processes' connections book the same slot at the same moment."""
    Salon = salon.module.booking.Salon
    url = salon.module.database_url()
    first, second = await Salon.open(url), await Salon.open(url)
    friday = dt.date(2026, 11, 27)
    try:
        results = await asyncio.gather(
            first.book("women's haircut", friday, 600, "Jane Doe", stylist="Maria"),
            second.book("colour", friday, 570, "Ann Lee", stylist="Maria"),  # 09:30-11:30 overlaps
        )
        # Anyone will do: the loser of the race is given the next stylist, not refused.
        either = await asyncio.gather(
            first.book("beard trim", friday, 900, "Al", stylist="anyone"),
            second.book("beard trim", friday, 900, "Bo"),
        )
    finally:
        await first.close()
        await second.close()
    winners = [r for r in results if r["booked"]]
    losers = [r for r in results if not r["booked"]]
    assert len(winners) == 1 and len(losers) == 1
    assert losers[0]["reason"] == "Maria is already booked then"
    assert losers[0]["alternatives"] and all(
        alt["stylist"] == "Maria" for alt in losers[0]["alternatives"]
    )
    assert set(losers[0]["other_stylists_free_then"]) == {"Devon", "Priya"}
    booked = await rows(salon, "SELECT reference FROM appointments WHERE service <> 'beard trim'")
    assert [b["reference"] for b in booked] == [winners[0]["reference"]]

    assert all(r["booked"] for r in either)
    assert either[0]["stylist"] != either[1]["stylist"]


async def test_references_are_never_reused_even_after_cancelling(salon: ExampleTools) -> None:
    first = await salon.run("book", **HAIRCUT, customer_name="Jane Doe")
    second = await salon.run("book", **{**HAIRCUT, "time": "11:00"}, customer_name="Ann Lee")
    assert (first["reference"], second["reference"]) == ("GB-101", "GB-102")

    cancelled = await salon.run("cancel", reference="G B dash 1 0 2")
    assert cancelled["cancelled"] is True and cancelled["reference"] == "GB-102"
    third = await salon.run("book", **{**HAIRCUT, "time": "11:00"}, customer_name="Bo Chen")
    assert (
        third["booked"] is True and third["reference"] == "GB-103"
    )  # the freed slot, a new number

    await salon.run("cancel", reference="GB-103")
    await salon.run("cancel", reference="gb-101")
    fourth = await salon.run("book", **HAIRCUT, customer_name="Cy Diaz")
    assert fourth["reference"] == "GB-104"
    statuses = await rows(salon, "SELECT reference, status FROM appointments ORDER BY reference")
    assert [(r["reference"], r["status"]) for r in statuses] == [
        ("GB-101", "cancelled"),
        ("GB-102", "cancelled"),
        ("GB-103", "cancelled"),
        ("GB-104", "booked"),
    ]
    with pytest.raises(LookupError, match="cancelled"):
        await salon.run("cancel", reference="GB-102")
    with pytest.raises(LookupError, match="no booking GB-999"):
        await salon.run("cancel", reference="GB-999")


async def test_reschedule_moves_the_booking_or_offers_alternatives(salon: ExampleTools) -> None:
    mine = await salon.run("book", **HAIRCUT, customer_name="Jane Doe")
    other = await salon.run("book", **{**HAIRCUT, "day": "saturday"}, customer_name="Ann Lee")

    refused = await salon.run(
        "reschedule", reference=mine["reference"], day="saturday", time="10:30"
    )
    assert refused["rescheduled"] is False
    assert refused["requested"] == {"day": "2026-11-28", "weekday": "Saturday", "time": "10:30"}
    assert refused["alternatives"][0] == {
        "day": "2026-11-28",
        "weekday": "Saturday",
        "time": "11:00",
        "stylist": "Maria",
    }
    [unchanged] = await rows(
        salon, "SELECT day, starts FROM appointments WHERE reference = ?", mine["reference"]
    )
    assert unchanged == {"day": FRIDAY, "starts": "10:00"}

    # Overlapping its own old time is fine: its slots are its own.
    moved = await salon.run("reschedule", reference=mine["reference"], day="friday", time="10:30")
    assert moved["rescheduled"] is True and moved["previously"]["time"] == "10:00"
    slots = await rows(
        salon,
        "SELECT slot FROM appointment_slots WHERE reference = ? ORDER BY slot",
        mine["reference"],
    )
    assert [s["slot"] for s in slots] == ["10:30", "10:45", "11:00", "11:15"]
    freed = await salon.run("book", **{**HAIRCUT, "service": "beard trim"}, customer_name="Al")
    assert freed["booked"] is True  # 10:00 is free again

    await salon.run("cancel", reference=other["reference"])
    with pytest.raises(LookupError, match="cancelled"):
        await salon.run("reschedule", reference=other["reference"], day="friday", time="15:00")


async def test_unbookable_requests_say_why(salon: ExampleTools) -> None:
    monday = await salon.run(
        "book", service="colour", day="monday", time="10:00", customer_name="Al"
    )
    assert monday["booked"] is False and monday["reason"] == "the salon is closed on Mondays"
    # The nearest open day with the book open is the Saturday before.
    assert monday["alternatives"][0]["weekday"] == "Saturday"

    late = await salon.run(
        "book", service="balayage", day="friday", time="17:00", customer_name="Al"
    )
    assert late["booked"] is False and "finish by closing" in late["reason"]
    assert late["alternatives"][0]["time"] == "16:00"

    with pytest.raises(ValueError, match="ask which one"):
        await salon.run("book", service="haircut", day="friday", time="10:00", customer_name="Al")
    with pytest.raises(ValueError, match="no service"):
        await salon.run("book", service="perm", day="friday", time="10:00", customer_name="Al")
    with pytest.raises(ValueError, match="quarter hour"):
        await salon.run("book", service="colour", day="friday", time="10:10", customer_name="Al")
    with pytest.raises(ValueError, match="in the past"):
        await salon.run(
            "book", service="colour", day="2026-11-20", time="10:00", customer_name="Al"
        )
    with pytest.raises(ValueError, match="customer_name is required"):
        await salon.run("book", service="colour", day="friday", time="10:00")


async def test_end_call_hangs_up_after_the_goodbye(salon: ExampleTools) -> None:
    call = salon.call()
    assert await salon.run("end_call", call) == {"ending_call": True}
    assert salon.hung_up == [call.call_sid]


@pytest.mark.parametrize(
    ("text", "day"),
    [
        ("friday", "2026-11-27"),
        ("Tue", "2026-11-24"),
        ("this saturday", "2026-11-28"),
        ("tomorrow", "2026-11-25"),
        ("2026-12-01", "2026-12-01"),
    ],
)
def test_days_are_read_relative_to_today(text: str, day: str) -> None:
    assert parse_day(text, dt.date.fromisoformat(TODAY)).isoformat() == day


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("10:00", 600), ("10", 600), ("2pm", 840), ("2:30 p.m.", 870), ("3", 900), ("14:45", 885)],
)
def test_times_are_read_as_a_receptionist_would(text: str, minutes: int) -> None:
    assert parse_time(text) == minutes
