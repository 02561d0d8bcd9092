"""A stage's fallback takes over when its provider fails; the call goes on and is billed right."""

from __future__ import annotations

import pytest

from tests.conftest import FIXTURES, running_bridge
from tollbridge.config import load_vertical
from tollbridge.testing.cassette import Cassette
from tollbridge.testing.softphone import CallScript
from tollbridge.transports.twilio.caller_audio import load_caller_audio

pytestmark = pytest.mark.long(10)

SALES = FIXTURES.parents[1] / "examples" / "sales"
NOT_INTERESTED = FIXTURES / "calls" / "sales_not_interested"


@pytest.fixture(autouse=True)
def leads_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BRIGHTPATH_RESULTS", str(tmp_path / "leads.jsonl"))


@pytest.mark.parametrize("failing", ["elevenlabs.tts", "anthropic.llm"])
async def test_the_fallback_takes_over_when_the_primary_cannot_connect(failing):
    vertical = load_vertical(SALES)
    cassette = Cassette.load(f"{NOT_INTERESTED}.cassette.json")
    async with running_bridge(vertical, cassette) as running:
        primary = running.fakes.fakes[failing]
        if failing == "elevenlabs.tts":
            primary.outage = 503
        else:
            primary.outage = 529  # Anthropic: overloaded
        phone = await running.softphone().call(CallScript(
            audio=load_caller_audio(f"{NOT_INTERESTED}.wav"),
            parameters={"vertical": "sales", "tenant": "brightpath"}, settle_s=4.0, max_s=40,
            speed=2.0))  # nothing here is about timing: twice real time
        [usage] = await running.finished()
        assert running.fakes.failures == []
    assert phone.ended_by == "agent_hung_up"  # the call went on to its polite end
    if failing == "elevenlabs.tts":
        assert [(t.provider, t.model) for t in usage.tts] == [("deepgram", "aura-2-odysseus-en")]
        assert phone.agent_audio_seconds > 3
    else:
        assert {r.provider for r in usage.llm} == {"openai"}
        assert all(r.model == "gpt-4o-mini" for r in usage.llm)
