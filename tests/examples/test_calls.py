"""Every recorded fixture call, end to end through the real bridge, softphone and fakes.

Each call asserts on what a business would check: what was said, which tools
ran and what they changed, what Twilio was told (clear on barge-in), the
audio the caller heard, and the ledger record with its line items.
"""

from __future__ import annotations

import json
from decimal import Decimal

import aiosqlite
import pytest

from tests.conftest import FIXTURES
from tests.examples.conftest import EXAMPLES, example_env
from tollbridge.costs.ledger import Ledger

CALLS = FIXTURES / "calls"
pytestmark = [pytest.mark.usefixtures("example_databases"), pytest.mark.long(25)]


async def call(replay_call, tmp_path, vertical: str, name: str, **options):
    options.setdefault("speed", 2.0)
    options.setdefault("settle_s", 4.0)  # a caller waits for a reply; a loaded machine is slower
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    result = await replay_call(
        EXAMPLES / vertical, audio=CALLS / f"{name}.wav",
        cassette=CALLS / f"{name}.cassette.json", ledger_url=ledger, **options,
    )
    async with await Ledger.open(ledger) as opened:
        stored = await opened.get(result.cost.call_sid)
    assert stored == result.cost  # the record in the ledger is the call's priced record
    return result


def items(result) -> dict[str, Decimal]:
    return {item.kind: item.quantity for item in result.cost.items}


async def test_salon_booking_books_a_real_appointment(replay_call, tmp_path):
    result = await call(replay_call, tmp_path, "salon", "salon_booking")
    assert [t.name for t in result.tools] == ["hand_to_booking", "find_slots", "book", "end_call"]
    assert result.tools[2].result["reference"] == "GB-101"
    async with aiosqlite.connect(tmp_path / "glambook.db") as db:
        rows = await (await db.execute(
            "SELECT reference, customer_name, stylist, day, starts, status FROM appointments"
        )).fetchall()
    assert rows == [("GB-101", "Jane Doe", "Maria", "2026-11-27", "10:00", "booked")]
    assert result.said("caller")[0].startswith("Hi, I'd like to book a women's haircut")
    assert result.said("agent")[-1] == "Thanks Jane, see you Friday. Goodbye!"
    assert result.phone.ended_by == "agent_hung_up" and result.cost.ended_by == "agent"
    assert result.phone.clears == 0
    # replayed at 2x, the call is still priced for its length on a phone line
    line_seconds = result.phone.frames_sent * 0.02
    assert abs(float(result.cost.seconds) - line_seconds) < 1.5
    assert {"voice.inbound_local", "media_streams", "number.local", "stt", "llm.input",
            "llm.cached_input", "llm.output", "tts"} <= set(items(result))
    # each agent's tools and prompt are a stable prefix: once the conversation is over
    # 1,024 tokens, every turn after an agent's first is served from OpenAI's prompt cache
    assert result.prompt_cache_hit_after_first_turn
    assert [(h.from_agent, h.to_agent) for h in result.cost.handoffs] == [("front_desk", "booking")]


@pytest.mark.long(40)
async def test_salon_colour_call_is_handed_on_twice_and_each_agent_billed(replay_call, tmp_path):
    result = await call(replay_call, tmp_path, "salon", "salon_colour")
    # who answered each turn, as the caller heard it
    spoke = [who for who, _ in result.lines if who not in ("caller", "tool", "handoff")]
    assert list(dict.fromkeys(spoke)) == ["front_desk", "colour", "booking"]
    assert ("colour", "Hello, I'm Priya, the colour specialist.") in result.lines  # entry line
    assert [(h.from_agent, h.to_agent) for h in result.cost.handoffs] == [
        ("front_desk", "colour"), ("colour", "booking")]
    assert 0 < result.cost.handoffs[0].at_seconds < result.cost.handoffs[1].at_seconds
    # each agent's requests ran with its prompt, its tools and its model
    requests = [r.messages[0] for r in result.provider_fakes["openai.llm"].requests]
    offered = [sorted(t["function"]["name"] for t in body["tools"]) for body in requests]
    assert offered[0] == ["end_call", "hand_to_billing", "hand_to_booking", "hand_to_colour",
                          "opening_hours", "services_and_prices"]
    assert offered[1] == ["end_call", "find_slots", "hand_to_booking", "services_and_prices"]
    assert offered[-1] == ["book", "end_call", "find_slots", "hand_to_colour",
                           "hand_to_front_desk", "services_and_prices"]
    # the colour specialist's four requests (the last hands the caller on) run on gpt-4o
    assert [body["model"] for body in requests] == ["gpt-4o-mini"] + ["gpt-4o"] * 4 + \
        ["gpt-4o-mini"] * (len(requests) - 5)
    assert "colour specialist" in requests[1]["messages"][0]["content"]
    # each LLM and TTS line is one agent's; the colour specialist speaks in her own voice
    lines = [i for i in result.cost.items if i.kind.startswith(("llm", "tts"))]
    assert all(line.agent for line in lines)
    assert {i.item for i in lines if i.agent == "colour"} >= {
        "llm.input:gpt-4o", "llm.output:gpt-4o", "tts:aura-2-athena-en"}
    assert not any(i.item.endswith(("gpt-4o", "athena-en")) for i in lines if i.agent != "colour")
    spent = result.cost.agent_usd()
    assert list(spent) == ["front_desk", "colour", "booking"]
    assert sum(spent.values()) == sum(line.usd for line in lines)
    # her voice's characters, as Deepgram received them, are hers and billed to her alone
    athena = sum(r.characters for r in result.provider_fakes["deepgram.tts"].requests
                 if r.query.get("model") == "aura-2-athena-en")
    assert [(i.agent, i.quantity) for i in lines if i.item == "tts:aura-2-athena-en"] == [
        ("colour", athena)]
    async with aiosqlite.connect(tmp_path / "glambook.db") as db:
        rows = await (await db.execute(
            "SELECT reference, customer_name, stylist, starts FROM appointments")).fetchall()
    assert rows == [("GB-101", "Jane Doe", "Maria", "10:00")]


async def test_salon_barge_in_and_keypad(replay_call, tmp_path):
    result = await call(replay_call, tmp_path, "salon", "salon_barge_in_dtmf",
                        dtmf=[(16.0, "1"), (16.1, "#")], speed=1.0)
    # the caller talked over the greeting: Twilio was told to clear, and the
    # greeting (never heard in full) is not in the agent's memory of the call
    assert result.phone.clears >= 1 and result.phone.clear_times[0] < 3.0
    agent = result.said("agent")
    assert not any("GlamBook salon, this is Ava" in line for line in agent)
    assert "We're open Tuesday to Saturday, nine to seven." in agent
    assert "Got it, no menu needed." in agent
    assert result.stats.dtmf == ["1", "#"]
    assert [t.name for t in result.tools] == ["opening_hours", "services_and_prices", "end_call"]


async def test_sales_call_qualifies_the_lead_and_recovers_from_a_tool_error(replay_call, tmp_path):
    result = await call(replay_call, tmp_path, "sales", "sales_qualified")
    names = [t.name for t in result.tools]
    assert names.count("finish_qualification") == 2
    early = result.tools[names.index("finish_qualification")]
    assert "not yet answered: timeline" in early.result["error"]  # the tool error the model heard
    [lead] = [json.loads(line) for line in (tmp_path / "leads.jsonl").read_text().splitlines()]
    assert lead["outcome"] == "qualified" and lead["score"] == 12
    assert lead["call_sid"] == result.cost.call_sid
    assert result.cost.direction == "outbound"
    assert "voice.outbound" in items(result)
    # Anthropic prices, ElevenLabs characters
    assert any(i.item.endswith(":claude-haiku-4-5") for i in result.cost.items)
    assert any(i.item.startswith("tts:eleven_flash_v2_5") for i in result.cost.items)


async def test_sales_call_ends_politely_when_not_interested(replay_call, tmp_path):
    result = await call(replay_call, tmp_path, "sales", "sales_not_interested")
    [lead] = [json.loads(line) for line in (tmp_path / "leads.jsonl").read_text().splitlines()]
    assert lead["outcome"] == "not_interested"
    assert result.said("agent")[-1].endswith("Goodbye.")
    assert result.phone.ended_by == "agent_hung_up"


@pytest.mark.long(40)
async def test_real_estate_search_and_showing_then_the_realtime_brain_costs_more(
    replay_call, tmp_path, monkeypatch
):
    result = await call(replay_call, tmp_path, "real_estate", "real_estate_listing")
    search = result.tools[0]
    assert search.name == "search_listings"
    assert search.result["listings"] and all(
        Decimal(hit["price_usd"]) <= 500000 and hit["bedrooms"] >= 2
        for hit in search.result["listings"]
    )
    showing = next(t for t in result.tools if t.name == "schedule_showing")
    assert showing.result["scheduled"] is True and showing.result["day"] == "2026-11-28"
    async with aiosqlite.connect(tmp_path / "oneroof.db") as db:
        rows = await (await db.execute("SELECT listing_id, day, starts, name FROM showings")).fetchall()
    assert rows == [("OR-1001", "2026-11-28", "11:00", "Alex Kim")]
    assert [(h.from_agent, h.to_agent) for h in result.cost.handoffs] == [("listings", "showings")]

    # the same call through a speech-to-speech brain (one agent), on a book of its own
    (own := tmp_path / "realtime").mkdir()
    example_env(monkeypatch, own)
    realtime = await replay_call(
        EXAMPLES / "real_estate" / "realtime.vertical.toml", audio=CALLS / "real_estate_listing.wav",
        cassette=CALLS / "real_estate_listing.realtime.cassette.json",
        ledger_url=f"sqlite:///{tmp_path / 'realtime.db'}", settle_s=2.0, speed=2.0,
    )
    showing = next(t for t in realtime.tools if t.name == "schedule_showing")
    assert showing.result["scheduled"] is True
    assert realtime.phone.ended_by == "agent_hung_up"
    # the model was asked to greet, and the caller heard it before speaking
    assert realtime.conversation[0] == ("agent", realtime.vertical.greeting)
    assert realtime.phone.first_agent_audio_s is not None and realtime.phone.first_agent_audio_s < 1.0
    kinds = set(items(realtime))
    assert {"realtime.audio_in", "realtime.audio_out", "realtime.text_in"} <= kinds
    assert not {"stt", "tts"} & kinds  # one brain: no separate STT or TTS bill
    assert realtime.cost.usd_per_minute > result.cost.usd_per_minute


async def test_a_caller_hanging_up_mid_sentence_still_leaves_a_record(replay_call, tmp_path):
    result = await call(replay_call, tmp_path, "real_estate", "real_estate_hangup",
                        hang_up_at=10.0, strict=False)
    assert result.phone.ended_by == "caller_hung_up"
    assert result.cost.ended_by == "caller_hung_up"
    assert result.usage.llm == []  # they were gone before they finished asking
    stt = items(result)["stt"]
    assert Decimal("9.5") <= stt <= Decimal("10.5")  # Deepgram bills the audio it got
    assert result.cost.total_usd > 0
