"""How long each dashboard page takes on a ledger of 100,000 calls, on SQLite and PostgreSQL.

    python -m benchmarks.dashboard                      # 100,000 calls, both databases
    python -m benchmarks.dashboard --calls 20000 --only sqlite
    python -m benchmarks.dashboard --keep demo.db       # keep the filled SQLite ledger

A ledger is filled the way the bridge fills it: 1,000 calls of five tenants
and three verticals spread over 90 days (each a priced `CallUsage`, recorded
by `Ledger.record`, some reconciled with Twilio's duration and price), then
copied in SQL until it holds `--calls` calls (and its daily totals rebuilt). The dashboard is served by real
uvicorn on the loopback, as `tollbridge dashboard` serves it, and each page
is fetched five times with the API token; the table shows the median and the
slowest. `costs report` (the same queries) and the full CSV export are timed
the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import statistics
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx

from tollbridge.costs.catalog import Catalog
from tollbridge.costs.ledger import Ledger
from tollbridge.costs.migrations import MIGRATIONS
from tollbridge.costs.pricing import price_call
from tollbridge.costs.usage import CallUsage, LLMRequestUsage, STTUsage, TTSUsage
from tollbridge.dashboard import Dashboard
from tollbridge.transports.twilio.server import running

TOKEN = "benchmark-token-0123456789abcdef"
SEED_CALLS = 1000
TENANTS = ("glambook", "acme", "harbor-realty", "northside", "brightsmile")
VERTICALS = ("salon", "sales", "real_estate")
REPEATS = 5
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def seed_usage(rng: random.Random, now: dt.datetime) -> CallUsage:
    seconds = rng.randint(15, 600)
    started = now - dt.timedelta(days=rng.uniform(0, 90))
    turns = max(1, seconds // 12)
    return CallUsage(
        call_sid=f"CA{uuid.UUID(int=rng.getrandbits(128)).hex}",
        tenant=rng.choice(TENANTS),
        vertical=rng.choice(VERTICALS),
        direction=rng.choice(("inbound", "inbound", "outbound")),
        number_type="local",
        from_number="+15550100999",
        to_number="+15550100200",
        started_at=started,
        ended_at=started + dt.timedelta(seconds=seconds),
        measured_seconds=Decimal(seconds),
        billed_seconds=None,
        recording=rng.random() < 0.2,
        monthly_minutes_per_number=1000,
        stt=[STTUsage("deepgram", "nova-3", Decimal(seconds))],
        llm=[LLMRequestUsage("openai", "gpt-4o-mini", 900 + 60 * i, 40, 0, 0, 0)
             for i in range(turns)],
        tts=[TTSUsage("deepgram", "aura-2-thalia-en", turns * 70)],
        ended_by=rng.choice(("caller", "caller", "agent", "budget", "provider_failed")),
    )


async def fill(url: str, calls: int) -> None:
    """`SEED_CALLS` recorded calls, then SQL copies of them up to `calls`."""
    rng, now, catalog = random.Random(7), dt.datetime.now(dt.UTC), Catalog.load()
    async with await Ledger.open(url) as ledger:
        for _ in range(min(calls, SEED_CALLS)):
            cost = await ledger.record(price_call(seed_usage(rng, now), catalog))
            if rng.random() < 0.7:  # Twilio's status callback and its price
                await ledger.reconcile(cost.call_sid, int(cost.measured_seconds) + 1, "completed")
                await ledger.set_twilio_price(cost.call_sid, Decimal("-0.0085") * (
                    int(cost.measured_seconds) // 60 + 1))
        copies = -(-calls // SEED_CALLS) - 1
        async with ledger._db.transaction() as tx:
            for k in range(1, copies + 1):
                await _copy(tx, k)
        await ledger.rebuild_daily_totals()  # the copies were written around the ledger


async def _copy(tx, k: int) -> None:
    """Copy the seed calls (their line items too) under new call SIDs."""
    suffix = f"-{k}"
    for table in ("calls", "line_items", "turns", "handoffs"):
        rows = await tx.fetch(f"SELECT * FROM {table} LIMIT 1")
        if not rows:
            continue
        columns = list(rows[0])
        picked = ", ".join("call_sid || ?" if c == "call_sid" else c for c in columns)
        source = f"SELECT {picked} FROM {table} WHERE call_sid NOT LIKE ?"
        await tx.execute(f"INSERT INTO {table} ({', '.join(columns)}) {source}", suffix, "%-%")


async def time_pages(url: str) -> list[tuple[str, list[float]]]:
    dashboard = Dashboard(url, token=lambda: TOKEN, floor=Decimal("0.05"))
    async with await Ledger.open(url) as ledger:
        [sample] = await ledger.queries.calls(limit=1)
        count = await ledger.queries.count()
    pages = {
        "overview": "/dashboard/",
        "overview, one tenant": "/dashboard/?tenant=acme",
        "overview, last 7 days": f"/dashboard/?since={(dt.date.today() - dt.timedelta(days=7))}",
        "calls, first page": "/dashboard/calls",
        "calls, last page": f"/dashboard/calls?page={-(-count // 50)}",
        "calls above the floor": "/dashboard/calls?above_floor=1",
        "calls, one tenant and vertical": "/dashboard/calls?tenant=acme&vertical=salon",
        "one call": f"/dashboard/calls/{sample.call_sid}",
        "prices": "/dashboard/prices",
        "CSV export (every call)": "/dashboard/calls.csv",
    }
    timings = []
    try:
        async with running(_app(dashboard)) as base, httpx.AsyncClient(
                base_url=base, timeout=120, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            for name, path in pages.items():
                spent = []
                for _ in range(REPEATS):
                    started = time.perf_counter()
                    response = await client.get(path)
                    response.raise_for_status()
                    spent.append(time.perf_counter() - started)
                timings.append((name, spent))
        async with await Ledger.open(url) as ledger:
            spent = []
            for _ in range(REPEATS):
                started = time.perf_counter()
                await ledger.report(floor=Decimal("0.05"))
                spent.append(time.perf_counter() - started)
            timings.append(("costs report (the same queries)", spent))
    finally:
        await dashboard.close()
    return timings


def _app(dashboard: Dashboard):
    from fastapi import FastAPI

    app = FastAPI()
    app.mount("/dashboard", dashboard.app)
    return app


async def postgres_url() -> tuple[str, str]:
    """A fresh schema on the test server, so the run leaves the database as it found it."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(POSTGRES)
    await conn.execute(f"CREATE SCHEMA {schema}")
    await conn.close()
    return f"{POSTGRES}?search_path={schema}", schema


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    parser.add_argument("--keep", type=Path, help="keep the SQLite ledger here")
    args = parser.parse_args()
    print(f"ledger of {args.calls:,} calls; each page fetched {REPEATS} times; "
          f"schema version {max(m.version for m in MIGRATIONS)}")
    for database in ("sqlite", "postgresql"):
        if args.only and database != args.only:
            continue
        schema = None
        with tempfile.TemporaryDirectory() as folder:
            if database == "sqlite":
                path = args.keep or Path(folder) / "ledger.db"
                url = f"sqlite:///{path}"
            else:
                url, schema = await postgres_url()
            started = time.perf_counter()
            await fill(url, args.calls)
            print(f"\n{database}: filled in {time.perf_counter() - started:.1f} s")
            try:
                timings = await time_pages(url)
            finally:
                if schema:
                    conn = await asyncpg.connect(POSTGRES)
                    await conn.execute(f"DROP SCHEMA {schema} CASCADE")
                    await conn.close()
        print(f"{'page':36} {'median ms':>10} {'slowest ms':>11}")
        for name, spent in timings:
            print(f"{name:36} {statistics.median(spent) * 1000:10.0f} {max(spent) * 1000:11.0f}")


if __name__ == "__main__":
    asyncio.run(main())
