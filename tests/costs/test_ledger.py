"""The ledger on a real SQLite file and the real PostgreSQL server (each test runs on both)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from decimal import Decimal

import pytest

from tollbridge.costs.catalog import Catalog
from tollbridge.costs.database import LedgerError
from tollbridge.costs.ledger import Ledger
from tollbridge.costs.lineitem import CallCost, round_usd
from tollbridge.costs.migrations import MIGRATIONS
from tollbridge.costs.pricing import price_call
from tollbridge.costs.usage import (
    CallUsage,
    Handoff,
    LLMRequestUsage,
    STTUsage,
    TTSUsage,
    Turn,
)

from .conftest import STARTED

D = Decimal
MakeUsage = Callable[..., CallUsage]


@pytest.fixture
def priced(catalog: Catalog, make_usage: MakeUsage) -> Callable[..., CallCost]:
    def make(**fields: object) -> CallCost:
        usage = make_usage(
            **{
                "stt": [STTUsage("deepgram", "nova-3-multilingual", D("61.37"))],
                "llm": [LLMRequestUsage("openai", "gpt-4o-mini", 1234, 2048, 0, 0, 77)],
                "tts": [TTSUsage("deepgram", "aura-2-thalia-en", 420, avoided_characters=35)],
                **fields,
            }
        )
        return price_call(usage, catalog)

    return make


async def test_round_trip_is_exact(ledger_url: str, priced: Callable[..., CallCost]) -> None:
    cost = priced(turns=(Turn(D("3.25"), 812, None, 402, 190, "front_desk"),
                         Turn(D("17.5"), None, 95, None, None, "booking")))
    async with await Ledger.open(ledger_url) as ledger:
        assert await ledger.get(cost.call_sid) is None
        stored = await ledger.record(cost)
        got = await ledger.get(cost.call_sid)
    assert stored == cost
    assert got == cost
    assert got is not None
    for ours, theirs in zip(cost.items, got.items, strict=True):
        assert isinstance(theirs.usd, Decimal) and isinstance(theirs.unit_price_usd, Decimal)
        assert (theirs.usd, theirs.unit_price_usd, theirs.quantity) == (
            ours.usd,
            ours.unit_price_usd,
            ours.quantity,
        )
    # 0.0058/60 has 28 significant digits; it must come back with all of them.
    stt = next(line for line in got.items if line.kind == "stt")
    assert stt.unit_price_usd == D("0.0058") / 60
    assert got.started_at == STARTED and got.started_at.tzinfo is not None
    assert got.total_usd == cost.total_usd and got.usd_per_minute == cost.usd_per_minute


async def test_record_is_an_idempotent_upsert(
    ledger_url: str, priced: Callable[..., CallCost], catalog: Catalog, make_usage: MakeUsage
) -> None:
    cost = priced()
    async with await Ledger.open(ledger_url) as ledger:
        await ledger.record(cost)
        await ledger.record(cost)
        shorter = price_call(make_usage(call_sid=cost.call_sid), catalog)  # fewer items now
        await ledger.record(shorter)
        got = await ledger.get(cost.call_sid)
        report = await ledger.report()
    assert got == shorter
    assert [row.calls for row in report.tenants] == [1]


async def test_reconcile_to_twilio_duration(
    ledger_url: str, priced: Callable[..., CallCost]
) -> None:
    cost = priced()  # measured 61 s
    async with await Ledger.open(ledger_url) as ledger:
        await ledger.record(cost)
        reconciled = await ledger.reconcile(cost.call_sid, 120, "completed")
        got = await ledger.get(cost.call_sid)
    assert reconciled == got
    assert got is not None
    assert (got.measured_seconds, got.billed_seconds, got.status) == (D(61), 120, "completed")
    voice = next(line for line in got.items if line.kind == "voice.inbound_local")
    assert (voice.quantity, voice.usd) == (D(2), D("0.017"))
    assert got.usd_per_minute == round_usd(got.total_usd / 2)


async def test_no_answer_costs_no_minutes(ledger_url: str, priced: Callable[..., CallCost]) -> None:
    cost = priced(direction="outbound", llm=[], stt=[], tts=[])
    async with await Ledger.open(ledger_url) as ledger:
        await ledger.record(cost)
        got = await ledger.reconcile(cost.call_sid, 0, "no-answer")
    assert got is not None
    assert got.total_usd == 0 and got.status == "no-answer" and got.usd_per_minute is None


async def test_early_callbacks_wait_for_the_record(
    ledger_url: str, priced: Callable[..., CallCost]
) -> None:
    cost = priced()
    async with await Ledger.open(ledger_url) as ledger:
        assert await ledger.reconcile(cost.call_sid, 125, "completed") is None
        assert await ledger.set_twilio_price(cost.call_sid, D("-0.0255")) is None
        stored = await ledger.record(cost)
        # A repeated record (e.g. a spool replay) keeps the reconciliation.
        again = await ledger.record(cost)
        got = await ledger.get(cost.call_sid)
    assert stored == again == got
    assert got is not None
    assert (got.billed_seconds, got.status) == (125, "completed")
    assert next(line for line in got.items if line.kind.startswith("voice")).quantity == 3
    assert (got.twilio_price_usd, got.drift_usd) == (D("0.0255"), D(0))


async def test_twilio_price_and_drift(ledger_url: str, priced: Callable[..., CallCost]) -> None:
    cost = priced()
    async with await Ledger.open(ledger_url) as ledger:
        await ledger.record(cost)
        await ledger.set_twilio_price(cost.call_sid, D("-0.0200"))
        got = await ledger.get(cost.call_sid)
        reconciled = await ledger.reconcile(cost.call_sid, 180, "completed")
    assert got is not None and reconciled is not None
    assert (got.twilio_price_usd, got.drift_usd) == (D("0.02"), D("0.003"))
    assert reconciled.drift_usd == D("0.02") - D("0.0255")


async def test_report_per_tenant_and_vertical(
    ledger_url: str, priced: Callable[..., CallCost]
) -> None:
    calls = [
        priced(tenant="glambook", vertical="salon"),
        priced(tenant="glambook", vertical="salon", measured_seconds=D(119)),
        priced(
            tenant="acme",
            vertical="sales",
            direction="outbound",
            llm=[],
            stt=[],
            tts=[],
            measured_seconds=D(30),
        ),
        priced(tenant="acme", vertical="salon", started_at=STARTED - dt.timedelta(days=40)),
    ]
    async with await Ledger.open(ledger_url) as ledger:
        for cost in calls:
            await ledger.record(cost)
        everything = await ledger.report(floor=D("0.10"))
        recent = await ledger.report(since=STARTED.date())
        salon = await ledger.report(vertical="salon", tenant="glambook")
    assert [(r.key, r.calls) for r in everything.tenants] == [("acme", 2), ("glambook", 2)]
    assert [(r.key, r.calls) for r in everything.verticals] == [("sales", 1), ("salon", 3)]
    assert [(r.key, r.calls) for r in recent.tenants] == [("acme", 1), ("glambook", 2)]
    assert [(r.key, r.calls) for r in salon.verticals] == [("salon", 2)]
    glambook = everything.tenants[1]
    assert glambook.total_usd == calls[0].total_usd + calls[1].total_usd
    assert glambook.minutes == D(3)  # 61 s + 119 s
    assert glambook.usd_per_minute == round_usd(glambook.total_usd / 3)
    assert abs(sum(glambook.shares.values()) - 1) <= D("0.001")
    assert {"stt", "llm.input", "tts", "voice.inbound_local", "media_streams"} <= set(
        glambook.shares
    )
    # The outbound 30 s call bills a whole minute of carrier + stream: above a $0.01 floor, say.
    assert all(
        c.usd_per_minute is not None and c.usd_per_minute > D("0.10")
        for c in everything.above_floor
    )
    low_floor = await _report_floor(ledger_url, D("0.01"))
    assert len(low_floor) == 4


async def _report_floor(url: str, floor: Decimal) -> list[str]:
    async with await Ledger.open(url) as ledger:
        return [call.call_sid for call in (await ledger.report(floor=floor)).above_floor]


async def test_unpriced_lines_and_incomplete_totals_are_stored_and_reported(
    ledger_url: str, priced: Callable[..., CallCost]
) -> None:
    complete = priced()
    incomplete = priced(stt=[STTUsage("deepgram", "nova-2", D("61.37"))])
    async with await Ledger.open(ledger_url) as ledger:
        await ledger.record(complete)
        await ledger.record(incomplete)
        stored = await ledger.get(incomplete.call_sid)
        report = await ledger.report(floor=D("0"))
    assert stored == incomplete and not stored.complete
    [line] = stored.unpriced_items
    assert line.item == "stt:nova-2" and line.quantity == D("61.37") and "nova-2" in line.unpriced
    [tenant] = report.tenants
    assert tenant.calls == 2 and tenant.incomplete_calls == 1
    assert tenant.total_usd == complete.total_usd + incomplete.total_usd
    assert {c.call_sid: c.complete for c in report.above_floor} == {
        complete.call_sid: True, incomplete.call_sid: False}
    assert report.to_dict()["tenants"][0]["incomplete_calls"] == 1


async def test_a_ledger_of_the_first_schema_is_upgraded_with_its_records_complete(
    ledger_url: str, priced: Callable[..., CallCost]
) -> None:
    """Migration 2 on a database that holds calls recorded before unpriced lines existed."""
    from tollbridge.costs.database import connect
    from tollbridge.costs.migrations import BOOTSTRAP

    old = priced()
    db = await connect(ledger_url)
    try:
        async with db.transaction() as tx:
            await tx.execute(BOOTSTRAP.format(**db.types))
            for statement in MIGRATIONS[0].statements:
                await tx.execute(statement.format(**db.types))
            await tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                1, MIGRATIONS[0].name, dt.datetime.now(dt.UTC))
            await tx.execute(
                "INSERT INTO calls (call_sid, tenant, vertical, direction, number_type, "
                "from_number, to_number, started_at, measured_seconds, total_usd, "
                "catalog_version, ended_by, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                old.call_sid, old.tenant, old.vertical, old.direction, old.number_type,
                old.from_number, old.to_number, old.started_at, old.measured_seconds,
                old.items[0].usd, old.catalog_version, "", "measured")
            line = old.items[0]
            await tx.execute(
                "INSERT INTO line_items (call_sid, position, item, provider, quantity, unit, "
                "unit_price_usd, usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                old.call_sid, 0, line.item, line.provider, line.quantity, line.unit,
                line.unit_price_usd, line.usd)
    finally:
        await db.close()
    async with await Ledger.open(ledger_url) as ledger:
        stored = await ledger.get(old.call_sid)
        report = await ledger.report()
    assert stored is not None and stored.complete and stored.items == (line,)
    assert stored.failed_provider == ""
    assert report.tenants[0].incomplete_calls == 0


async def test_migrations_apply_once_and_refuse_unknown_versions(ledger_url: str) -> None:
    async with await Ledger.open(ledger_url) as ledger:
        async with ledger._db.transaction() as tx:
            versions = await tx.fetch("SELECT version FROM schema_migrations ORDER BY version")
    assert [row["version"] for row in versions] == [m.version for m in MIGRATIONS]
    async with await Ledger.open(ledger_url) as ledger:  # reopening applies nothing new
        async with ledger._db.transaction() as tx:
            await tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                999,
                "from the future",
                dt.datetime.now(dt.UTC),
            )
    with pytest.raises(RuntimeError, match="newer or different version"):
        await Ledger.open(ledger_url)


async def test_bad_url_is_refused() -> None:
    with pytest.raises(LedgerError, match="unsupported ledger URL 'mysql://u:\\*\\*\\*@h/db'"):
        await Ledger.open("mysql://u:secret@h/db")


async def test_record_and_callback_racing_never_lose_the_callback(
    ledger_url: str, priced: Callable[..., CallCost]
) -> None:
    costs = [priced() for _ in range(20)]
    async with await Ledger.open(ledger_url) as ledger:
        await asyncio.gather(
            *(
                step
                for cost in costs
                for step in (ledger.reconcile(cost.call_sid, 125, "completed"), ledger.record(cost))
            )
        )
        stored = [await ledger.get(cost.call_sid) for cost in costs]
    assert all(got is not None and got.billed_seconds == 125 for got in stored)


async def test_a_recording_is_billed_from_twilio_s_duration_early_or_late(
    ledger_url: str, priced: Callable[..., CallCost]
) -> None:
    early, late, unrecorded = priced(recording=True), priced(recording=True), priced()
    async with await Ledger.open(ledger_url) as ledger:
        assert await ledger.set_recording(early.call_sid, 125) is None  # before the record
        await ledger.record(early)
        await ledger.record(early)  # a spool replay keeps it
        await ledger.record(late)
        await ledger.set_recording(late.call_sid, 30)
        await ledger.reconcile(late.call_sid, 61, "completed")  # call time: not the recording
        await ledger.record(unrecorded)
        got = {c.call_sid: await ledger.get(c.call_sid) for c in (early, late, unrecorded)}
    recording = {sid: next((i for i in cost.items if i.item == "recording"), None)
                 for sid, cost in got.items() if cost}
    assert [recording[early.call_sid].quantity, recording[late.call_sid].quantity] == [3, 1]
    assert recording[late.call_sid].usd == D("0.0025")
    assert got[early.call_sid].recorded_seconds == 125
    assert got[early.call_sid].total_usd == early.total_usd + 3 * D("0.0025")
    assert recording[unrecorded.call_sid] is None
    assert [line.usd for line in early.items if line.item == "recording"] == [0]


async def test_callbacks_for_calls_never_recorded_expire(
    ledger_url: str, priced: Callable[..., CallCost]
) -> None:
    cost = priced()
    async with await Ledger.open(ledger_url) as ledger:
        await ledger.reconcile("CA" + "e" * 32, 61, "completed")  # never recorded
        await ledger.set_recording("CA" + "f" * 32, 42)
        cutoff = dt.datetime.now(dt.UTC)
        await ledger.reconcile(cost.call_sid, 125, "completed")  # its record is still coming
        expired = await ledger.expire_pending(cutoff)
        assert await ledger.expire_pending(cutoff) == []  # gone
        await ledger.record(cost)
        got = await ledger.get(cost.call_sid)
    assert sorted((row["call_sid"], row["billed_seconds"], row["recorded_seconds"])
                  for row in expired) == [("CA" + "e" * 32, 61, None), ("CA" + "f" * 32, None, 42)]
    assert got is not None and got.billed_seconds == 125  # the fresh one was kept


async def test_a_ledger_with_only_the_first_migration_gets_the_later_ones(ledger_url: str) -> None:
    """Migrations developed side by side: a ledger holding 1 (and not the numbers between)
    gets whatever it lacks, in number order."""
    async with await Ledger.open(ledger_url) as ledger:
        async with ledger._db.transaction() as tx:
            for table in ("daily_calls", "daily_items", "turns", "handoffs", "line_items", "calls",
                          "pending_callbacks"):
                await tx.execute(f"DROP TABLE {table}")
            await tx.execute("DELETE FROM schema_migrations")
            first = MIGRATIONS[0]
            for statement in first.statements:
                await tx.execute(statement.format(**ledger._db.types))
            await tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                first.version, first.name, dt.datetime.now(dt.UTC),
            )
    async with await Ledger.open(ledger_url) as ledger:
        async with ledger._db.transaction() as tx:
            versions = await tx.fetch("SELECT version FROM schema_migrations ORDER BY version")
        await ledger.set_recording("CA" + "a" * 32, 5)  # the column migration 4 adds
    assert [row["version"] for row in versions] == sorted(m.version for m in MIGRATIONS)
    assert 4 in [row["version"] for row in versions]


async def test_the_provider_whose_failure_ended_a_call_is_stored(
    ledger_url: str, priced: Callable[..., CallCost]
) -> None:
    failed = priced(ended_by="provider_failed", failed_provider="deepgram.stt/nova-3")
    fine = priced(ended_by="caller_hung_up")
    async with await Ledger.open(ledger_url) as ledger:
        for cost in (failed, fine):
            await ledger.record(cost)
        stored_failed, stored_fine = await ledger.get(failed.call_sid), await ledger.get(fine.call_sid)
    assert stored_failed == failed and stored_failed.failed_provider == "deepgram.stt/nova-3"
    assert stored_fine is not None and stored_fine.failed_provider == ""
    assert CallCost.from_dict(failed.to_dict()) == failed  # as the spool keeps it


async def test_each_agents_lines_and_the_handoffs_are_stored_and_reported(
    ledger_url: str, priced: Callable[..., CallCost]
) -> None:
    two_agents = priced(
        llm=[LLMRequestUsage("openai", "gpt-4o-mini", 900, 0, 0, 0, 40, agent="front_desk"),
             LLMRequestUsage("openai", "gpt-4o", 3100, 1024, 0, 0, 90, agent="colour"),
             LLMRequestUsage("openai", "gpt-4o", 3500, 1024, 0, 0, 60, agent="colour")],
        tts=[TTSUsage("deepgram", "aura-2-thalia-en", 130, agent="front_desk"),
             TTSUsage("deepgram", "aura-2-athena-en", 280, agent="colour")],
        handoffs=[Handoff(D("12.792"), "front_desk", "colour")],
    )
    one_agent = priced()
    async with await Ledger.open(ledger_url) as ledger:
        for cost in (two_agents, one_agent):
            await ledger.record(cost)
        got = await ledger.get(two_agents.call_sid)
        report = await ledger.report()
    assert got == two_agents
    assert got.handoffs == (Handoff(D("12.792"), "front_desk", "colour"),)
    colour = [line for line in got.items if line.agent == "colour"]
    assert {line.item for line in colour} == {
        "llm.input:gpt-4o", "llm.cached_input:gpt-4o", "llm.output:gpt-4o", "tts:aura-2-athena-en"}
    by_agent = {(row.vertical, row.agent): row for row in report.agents}
    assert set(by_agent) == {("salon", "front_desk"), ("salon", "colour")}  # not the 1-agent call
    assert by_agent[("salon", "colour")].calls == 1
    assert by_agent[("salon", "colour")].total_usd == sum(line.usd for line in colour)
    assert by_agent[("salon", "colour")].tts_usd == next(
        line.usd for line in colour if line.item.startswith("tts"))
    assert two_agents.agent_usd() == {row.agent: row.total_usd for row in report.agents}


async def test_calls_recorded_before_migration_7_get_their_unheard_speech_filled_in(
    ledger_url: str, priced: Callable[..., CallCost]
) -> None:
    """Reports sum each call's stored unheard speech in SQL; calls recorded before it was
    stored get it computed from their line items, and the daily totals from the calls,
    when the ledger migrates."""
    cut_off = priced(tts=[TTSUsage("deepgram", "aura-2-thalia-en", 300, 100)], heard_characters=250)
    assert cut_off.unheard_speech_usd > 0
    async with await Ledger.open(ledger_url) as ledger:
        await ledger.record(cut_off)
        await ledger.record(plain := priced())
        async with ledger._db.transaction() as tx:  # back to the schema before migration 7
            for statement in ("DROP TABLE turns", "DROP TABLE daily_calls", "DROP TABLE daily_items",
                              "DROP INDEX calls_started",
                              "ALTER TABLE calls DROP COLUMN unheard_speech_usd",
                              "DELETE FROM schema_migrations WHERE version = 7"):
                await tx.execute(statement)
    async with await Ledger.open(ledger_url) as ledger:
        [tenant] = (await ledger.report()).tenants
    assert tenant.unheard_speech_usd == cut_off.unheard_speech_usd
    assert tenant.unheard_characters == 150
    assert tenant.calls == 2 and tenant.total_usd == cut_off.total_usd + plain.total_usd
