"""Shared fixtures for the money layer: a catalog, a call factory and real databases."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PG_URL, connect_postgres
from tollbridge.costs.catalog import Catalog
from tollbridge.costs.usage import CallUsage

PROFILES = Path(__file__).resolve().parents[2] / "examples" / "profiles"
STARTED = dt.datetime(2026, 11, 20, 15, 30, tzinfo=dt.UTC)


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return Catalog.load()


@pytest.fixture
def make_usage() -> Callable[..., CallUsage]:
    """A 61-second inbound call to a local number with nothing else billed; override any field."""

    def make(**fields: Any) -> CallUsage:
        base: dict[str, Any] = dict(
            call_sid=f"CA{uuid.uuid4().hex}",
            tenant="glambook",
            vertical="salon",
            direction="inbound",
            number_type="local",
            from_number="+15550100999",
            to_number="+15550100200",
            started_at=STARTED,
            ended_at=STARTED + dt.timedelta(seconds=61),
            measured_seconds=Decimal(61),
            billed_seconds=None,
            recording=False,
            monthly_minutes_per_number=1000,
        )
        return CallUsage(**{**base, **fields})

    return make


def with_query(url: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


@asynccontextmanager
async def pg_schema() -> AsyncIterator[str]:
    """The real PostgreSQL server, in a schema of our own that is dropped afterwards,
    so parallel runs never see each other's tables."""
    schema = f"tb_costs_{uuid.uuid4().hex[:12]}"
    conn = await connect_postgres()
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield with_query(PG_URL, search_path=schema)
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with pg_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
async def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    async with pg_schema() as url:
        yield url
