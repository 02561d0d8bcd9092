"""The fixture calls, listened to: the local recogniser hears each caller's own audio.

The cassette still supplies the brain's replies (in order, whatever was
recognised), so each call runs as recorded, but what the agent was told the
caller said comes from the audio alone. A fixture whose audio were silence,
noise or mis-encoded fails here, as the corrupted-audio tests show.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import FIXTURES
from tests.examples.conftest import EXAMPLES
from tollbridge.codec import mulaw_to_pcm16
from tollbridge.testing.words import recall, said
from tollbridge.transports.twilio.caller_audio import load_caller_audio

pytestmark = [pytest.mark.usefixtures("example_databases"), pytest.mark.long(30)]

CALLS = FIXTURES / "calls"
RECALL = 0.5
"""Share of the caller's content words a faithful recording must yield: whisper tiny.en hears
0.65-1.0 of these callers' (`python -m benchmarks.recognisers`), corrupted audio next to none."""

FIXTURE_CALLS = {  # fixture → its vertical
    "salon_booking": "salon",
    "salon_barge_in_dtmf": "salon",
    "sales_qualified": "sales",
    "sales_not_interested": "sales",
    "real_estate_listing": "real_estate",
}


def caller_said(name: str) -> str:
    """What the caller of a fixture said: its cassette's final transcripts."""
    return " ".join(result["transcript"] for result in said(CALLS / f"{name}.cassette.json"))


async def listen(replay_call, name: str, audio: bytes | Path | None = None):
    call = await replay_call(
        EXAMPLES / FIXTURE_CALLS[name], audio=audio or CALLS / f"{name}.wav",
        # the last words are transcribed after the audio ends: on a starved CPU that takes
        # seconds, and a caller who hung up sooner would not be heard saying them
        cassette=CALLS / f"{name}.cassette.json", offline=True, settle_s=6.0,
        speed=2.0,  # the recogniser ends utterances on the audio's clock, not the wall's
    )
    return " ".join(line for line in call.said("caller") if not line.startswith("[keypad]"))


@pytest.mark.parametrize("name", sorted(FIXTURE_CALLS))
async def test_each_fixture_call_is_recognised_from_its_own_audio(replay_call, name):
    recognised = await listen(replay_call, name)
    assert recall(caller_said(name), recognised) >= RECALL, recognised


def byte_swapped(mulaw: bytes) -> bytes:
    swapped = bytearray(mulaw)
    swapped[0::2], swapped[1::2] = mulaw[1::2], mulaw[0::2]
    return bytes(swapped)


def pcm16_sent_as_mulaw(mulaw: bytes) -> bytes:
    return mulaw_to_pcm16(mulaw)[: len(mulaw)]


@pytest.mark.parametrize("corrupt", [byte_swapped, pcm16_sent_as_mulaw])
async def test_a_call_whose_audio_is_corrupted_fails_the_same_assertion(replay_call, corrupt):
    audio = corrupt(load_caller_audio(CALLS / "sales_not_interested.wav"))
    recognised = await listen(replay_call, "sales_not_interested", audio)
    assert recall(caller_said("sales_not_interested"), recognised) < RECALL, recognised
