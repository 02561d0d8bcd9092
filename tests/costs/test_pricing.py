from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import genai_prices
import pytest

from tollbridge.costs.catalog import Catalog
from tollbridge.costs.lineitem import CallCost, LineItem, round_usd
from tollbridge.costs.pricing import (
    price_call,
    rebill,
    with_recording,
    with_twilio_price,
    without_savings,
)
from tollbridge.costs.usage import CallUsage, LLMRequestUsage, RealtimeUsage, STTUsage, TTSUsage

from .conftest import STARTED

MakeUsage = Callable[..., CallUsage]
D = Decimal


def lines(cost: CallCost) -> dict[str, LineItem]:
    return {line.item: line for line in cost.items}


def test_61_seconds_inbound_local_bills_two_minutes(
    catalog: Catalog, make_usage: MakeUsage
) -> None:
    got = lines(price_call(make_usage(), catalog))
    assert list(got) == ["number.local", "voice.inbound_local", "media_streams"]
    voice = got["voice.inbound_local"]
    assert (voice.quantity, voice.unit, voice.unit_price_usd, voice.usd) == (
        D(2),
        "minute",
        D("0.0085"),
        D("0.017"),
    )
    assert got["media_streams"].usd == 2 * D("0.0044")
    number = got["number.local"]  # 1.15 a month spread over 1,000 minutes
    assert (number.quantity, number.unit_price_usd, number.usd) == (D(2), D("0.00115"), D("0.0023"))


def test_billed_seconds_win_over_measured(catalog: Catalog, make_usage: MakeUsage) -> None:
    cost = price_call(make_usage(measured_seconds=D(59), billed_seconds=61), catalog)
    assert lines(cost)["voice.inbound_local"].quantity == 2
    assert cost.seconds == 61


def test_zero_seconds_cost_no_minutes(catalog: Catalog, make_usage: MakeUsage) -> None:
    cost = price_call(make_usage(measured_seconds=D(0), billed_seconds=0), catalog)
    assert [line.quantity for line in cost.items] == [0, 0, 0]  # kept, for later reconciliation
    assert cost.total_usd == 0
    assert cost.usd_per_minute is None


def test_toll_free_outbound_and_recording(catalog: Catalog, make_usage: MakeUsage) -> None:
    toll_free = lines(
        price_call(
            make_usage(number_type="toll_free", recording=True, recorded_seconds=D(58),
                       monthly_minutes_per_number=500),
            catalog,
        )
    )
    assert toll_free["voice.inbound_toll_free"].usd == 2 * D("0.022")
    assert toll_free["number.toll_free"].unit_price_usd == D("2.15") / 500
    assert toll_free["recording"].usd == D("0.0025")  # 58 s recorded: one whole minute
    outbound = lines(price_call(make_usage(direction="outbound", measured_seconds=D(180)), catalog))
    assert outbound["voice.outbound"].usd == 3 * D("0.014")
    assert "recording" not in outbound


def test_stt_bills_by_the_second(catalog: Catalog, make_usage: MakeUsage) -> None:
    usage = make_usage(
        measured_seconds=D(250),
        stt=[
            STTUsage("deepgram", "nova-3-general", D("200.5")),
            STTUsage("deepgram", "nova-3-general", D("49.5")),
            STTUsage("deepgram", "nova-3-multilingual", D(60)),
        ],
    )
    got = lines(price_call(usage, catalog))
    nova = got["stt:nova-3-general"]
    assert (nova.quantity, nova.unit) == (D(250), "second")
    assert nova.usd == D(250) / 60 * D("0.0048") == D("0.02")
    assert got["stt:nova-3-multilingual"].usd == D("0.0058")
    assert got["voice.inbound_local"].quantity == 5  # while Twilio rounds 250 s up to 5 minutes


def test_tts_per_character_with_avoided_memo(catalog: Catalog, make_usage: MakeUsage) -> None:
    usage = make_usage(
        tts=[
            TTSUsage("deepgram", "aura-2-thalia-en", 1000, avoided_characters=300),
            TTSUsage("deepgram", "aura-2-thalia-en", 500),
            TTSUsage("elevenlabs", "eleven_flash_v2_5", 2000),
        ]
    )
    got = lines(price_call(usage, catalog))
    assert got["tts:aura-2-thalia-en"].usd == D(1500) / 1000 * D("0.030") == D("0.045")
    memo = got["tts.avoided:aura-2-thalia-en"]
    assert (memo.quantity, memo.unit, memo.usd) == (D(300), "char", D(0))
    assert got["tts:eleven_flash_v2_5"].usd == D("0.1")


def _gross(req: LLMRequestUsage) -> genai_prices.Usage:
    return genai_prices.Usage(
        input_tokens=req.total_input_tokens,
        cache_read_tokens=req.cached_input_tokens,
        cache_write_tokens=req.cache_write_5m_tokens + req.cache_write_1h_tokens,
        cache_write_5m_tokens=req.cache_write_5m_tokens,
        cache_write_1h_tokens=req.cache_write_1h_tokens,
        output_tokens=req.output_tokens,
    )


def _llm_total(cost: CallCost) -> Decimal:
    return sum(
        (line.usd for line in cost.items if line.kind.startswith(("llm.", "realtime."))), D(0)
    )


def test_openai_cached_split(catalog: Catalog, make_usage: MakeUsage) -> None:
    req = LLMRequestUsage(
        "openai", "gpt-4o-mini", input_tokens=10_000, cached_input_tokens=3_000, output_tokens=500
    )
    cost = price_call(make_usage(llm=[req, req]), catalog)
    got = lines(cost)
    assert got["llm.input:gpt-4o-mini"].usd == 20_000 * D("0.15") / 1_000_000 == D("0.003")
    assert got["llm.cached_input:gpt-4o-mini"].usd == 6_000 * D("0.075") / 1_000_000
    assert got["llm.output:gpt-4o-mini"].usd == 1_000 * D("0.60") / 1_000_000
    # Our net buckets price exactly as genai-prices prices the gross usage.
    expected = (
        2
        * genai_prices.calc_price(
            _gross(req), "gpt-4o-mini", provider_id="openai", genai_request_timestamp=STARTED
        ).total_price
    )
    assert _llm_total(cost) == expected == D("0.00405")


def test_anthropic_cache_writes_cost_more(catalog: Catalog, make_usage: MakeUsage) -> None:
    req = LLMRequestUsage(
        "anthropic",
        "claude-haiku-4-5",
        input_tokens=1_000,
        cached_input_tokens=8_000,
        cache_write_5m_tokens=2_000,
        cache_write_1h_tokens=1_000,
        output_tokens=300,
    )
    cost = price_call(make_usage(llm=[req]), catalog)
    got = lines(cost)
    base = D("1.00") / 1_000_000
    assert got["llm.input:claude-haiku-4-5"].usd == D("0.001")
    assert got["llm.cache_write_5m:claude-haiku-4-5"].unit_price_usd == D("1.25") * base
    assert got["llm.cache_write_5m:claude-haiku-4-5"].usd == D("0.0025")
    assert got["llm.cache_write_1h:claude-haiku-4-5"].unit_price_usd == 2 * base
    assert got["llm.cache_write_1h:claude-haiku-4-5"].usd == D("0.002")
    assert got["llm.cached_input:claude-haiku-4-5"].usd == 8_000 * D("0.1") * base
    assert got["llm.output:claude-haiku-4-5"].usd == D("0.0015")
    expected = genai_prices.calc_price(
        _gross(req), "claude-haiku-4-5", provider_id="anthropic", genai_request_timestamp=STARTED
    ).total_price
    assert _llm_total(cost) == expected


def test_tiered_requests_get_their_own_lines(catalog: Catalog, make_usage: MakeUsage) -> None:
    small = LLMRequestUsage("anthropic", "claude-sonnet-4-5", input_tokens=1_000)
    huge = LLMRequestUsage("anthropic", "claude-sonnet-4-5", input_tokens=250_000)
    inputs = [
        line
        for line in price_call(make_usage(llm=[small, huge]), catalog).items
        if line.kind == "llm.input"
    ]
    assert [(line.quantity, line.unit_price_usd * 1_000_000) for line in inputs] == [
        (D(1_000), D(3)),
        (D(250_000), D(6)),
    ]


def test_realtime_text_and_audio(catalog: Catalog, make_usage: MakeUsage) -> None:
    req = RealtimeUsage(
        "openai",
        "gpt-realtime",
        text_in=300,
        text_cached_in=100,
        audio_in=400,
        audio_cached_in=200,
        text_out=100,
        audio_out=400,
    )
    cost = price_call(make_usage(realtime=[req]), catalog)
    got = lines(cost)
    per_m = {
        kind: got[f"realtime.{kind}:gpt-realtime"].unit_price_usd * 1_000_000
        for kind in (
            "text_in",
            "text_cached_in",
            "audio_in",
            "audio_cached_in",
            "text_out",
            "audio_out",
        )
    }
    assert per_m == {
        "text_in": 4,
        "text_cached_in": D("0.4"),
        "audio_in": 32,
        "audio_cached_in": D("0.4"),
        "text_out": 16,
        "audio_out": 64,
    }
    gross = genai_prices.Usage(
        input_tokens=1000,
        cache_read_tokens=300,
        input_audio_tokens=600,
        cache_audio_read_tokens=200,
        output_tokens=500,
        output_audio_tokens=400,
    )
    expected = genai_prices.calc_price(
        gross, "gpt-realtime", provider_id="openai", genai_request_timestamp=STARTED
    ).total_price
    assert _llm_total(cost) == expected == D("0.04132")


def test_without_savings_bills_what_the_cost_features_saved(
    catalog: Catalog, make_usage: MakeUsage
) -> None:
    usage = make_usage(  # 61 s: every telephony line bills 2 minutes either way
        stt=[STTUsage("deepgram", "nova-3", D(40), avoided_seconds=D(20))],
        llm=[
            LLMRequestUsage(
                "openai", "gpt-4o-mini", input_tokens=1_000, cached_input_tokens=4_000,
                output_tokens=200,
            ),
            LLMRequestUsage(
                "anthropic", "claude-haiku-4-5", input_tokens=1_000, cached_input_tokens=8_000,
                cache_write_5m_tokens=2_000, cache_write_1h_tokens=1_000, output_tokens=300,
            ),
        ],
        tts=[TTSUsage("deepgram", "aura-2-thalia-en", 1_000, avoided_characters=300)],
        realtime=[
            RealtimeUsage(
                "openai", "gpt-realtime", text_in=300, text_cached_in=100, audio_in=400,
                audio_cached_in=200, text_out=100, audio_out=400,
            )
        ],
    )
    before = repr(usage)
    plain = without_savings(usage)
    assert repr(usage) == before  # the input is not touched
    assert [r.total_input_tokens for r in plain.llm] == [5_000, 12_000]  # same prompt sizes
    telephony = {"number.local": D("0.0023"), "voice.inbound_local": D("0.017"),
                 "media_streams": D("0.0088")}
    shared = {  # lines the features do not change
        "llm.output:gpt-4o-mini": D("0.00012"),
        "llm.output:claude-haiku-4-5": D("0.0015"),
        "realtime.text_out:gpt-realtime": D("0.0016"),
        "realtime.audio_out:gpt-realtime": D("0.0256"),
    }
    with_features = {line.item: line.usd for line in price_call(usage, catalog).items}
    assert with_features == {
        **telephony,
        "stt:nova-3": D("0.0032"),  # 40 s at 0.0048/min
        "stt.avoided:nova-3": D(0),
        "llm.input:gpt-4o-mini": D("0.00015"),
        "llm.cached_input:gpt-4o-mini": D("0.0003"),  # 4,000 at 0.075/M
        "llm.input:claude-haiku-4-5": D("0.001"),
        "llm.cached_input:claude-haiku-4-5": D("0.0008"),
        "llm.cache_write_5m:claude-haiku-4-5": D("0.0025"),
        "llm.cache_write_1h:claude-haiku-4-5": D("0.002"),
        "realtime.text_in:gpt-realtime": D("0.0012"),
        "realtime.text_cached_in:gpt-realtime": D("0.00004"),
        "realtime.audio_in:gpt-realtime": D("0.0128"),
        "realtime.audio_cached_in:gpt-realtime": D("0.00008"),
        "tts:aura-2-thalia-en": D("0.03"),  # 1,000 chars at 0.030/1k
        "tts.avoided:aura-2-thalia-en": D(0),
        **shared,
    }
    without = {line.item: line.usd for line in price_call(plain, catalog).items}
    assert without == {
        **telephony,
        "stt:nova-3": D("0.0048"),  # all 60 s streamed
        "llm.input:gpt-4o-mini": D("0.00075"),  # 5,000 at 0.15/M
        "llm.input:claude-haiku-4-5": D("0.012"),  # 12,000 at 1/M, no cache writes
        "realtime.text_in:gpt-realtime": D("0.0016"),  # 400 at 4/M
        "realtime.audio_in:gpt-realtime": D("0.0192"),  # 600 at 32/M
        "tts:aura-2-thalia-en": D("0.039"),  # 1,300 chars
        **shared,
    }
    # saved: STT 0.0016 + gpt-4o-mini 0.0003 + haiku 0.0057 + realtime 0.00036 + 0.00632
    # + TTS 0.009
    assert sum(without.values()) - sum(with_features.values()) == D("0.02328")
    assert without_savings(plain) == plain  # nothing left to take away


def test_compute_per_core_hour(catalog: Catalog, make_usage: MakeUsage) -> None:
    line = lines(price_call(make_usage(compute_cpu_seconds=D(7200)), catalog))["compute"]
    assert (line.quantity, line.unit, line.usd) == (D(7200), "core-second", D("0.1"))


def test_usage_nothing_prices_is_kept_flagged_and_never_guessed(
    catalog: Catalog, make_usage: MakeUsage
) -> None:
    """A model missing from the catalog or genai-prices: its lines keep their usage, cost 0,
    say why, and the call's total counts only what is priced."""
    cost = price_call(
        make_usage(
            stt=[STTUsage("deepgram", "nova-2", D("42.5"))],
            llm=[LLMRequestUsage("anthropic", "claude-haiku-4-6", input_tokens=900,
                                 output_tokens=40),
                 LLMRequestUsage("openai", "gpt-4o-mini", input_tokens=1000, output_tokens=10)],
            tts=[TTSUsage("deepgram", "aura-2-thalia-en", 300)],
            realtime=[RealtimeUsage("openai", "gpt-4o-mini", text_in=5, audio_in=600)],
        ),
        catalog,
    )
    got = lines(cost)
    stt = got["stt:nova-2"]
    assert (stt.quantity, stt.unit, stt.unit_price_usd, stt.usd) == (D("42.5"), "second", 0, 0)
    assert "deepgram stt nova-2" in stt.unpriced and "close matches: nova-3" in stt.unpriced
    haiku = got["llm.input:claude-haiku-4-6"]
    assert haiku.quantity == 900 and haiku.usd == 0 and "claude-haiku-4-5" in haiku.unpriced
    assert got["llm.output:claude-haiku-4-6"].unpriced
    audio = got["realtime.audio_in:gpt-4o-mini"]  # a price missing for one kind only
    assert audio.quantity == 600 and "no audio_in price" in audio.unpriced
    assert not got["realtime.text_in:gpt-4o-mini"].unpriced
    assert not got["llm.input:gpt-4o-mini"].unpriced and got["llm.input:gpt-4o-mini"].usd > 0
    assert {line.item for line in cost.unpriced_items} == {
        "stt:nova-2", "llm.input:claude-haiku-4-6", "llm.output:claude-haiku-4-6",
        "realtime.audio_in:gpt-4o-mini",
    }
    assert not cost.complete and cost.to_dict()["complete"] is False
    assert cost.total_usd == sum(line.usd for line in cost.items if not line.unpriced) > 0
    assert CallCost.from_dict(cost.to_dict()) == cost
    assert price_call(make_usage(), catalog).complete


def test_a_catalog_without_a_telephony_row_still_prices_the_rest(make_usage: MakeUsage) -> None:
    only_stt = Catalog.from_toml("""
version = "t"
as_of = 2026-12-01
[[rows]]
provider = "deepgram"
item = "stt"
model = "nova-3"
unit = "minute"
usd = 0.006
granularity = "second"
source = "test"
date = 2026-12-01
""")
    cost = price_call(make_usage(stt=[STTUsage("deepgram", "nova-3", D(60))]), only_stt)
    got = lines(cost)
    assert got["stt:nova-3"].usd == D("0.006")
    assert got["voice.inbound_local"].unpriced and got["voice.inbound_local"].quantity == 2
    rebilled = lines(rebill(cost, 200, "completed"))
    assert rebilled["voice.inbound_local"].quantity == 4  # still counted, still unpriced
    assert rebilled["voice.inbound_local"].unpriced and rebilled["voice.inbound_local"].usd == 0


def test_every_line_checks_out(catalog: Catalog, make_usage: MakeUsage) -> None:
    cost = price_call(
        make_usage(
            monthly_minutes_per_number=1500,
            stt=[STTUsage("deepgram", "nova-3-multilingual", D("61.37"))],
            llm=[LLMRequestUsage("openai", "gpt-4.1-mini", 1234, 2048, 0, 0, 77)],
            compute_cpu_seconds=D("12.5"),
        ),
        catalog,
    )
    for line in cost.items:
        assert line.usd == round_usd(line.quantity * line.unit_price_usd), line
        assert line.usd == line.usd.quantize(D("0.000001"))
    assert cost.total_usd == sum(line.usd for line in cost.items)
    assert cost.catalog_version == f"{catalog.version} genai-prices/{genai_prices.__version__}"


def test_rebill_from_twilio_duration(catalog: Catalog, make_usage: MakeUsage) -> None:
    usage = make_usage(stt=[STTUsage("deepgram", "nova-3", D(61))], recording=True)
    cost = price_call(usage, catalog)
    later = lines(rebill(cost, 120, "completed"))
    assert later["voice.inbound_local"].quantity == 2
    assert later["recording"].quantity == 0  # the call's length says nothing of a recording
    assert later["stt:nova-3"] == lines(cost)["stt:nova-3"]  # audio is not call time
    unanswered = rebill(cost, 0, "no-answer")
    assert unanswered.status == "no-answer"
    assert all(line.usd == 0 for line in unanswered.items if not line.item.startswith("stt"))
    busy = lines(rebill(cost, 30, "busy"))  # not charged whatever the duration says
    assert busy["voice.inbound_local"].quantity == 0


def test_a_recording_bills_only_what_twilio_recorded(
    catalog: Catalog, make_usage: MakeUsage
) -> None:
    cost = price_call(make_usage(recording=True), catalog)
    assert lines(cost)["recording"].usd == 0  # asked for, nothing recorded yet
    recorded = with_recording(cost, 125)
    assert recorded.recorded_seconds == 125
    assert lines(recorded)["recording"].quantity == 3  # whole minutes, rounded up
    assert lines(recorded)["recording"].usd == 3 * D("0.0025")
    assert recorded.total_usd == cost.total_usd + 3 * D("0.0025")
    assert lines(rebill(recorded, 61, "completed"))["recording"].quantity == 3
    not_recording = price_call(make_usage(), catalog)
    assert with_recording(not_recording, 125).items == not_recording.items


def test_twilio_price_drift(catalog: Catalog, make_usage: MakeUsage) -> None:
    cost = with_twilio_price(price_call(make_usage(), catalog), D("-0.0255"))
    assert cost.twilio_price_usd == D("0.0255")
    assert cost.drift_usd == D("0.0255") - D("0.017")  # only the carrier minutes compare
    assert rebill(cost, 150, "completed").drift_usd == D("0.0255") - 3 * D("0.0085")


def test_line_and_cost_round_trip_as_strings(catalog: Catalog, make_usage: MakeUsage) -> None:
    cost = price_call(
        make_usage(llm=[LLMRequestUsage("openai", "gpt-4o-mini", 5, 0, 0, 0, 7)]), catalog
    )
    data = cost.to_dict()
    assert data["items"][3]["unit_price_usd"] == "0.00000015"
    assert all(isinstance(v, str) for line in data["items"] for v in line.values())
    assert CallCost.from_dict(data) == cost


def test_usage_is_validated(make_usage: MakeUsage) -> None:
    with pytest.raises(ValueError, match="direction"):
        make_usage(direction="sideways")
    with pytest.raises(ValueError, match="monthly_minutes_per_number"):
        make_usage(monthly_minutes_per_number=0)
