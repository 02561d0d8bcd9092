"""The dashboard in a real browser (headless Chromium) on a ledger filled by replayed calls.

A user signs in with the token, reads the overview, filters the calls, follows
a call from the table to its page and exports the CSV; every figure shown is
checked against the ledger. Screenshots are saved in the test's folder, and
also in $TOLLBRIDGE_SCREENSHOTS when it is set (the README's come from there).
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi import FastAPI

from tests.conftest import FIXTURES
from tests.examples.conftest import EXAMPLES
from tollbridge.costs.ledger import Ledger
from tollbridge.dashboard import Dashboard
from tollbridge.transports.twilio.server import running

CHROMIUM = Path("/usr/bin/chromium")
REQUIRE_BROWSER = os.environ.get("TOLLBRIDGE_REQUIRE_BROWSER", "") not in ("", "0")
TOKEN = "browser-token-0123456789abcdef"
CALLS = [("real_estate", "real_estate_hangup"), ("sales", "sales_not_interested")]
# the flags a closed network needs: no background fetches, no sandbox as root
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = [pytest.mark.usefixtures("example_databases"), pytest.mark.long(20)]


def browser_or_skip():
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        async_playwright = None
    if async_playwright is None or not CHROMIUM.exists():
        reason = "headless Chromium needs Debian's chromium package and playwright"
        if REQUIRE_BROWSER:
            pytest.fail(f"{reason} (TOLLBRIDGE_REQUIRE_BROWSER is set, so this fails)")
        pytest.skip(reason)
    return async_playwright


async def test_a_user_follows_a_replayed_call_from_the_overview_to_its_line_items(
    replay_call, tmp_path
):
    async_playwright = browser_or_skip()
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    replays = await asyncio.gather(*(
        replay_call(EXAMPLES / vertical, audio=FIXTURES / "calls" / f"{name}.wav",
                    cassette=FIXTURES / "calls" / f"{name}.cassette.json",
                    ledger_url=ledger_url, speed=2.0, settle_s=2.0)
        for vertical, name in CALLS))
    async with await Ledger.open(ledger_url) as ledger:  # Twilio's price, as its API reports it
        await ledger.set_twilio_price(replays[0].cost.call_sid, Decimal("-0.0085"))
        report = await ledger.report()
        stored = {r.cost.call_sid: await ledger.get(r.cost.call_sid) for r in replays}
    shots = tmp_path / "screenshots"
    shots.mkdir()

    dashboard = Dashboard(ledger_url, token=lambda: TOKEN, floor=Decimal("0.05"))
    app = FastAPI()
    app.mount("/dashboard", dashboard.app)
    try:
        async with running(app) as base, async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            page = await browser.new_page(viewport={"width": 1400, "height": 900},
                                          accept_downloads=True)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))

            await page.goto(f"{base}/dashboard/")
            assert "/dashboard/login" in page.url  # never open: sign in first
            await page.fill("input[name=token]", "not the token")
            await page.click("form.login button")
            assert await page.locator("[role=alert]").inner_text() == "That is not the API token."
            await page.fill("input[name=token]", TOKEN)
            await page.click("form.login button")
            await page.wait_for_selector("body[data-charts-drawn=yes]", state="attached")

            # the overview's figures are the ledger's
            total = sum((row.total_usd for row in report.tenants), Decimal(0))
            assert await page.inner_text("#kpi-calls") == "2"
            assert await page.inner_text("#kpi-total") == f"${total:f}"
            for row in report.verticals:
                cells = page.locator(f"#verticals tr[data-key='{row.key}']")
                assert await cells.locator("[data-field=total_usd]").inner_text() == \
                    f"${row.total_usd:f}"
                assert await cells.locator("[data-field=calls]").inner_text() == str(row.calls)
            await page.screenshot(path=shots / "overview.png", full_page=True)

            # the calls table, filtered to one vertical, then a call's own page
            await page.click("header nav >> text=Calls")
            assert await page.locator("#calls tbody tr").count() == 2
            await page.select_option("select[name=vertical]", "sales")
            await page.click("form.filters button")
            rows = page.locator("#calls tbody tr")
            assert await rows.count() == 1
            sales = next(r.cost for r in replays if r.cost.vertical == "sales")
            assert await rows.first.get_attribute("data-call-sid") == sales.call_sid
            await page.select_option("select[name=vertical]", "")
            await page.click("form.filters button")
            await page.screenshot(path=shots / "calls.png", full_page=True)

            async with page.expect_download() as download:
                await page.click("#csv-export")
            exported = Path(await (await download.value).path())
            lines = list(csv.DictReader(io.StringIO(await asyncio.to_thread(exported.read_text))))
            assert {line["call_sid"]: Decimal(line["total_usd"]) for line in lines} == {
                sid: cost.total_usd for sid, cost in stored.items() if cost}

            priced = replays[0].cost.call_sid
            await page.click(f"#calls tr[data-call-sid='{priced}'] a")
            cost = stored[priced]
            assert cost is not None
            assert await page.inner_text("#call-sid") == priced
            assert await page.inner_text("#total") == f"${cost.total_usd:f}"
            assert await page.inner_text("#twilio-price") == f"${cost.twilio_price_usd:f}"
            assert await page.inner_text("#drift") == f"${cost.drift_usd:f}"
            shown = page.locator("#line-items tbody tr")
            assert await shown.count() == len(cost.items)
            for index, line in enumerate(cost.items):
                row = shown.nth(index)
                assert await row.get_attribute("data-item") == line.item
                assert await row.locator("[data-field=usd]").inner_text() == f"${line.usd:f}"
            timeline = page.locator("#turns tbody tr [data-field=first_audio_ms]")
            assert await timeline.count() == len(cost.turns) > 0
            await page.screenshot(path=shots / "call.png", full_page=True)

            await page.click("header nav >> text=Prices")
            assert await page.locator("table.prices tbody tr").count() > 10
            await browser.close()
            assert errors == []
    finally:
        await dashboard.close()
    if target := os.environ.get("TOLLBRIDGE_SCREENSHOTS"):
        shutil.copytree(shots, target, dirs_exist_ok=True)
