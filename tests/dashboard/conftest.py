"""A dashboard served by real uvicorn on a ledger of priced calls (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal

import pytest
from fastapi import FastAPI

from tests.costs import conftest as money
from tollbridge.costs.catalog import Catalog
from tollbridge.costs.ledger import Ledger
from tollbridge.costs.lineitem import CallCost
from tollbridge.costs.pricing import price_call
from tollbridge.costs.usage import CallUsage, LLMRequestUsage, STTUsage, TTSUsage, Turn
from tollbridge.dashboard import Dashboard
from tollbridge.transports.twilio.server import running

# the money layer's fixtures: a catalog, a call factory, a ledger on each database
catalog, make_usage, ledger_url = money.catalog, money.make_usage, money.ledger_url
STARTED = money.STARTED
TOKEN = "dashboard-token-0123456789abcdef"
FLOOR = Decimal("0.05")


@dataclass
class Served:
    base: str
    ledger_url: str
    calls: list[CallCost]
    dashboard: Dashboard

    def url(self, path: str) -> str:
        return f"{self.base}/dashboard{path}"


def seed_calls(make_usage: Callable[..., CallUsage], catalog: Catalog) -> list[CallUsage]:
    """Two tenants, two verticals, two days; one call with a model no price is known for."""
    def call(tenant: str, vertical: str, minutes_later: int, seconds: int, **fields):
        started = STARTED + dt.timedelta(minutes=minutes_later)
        return make_usage(**{
            "tenant": tenant, "vertical": vertical, "started_at": started,
            "ended_at": started + dt.timedelta(seconds=seconds),
            "measured_seconds": Decimal(seconds),
            "stt": [STTUsage("deepgram", "nova-3", Decimal(seconds))],
            "llm": [LLMRequestUsage("openai", "gpt-4o-mini", 1800, 0, 0, 0, 60)],
            "tts": [TTSUsage("deepgram", "aura-2-thalia-en", 6 * seconds)],
            **fields})

    return [
        call("acme", "salon", 0, 95, ended_by="caller",
             turns=(Turn(Decimal("4.2"), 840, None, 410, 200),
                    Turn(Decimal("12.75"), 1210, None, 690, 260))),
        call("acme", "sales", 5, 31, direction="outbound", ended_by="agent"),
        call("glambook", "salon", 60, 240, ended_by="budget"),
        call("glambook", "salon", -1440, 18, ended_by="caller"),  # the day before
        call("acme", "salon", 90, 44, ended_by="caller",
             llm=[LLMRequestUsage("openai", "gpt-no-such-model", 900, 0, 0, 0, 30)]),
    ]


@pytest.fixture
async def served(ledger_url: str, make_usage, catalog: Catalog) -> AsyncIterator[Served]:
    async with await Ledger.open(ledger_url) as ledger:
        calls = [await ledger.record(price_call(usage, catalog))
                 for usage in seed_calls(make_usage, catalog)]
        reconciled = await ledger.reconcile(calls[0].call_sid, 96, "completed")
        priced = await ledger.set_twilio_price(calls[0].call_sid, Decimal("-0.017"))
        assert reconciled is not None and priced is not None
        calls[0] = priced
    dashboard = Dashboard(ledger_url, token=lambda: TOKEN, floor=FLOOR)
    app = FastAPI()
    app.mount("/dashboard", dashboard.app)
    try:
        async with running(app) as base:
            yield Served(base, ledger_url, calls, dashboard)
    finally:
        await dashboard.close()
