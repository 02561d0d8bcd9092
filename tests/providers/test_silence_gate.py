"""The STT silence gate: speech always reaches Deepgram, line silence is held back and not billed."""

from __future__ import annotations

import random
from dataclasses import replace
from decimal import Decimal

from tests.conftest import FIXTURES, running_bridge
from tests.transports.test_bridge_calls import SPEECH, assistant_messages, final, script
from tollbridge.config import load_vertical
from tollbridge.providers.silence_gate import SilenceGate, audioop
from tollbridge.stage import Role
from tollbridge.testing.cassette import Cassette

FRAME = 160  # 20 ms of μ-law
THRESHOLD = 32768 * 10 ** (-45 / 20)


def frames(audio: bytes) -> list[bytes]:
    return [audio[i : i + FRAME] for i in range(0, len(audio) - FRAME + 1, FRAME)]


def loud(frame: bytes) -> bool:
    return audioop.rms(audioop.ulaw2lin(frame, 2), 2) >= THRESHOLD


def test_every_spoken_frame_is_streamed_with_its_preroll_and_silence_is_held():
    gate = SilenceGate(encoding="mulaw", sample_rate=8000, hangover_s=1.0, preroll_s=0.3)
    caller = frames(SPEECH + b"\xff" * 8000 * 3)  # a recorded caller, then 3 s of line silence
    sent = [gate.admit(frame) for frame in caller]

    streamed = b"".join(sent)
    assert gate.bytes_streamed == len(streamed)
    for i, frame in enumerate(caller):
        if loud(frame):
            assert sent[i].endswith(frame), f"spoken frame {i} was held back"
    # each onset after held silence carries the 300 ms before it
    onsets = [i for i, out in enumerate(sent) if out and i and not sent[i - 1]]
    assert onsets, "the recording has pauses long enough to close the gate"
    for i in onsets:
        assert sent[i] == b"".join(caller[i - 15 : i + 1])
    # the trailing silence past the hangover is not streamed, and is counted as withheld
    assert not any(sent[-100:])
    withheld = (len(caller) * FRAME - len(streamed)) / 8000
    assert gate.withheld_seconds == withheld >= 2.0


def test_a_noisy_line_streams_everything():
    """Background noise above the threshold: no saving, and nothing lost."""
    rng = random.Random(7)
    noise = audioop.lin2ulaw(
        b"".join(rng.randint(-900, 900).to_bytes(2, "little", signed=True) for _ in range(8000 * 2)), 2
    )
    gate = SilenceGate(encoding="mulaw", sample_rate=8000)
    for frame in frames(noise):
        assert gate.admit(frame) == frame
    assert gate.withheld_seconds == 0


async def test_a_gated_call_bills_only_what_deepgram_heard_and_still_answers(frontdesk):
    stt = frontdesk.stage(Role.STT)
    gated = replace(stt, options=stt.options.model_copy(update={"skip_silence": True}))
    vertical = replace(frontdesk, chain=[gated if s is stt else s for s in frontdesk.chain])
    reply = "We are open Monday to Friday, eight to six."
    cassette = Cassette(
        stt=[final(1.0, "what are your opening hours")],  # on Deepgram's clock: audio it received
        llm=[{"match": "opening hours", "text": reply}],
    )
    async with running_bridge(vertical, cassette) as running:
        phone = await running.softphone().call(script())
        [usage] = await running.finished()
        session = running.sessions[0]
        heard = running.fakes.fakes["deepgram.stt"].requests[0].audio_seconds
        assert running.fakes.failures == []

    assert assistant_messages(session)[-1] == reply
    [stt_usage] = usage.stt
    assert stt_usage.audio_seconds == Decimal(str(round(heard, 6)))
    assert stt_usage.avoided_seconds > 1
    caller_seconds = Decimal(len(phone.caller_audio)) / 8000
    assert abs(stt_usage.audio_seconds + stt_usage.avoided_seconds - caller_seconds) < Decimal("0.1")
    assert load_vertical(FIXTURES / "frontdesk").stage(Role.STT).options.skip_silence is False
