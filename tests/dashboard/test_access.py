"""Who gets into the dashboard, what a stranger learns, and what bad input gets."""

from __future__ import annotations

import csv
import io
import re
import time
from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI

from tollbridge.costs.queries import LEGS
from tollbridge.dashboard import Dashboard
from tollbridge.dashboard.auth import COOKIE, SESSION_S, session_cookie
from tollbridge.transports.twilio.server import running

from .conftest import FLOOR, TOKEN, Served

BEARER = {"Authorization": f"Bearer {TOKEN}"}
HTML = {"Accept": "text/html,application/xhtml+xml"}


def pages(served: Served) -> list[str]:
    sid = served.calls[0].call_sid
    return ["/", "/calls", "/calls.csv", f"/calls/{sid}", "/prices", "/calls?tenant=acme",
            "/?vertical=salon"]


async def test_a_stranger_learns_nothing_and_a_browser_is_sent_to_sign_in(served: Served):
    secrets = [served.calls[0].call_sid, "acme", "glambook", "$"]
    forged = [
        {"Authorization": "Bearer guess"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Cookie": f"{COOKIE}=garbage"},
        {"Cookie": f"{COOKIE}={session_cookie(TOKEN, now=time.time() - SESSION_S - 5)}"},
        {"Cookie": f"{COOKIE}={session_cookie('another-token')}"},
        {"Cookie": f"{COOKIE}={int(time.time()) + 999999}.{'0' * 64}"},
    ]
    async with httpx.AsyncClient() as client:
        for path in pages(served):
            for headers in [{}, *forged]:
                response = await client.get(served.url(path), headers=headers)
                assert response.status_code == 401, (path, headers)
                assert response.headers["www-authenticate"] == "Bearer"
                assert not any(secret in response.text for secret in secrets), (path, headers)
            browser = await client.get(served.url(path), headers=HTML)
            assert browser.status_code == 303
            target = browser.headers["location"]
            assert target.startswith("/dashboard/login?next=")
            login = await client.get(served.base + target)
            assert login.status_code == 200 and 'name="token"' in login.text
            assert "$" not in login.text  # no figure (the path asked for is echoed as `next`)
        # the chart library and the style sheet hold no figures
        assert (await client.get(served.url("/static/chart.umd.min.js"))).status_code == 200


async def test_a_browser_signs_in_once_with_the_token_and_out_again(served: Served):
    async with httpx.AsyncClient(base_url=served.base) as client:
        wrong = await client.post("/dashboard/login", data={"token": "guess", "next": "/calls"})
        assert wrong.status_code == 401 and "not the API token" in wrong.text
        assert COOKIE not in client.cookies
        signed = await client.post("/dashboard/login", data={"token": TOKEN, "next": "/calls"})
        assert signed.status_code == 303 and signed.headers["location"] == "/dashboard/calls"
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/dashboard" in cookie
        assert TOKEN not in signed.headers["set-cookie"]  # the cookie proves it, never holds it
        calls = await client.get("/dashboard/calls")
        assert calls.status_code == 200 and served.calls[0].call_sid in calls.text
        await client.post("/dashboard/logout")
        assert (await client.get("/dashboard/calls")).status_code == 401
        # sign-in never sends a browser off the dashboard
        for elsewhere in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
            away = await client.post("/dashboard/login", data={"token": TOKEN, "next": elsewhere})
            assert away.headers["location"] == "/dashboard/", elsewhere


async def test_with_no_token_set_nobody_gets_in(served: Served):
    closed = Dashboard(served.ledger_url, token=lambda: "")
    app = FastAPI()
    app.mount("/dashboard", closed.app)
    try:
        async with running(app) as base, httpx.AsyncClient(base_url=base) as client:
            for headers in ({"Authorization": "Bearer"}, {"Authorization": "Bearer x"}, {}):
                assert (await client.get("/dashboard/calls", headers=headers)).status_code == 401
            page = await client.get("/dashboard/login")
            assert "no API token is set" in page.text
            empty = await client.post("/dashboard/login", data={"token": ""})
            assert empty.status_code == 401 and COOKIE not in client.cookies
    finally:
        await closed.close()


async def test_the_csv_export_is_the_ledgers_calls(served: Served):
    async with httpx.AsyncClient(base_url=served.base, headers=BEARER) as client:
        every = await client.get("/dashboard/calls.csv")
        acme = await client.get("/dashboard/calls.csv?tenant=acme&vertical=salon")
        above = await client.get(f"/dashboard/calls.csv?above_floor=1&floor={FLOOR}")
    assert every.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(every.text)))
    by_sid = {call.call_sid: call for call in served.calls}
    assert {row["call_sid"] for row in rows} == set(by_sid)
    assert [row["started_at"] for row in rows] == sorted(
        (row["started_at"] for row in rows), reverse=True)  # newest first
    for row in rows:
        call = by_sid[row["call_sid"]]
        assert Decimal(row["total_usd"]) == call.total_usd
        assert Decimal(row["seconds"]) == call.seconds
        assert row["usd_per_minute"] == f"{call.usd_per_minute:f}"
        assert row["complete"] == ("yes" if call.complete else "no")
        assert row["ended_by"] == call.ended_by and row["direction"] == call.direction
    first = next(r for r in rows if r["call_sid"] == served.calls[0].call_sid)
    assert (first["billed_minutes"], first["twilio_price_usd"]) == ("2", "0.017")
    assert Decimal(first["drift_usd"]) == served.calls[0].drift_usd
    assert {r["call_sid"] for r in csv.DictReader(io.StringIO(acme.text))} == {
        c.call_sid for c in served.calls if (c.tenant, c.vertical) == ("acme", "salon")}
    assert {r["call_sid"] for r in csv.DictReader(io.StringIO(above.text))} == {
        c.call_sid for c in served.calls if c.usd_per_minute and c.usd_per_minute > FLOOR}


@pytest.mark.parametrize(("path", "status", "named"), [
    ("/calls?since=2026-13-01", 400, "since"),
    ("/calls?until=yesterday", 400, "until"),
    ("/?floor=cheap", 400, "floor"),
    ("/calls?floor=-1", 400, "floor"),
    ("/calls?floor=NaN", 400, "floor"),
    ("/?direction=inbound", 400, "direction"),
    ("/?above_floor=1", 400, "above_floor"),
    ("/calls/CA-no-such-call", 404, "CA-no-such-call"),
])
async def test_bad_input_gets_a_page_that_names_it(served: Served, path, status, named):
    async with httpx.AsyncClient(headers=BEARER) as client:
        response = await client.get(served.url(path))
    assert response.status_code == status
    assert named in response.text and "Traceback" not in response.text


async def test_a_ledger_that_is_not_there_is_named_not_a_crash(tmp_path):
    missing = Dashboard(f"sqlite:///{tmp_path / 'nope.db'}", token=lambda: TOKEN)
    app = FastAPI()
    app.mount("/dashboard", missing.app)
    try:
        async with running(app) as base, httpx.AsyncClient(headers=BEARER) as client:
            response = await client.get(f"{base}/dashboard/")
    finally:
        await missing.close()
    assert response.status_code == 503 and "nope.db" in response.text
    assert not (tmp_path / "nope.db").exists()  # a dashboard never creates a ledger


async def test_the_overview_shows_what_costs_report_says(served: Served):
    async with httpx.AsyncClient(headers=BEARER) as client:
        page = (await client.get(served.url("/"))).text
    from tollbridge.costs.ledger import Ledger

    async with await Ledger.open(served.ledger_url) as ledger:
        report = await ledger.report(floor=FLOOR)
    for group, rows in (("tenant", report.tenants), ("vertical", report.verticals)):
        table = re.search(rf'<table class="totals" id="{group}s">(.*?)</table>', page, re.S)
        assert table is not None
        for row in rows:
            cells = re.search(rf'<tr data-key="{row.key}">(.*?)</tr>', table.group(1), re.S)
            assert cells is not None, row.key
            shown = dict(re.findall(r'data-field="(\w+)">\$?([\d.]+)', cells.group(1)))
            assert shown["calls"] == str(row.calls)
            assert shown["total_usd"] == f"{row.total_usd:f}"
            assert shown["minutes"] == f"{row.minutes}"
            assert shown["usd_per_minute"] == f"{row.usd_per_minute:f}"
            assert sum(Decimal(shown[leg]) for leg in LEGS if leg in shown) == row.total_usd
    burn = re.search(r'id="budget-burn".*?<tr data-key="salon">.*?data-field="stopped">([^<]*)<',
                     page, re.S)
    assert burn is not None and burn.group(1) == "1 of 4"  # one salon call hit its budget
    incomplete = sum(row.incomplete_calls for row in report.tenants)
    assert incomplete == 1 and "incomplete" in page
