"""`tollbridge serve --offline`, called as Twilio would call it: no account anywhere.

The bridge runs in its own process with the local recogniser and the
vertical's own LLM and TTS kinds served by local fakes; the call rings its
voice webhook, streams the caller's recording to the socket its TwiML names,
and the record lands in the ledger the server writes.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import signal
import sqlite3
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import FIXTURES
from tests.transports.test_serve_shutdown import ROOT, Served, _answering, free_port
from tollbridge.config import load_vertical
from tollbridge.testing.local_call import call_bridge
from tollbridge.transports.twilio.caller_audio import load_caller_audio

pytestmark = pytest.mark.long(20)

SALON = ROOT / "examples" / "salon"
QUESTION = load_caller_audio(FIXTURES / "calls" / "salon_barge_in_dtmf.wav")[: 8000 * 8]
""""Sorry, what are your opening hours?", and the pause after it."""
TOKEN = "offline-test-auth-token"
API_TOKEN = "offline-test-api-token-0123456789"


async def test_serve_offline_answers_a_call_through_its_webhook_and_records_it(tmp_path: Path):
    port, ledger, log = free_port(), tmp_path / "ledger.db", tmp_path / "serve.log"
    env = {name: value for name, value in os.environ.items() if not name.endswith("_API_KEY")}
    env |= {"TWILIO_AUTH_TOKEN": TOKEN, "TOLLBRIDGE_SPOOL": str(tmp_path / "spool"),
            "TOLLBRIDGE_API_TOKEN": API_TOKEN, "TOLLBRIDGE_MARGIN_FLOOR": "0.05",
            "GLAMBOOK_DB_URL": f"sqlite:///{tmp_path / 'glambook.db'}"}
    with log.open("w") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tollbridge.cli", "serve", str(SALON), "--offline",
            "--port", str(port), "--ledger", f"sqlite:///{ledger}",
            cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=stderr,
        )
    served = Served(process, f"http://127.0.0.1:{port}", ledger, log)
    try:
        await _answering(served)
        phone = await call_bridge(load_vertical(SALON), served.base, audio=QUESTION,
                                  auth_token=TOKEN, max_s=40)
        shown = await dashboard_pages(served.base, phone.call_sid)
    finally:
        process.send_signal(signal.SIGTERM)
        code, _ = await served.exited(30)
    assert code == 0
    assert process.stdout is not None
    printed = (await process.stdout.read()).decode()
    assert "--bridge http://127.0.0.1:" in printed  # how to call it
    with sqlite3.connect(ledger) as db:
        [(call_sid,)] = db.execute("SELECT call_sid FROM calls").fetchall()
        items = {item: (provider, float(quantity)) for item, provider, quantity
                 in db.execute("SELECT item, provider, quantity FROM line_items")}
    assert call_sid == phone.call_sid
    assert items["stt:whisper-tiny.en"][0] == "local"  # heard on the bridge's own CPU
    assert items["llm.input:gpt-4o-mini"][0] == "openai"  # what the vertical's LLM would bill
    # the greeting was rendered at start-up; what the call paid for is the brain's answer,
    # after it looked up the opening hours the question named
    provider, spoken = items["tts:aura-2-thalia-en"]
    assert provider == "deepgram" and spoken >= len("I looked that up for you.")
    # the dashboard `serve` mounts shows the call, to the API token's holder only
    assert shown["stranger"].status_code == 401 and call_sid not in shown["stranger"].text
    assert shown["call"].status_code == 200 and "tts:aura-2-thalia-en" in shown["call"].text
    [row] = list(csv.DictReader(io.StringIO(shown["csv"].text)))
    assert (row["call_sid"], row["tenant"], row["vertical"]) == (call_sid, "glambook", "salon")
    assert "$0.05/min" in shown["overview"].text  # the floor from TOLLBRIDGE_MARGIN_FLOOR


async def dashboard_pages(base: str, call_sid: str) -> dict[str, httpx.Response]:
    """The served dashboard's pages for the call, once its record is written (just after
    the call)."""
    bearer = {"Authorization": f"Bearer {API_TOKEN}"}
    async with httpx.AsyncClient(base_url=base) as client, asyncio.timeout(15):
        while call_sid not in (exported := await client.get(
                "/dashboard/calls.csv", headers=bearer)).text:
            await asyncio.sleep(0.1)
        return {
            "csv": exported,
            "call": await client.get(f"/dashboard/calls/{call_sid}", headers=bearer),
            "overview": await client.get("/dashboard/", headers=bearer),
            "stranger": await client.get(f"/dashboard/calls/{call_sid}"),
        }

