"""Report queries against the calls themselves: the daily totals the ledger keeps while it
stores, re-bills and re-prices calls must give what summing every stored call gives."""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from decimal import Decimal

import pytest

from tollbridge.costs.catalog import Catalog
from tollbridge.costs.ledger import Ledger
from tollbridge.costs.lineitem import CallCost
from tollbridge.costs.pricing import price_call
from tollbridge.costs.queries import CallFilter, leg_of
from tollbridge.costs.usage import CallUsage, LLMRequestUsage, STTUsage, TTSUsage

from .conftest import STARTED

D = Decimal


def random_call(rng: random.Random, make_usage: Callable[..., CallUsage], catalog: Catalog
                ) -> CallCost:
    seconds = rng.randint(0, 400)
    started = STARTED + dt.timedelta(minutes=rng.randint(-4 * 1440, 4 * 1440))
    usage = make_usage(
        tenant=rng.choice(("acme", "glambook", "harbor")),
        vertical=rng.choice(("salon", "sales")),
        started_at=started,
        ended_at=started + dt.timedelta(seconds=seconds),
        measured_seconds=D(seconds) + D(rng.randint(0, 999)) / 1000,
        ended_by=rng.choice(("caller", "agent", "budget")),
        recording=rng.random() < 0.3,
        stt=[STTUsage("deepgram", rng.choice(("nova-3", "no-such-model")), D(seconds))],
        llm=[LLMRequestUsage("openai", "gpt-4o-mini", rng.randint(100, 3000), rng.randint(0, 900),
                             0, 0, rng.randint(5, 90))],
        tts=[TTSUsage("deepgram", "aura-2-thalia-en", rng.randint(0, 900), rng.randint(0, 60))],
        heard_characters=rng.choice((None, 0, 200)),
    )
    return price_call(usage, catalog)


def expected(calls: list[CallCost], where: CallFilter) -> dict[str, dict]:
    """What the queries should say, summed call by call in Python."""
    chosen = [c for c in calls
              if (where.tenant is None or c.tenant == where.tenant)
              and (where.since is None or c.started_at >= where.since)
              and (where.until is None or c.started_at < where.until)]
    tenants: dict[str, Counter] = defaultdict(Counter)
    days: dict[dt.date, Counter] = defaultdict(Counter)
    items: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for call in chosen:
        for group, key in ((tenants, call.tenant), (days, call.started_at.date())):
            group[key].update(calls=1, seconds=call.seconds, usd=call.total_usd,
                              incomplete=0 if call.complete else 1,
                              unheard=call.unheard_speech_usd)
        for line in call.items:
            items[(line.item, line.provider)] += line.usd
            days[call.started_at.date()][leg_of(line.kind)] += line.usd
    return {"tenants": tenants, "days": days, "items": items}


@pytest.mark.long(8)
async def test_daily_totals_equal_the_sum_of_the_stored_calls(
    ledger_url: str, make_usage: Callable[..., CallUsage], catalog: Catalog
) -> None:
    rng = random.Random(2026)
    async with await Ledger.open(ledger_url) as ledger:
        for _ in range(60):
            await ledger.record(random_call(rng, make_usage, catalog))
        sids = [row.call_sid for row in await ledger.queries.calls()]
        for sid in rng.sample(sids, 25):  # what Twilio's callbacks change after the call
            await ledger.reconcile(sid, rng.randint(0, 500), "completed")
            await ledger.set_twilio_price(sid, D("-0.017"))
            await ledger.set_recording(sid, rng.randint(0, 90))
        for sid in rng.sample(sids, 10):  # a record written again, on another day
            again = random_call(rng, make_usage, catalog)
            await ledger.record(CallCost(**{**again.__dict__, "call_sid": sid}))
        stored = [await ledger.get(sid) for sid in sids]
        calls = [c for c in stored if c is not None]
        midday = STARTED.replace(hour=11, minute=7)
        for where in (
            CallFilter(),
            CallFilter(tenant="acme"),
            CallFilter(since=STARTED.replace(hour=0, minute=0) - dt.timedelta(days=2)),
            CallFilter(since=midday - dt.timedelta(days=2), until=midday + dt.timedelta(days=1)),
            CallFilter(since=midday, until=midday + dt.timedelta(hours=5)),  # within one day
            CallFilter(tenant="glambook", until=midday),
        ):
            want = expected(calls, where)
            spend = await ledger.queries.spend(where)
            tenants = {row.key: row for row in spend.totals("tenant")}
            assert set(tenants) == set(want["tenants"]), where
            for key, sums in want["tenants"].items():
                row = tenants[key]
                assert (row.calls, row.total_usd, row.minutes, row.incomplete_calls,
                        row.unheard_speech_usd) == (
                    sums["calls"], sums["usd"], (sums["seconds"] / 60).quantize(D("0.0001")),
                    sums["incomplete"], sums["unheard"]), (where, key)
            days = {row.day: row for row in spend.days()}
            assert set(days) == set(want["days"]), where
            for day, sums in want["days"].items():
                assert days[day].total_usd == sums["usd"] and days[day].calls == sums["calls"]
                assert {leg: usd for leg, usd in days[day].legs.items() if usd} == {
                    leg: sums[leg] for leg in days[day].legs if sums[leg]}, (where, day)
            top = spend.top_items(limit=100)
            assert {(i.item, i.provider): i.usd for i in top} == {
                k: v for k, v in want["items"].items()}, where
            assert [i.usd for i in top] == sorted((i.usd for i in top), reverse=True)
        async with ledger._db.transaction() as tx:
            kept_calls = await tx.fetch("SELECT * FROM daily_calls ORDER BY day, tenant, "
                                        "vertical, ended_by")
            kept_items = await tx.fetch("SELECT * FROM daily_items ORDER BY day, tenant, "
                                        "vertical, item, provider, unit")
        await ledger.rebuild_daily_totals()
        async with ledger._db.transaction() as tx:
            assert kept_calls == await tx.fetch("SELECT * FROM daily_calls ORDER BY day, tenant, "
                                                "vertical, ended_by")
            assert kept_items == await tx.fetch("SELECT * FROM daily_items ORDER BY day, tenant, "
                                                "vertical, item, provider, unit")


async def test_calls_written_around_the_ledger_are_counted_when_it_next_opens(
    ledger_url: str, make_usage: Callable[..., CallUsage], catalog: Catalog
) -> None:
    """A call copied in by hand and one deleted by hand: the daily totals no longer agree
    with the calls, so the next open rebuilds them instead of reporting stale figures."""
    rng = random.Random(7)
    async with await Ledger.open(ledger_url) as ledger:
        first, second = [await ledger.record(random_call(rng, make_usage, catalog))
                         for _ in range(2)]
        async with ledger._db.transaction() as tx:
            for table in ("calls", "line_items"):
                [row] = await tx.fetch(f"SELECT * FROM {table} LIMIT 1")
                columns = ", ".join(row)
                picked = ", ".join("call_sid || '-copy'" if c == "call_sid" else c for c in row)
                await tx.execute(f"INSERT INTO {table} ({columns}) SELECT {picked} FROM {table} "
                                 "WHERE call_sid = ?", first.call_sid)
            await tx.execute("DELETE FROM calls WHERE call_sid = ?", second.call_sid)
    async with await Ledger.open(ledger_url) as ledger:
        [tenant] = await ledger.queries.totals("tenant", CallFilter(tenant=first.tenant))
        everyone = await ledger.queries.totals("tenant")
    assert sum(row.calls for row in everyone) == 2
    assert sum((row.total_usd for row in everyone), D(0)) == 2 * first.total_usd
    assert tenant.calls == 2 and tenant.total_usd == 2 * first.total_usd
