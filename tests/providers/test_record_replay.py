"""Record → replay: a cassette recorded from a call reproduces that call."""

from __future__ import annotations

import pytest

from tests.conftest import FIXTURES
from tollbridge.testing.cassette import Cassette
from tollbridge.transports.twilio.caller_audio import load_caller_audio

pytestmark = pytest.mark.long(25)

SPEECH = load_caller_audio(FIXTURES / "calls" / "salon_barge_in_dtmf.wav")[: 8000 * 9]
SPEED = 1.0
"""Real time: the caller speaks just after the greeting, and a faster caller would talk over
it in one call and not the other."""


async def test_a_recorded_cassette_replays_the_same_call(frontdesk, replay_call, tmp_path):
    original = Cassette(
        stt=[
            {"at": 3.6, "transcript": "what are", "is_final": False, "speech_final": False},
            {"at": 4.0, "transcript": "what are your opening hours", "is_final": True,
             "speech_final": True},
        ],
        llm=[
            {"match": "opening hours", "tool_calls": [{"name": "opening_hours", "arguments": {}}]},
            {"match": "Monday to Friday", "text": "We are open Monday to Friday, eight to six."},
        ],
    )
    recorded_path = tmp_path / "recorded.cassette.json"
    first = await replay_call(frontdesk, audio=SPEECH, cassette=original, record_to=recorded_path,
                              settle_s=3.0, user_speech_timeout=0.3, speed=SPEED)
    recorded = Cassette.load(recorded_path)
    assert [r["transcript"] for r in recorded.stt if r["is_final"]] == [
        "what are your opening hours"]
    assert recorded.llm[0]["tool_calls"] == [{"name": "opening_hours", "arguments": {}}]

    second = await replay_call(frontdesk, audio=SPEECH, cassette=recorded, settle_s=3.0,
                               user_speech_timeout=0.3, speed=SPEED)
    assert second.conversation == first.conversation
    assert [(t.name, t.arguments, t.result) for t in second.tools] == [
        (t.name, t.arguments, t.result) for t in first.tools]
    assert [(r.input_tokens, r.cached_input_tokens, r.output_tokens) for r in second.usage.llm] == [
        (r.input_tokens, r.cached_input_tokens, r.output_tokens) for r in first.usage.llm]
    # the same words were spoken; the second call's greeting came from the phrase cache
    assert [(t.characters + t.avoided_characters) for t in second.usage.tts] == [
        t.characters for t in first.usage.tts]
