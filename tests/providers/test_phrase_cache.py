"""The TTS phrase cache: the greeting is synthesized once per process, then replayed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, running_bridge
from tests.transports.test_bridge_calls import GREETING, assistant_messages, final, script
from tollbridge.config import Vertical, load_vertical
from tollbridge.phrase_cache import PhraseKey, PhraseStore
from tollbridge.testing.cassette import Cassette

pytestmark = pytest.mark.long(10)

SPEED = 2.0
"""Nothing here is about timing: the caller plays at twice real time (the fakes keep the
audio clock)."""
REPLY = "We are open Monday to Friday, eight to six."
# pipecat sends each sentence with a trailing space, and the provider bills it
GREETING_CHARS, REPLY_CHARS = len(GREETING) + 1, len(REPLY) + 1
CASSETTE = Cassette(
    stt=[final(4.0, "what are your opening hours")],
    llm=[{"match": "opening hours", "text": REPLY}] * 2,  # one turn per call
)


async def _two_calls(vertical: Vertical, tts_kind: str):
    async with running_bridge(vertical, CASSETTE) as running:
        first = await running.softphone().call(script(speed=SPEED))
        await running.finished(1)
        second = await running.softphone().call(script(speed=SPEED))
        usages = await running.finished(2)
        assert running.fakes.failures == []
        billed_by_fake = running.fakes.fakes[tts_kind].characters
        for record in running.fakes.fakes[tts_kind].requests:  # never a context it never opened
            messages = [m for m in record.messages if isinstance(m, dict)]
            opened = {m.get("context_id") for m in messages if "text" in m}
            assert {m.get("context_id") for m in messages if m.get("close_context")} <= opened
        return first, second, usages, running.sessions, billed_by_fake


async def test_second_call_plays_the_recorded_greeting_and_the_ledger_shows_it_avoided(frontdesk):
    first, second, usages, sessions, billed_by_fake = await _two_calls(frontdesk, "deepgram.tts")

    # the provider was asked for the greeting once, the reply twice
    assert billed_by_fake == GREETING_CHARS + 2 * REPLY_CHARS
    [tts1], [tts2] = usages[0].tts, usages[1].tts
    assert (tts1.characters, tts1.avoided_characters) == (GREETING_CHARS + REPLY_CHARS, 0)
    assert (tts2.characters, tts2.avoided_characters) == (REPLY_CHARS, GREETING_CHARS)
    # the caller heard the same greeting, byte for byte, and the agent remembers saying it
    assert len(second.agent_audio) == len(first.agent_audio)
    assert second.agent_audio == first.agent_audio
    assert assistant_messages(sessions[1]) == [GREETING, REPLY]
    assert second.marks_echoed == second.marks_received and second.clears == 0


async def test_word_timestamp_service_keeps_the_greeting_in_context(tmp_path: Path):
    """ElevenLabs reports words with timestamps; a replayed greeting must still reach the context."""
    text = (FIXTURES / "frontdesk" / "vertical.toml").read_text()
    (tmp_path / "vertical.toml").write_text(
        text.replace('use = "deepgram.tts"', 'use = "elevenlabs.tts"\nvoice = "21m00Tcm4TlvDq8ikWAM"')
    )
    for name in ("prompt.md", "tools.py"):
        (tmp_path / name).write_text((FIXTURES / "frontdesk" / name).read_text())
    vertical = load_vertical(tmp_path / "vertical.toml")

    first, second, usages, sessions, billed_by_fake = await _two_calls(vertical, "elevenlabs.tts")

    [tts1], [tts2] = usages[0].tts, usages[1].tts
    assert billed_by_fake == tts1.characters + tts2.characters  # what the provider saw
    assert tts2.avoided_characters > 0
    assert tts1.characters == tts2.characters + tts2.avoided_characters  # greeting + reply
    assert second.agent_audio == first.agent_audio
    assert assistant_messages(sessions[1]) == [GREETING, REPLY]


async def test_switched_off_per_vertical(frontdesk):
    _first, _second, usages, _sessions, billed_by_fake = await _two_calls(
        replace(frontdesk, phrase_cache=False), "deepgram.tts"
    )
    assert billed_by_fake == 2 * (GREETING_CHARS + REPLY_CHARS)
    assert all(u.tts[0].avoided_characters == 0 for u in usages)


def test_store_is_bounded_and_keyed_by_voice():
    store = PhraseStore(max_bytes=10)
    thalia = PhraseKey("deepgram.tts thalia", "Hello")
    apollo = PhraseKey("deepgram.tts apollo", "Hello")
    store.put(thalia, (b"12345",))
    store.put(apollo, (b"abc", b"de"))
    assert store.get(thalia) == (b"12345",) and store.get(apollo) == (b"abc", b"de")
    store.put(PhraseKey("x", "Bye"), (b"zz",))  # over 10 bytes: the least recent goes
    assert store.get(thalia) is None and store.get(apollo) is not None and len(store) == 2
    store.put(PhraseKey("x", "Huge"), (b"0" * 11,))  # larger than the store: refused
    assert len(store) == 2
