"""OneRoof's tools: listing search and details, and showings on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from tollbridge.costs.database import connect

from .conftest import EXAMPLES, ExampleTools

TODAY = "2026-11-24"  # a Tuesday
SATURDAY = "2026-11-28"


@pytest.fixture
def oneroof() -> ExampleTools:
    return ExampleTools("real_estate", "oneroof")


@pytest.fixture
async def showings(db_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ExampleTools]:
    monkeypatch.setenv("ONEROOF_DB_URL", db_url)
    monkeypatch.setenv("ONEROOF_TODAY", TODAY)
    yield ExampleTools("real_estate", "oneroof")


def test_the_listings_file_is_complete_and_believable() -> None:
    listings = json.loads((EXAMPLES / "real_estate" / "listings.json").read_text())
    assert 8 <= len(listings) <= 12
    assert len({item["id"] for item in listings}) == len(listings)
    for item in listings:
        assert set(item) == {
            "id",
            "address",
            "city",
            "price",
            "bedrooms",
            "bathrooms",
            "sqft",
            "type",
            "status",
            "description",
        }
        assert item["type"] in {"house", "apartment", "condo", "townhouse"}
        assert item["status"] in {"active", "pending", "sold"}
        assert Decimal(item["price"]) > 0 and item["sqft"] > 0


async def test_search_filters_combine_and_sort_by_price(oneroof: ExampleTools) -> None:
    found = await oneroof.run(
        "search_listings", max_price=500000, min_bedrooms=2, type="apartments"
    )
    assert [(item["id"], item["price_usd"]) for item in found["listings"]] == [
        ("OR-1001", "425000"),
        ("OR-1002", "489000"),
    ]
    assert found["listings"][0]["address"] == "214 Maple Street, Apt 3B"

    lakeside = await oneroof.run("search_listings", city="lakeside")
    assert [item["id"] for item in lakeside["listings"]] == [
        "OR-1002",
        "OR-1005",
    ]  # not the sold one

    everything = await oneroof.run("search_listings")
    assert everything["count"] == 10 and len(everything["listings"]) == 5
    prices = [Decimal(item["price_usd"]) for item in everything["listings"]]
    assert prices == sorted(prices)

    big = await oneroof.run("search_listings", min_bedrooms=4, max_price="$1,000,000")
    assert [item["id"] for item in big["listings"]] == ["OR-1003"]

    nowhere = await oneroof.run("search_listings", city="Boston")
    assert nowhere["count"] == 0
    assert nowhere["cities_we_cover"] == ["Cedar Hill", "Lakeside", "Riverton"]
    with pytest.raises(ValueError, match="type must be one of"):
        await oneroof.run("search_listings", type="castle")


async def test_details_by_id_or_by_part_of_the_address(oneroof: ExampleTools) -> None:
    oak = await oneroof.run("listing_details", listing="the house on Oak Avenue")
    assert (oak["id"], oak["status"], oak["sqft"]) == ("OR-1003", "active", 2300)
    assert "fenced back yard" in oak["description"]
    assert (await oneroof.run("listing_details", listing="or 1009"))["status"] == "sold"
    with pytest.raises(LookupError, match="several listings"):
        await oneroof.run("listing_details", listing="Riverton apartment")
    with pytest.raises(LookupError, match="no listing matches"):
        await oneroof.run("listing_details", listing="Elm Avenue")


async def test_a_showing_is_stored_and_its_slot_cannot_be_booked_twice(
    showings: ExampleTools,
) -> None:
    call = showings.call(call_sid="CAshowing")
    booked = await showings.run(
        "schedule_showing", call, listing_id="OR-1001", day="Saturday", time="11", name="Alex Kim"
    )
    assert booked == {
        "scheduled": True,
        "listing_id": "OR-1001",
        "address": "214 Maple Street, Apt 3B",
        "day": SATURDAY,
        "weekday": "Saturday",
        "time": "11:00",
        "name": "Alex Kim",
    }
    again = await showings.run(
        "schedule_showing",
        listing_id="1001",
        day=SATURDAY,
        time="11:00",
        name="Sam Lee",
        phone="+15550100777",
    )
    assert again["scheduled"] is False and again["reason"].startswith("that time is already taken")
    assert [alt["time"] for alt in again["alternatives"]] == ["10:30", "11:30", "10:00"]
    other_home = await showings.run(
        "schedule_showing", listing_id="OR-1002", day=SATURDAY, time="11:00", name="Sam Lee"
    )
    assert other_home["scheduled"] is True

    db = await connect(showings.module.database_url())
    try:
        async with db.transaction(write=False) as tx:
            rows = await tx.fetch("SELECT * FROM showings ORDER BY listing_id")
    finally:
        await db.close()
    assert rows[0] == {
        "listing_id": "OR-1001",
        "day": SATURDAY,
        "starts": "11:00",
        "name": "Alex Kim",
        "phone": call.caller,
        "call_sid": "CAshowing",
    }
    assert len(rows) == 2


async def test_two_callers_racing_for_one_showing_exactly_one_gets_it(
    showings: ExampleTools,
) -> None:
    """Each tool call has its own connection, as two calls in two processes would."""
    results = await asyncio.gather(
        *(
            showings.run(
                "schedule_showing", listing_id="OR-1003", day="friday", time="14:30", name=who
            )
            for who in ("Alex Kim", "Sam Lee", "Jo Park")
        )
    )
    assert sorted(r["scheduled"] for r in results) == [False, False, True]
    assert all(r["alternatives"] for r in results if not r["scheduled"])


async def test_showings_only_for_active_homes_within_hours_and_two_weeks(
    showings: ExampleTools,
) -> None:
    with pytest.raises(ValueError, match="is pending"):
        await showings.run(
            "schedule_showing", listing_id="OR-1004", day="friday", time="11:00", name="Al"
        )
    with pytest.raises(ValueError, match="is sold"):
        await showings.run(
            "schedule_showing", listing_id="OR-1009", day="friday", time="11:00", name="Al"
        )
    with pytest.raises(ValueError, match="last one starts at 17:30"):
        await showings.run(
            "schedule_showing", listing_id="OR-1001", day="friday", time="18:00", name="Al"
        )
    with pytest.raises(ValueError, match="hour or half hour"):
        await showings.run(
            "schedule_showing", listing_id="OR-1001", day="friday", time="11:15", name="Al"
        )
    with pytest.raises(ValueError, match="14 days ahead"):
        await showings.run(
            "schedule_showing", listing_id="OR-1001", day="2026-12-24", time="11:00", name="Al"
        )
    with pytest.raises(ValueError, match="name is required"):
        await showings.run("schedule_showing", listing_id="OR-1001", day="friday", time="11:00")


async def test_end_call_hangs_up_after_the_goodbye(oneroof: ExampleTools) -> None:
    call = oneroof.call()
    assert await oneroof.run("end_call", call) == {"ending_call": True}
    assert oneroof.hung_up == [call.call_sid]
