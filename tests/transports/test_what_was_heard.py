"""What the caller heard: Twilio's lead bounded, speech synthesized just ahead of playback,
and an interrupted reply remembered, and paid, only as far as it was played."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
import pytest_asyncio

from tests.conftest import FIXTURES, running_bridge
from tests.transports.test_bridge_calls import GREETING, assistant_messages, final, interim, script
from tollbridge.config import Vertical, load_vertical
from tollbridge.costs.catalog import Catalog
from tollbridge.costs.pricing import price_call
from tollbridge.pacing import sentences
from tollbridge.phrase_cache import PHRASES
from tollbridge.testing.cassette import Cassette

# real-time bounds: scheduled after the first, heaviest wave of calls, recognisers and
# fresh interpreters, which on 2 cores can stall any event loop for a tenth of a second
pytestmark = pytest.mark.long(9)

CHARS_PER_SECOND = 14.0
REPLY = (
    "We are open Monday to Friday, eight to six. On Saturdays we open at nine and close at one. "
    "We are closed on Sundays and public holidays. You can leave a message at any time, and we "
    "call back the next working day. Is there anything else I can help you with?"
)
SILENCE = b"\xff" * 8000 * 16
ASKED = [final(6.0, "what are your opening hours")]  # the greeting has long ended by then
BARGE_IN = Cassette(
    stt=[final(6.0, "what are your opening hours"), interim(11.0, "wait"),
         final(11.5, "wait a second")],
    llm=[{"match": "opening hours", "text": REPLY},
         {"match": "wait a second", "text": "Sure, take your time."}],
)


def with_tts(folder: Path, entry: str) -> Vertical:
    """The front desk with another TTS stage entry."""
    text = (FIXTURES / "frontdesk" / "vertical.toml").read_text()
    (folder / "vertical.toml").write_text(text.replace('use = "deepgram.tts"', entry))
    for name in ("prompt.md", "tools.py"):
        (folder / name).write_text((FIXTURES / "frontdesk" / name).read_text())
    return load_vertical(folder / "vertical.toml")


async def barge_in_call(vertical: Vertical):
    async with running_bridge(vertical, BARGE_IN) as running:
        phone = await running.softphone().call(script(audio=SILENCE))
        [usage] = await running.finished()
        session = running.sessions[0]
        billed_by_fake = running.fakes.fakes["deepgram.tts"].characters
        assert running.fakes.failures == []
    return phone, usage, session, billed_by_fake


def test_sentences_are_cut_where_speech_pauses():
    assert sentences(GREETING) == ["Hello, Acme front desk.", "How can I help?"]
    assert sentences("It costs 20.5 dollars. Ok") == ["It costs 20.5 dollars.", "Ok"]
    assert sentences("  ") == []


async def test_twilio_never_holds_more_than_the_bound_even_of_one_huge_tts_message(tmp_path):
    # ElevenLabs' fake sends each sentence's audio as one message: up to 5 s here
    vertical = with_tts(tmp_path, 'use = "elevenlabs.tts"\nvoice = "21m00Tcm4TlvDq8ikWAM"')
    cassette = Cassette(stt=ASKED,
                        llm=[{"match": "opening hours", "text": REPLY}])
    async with running_bridge(vertical, cassette) as running:
        phone = await running.softphone().call(script(audio=SILENCE))
        await running.finished()
        session = running.sessions[0]

    spoken_s = (len(GREETING) + len(REPLY)) / CHARS_PER_SECOND
    assert abs(phone.agent_audio_seconds - spoken_s) < 0.5  # all of it was played
    assert 0.7 < phone.max_lead_s <= 1.0  # queued at Twilio, at every 20 ms tick
    assert phone.underruns == []  # and never ran dry inside the speech
    heard = session.built.playback.heard()
    assert heard.max_lead_s <= 1.0 and heard.p95_lead_s <= heard.max_lead_s
    assert assistant_messages(session) == [GREETING, REPLY]


async def test_the_bound_is_the_transport_option(tmp_path):
    vertical = with_tts(tmp_path, 'use = "deepgram.tts"')
    text = vertical.path.read_text().replace('use = "twilio"', 'use = "twilio"\nsend_ahead_s = 0.5')
    vertical.path.write_text(text)
    cassette = Cassette(stt=ASKED,
                        llm=[{"match": "opening hours", "text": REPLY}])
    async with running_bridge(load_vertical(vertical.path), cassette) as running:
        phone = await running.softphone().call(script(audio=SILENCE))
        await running.finished()
    assert 0.3 < phone.max_lead_s <= 0.5
    assert phone.underruns == []


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def barge_in_calls():
    """The barge-in call with speech paced to playback and sent at once, on two bridges side
    by side."""
    PHRASES.clear()  # as the function-scoped empty_phrase_cache, which runs after this
    frontdesk = load_vertical(FIXTURES / "frontdesk")
    return await asyncio.gather(
        barge_in_call(frontdesk), barge_in_call(replace(frontdesk, speech_lead_s=0))
    )


async def test_a_barge_in_pays_for_the_sentences_synthesized_and_prices_those_never_heard(
    barge_in_calls,
):
    paced, at_once = barge_in_calls

    for phone, usage, _session, billed_by_fake in (paced, at_once):
        assert phone.clears == 1 and phone.underruns == []
        assert usage.tts[0].characters == billed_by_fake  # billed what the provider was sent
    # the whole reply was synthesized when sent at once; paced, only what was near playback
    answer = "Sure, take your time."
    spoken = len(GREETING) + len(REPLY) + len(answer)
    assert at_once[1].tts[0].characters >= spoken
    assert paced[1].tts[0].characters < spoken - len(REPLY) / 3

    # the caller heard the same either way, and the model remembers just that, to the word
    for phone, _usage, session, _billed in (paced, at_once):
        greeting, interrupted, reply = assistant_messages(session)
        assert (greeting, reply) == (GREETING, answer)
        assert interrupted.endswith(" [interrupted]")
        words = interrupted.removesuffix(" [interrupted]").split()
        assert 4 <= len(words) < len(REPLY.split()) and words == REPLY.split()[: len(words)]
        heard_s = phone.agent_audio_seconds - (len(GREETING) + len(answer)) / CHARS_PER_SECOND
        assert abs(len(" ".join(words)) / CHARS_PER_SECOND - heard_s) < 0.6

    # what was paid for but never heard is in the record, and is smaller paced
    def unheard(usage) -> int:
        return usage.tts[0].characters - usage.heard_characters

    assert 0 < unheard(paced[1]) < unheard(at_once[1])
    assert unheard(paced[1]) <= len(max(sentences(REPLY), key=len)) + 30  # the lead's worth

    # the record prices it: a memo line, at the TTS's price, already in the total
    cost = price_call(paced[1], Catalog.load())

    tts = next(line for line in cost.items if line.item.startswith("tts:"))
    memo = next(line for line in cost.items if line.item.startswith("tts.unheard:"))
    assert memo.usd == 0 and memo.unit == "char" and 0 < memo.quantity < tts.quantity
    assert cost.unheard_speech_usd == (memo.quantity * tts.unit_price_usd).quantize(
        Decimal("1e-6")
    )
