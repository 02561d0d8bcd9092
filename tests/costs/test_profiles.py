"""The seed's three worked profiles (pricing.md §8), priced by our code.

The seed priced Media Streams at $0.004; the catalog carries the later $0.0044.
These tests lay a seed-rate override over the catalog to reproduce the seed,
then check the documented difference at the catalog's own rate.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from tollbridge.costs.catalog import Catalog
from tollbridge.costs.estimate import ProfileError, load_profile
from tollbridge.costs.lineitem import CallCost
from tollbridge.costs.pricing import price_call

from .conftest import PROFILES, STARTED

D = Decimal
CENT = D("0.005")  # "to the cent": within half a cent


@pytest.fixture(scope="module")
def seed_catalog(catalog: Catalog) -> Catalog:
    return catalog.with_overrides(
        [
            {
                "provider": "twilio",
                "item": "media_streams",
                "usd": D("0.004"),
                "source": "seed article, pricing.md §8",
                "date": dt.date(2026, 5, 7),
            }
        ]
    )


def price(name: str, catalog: Catalog) -> CallCost:
    usage = load_profile(PROFILES / f"profile_{name}.toml")
    usage.started_at = STARTED  # LLM prices are dated; pin the day so the figures hold
    return price_call(usage, catalog)


def usd(cost: CallCost, *kinds: str) -> Decimal:
    return sum((line.usd for line in cost.items if line.kind.startswith(kinds)), D(0))


def assert_cents(ours: Decimal, seed: str) -> None:
    assert abs(ours - D(seed)) < CENT, f"{ours} vs seed {seed}"


def test_profile_a(seed_catalog: Catalog) -> None:
    cost = price("a", seed_catalog)
    assert usd(cost, "number") == 5 * D("0.00115") == D("0.00575")  # seed rounds to 0.0058
    assert usd(cost, "voice") == D("0.0425")
    assert usd(cost, "media_streams") == D("0.020")
    assert usd(cost, "stt") == D("0.024")
    assert usd(cost, "tts") == D("0.045")
    # The seed's "sum of listed lines" (0.1555) is ours without the number, with its LLM guess.
    assert cost.total_usd - usd(cost, "number", "llm") + D("0.024") == D("0.1555")
    assert_cents(usd(cost, "llm"), "0.002617")  # our token assumption (see the profile file)


def test_profile_b(seed_catalog: Catalog) -> None:
    cost = price("b", seed_catalog)
    assert usd(cost, "number") == D("0.00575")
    assert usd(cost, "voice") == D("0.0425")
    assert_cents(usd(cost, "voice"), "0.042")  # the seed rounds the same leg to 0.042 here
    assert usd(cost, "media_streams") == D("0.020")
    assert usd(cost, "stt", "tts", "llm") == 0  # speech to speech
    assert cost.total_usd - usd(cost, "number", "realtime") + D("0.28") == D("0.3425")
    assert_cents(usd(cost, "realtime"), "0.31284")


def test_profile_c(seed_catalog: Catalog) -> None:
    cost = price("c", seed_catalog)
    assert usd(cost, "number") == 3 * D("0.00115")
    assert usd(cost, "voice") == D("0.042")
    assert usd(cost, "media_streams") == D("0.012")
    assert usd(cost, "stt") == D("0.0144")
    assert_cents(usd(cost, "stt", "llm", "tts"), "0.045")  # the seed lumps these three
    assert_cents(cost.total_usd - usd(cost, "number"), "0.099")
    assert_cents(cost.total_usd, "0.1025")  # the seed's "sum with the number"


def test_later_media_streams_rate_adds_the_documented_difference(
    catalog: Catalog, seed_catalog: Catalog
) -> None:
    for name, minutes in (("a", 5), ("b", 5), ("c", 3)):
        later, seed = price(name, catalog), price(name, seed_catalog)
        assert usd(later, "media_streams") - usd(seed, "media_streams") == minutes * D("0.0004")
        assert later.total_usd - seed.total_usd == minutes * D("0.0004")
    # pricing.md: "Recomputing A with $0.0044 adds $0.002".
    assert usd(price("a", catalog), "media_streams") == D("0.022")


def test_per_minute_figures(catalog: Catalog) -> None:
    assert price("a", catalog).usd_per_minute == D("0.028373")
    assert price("b", catalog).usd_per_minute == D("0.076618")
    assert price("c", catalog).usd_per_minute == D("0.034868")


def test_profile_tokens_are_spread_over_requests() -> None:
    usage = load_profile(PROFILES / "profile_b.toml")
    assert len(usage.realtime) == 12
    assert sum(r.text_cached_in for r in usage.realtime) == 11_000
    assert {r.model for r in usage.realtime} == {"gpt-realtime"}
    assert usage.measured_seconds == 300 and usage.billed_seconds is None


def test_profile_errors_name_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'direction = "inbound"\ncall_seconds = 60\n[llm]\nprovider = "openai"\n'
        'model = "gpt-4o-mini"\ninput_tokns = 5\n'
    )
    with pytest.raises(ProfileError, match=r"bad.toml: key 'llm.0.input_tokns'"):
        load_profile(bad)
    bad.write_text('direction = "sideways"\ncall_seconds = 60\n')
    with pytest.raises(ProfileError, match="key 'direction'"):
        load_profile(bad)
