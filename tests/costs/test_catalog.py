from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from tollbridge.costs.catalog import (
    Catalog,
    CatalogError,
    UnknownPriceError,
    disagreement_warning,
    stale_warning,
)

GOOD_ROW = """
[[rows]]
provider = "twilio"
item = "voice.outbound"
unit = "minute"
usd = 0.014
granularity = "minute_ceil"
source = "seed"
date = 2026-05-07
"""


def test_packaged_catalog_has_every_priced_item(catalog: Catalog) -> None:
    assert catalog.version == "2026-11-04"
    assert catalog.as_of == dt.date(2026, 11, 4)
    keys = {row.key for row in catalog.rows}
    for key in [
        ("twilio", "number.local", ""),
        ("twilio", "number.toll_free", ""),
        ("twilio", "voice.inbound_local", ""),
        ("twilio", "voice.inbound_toll_free", ""),
        ("twilio", "voice.outbound", ""),
        ("twilio", "media_streams", ""),
        ("twilio", "recording", ""),
        ("twilio", "recording_storage", ""),
        ("twilio", "amd", ""),
        ("deepgram", "stt", "nova-3"),
        ("deepgram", "stt", "nova-3-multilingual"),
        ("deepgram", "stt", "flux-general-en"),
        ("deepgram", "tts", "aura-2"),
        ("deepgram", "tts", "aura"),
        ("elevenlabs", "tts", "eleven_flash_v2_5"),
        ("elevenlabs", "tts", "eleven_turbo_v2_5"),
        ("elevenlabs", "tts", "eleven_multilingual_v2"),
        ("elevenlabs", "tts", "eleven_v3"),
        ("self", "compute", ""),
    ]:
        assert key in keys, key
    # The later readings, as documented in pricing.md.
    assert catalog.find("twilio", "number.toll_free").usd == Decimal("2.15")
    assert catalog.find("twilio", "media_streams").usd == Decimal("0.0044")
    assert "ASSUMPTION" in catalog.find("self", "compute").note
    # Floats in TOML are read as exact decimals.
    assert catalog.find("twilio", "voice.inbound_local").usd == Decimal("0.0085")


def test_unit_prices_follow_granularity(catalog: Catalog) -> None:
    stt = catalog.find("deepgram", "stt", "nova-3")
    assert (stt.line_unit, stt.unit_price) == ("second", Decimal("0.00008"))
    tts = catalog.find("deepgram", "tts", "aura-2")
    assert (tts.line_unit, tts.unit_price) == ("char", Decimal("0.00003"))
    voice = catalog.find("twilio", "voice.outbound")
    assert (voice.line_unit, voice.unit_price) == ("minute", Decimal("0.014"))


def test_error_names_the_row_and_the_key() -> None:
    text = f'version = "t"\nas_of = 2026-11-04\n{GOOD_ROW}' + GOOD_ROW.replace(
        'item = "voice.outbound"', 'item = "voice.inbound_local"'
    ).replace("usd = 0.014\n", 'usd = "cheap"\n')
    with pytest.raises(CatalogError) as err:
        Catalog.from_toml(text, where="test.toml")
    message = str(err.value)
    assert "test.toml: row 2 (twilio voice.inbound_local)" in message
    assert "key 'usd'" in message


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (("usd = 0.014\n", ""), "usd"),  # missing
        (("usd = 0.014", "usd = -1"), "usd"),  # negative
        (("source", "sauce"), "sauce"),  # typo: unknown key
        (('unit = "minute"', 'unit = "1k chars"'), "unit"),  # unit does not fit granularity
        (('granularity = "minute_ceil"', 'granularity = "hourly"'), "granularity"),
        (("date = 2026-05-07", 'date = "soon"'), "date"),
    ],
)
def test_each_bad_key_is_named(change: tuple[str, str], key: str) -> None:
    text = f'version = "t"\nas_of = 2026-11-04\n{GOOD_ROW.replace(*change)}'
    with pytest.raises(CatalogError, match=rf"row 1 \(twilio voice.outbound\): key '{key}'"):
        Catalog.from_toml(text)


def test_header_and_duplicate_errors() -> None:
    with pytest.raises(CatalogError, match="key 'as_of'"):
        Catalog.from_toml(f'version = "t"\n{GOOD_ROW}')
    with pytest.raises(CatalogError, match=r"two rows for 'twilio voice\.outbound'"):
        Catalog.from_toml(f'version = "t"\nas_of = 2026-11-04\n{GOOD_ROW}{GOOD_ROW}')
    with pytest.raises(CatalogError, match="not valid TOML"):
        Catalog.from_toml("version = ")


def test_overrides_replace_a_rate_and_mark_the_version(catalog: Catalog) -> None:
    seed = catalog.with_overrides(
        [
            {
                "provider": "twilio",
                "item": "media_streams",
                "usd": Decimal("0.004"),
                "source": "seed article",
                "date": dt.date(2026, 5, 7),
            },
        ]
    )
    row = seed.find("twilio", "media_streams")
    assert row.usd == Decimal("0.004")
    assert (row.unit, row.granularity, row.note) == ("minute", "minute_ceil", "")
    assert seed.version.startswith(f"{catalog.version}+") and seed.version != catalog.version
    assert catalog.find("twilio", "media_streams").usd == Decimal("0.0044")  # base untouched
    assert catalog.with_overrides([]) is catalog


def test_override_errors_name_the_override() -> None:
    with pytest.raises(CatalogError, match=r"override 1 \(acme stt x\): key 'unit'"):
        Catalog.load().with_overrides(
            [
                {
                    "provider": "acme",
                    "item": "stt",
                    "model": "x",
                    "usd": 1,
                    "source": "s",
                    "date": dt.date(2026, 1, 1),
                    "granularity": "second",
                },
            ]
        )


def dated_catalog(*dates: dt.date) -> Catalog:
    """A catalog with one row per date (models m0, m1, …), as the file would say it."""
    rows = "".join(
        f"""
[[rows]]
provider = "deepgram"
item = "stt"
model = "m{n}"
unit = "minute"
usd = 0.005
granularity = "second"
source = "test"
date = {day.isoformat()}
"""
        for n, day in enumerate(dates)
    )
    return Catalog.from_toml(f'version = "t"\nas_of = 2026-12-01\n{rows}')


def test_staleness_is_judged_by_each_rows_own_date() -> None:
    today = dt.date(2026, 12, 3)
    catalog = dated_catalog(
        dt.date(2026, 5, 7),  # seven months before: due for a re-quote
        dt.date(2026, 6, 3),  # exactly six months: not yet
        dt.date(2026, 11, 20),  # recent
    )
    assert [row.model for row in catalog.rows if row.is_stale(today)] == ["m0"]
    assert [r.model for r in catalog.rows if r.is_stale(dt.date(2026, 12, 4))] == ["m0", "m1"]
    warning = stale_warning(catalog.rows, today)
    assert "1 price(s)" in warning and "deepgram stt m0 (2026-05-07)" in warning
    assert "m1" not in warning and "m2" not in warning
    assert stale_warning(catalog.rows, dt.date(2026, 11, 6)) == ""


def test_packaged_rows_past_six_months_are_named_although_the_catalog_is_recent(
    catalog: Catalog,
) -> None:
    """The catalog as a whole is a month old; nine of its rows are not."""
    today = dt.date(2026, 12, 3)
    stale = {row.label for row in catalog.rows if row.is_stale(today)}
    assert len(stale) == 9
    assert {"twilio voice.outbound", "twilio voice.inbound_toll_free",
            "deepgram tts aura-2"} <= stale
    assert "twilio voice.inbound_local" not in stale  # read 2026-09-18
    assert stale_warning(catalog.rows + catalog.rows, today).count("twilio voice.outbound") == 1


def test_rows_whose_readings_disagree_are_flagged(catalog: Catalog) -> None:
    nova = catalog.find("deepgram", "stt", "nova-3")
    assert nova.usd == Decimal("0.0048") and nova.readings_disagree
    assert Decimal("0.0077") in {r.usd for r in nova.readings}
    assert catalog.find("twilio", "media_streams").readings_disagree
    assert not catalog.find("twilio", "voice.inbound_local").readings_disagree  # all agree
    assert not catalog.find("deepgram", "stt", "flux-general-en").readings_disagree  # one reading
    warning = disagreement_warning(catalog.rows)
    assert "deepgram stt nova-3 charged at 0.0048/minute" in warning and "0.0077 (2026)" in warning
    assert "voice.inbound_local" not in warning
    assert disagreement_warning([catalog.find("twilio", "voice.outbound")]) == ""


def test_a_reading_must_be_dated() -> None:
    text = GOOD_ROW.replace(
        "date = 2026-05-07", 'date = 2026-05-07\nreadings = [{ usd = 0.02, source = "x", date = "May" }]'
    )
    with pytest.raises(CatalogError, match=r"readings\.0\.date"):
        Catalog.from_toml(f'version = "t"\nas_of = 2026-12-01\n{text}')


def test_models_match_by_longest_prefix(catalog: Catalog) -> None:
    assert catalog.find("deepgram", "tts", "aura-2-thalia-en").model == "aura-2"
    assert catalog.find("deepgram", "tts", "aura-asteria-en").model == "aura"
    assert catalog.find("deepgram", "stt", "nova-3-general").model == "nova-3"
    assert catalog.find("deepgram", "stt", "nova-3-multilingual").model == "nova-3-multilingual"


def test_unknown_item_lists_close_matches(catalog: Catalog) -> None:
    with pytest.raises(UnknownPriceError, match="'deepgram stt nova-4'; close matches: nova-3"):
        catalog.find("deepgram", "stt", "nova-4")
    with pytest.raises(UnknownPriceError, match=r"twilio voice\.outbound"):
        catalog.find("twillio", "voice.outbound")


def test_llm_rates_come_from_genai_prices(catalog: Catalog) -> None:
    at = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
    mini = catalog.llm_rates("openai", "gpt-4o-mini", at)
    assert mini.per_token("input", 0) * 1_000_000 == Decimal("0.15")
    assert mini.per_token("cached_input", 0) * 1_000_000 == Decimal("0.075")
    assert mini.per_token("output", 0) * 1_000_000 == Decimal("0.6")
    haiku = catalog.llm_rates("anthropic", "claude-haiku-4-5", at)
    assert haiku.per_token("cache_write_5m", 0) * 1_000_000 == Decimal("1.25")
    assert haiku.per_token("cache_write_1h", 0) * 1_000_000 == Decimal("2")
    assert haiku.per_token("cached_input", 0) * 1_000_000 == Decimal("0.1")
    # Tiered: above 200k prompt tokens the whole request is billed at the tier rate.
    sonnet = catalog.llm_rates("anthropic", "claude-sonnet-4-5", at)
    assert sonnet.per_token("input", 200_000) * 1_000_000 == Decimal("3")
    assert sonnet.per_token("input", 200_001) * 1_000_000 == Decimal("6")
    with pytest.raises(UnknownPriceError, match="no audio_in price for openai model 'gpt-4o-mini'"):
        mini.per_token("audio_in", 0)


def test_unknown_llm_lists_close_matches(catalog: Catalog) -> None:
    at = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
    with pytest.raises(
        UnknownPriceError, match="openai model 'gpt-4o-mimi'; close matches: gpt-4o-mini"
    ):
        catalog.llm_rates("openai", "gpt-4o-mimi", at)
    with pytest.raises(UnknownPriceError, match="provider 'opnai'; close matches: openai"):
        catalog.llm_rates("opnai", "gpt-4o-mini", at)
