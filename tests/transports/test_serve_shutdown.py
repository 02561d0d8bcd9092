"""`tollbridge serve` as an operator stops it: a real process, real signals, real calls.

The providers are replay fakes in this test process; the bridge runs in its
own process (`python -m tollbridge.cli serve`) with a vertical pointed at them,
the softphone calls it over real WebSockets, and the records are counted in
the real SQLite ledger it wrote.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest
import websockets

from tests.conftest import AUTH_TOKEN, FIXTURES
from tollbridge.config import Vertical, load_vertical
from tollbridge.testing.cassette import Cassette, replay
from tollbridge.testing.softphone import CallScript, Softphone
from tollbridge.transports.twilio.caller_audio import load_caller_audio
from tollbridge.transports.twilio.server import SHUTDOWN_FAREWELL
from tollbridge.transports.twilio.signature import SignatureChecker

pytestmark = pytest.mark.long(10)

ROOT = Path(__file__).resolve().parents[2]
SPEECH = load_caller_audio(FIXTURES / "calls" / "salon_barge_in_dtmf.wav")[: 8000 * 2]
CHARS_PER_SECOND = 40.0
CASSETTE = Cassette(tts={"chars_per_second": CHARS_PER_SECOND})
PARAMS = {"vertical": "frontdesk", "tenant": "acme", "from": "+15550109999", "to": "+15550100900"}
SIGNER = SignatureChecker(AUTH_TOKEN)
GREETING = "Hello, Acme front desk. How can I help?"


@dataclass
class Served:
    process: asyncio.subprocess.Process
    base: str
    ledger: Path
    log: Path

    @property
    def media_url(self) -> str:
        return self.base.replace("http://", "ws://") + "/media"

    def softphone(self) -> Softphone:
        return Softphone(self.media_url, auth_token=AUTH_TOKEN)

    async def live_calls(self, count: int, timeout: float = 20.0) -> None:
        async with httpx.AsyncClient() as client, asyncio.timeout(timeout):
            while (await client.get(f"{self.base}/healthz")).json()["calls"] < count:
                await asyncio.sleep(0.05)

    async def exited(self, timeout: float) -> tuple[int, list[dict]]:
        """The exit code and the JSON log lines, once the process has ended."""
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
        lines = self.log.read_text().splitlines()
        return code, [json.loads(line) for line in lines if line.startswith("{")]

    def records(self) -> dict[str, str]:
        """call SID → ended_by, as the ledger holds them."""
        with sqlite3.connect(self.ledger) as db:
            return dict(db.execute("SELECT call_sid, ended_by FROM calls").fetchall())


def _vertical_for(fakes_urls: dict[str, str], folder: Path) -> Path:
    """The front desk, its provider stages pointed at the fakes."""
    shutil.copytree(FIXTURES / "frontdesk", folder)
    text = (folder / "vertical.toml").read_text()
    for kind, url in fakes_urls.items():
        text = text.replace(f'use = "{kind}"\n', f'use = "{kind}"\nbase_url = "{url}"\n', 1)
    (folder / "vertical.toml").write_text(text)
    return folder


@asynccontextmanager
async def serving(tmp_path: Path, *args: str) -> AsyncIterator[Served]:
    vertical: Vertical = load_vertical(FIXTURES / "frontdesk")
    async with replay(CASSETTE, vertical) as fakes:
        folder = _vertical_for(fakes.base_urls, tmp_path / "frontdesk")
        port = free_port()
        ledger, log = tmp_path / "ledger.db", tmp_path / "serve.log"
        env = {**os.environ, **fakes.env, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
               "TOLLBRIDGE_SPOOL": str(tmp_path / "spool"), "TOLLBRIDGE_LOG_LEVEL": "WARNING"}
        with log.open("w") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tollbridge.cli", "serve", str(folder),
                "--port", str(port), "--ledger", f"sqlite:///{ledger}", *args,
                cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
            )
        served = Served(process, f"http://127.0.0.1:{port}", ledger, log)
        try:
            await _answering(served)
            yield served
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _answering(served: Served, timeout: float = 60.0) -> None:
    async with httpx.AsyncClient() as client, asyncio.timeout(timeout):
        while True:
            if served.process.returncode is not None:
                pytest.fail(f"serve exited: {served.log.read_text()[-2000:]}")
            try:
                if (await client.get(f"{served.base}/healthz", timeout=1)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)


def script(**kwargs) -> CallScript:
    return CallScript(audio=SPEECH, parameters=PARAMS, settle_s=60, **kwargs)


def events(log: list[dict]) -> list[str]:
    return [line["event"] for line in log if line.get("component") == "serve"]


async def test_sigterm_drains_calls_in_flight_then_ends_the_rest_with_a_farewell(tmp_path):
    async with serving(tmp_path, "--drain-grace", "4") as served:
        phone = served.softphone()
        # they hang up once the greeting has played, with room for a slow start on a loaded
        # machine, and before the grace (4 s from the signal, sent once all five are live) ends
        leaving = [asyncio.create_task(phone.call(script(hang_up_at=3.6))) for _ in range(2)]
        staying = [asyncio.create_task(phone.call(script(max_s=40))) for _ in range(3)]
        await served.live_calls(5)
        signalled = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)

        # no new calls: the webhook turns callers away, a new stream is refused
        form = {"CallSid": "CA" + "7" * 32, "From": "+15550107777", "To": "+15550100900"}
        async with httpx.AsyncClient() as client:
            headers = {"X-Twilio-Signature": SIGNER.sign(f"{served.base}/voice", form)}
            voice = await client.post(f"{served.base}/voice", data=form, headers=headers)
            health = await client.get(f"{served.base}/healthz")
        root = ElementTree.fromstring(voice.text)
        assert voice.status_code == 200 and [child.tag for child in root] == ["Say", "Hangup"]
        assert health.status_code == 503 and health.json()["draining"] is True
        with pytest.raises(websockets.InvalidStatus):
            await phone.call(script(max_s=5))

        finished = await asyncio.gather(*leaving)
        ended = await asyncio.gather(*staying)
        code, log = await served.exited(timeout=30)

    assert code == 0
    assert [call.ended_by for call in finished] == ["caller_hung_up"] * 2
    assert [call.ended_by for call in ended] == ["agent_hung_up"] * 3
    greeting_s = len(GREETING) / CHARS_PER_SECOND
    farewell_s = len(SHUTDOWN_FAREWELL) / CHARS_PER_SECOND
    for call in finished:
        assert abs(call.agent_audio_seconds - greeting_s) < 0.2
    for call in ended:  # the greeting, then the whole farewell, then the hang-up
        assert abs(call.agent_audio_seconds - (greeting_s + farewell_s)) < 0.2
        assert call.duration_s >= 4.0  # they had the whole grace
    assert time.monotonic() - signalled < 20
    records = served.records()
    assert sorted(records.values()) == ["caller_hung_up"] * 2 + ["server_shutdown"] * 3
    assert {call.call_sid for call in finished + ended} == set(records)
    phases = events(log)
    assert phases[:3] == ["shutdown_requested", "drain_started", "drain_grace_over"]
    assert phases[-2:] == ["drain_done", "ledger_closed"]
    closed = next(line for line in log if line["event"] == "ledger_closed")
    assert closed["records_priced"] == 5 and closed["spooled"] == 0


async def test_a_second_signal_ends_every_call_at_once_and_still_writes_the_records(tmp_path):
    async with serving(tmp_path) as served:  # the default grace: 30 s
        phone = served.softphone()
        calls = [asyncio.create_task(phone.call(script(max_s=40))) for _ in range(3)]
        await served.live_calls(3)
        signalled = time.monotonic()
        served.process.send_signal(signal.SIGINT)
        await asyncio.sleep(0.3)
        served.process.send_signal(signal.SIGTERM)
        ended = await asyncio.gather(*calls)
        code, log = await served.exited(timeout=20)

    assert code == 0
    assert time.monotonic() - signalled < 10  # not the 30 s grace
    assert [call.ended_by for call in ended] == ["agent_hung_up"] * 3
    assert sorted(served.records().values()) == ["server_shutdown"] * 3
    phases = events(log)
    assert phases[:3] == ["shutdown_requested", "drain_started", "shutdown_forced"]
    assert "calls_cut" in phases and phases[-1] == "ledger_closed"

