from __future__ import annotations

import asyncio
import csv
import io
import json
from decimal import Decimal
from pathlib import Path

from typer.testing import CliRunner

from tollbridge.costs.catalog import LLM_BILLING_RULE, Catalog
from tollbridge.costs.cli import costs_app
from tollbridge.costs.ledger import Ledger
from tollbridge.costs.pricing import price_call
from tollbridge.costs.usage import CallUsage

from .conftest import PROFILES

runner = CliRunner()


def test_catalog_lists_rows_with_dates() -> None:
    result = runner.invoke(costs_app, ["catalog"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Price catalog 2026-11-04" in result.output
    assert "twilio media_streams" in result.output and "2026-09-18" in result.output
    assert "genai-prices" in result.output
    assert "READINGS DISAGREE: 0.0048 (2026-05-07, seed)" in result.output  # nova-3's row


def test_catalog_says_how_each_row_is_billed() -> None:
    result = runner.invoke(costs_app, ["catalog"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())
    for row in Catalog.load().rows:
        assert row.billing_rule, f"{row.label} has no billing_rule"
    assert "Seconds of audio sent over an open Listen socket" in text
    assert " ".join(LLM_BILLING_RULE.split()) in text


def test_estimate_json_and_table() -> None:
    result = runner.invoke(costs_app, ["estimate", str(PROFILES / "profile_c.toml"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["items"][1] == {
        "item": "voice.outbound",
        "provider": "twilio",
        "quantity": "3",
        "unit": "minute",
        "unit_price_usd": "0.014",
        "usd": "0.042000",
        "unpriced": "",
    }
    assert data["complete"] is True
    assert Decimal(data["total_usd"]) == sum(Decimal(i["usd"]) for i in data["items"])
    table = runner.invoke(
        costs_app, ["estimate", str(PROFILES / "profile_a.toml")], env={"COLUMNS": "200"}
    )
    assert table.exit_code == 0 and "per minute" in table.output and "0.045000" in table.output


def test_report_flags_the_floor(tmp_path: Path, make_usage, catalog: Catalog) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    cheap: CallUsage = make_usage(tenant="glambook", measured_seconds=Decimal(600))
    dear: CallUsage = make_usage(
        tenant="acme", vertical="sales", direction="outbound", measured_seconds=Decimal(1)
    )

    async def seed() -> None:
        async with await Ledger.open(url) as ledger:
            for usage in (cheap, dear):
                await ledger.record(price_call(usage, catalog))

    asyncio.run(seed())
    as_csv = runner.invoke(costs_app, ["report", "--db", url, "--csv", "--floor", "0.02"])
    assert as_csv.exit_code == 0, as_csv.output
    rows = {(r["group"], r["key"]): r for r in csv.DictReader(io.StringIO(as_csv.stdout))}
    assert rows[("tenant", "acme")]["above_floor"] == "True"
    assert rows[("tenant", "glambook")]["above_floor"] == "False"
    assert rows[("vertical", "sales")]["calls"] == "1"
    as_json = runner.invoke(
        costs_app, ["report", "--db", url, "--json", "--tenant", "acme", "--since", "2026-01-01"]
    )
    data = json.loads(as_json.stdout)
    assert [row["key"] for row in data["tenants"]] == ["acme"]
    assert [call["call_sid"] for call in data["calls_above_floor"]] == [dear.call_sid]
    table = runner.invoke(costs_app, ["report", "--db", url], env={"COLUMNS": "200"})
    assert "ABOVE FLOOR" in table.output and dear.call_sid in table.output
    bad = runner.invoke(costs_app, ["report", "--db", url, "--floor", "cheap"])
    assert bad.exit_code != 0


def test_report_marks_incomplete_totals_and_warns_about_prices(
    tmp_path: Path, make_usage, catalog: Catalog
) -> None:
    from tollbridge.costs.usage import STTUsage

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    unpriced = make_usage(tenant="acme", stt=[STTUsage("deepgram", "nova-2", Decimal(30))])

    async def seed() -> None:
        async with await Ledger.open(url) as ledger:
            await ledger.record(price_call(make_usage(tenant="glambook"), catalog))
            await ledger.record(price_call(unpriced, catalog))

    asyncio.run(seed())
    table = runner.invoke(costs_app, ["report", "--db", url], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    acme = next(line for line in table.output.splitlines() if "acme" in line)
    assert "INCOMPLETE (1 call(s))" in acme
    glambook = next(line for line in table.output.splitlines() if "glambook" in line)
    assert "INCOMPLETE" not in glambook
    assert "1 call(s) have usage no price was known for" in table.output
    assert "readings disagree" in table.output and "deepgram stt nova-3" in table.output
    as_json = json.loads(
        runner.invoke(costs_app, ["report", "--db", url, "--json"]).stdout.strip()
    )
    assert {row["key"]: row["incomplete_calls"] for row in as_json["tenants"]} == {
        "acme": 1, "glambook": 0}
    as_csv = runner.invoke(costs_app, ["report", "--db", url, "--csv"]).stdout
    rows = {r["key"]: r for r in csv.DictReader(io.StringIO(as_csv))}
    assert rows["acme"]["incomplete_calls"] == "1"


def test_report_shows_speech_paid_for_but_not_heard(
    tmp_path: Path, make_usage, catalog: Catalog
) -> None:
    from tollbridge.costs.usage import TTSUsage

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    # 300 characters synthesized, 100 more from the phrase cache, 250 heard: 150 never heard,
    # of which 300/400 were paid for
    cut_off = make_usage(tenant="acme", tts=[TTSUsage("deepgram", "aura-2-thalia-en", 300, 100)],
                         heard_characters=250)
    all_heard = make_usage(tenant="acme", tts=[TTSUsage("deepgram", "aura-2-thalia-en", 40)],
                           heard_characters=40)
    priced = price_call(cut_off, catalog)
    tts = next(line for line in priced.items if line.item == "tts:aura-2-thalia-en")
    expected = (Decimal(150) * Decimal(300) / Decimal(400) * tts.unit_price_usd).quantize(
        Decimal("1e-6"))
    assert expected > 0 and priced.unheard_speech_usd == expected

    async def seed() -> None:
        async with await Ledger.open(url) as ledger:
            await ledger.record(priced)
            await ledger.record(price_call(all_heard, catalog))
            await ledger.record(price_call(make_usage(tenant="glambook"), catalog))

    asyncio.run(seed())
    table = runner.invoke(costs_app, ["report", "--db", url], env={"COLUMNS": "250"})
    assert table.exit_code == 0, table.output
    assert "paid, not heard $" in table.output
    acme = next(line for line in table.output.splitlines() if "acme" in line)
    assert f"{expected:f} (150 chars)" in acme
    glambook = next(line for line in table.output.splitlines() if "glambook" in line)
    assert "0 (0 chars)" in glambook
    as_json = json.loads(runner.invoke(costs_app, ["report", "--db", url, "--json"]).stdout)
    acme_row = next(row for row in as_json["tenants"] if row["key"] == "acme")
    assert (acme_row["unheard_characters"], acme_row["unheard_speech_usd"]) == (
        "150", f"{expected:f}")
    as_csv = runner.invoke(costs_app, ["report", "--db", url, "--csv"]).stdout
    rows = {(r["group"], r["key"]): r for r in csv.DictReader(io.StringIO(as_csv))}
    assert rows[("vertical", "salon")]["unheard_speech_usd"] == f"{expected:f}"


def test_an_estimate_prices_each_agent(tmp_path: Path) -> None:
    result = runner.invoke(costs_app, ["estimate", str(PROFILES / "salon_agents.toml"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    spent = {agent: Decimal(usd) for agent, usd in data["agent_usd"].items()}
    assert list(spent) == ["front_desk", "colour", "booking"]
    for agent, usd in spent.items():
        assert usd == sum(Decimal(i["usd"]) for i in data["items"] if i.get("agent") == agent)
    assert {i["item"] for i in data["items"] if i.get("agent") == "colour"} == {
        "llm.input:gpt-4o", "llm.cached_input:gpt-4o", "llm.output:gpt-4o", "tts:aura-2-athena-en"}
    assert not any("agent" in i for i in data["items"] if i["item"].startswith(("stt", "voice")))


def test_report_by_agent(tmp_path: Path, make_usage, catalog: Catalog) -> None:
    from tollbridge.costs.estimate import load_profile

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    estimated = load_profile(PROFILES / "salon_agents.toml")

    async def fill() -> None:
        async with await Ledger.open(url) as ledger:
            for _ in range(2):
                await ledger.record(price_call(make_usage(llm=estimated.llm, tts=estimated.tts),
                                               catalog))

    asyncio.run(fill())
    table = runner.invoke(costs_app, ["report", "--db", url, "--by", "agent"],
                          env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    [colour] = [line for line in table.output.splitlines() if "│ colour" in line]
    cells = [cell.strip() for cell in colour.strip("│ ").split("│")]
    assert cells[:3] == ["salon", "colour", "2"]
    expected = 2 * price_call(estimated, catalog).agent_usd()["colour"]
    assert Decimal(cells[5]) == expected and Decimal(cells[6]) == expected / 2
    rows = list(csv.DictReader(io.StringIO(runner.invoke(
        costs_app, ["report", "--db", url, "--by", "agent", "--csv"]).stdout)))
    assert [row["agent"] for row in rows] == ["booking", "colour", "front_desk"]
    assert list(rows[0]) == ["vertical", "agent", "calls", "llm_usd", "tts_usd", "total_usd",
                             "usd_per_call"]
    assert Decimal(next(r for r in rows if r["agent"] == "colour")["total_usd"]) == expected
