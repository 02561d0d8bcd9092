"""A whole call's cost record: replayed through the bridge, priced, stored, reconciled."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import httpx
from structlog.testing import capture_logs

from tests.conftest import AUTH_TOKEN, FIXTURES, running_bridge
from tollbridge.bookkeeper import Bookkeeper
from tollbridge.config import Vertical
from tollbridge.costs.catalog import Catalog
from tollbridge.costs.ledger import Ledger
from tollbridge.costs.spool import SpoolingLedger
from tollbridge.testing.cassette import Cassette
from tollbridge.testing.local_call import run_local_call
from tollbridge.testing.softphone import CallScript
from tollbridge.transports.twilio.caller_audio import load_caller_audio
from tollbridge.transports.twilio.signature import SignatureChecker

SPEED = 2.0
"""These calls are about their records, not their timing: the caller plays at twice real time
(the fakes keep the audio clock; a local call restates its seconds on the caller's clock)."""
SPEECH = load_caller_audio(FIXTURES / "calls" / "salon_barge_in_dtmf.wav")[: 8000 * 6]
CASSETTE = Cassette(
    stt=[{"at": 4.0, "transcript": "what are your opening hours", "is_final": True,
          "speech_final": True}],
    llm=[
        {"match": "opening hours", "tool_calls": [{"name": "opening_hours", "arguments": {}}]},
        {"match": "Monday to Friday", "text": "We are open Monday to Friday, eight to six."},
    ],
)
# List prices, written out by hand (pricing.md), to check the catalog and the arithmetic.
PER_MINUTE = {"voice.inbound_local": Decimal("0.0085"), "media_streams": Decimal("0.0044"),
              "number.local": Decimal("1.15") / 1000}
STT_PER_SECOND = Decimal("0.0048") / 60
GPT_4O_MINI = {"input": Decimal("0.15"), "cached_input": Decimal("0.075"), "output": Decimal("0.60")}
AURA_2_PER_CHAR = Decimal("0.030") / 1000
COMPUTE_PER_CORE_HOUR = Decimal("0.05")  # the catalog's stated assumption


def usd(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


async def test_a_replayed_call_leaves_one_priced_record(frontdesk, ledger_url, tmp_path):
    call = await run_local_call(frontdesk, audio=SPEECH, cassette=CASSETTE, ledger_url=ledger_url,
                                spool_path=tmp_path / "spool", settle_s=1.0,
                                user_speech_timeout=0.3, speed=SPEED)
    async with await Ledger.open(ledger_url) as ledger:
        stored = await ledger.get(call.cost.call_sid)
        report = await ledger.report(tenant="acme")
    assert stored is not None and stored == call.cost
    assert sum(row.calls for row in report.tenants) == 1

    usage = call.usage
    expected: dict[str, Decimal] = {}
    minutes = 1  # a ~7 s call bills one whole minute per carrier leg and stream
    for item, rate in PER_MINUTE.items():
        expected[item] = usd(minutes * rate)
    [stt] = usage.stt
    expected["stt:nova-3"] = usd(stt.audio_seconds * STT_PER_SECOND)
    for kind, rate in GPT_4O_MINI.items():
        tokens = sum(
            getattr(r, {"input": "input_tokens", "cached_input": "cached_input_tokens",
                        "output": "output_tokens"}[kind])
            for r in usage.llm
        )
        if tokens:
            expected[f"llm.{kind}:gpt-4o-mini"] = usd(tokens * rate / 1_000_000)
    [tts] = usage.tts
    expected["tts:aura-2-thalia-en"] = usd(tts.characters * AURA_2_PER_CHAR)
    assert 0 < usage.compute_cpu_seconds < 10  # the bridge's own CPU, estimated per call
    expected["compute"] = usd(usage.compute_cpu_seconds * COMPUTE_PER_CORE_HOUR / 3600)

    # the front desk's prompt and tools are far below the 1,024 tokens OpenAI caches from
    assert not call.prompt_cache_hit_after_first_turn
    got = {item.item: item.usd for item in stored.items if item.usd or item.item in expected}
    assert got == expected
    assert stored.total_usd == sum(expected.values())


def forced_past_validation(vertical: Vertical, **models: str) -> Vertical:
    """The vertical with some stages' models swapped after loading, as if validation had
    been skipped: `load_vertical` itself refuses models with no price."""
    chain = [
        replace(stage, options=stage.options.model_copy(update={"model": models[stage.name]}))
        if stage.name in models else stage
        for stage in vertical.chain
    ]
    return replace(vertical, chain=chain, budget_usd=Decimal("5"))


async def test_a_call_with_unpriced_models_still_leaves_its_record(frontdesk, ledger_url, tmp_path):
    """nova-2 has no catalog price and gpt-4o-mini-unpriced none in genai-prices: the call runs
    (its budget checked on every usage report), and its record is written, flagged."""
    vertical = forced_past_validation(
        frontdesk, **{"deepgram.stt": "nova-2", "openai.llm": "gpt-4o-mini-unpriced"})
    with capture_logs() as logged:
        call = await run_local_call(vertical, audio=SPEECH, cassette=CASSETTE,
                                    ledger_url=ledger_url, spool_path=tmp_path / "spool",
                                    settle_s=1.0, user_speech_timeout=0.3, speed=SPEED)
    assert call.cost.ended_by != "" and "Monday to Friday" in call.transcript
    # the budget, checked on each of the usage reports, notes each unpriced item once
    noted = [e["item"] for e in logged if e["event"] == "budget_counts_priced_usage_only"]
    assert sorted(noted) == sorted(set(noted)) and "llm.input:gpt-4o-mini-unpriced" in noted
    async with await Ledger.open(ledger_url) as ledger:
        stored = await ledger.get(call.cost.call_sid)
        report = await ledger.report(tenant="acme")
    assert stored is not None and stored == call.cost
    assert not stored.complete
    unpriced = {line.item: line for line in stored.unpriced_items}
    [stt] = call.usage.stt
    assert unpriced["stt:nova-2"].quantity == stt.audio_seconds > 0
    assert unpriced["stt:nova-2"].usd == 0 and "nova-3" in unpriced["stt:nova-2"].unpriced
    llm_tokens = sum(r.input_tokens + r.output_tokens + r.cached_input_tokens for r in call.usage.llm)
    assert sum(line.quantity for item, line in unpriced.items() if item.startswith("llm.")) == (
        llm_tokens) > 0
    priced = {line.item: line.usd for line in stored.items if not line.unpriced}
    assert priced["tts:aura-2-thalia-en"] > 0 and priced["voice.inbound_local"] > 0
    assert stored.total_usd == sum(priced.values())
    [tenant] = report.tenants
    assert tenant.incomplete_calls == 1


async def test_twilio_status_callback_reconciles_the_record(frontdesk, ledger_url, tmp_path):
    ledger = await SpoolingLedger.open(ledger_url, tmp_path / "spool")
    bookkeeper = Bookkeeper(Catalog.load(), [frontdesk], ledger)
    try:
        async with running_bridge(frontdesk, CASSETTE) as running:
            record_and_note = running.bridge.on_finished

            async def on_finished(usage):
                await bookkeeper.call_finished(usage)
                await record_and_note(usage)

            running.bridge.on_finished = on_finished

            async def on_status(update):
                await bookkeeper.call_status(update.call_sid, update.duration_seconds, update.status)

            running.bridge.on_status = on_status
            phone = await running.softphone().call(CallScript(
                audio=SPEECH, parameters={"vertical": "frontdesk", "tenant": "acme"}, settle_s=1.0,
                speed=SPEED))
            await running.finished()
            form = {"CallSid": phone.call_sid, "AccountSid": "AC" + "3" * 32,
                    "CallStatus": "completed", "CallDuration": "61", "From": "+15550109999",
                    "To": "+15550100900"}
            url = running.url + "/status"
            async with httpx.AsyncClient() as client:
                headers = {"X-Twilio-Signature": SignatureChecker(AUTH_TOKEN).sign(url, form)}
                assert (await client.post(url, data=form, headers=headers)).status_code == 204
            await bookkeeper.drain()
        stored = await ledger.get(phone.call_sid)
    finally:
        await bookkeeper.close()
    assert stored.billed_seconds == 61 and stored.measured_seconds < 15
    carrier = next(i for i in stored.items if i.item == "voice.inbound_local")
    assert carrier.quantity == 2  # 61 s billed: two whole minutes
    assert carrier.usd == usd(2 * PER_MINUTE["voice.inbound_local"])


async def test_a_ledger_outage_during_a_call_loses_nothing(frontdesk, tmp_path: Path):
    database = tmp_path / "volume" / "ledger.db"
    database.parent.mkdir()
    url = f"sqlite:///{database}"
    ledger = await SpoolingLedger.open(url, tmp_path / "spool.jsonl", retry_initial=0.1,
                                       retry_max=0.2)
    await ledger.close()  # between calls, the volume the ledger lives on goes away:
    shutil.rmtree(database.parent)  # every write fails
    bookkeeper = Bookkeeper(Catalog.load(), [frontdesk], ledger)
    try:
        async with running_bridge(frontdesk, CASSETTE) as running:
            note = running.bridge.on_finished

            async def on_finished(usage):
                await bookkeeper.call_finished(usage)
                await note(usage)

            running.bridge.on_finished = on_finished
            phone = await running.softphone().call(CallScript(
                audio=SPEECH, parameters={"vertical": "frontdesk", "tenant": "acme"}, settle_s=1.0,
                speed=SPEED))
            await running.finished()
            await bookkeeper.drain()
        assert ledger.pending == 1  # spooled, not lost
        database.parent.mkdir()  # the volume comes back
        async with asyncio.timeout(10):
            while ledger.pending:
                await asyncio.sleep(0.05)
    finally:
        await bookkeeper.close()
    async with await Ledger.open(url) as check:
        stored = await check.get(phone.call_sid)
    assert stored is not None and stored.total_usd > 0


async def test_twilio_price_is_fetched_after_the_call_and_drift_stored(frontdesk, ledger_url,
                                                                       tmp_path, make_usage):
    """Twilio fills in a call's price a while after it ends; we read it and keep both figures."""
    from aiohttp import web

    from tollbridge.costs.pricing import price_call
    from tollbridge.transports.twilio.rest import TwilioRest

    account, fetched = "AC" + "5" * 32, []
    usage = make_usage(tenant="acme", vertical="frontdesk")

    async def call_resource(request: web.Request) -> web.Response:
        fetched.append(request.match_info["sid"])
        price = None if len(fetched) == 1 else "-0.01700"  # not set yet, then set
        return web.json_response({"sid": request.match_info["sid"], "status": "completed",
                                  "price": price, "price_unit": "USD", "duration": "61"})

    app = web.Application()
    app.router.add_get(f"/2010-04-01/Accounts/{account}/Calls/{{sid}}.json", call_resource)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    rest = TwilioRest(account, AUTH_TOKEN, api_base_url=f"http://127.0.0.1:{runner.addresses[0][1]}")
    ledger = await SpoolingLedger.open(ledger_url, tmp_path / "spool")

    async def price(call_sid):
        return await rest.call_price(call_sid, waits=(0.0, 0.05))

    bookkeeper = Bookkeeper(Catalog.load(), [frontdesk], ledger, twilio_price=price)
    try:
        await bookkeeper.call_finished(usage)
        await bookkeeper.call_status(usage.call_sid, 61, "completed")
        await bookkeeper.drain()
        stored = await ledger.get(usage.call_sid)
    finally:
        await bookkeeper.close()
        await rest.close()
        await runner.cleanup()
    assert fetched == [usage.call_sid, usage.call_sid]
    assert stored.twilio_price_usd == Decimal("0.017")
    ours = sum(i.usd for i in price_call(usage, Catalog.load()).items
               if i.item == "voice.inbound_local")
    assert stored.drift_usd == Decimal("0.017") - ours  # Twilio's figure minus our carrier line


async def test_an_inbound_recording_is_billed_once_twilio_reports_it(frontdesk, tmp_path):
    """The vertical records: the call's record carries a zero recording line until Twilio's
    signed recording callback says how long the recording is; then that is billed."""
    from dataclasses import replace

    from tollbridge.transports.twilio.server import RecordingUpdate

    recording = replace(frontdesk, telephony=frontdesk.telephony.model_copy(
        update={"recording": True}))
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    bookkeeper = await Bookkeeper.open([recording], ledger_url, tmp_path / "spool")
    try:
        async with running_bridge(recording, CASSETTE) as running:
            note = running.bridge.on_finished

            async def on_finished(usage):
                await bookkeeper.call_finished(usage)
                await note(usage)

            async def on_recording(update: RecordingUpdate):
                await bookkeeper.recording_finished(update.call_sid, update.duration_seconds)

            running.bridge.on_finished, running.bridge.on_recording = on_finished, on_recording
            phone = await running.softphone().call(CallScript(
                audio=SPEECH, parameters={"vertical": "frontdesk", "tenant": "acme"}, settle_s=1.0,
                speed=SPEED))
            await running.finished()
            await bookkeeper.drain()
            before = await bookkeeper.ledger.get(phone.call_sid)
            form = {"AccountSid": "AC" + "3" * 32, "CallSid": phone.call_sid,
                    "RecordingSid": "RE" + "6" * 32, "RecordingStatus": "completed",
                    "RecordingDuration": "65", "RecordingChannels": "1"}
            url = running.url + "/recording-status"
            async with httpx.AsyncClient() as client:
                headers = {"X-Twilio-Signature": SignatureChecker(AUTH_TOKEN).sign(url, form)}
                assert (await client.post(url, data=form, headers=headers)).status_code == 204
            await bookkeeper.drain()
            after = await bookkeeper.ledger.get(phone.call_sid)
    finally:
        await bookkeeper.close()
    [unbilled] = [i for i in before.items if i.item == "recording"]
    [billed] = [i for i in after.items if i.item == "recording"]
    assert unbilled.usd == 0  # asked for; nothing recorded yet, nothing charged
    assert (billed.quantity, billed.usd) == (2, 2 * Decimal("0.0025"))  # 65 s: two minutes
    assert after.total_usd == before.total_usd + billed.usd
    assert after.recorded_seconds == 65


async def test_a_callback_for_a_call_never_seen_expires_and_is_logged(frontdesk, tmp_path):
    from structlog.testing import capture_logs

    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with capture_logs() as logged:
        bookkeeper = await Bookkeeper.open([frontdesk], ledger_url, tmp_path / "spool",
                                           pending_ttl_s=0.2)
        try:
            await bookkeeper.call_status("CA" + "e" * 32, 61, "completed")
            await bookkeeper.drain()
            async with asyncio.timeout(5):
                while not any(e["event"] == "callback_expired" for e in logged):
                    await asyncio.sleep(0.05)
        finally:
            await bookkeeper.close()
    async with await Ledger.open(ledger_url) as ledger, ledger._db.transaction() as tx:
        left = await tx.fetch("SELECT call_sid FROM pending_callbacks")
    [expired] = [e for e in logged if e["event"] == "callback_expired"]
    assert expired["call_sid"] == "CA" + "e" * 32 and expired["billed_seconds"] == 61
    assert left == []
