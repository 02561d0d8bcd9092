"""A provider dying mid-call, through the real bridge: the fallback takes over where the stage
has one; where it has none the caller hears the apology, the call ends at once (or moves to a
person), and the record names the provider that failed. Never silence."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qs
from xml.etree import ElementTree

import pytest
from aiohttp import web
from pipecat.pipeline.service_switcher import ServiceSwitcher

from tests.conftest import AUTH_TOKEN, FIXTURES, RunningBridge, running_bridge
from tollbridge.builder import phrase_stage
from tollbridge.config import OnFailure, Stage, Vertical, load_vertical
from tollbridge.costs.catalog import Catalog
from tollbridge.costs.ledger import Ledger
from tollbridge.costs.pricing import price_call
from tollbridge.failure import is_passing
from tollbridge.pacing import sentences
from tollbridge.phrase_cache import PHRASES, PhraseKey
from tollbridge.stage import Role
from tollbridge.testing.cassette import Cassette
from tollbridge.testing.fakes.audio import synthesize
from tollbridge.testing.fakes.script import Script
from tollbridge.testing.softphone import CallScript, SoftphoneResult
from tollbridge.transports.twilio.rest import TwilioRest

pytestmark = pytest.mark.long(10)

CPS = 40.0
"""The fake voices' speaking rate: fast, so each call is short."""
PARAMS = {"vertical": "frontdesk", "tenant": "acme"}
SPEECH = b"\x10\x90" * 8000 * 6
"""12 s of a tone: the caller talks on, so only the agent can end the call early."""
FIRST, SECOND = "what are your opening hours", "and on weekends"
REPLY, LATER_REPLY = "We are open Monday to Friday.", "We are closed on weekends."
APOLOGY = OnFailure().apology


def final(at: float, text: str) -> dict:
    return {"at": at, "transcript": text, "is_final": True, "speech_final": True}


CASSETTE = Cassette(
    stt=[final(1.5, FIRST), final(5.0, SECOND)],
    llm=[{"match": "opening hours", "text": REPLY}, {"match": "weekends", "text": LATER_REPLY}],
    tts={"chars_per_second": CPS},
)


def spoken(text: str) -> bytes:
    """What the fake voices say for `text`, μ-law 8 kHz."""
    return synthesize(text, encoding="mulaw", sample_rate=8000, chars_per_second=CPS)


def said_by_the_pacer(text: str) -> bytes:
    """What the fake voices say for `text` sent as the pacer sends it: a sentence at a time,
    each with the trailing space pipecat gives it."""
    return b"".join(spoken(f"{sentence} ") for sentence in sentences(text))


def pre_rendered(stage: Stage, text: str) -> bytes | None:
    """`text` as the phrase cache holds it for `stage`: its sentences' audio, in order."""
    parts = [PHRASES.get(PhraseKey(phrase_stage(stage), s)) for s in sentences(text)]
    return b"".join(chunk for part in parts if part for chunk in part) if all(parts) else None


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.01)


def heard(running: RunningBridge, reply: str) -> Callable[[], bool]:
    """Whether the caller has heard `reply` (the context holds only what was played)."""
    def check() -> bool:
        messages = running.sessions[0].built.context.get_messages() if running.sessions else []
        return any(m.get("role") == "assistant" and m.get("content") == reply for m in messages)
    return check


@dataclass
class Failed:
    phone: SoftphoneResult
    died_at: float
    hung_up_at: float

    @property
    def first_audio_after_s(self) -> float:
        """From the provider's death to the first agent audio reaching the caller."""
        return min(t for t in self.phone.media_at if t > self.died_at) - self.died_at

    @property
    def hang_up_after_s(self) -> float:
        return self.hung_up_at - self.died_at


async def call_and_kill(
    running: RunningBridge,
    kill: Callable[[], Awaitable[object]],
    failing: Callable[[], bool] | None = None,
) -> Failed:
    """Call; once the caller has heard the first reply, kill the provider. Its death counts
    from then, or from when `failing()` first holds (a request it failed, for an HTTP API)."""
    phone = asyncio.create_task(running.softphone().call(
        CallScript(audio=SPEECH, parameters=PARAMS, settle_s=20, max_s=40)))
    await until(heard(running, REPLY))
    died_at = time.monotonic()
    await kill()
    if failing is not None:
        await until(failing)
        died_at = time.monotonic()
    result = await phone
    return Failed(result, died_at, time.monotonic())


def assert_apology_then_hang_up(failed: Failed, apology: bytes, within_s: float = 5.0) -> None:
    assert failed.phone.ended_by == "agent_hung_up"
    assert failed.phone.agent_audio.endswith(apology), "the caller heard the apology last"
    assert set(apology) != {0xFF}, "the apology is not silence"
    played_s = len(apology) / 8000
    assert failed.hang_up_after_s < within_s + played_s, "hung up at once, not by the caller"


# --- No fallback: apology, hang-up, record ------------------------------------------------------

async def test_stt_dying_mid_call_gets_the_apology_spoken_and_the_call_ended(frontdesk):
    async with running_bridge(frontdesk, CASSETTE) as running:
        listen = running.fakes.fakes["deepgram.stt"]
        failed = await call_and_kill(running, listen.kill)
        [usage] = await running.finished()
        speak = running.fakes.fakes["deepgram.tts"]
        said = [m["text"] for r in speak.requests for m in r.messages if m.get("type") == "Speak"]

    last = said[-len(sentences(APOLOGY)):]
    assert " ".join(t.strip() for t in last) == APOLOGY, "the TTS, still alive, said the apology"
    assert_apology_then_hang_up(failed, said_by_the_pacer(APOLOGY))
    assert failed.first_audio_after_s < 1.0
    assert usage.ended_by == "provider_failed"
    assert usage.failed_provider == "deepgram.stt/nova-3"


async def test_an_llm_answering_500_gets_the_apology_and_the_call_ended(frontdesk, tmp_path):
    async with running_bridge(frontdesk, CASSETTE) as running:
        chat = running.fakes.fakes["openai.llm"]
        answered = len(chat.requests)

        async def fail() -> None:
            chat.outage = 500

        failed = await call_and_kill(running, fail, lambda: len(chat.requests) > answered)
        [usage] = await running.finished()
        tries = len(chat.requests) - answered

    assert tries >= 1, "the caller's next turn reached the failing model"
    # the SDK retries a 500 with back-off before pipecat reports it: about 4 s here
    assert_apology_then_hang_up(failed, said_by_the_pacer(APOLOGY), within_s=6.0)
    assert usage.ended_by == "provider_failed"
    assert usage.failed_provider == "openai.llm/gpt-4o-mini"
    async with await Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        await ledger.record(price_call(usage, Catalog.load()))
        stored = await ledger.get(usage.call_sid)
    assert stored is not None and stored.failed_provider == "openai.llm/gpt-4o-mini"


async def test_tts_dying_mid_call_plays_the_pre_rendered_apology_and_ends(frontdesk):
    async with running_bridge(frontdesk, CASSETTE) as running:
        await running.bridge.render_phrases()  # as `serve` does at start-up
        speak = running.fakes.fakes["deepgram.tts"]
        [rendered] = speak.requests  # the apology, before any call
        tts = frontdesk.stage(Role.TTS)
        rendered_audio = pre_rendered(tts, APOLOGY)
        failed = await call_and_kill(running, speak.kill)
        [usage] = await running.finished()

    # a sentence at a time, each with the trailing space pipecat sends Aura
    assert rendered.characters == sum(len(s) + 1 for s in sentences(APOLOGY))
    assert rendered_audio is not None
    apology = rendered_audio
    assert apology == said_by_the_pacer(APOLOGY)
    assert_apology_then_hang_up(failed, apology)
    assert failed.first_audio_after_s < 0.5
    assert usage.ended_by == "provider_failed"
    assert usage.failed_provider == "deepgram.tts/aura-2-thalia-en"


async def test_a_tts_refusing_from_the_start_still_gets_the_apology_heard(frontdesk):
    async with running_bridge(frontdesk, CASSETTE) as running:
        await running.bridge.render_phrases()
        running.fakes.fakes["deepgram.tts"].outage = 503  # an outage since start-up
        started = time.monotonic()
        phone = await running.softphone().call(
            CallScript(audio=SPEECH, parameters=PARAMS, settle_s=20, max_s=40))
        [usage] = await running.finished()

    assert phone.ended_by == "agent_hung_up" and phone.agent_audio == said_by_the_pacer(APOLOGY)
    assert time.monotonic() - started < 5
    assert usage.failed_provider == "deepgram.tts/aura-2-thalia-en"


# --- With a fallback: the call goes on, mid-call ----------------------------------------------

BACKED_UP = """
name = "frontdesk"
tenant = "acme"
greeting = "Hello, Acme front desk. How can I help?"

[[chain]]
use = "twilio"
[[chain]]
use = "deepgram.stt"
model = "nova-3"
fallback = { use = "deepgram.stt", model = "nova-3-general" }
[[chain]]
use = "openai.llm"
prompt = "prompt.md"
fallback = { use = "anthropic.llm" }
[[chain]]
use = "elevenlabs.tts"
fallback = { use = "deepgram.tts" }
[[chain]]
use = "cost.meter"
"""


def backed_up(folder: Path) -> Vertical:
    """The front desk with a fallback at every provider stage."""
    folder.mkdir()
    (folder / "prompt.md").write_text((FIXTURES / "frontdesk" / "prompt.md").read_text())
    (folder / "vertical.toml").write_text(BACKED_UP)
    return load_vertical(folder)


@pytest.mark.parametrize("dying", ["stt", "llm", "tts"])
async def test_the_fallback_takes_over_when_a_provider_dies_mid_call(dying, tmp_path):
    vertical = backed_up(tmp_path / "frontdesk")
    async with running_bridge(vertical, CASSETTE) as running:
        fakes = running.fakes.fakes
        anthropic, openai, listen = fakes["anthropic.llm"], fakes["openai.llm"], fakes["deepgram.stt"]
        anthropic.script = Script([{"match": "weekends", "text": LATER_REPLY}])  # turn two on
        phone = asyncio.create_task(running.softphone().call(
            CallScript(audio=SPEECH, parameters=PARAMS, hang_up_at=8.5, max_s=20)))
        await until(heard(running, REPLY))
        assert {r.query["model"] for r in listen.requests} == {"nova-3", "nova-3-general"}
        if dying == "stt":  # the fallback's socket sat idle: it hears the caller from now on
            listen.use_script([final(1.0, SECOND)])
            await listen.kill(query={"model": "nova-3"})
        elif dying == "llm":
            openai.outage = 500
        else:
            await fakes["elevenlabs.tts"].kill()
        await until(heard(running, LATER_REPLY))
        result = await phone
        [usage] = await running.finished()

    assert result.ended_by == usage.ended_by == "caller_hung_up"
    assert usage.failed_provider == ""
    models = {"stt": [s.model for s in usage.stt], "llm": [r.provider for r in usage.llm],
              "tts": [t.provider for t in usage.tts]}
    expected = {"stt": ["nova-3", "nova-3-general"], "llm": ["openai", "anthropic"],
                "tts": ["elevenlabs", "deepgram"]}
    assert models[dying] == expected[dying], "both billed: the primary, then its fallback"
    for other in {"stt", "llm", "tts"} - {dying}:
        assert len(set(models[other])) == 1, f"the {other} stage kept its provider"
    if dying == "llm":
        assert len(openai.requests) == 2, "one answered, one failed: no retry's back-off"
    if dying == "tts":
        said = [m["text"] for r in fakes["deepgram.tts"].requests for m in r.messages
                if m.get("type") == "Speak"]
        assert said == [LATER_REPLY + " "]
        assert spoken(said[0]) in result.agent_audio


async def test_when_the_fallback_dies_too_the_caller_hears_the_apology_and_is_hung_up(tmp_path):
    vertical = backed_up(tmp_path / "frontdesk")
    async with running_bridge(vertical, CASSETTE) as running:
        await running.bridge.render_phrases()  # in both voices
        eleven, aura = running.fakes.fakes["elevenlabs.tts"], running.fakes.fakes["deepgram.tts"]

        def speaking() -> str:
            """The stage kind the call's TTS switcher has active now."""
            built = running.sessions[0].built
            return next(failure.stage for p in built.processors if isinstance(p, ServiceSwitcher)
                        if (failure := built.failure(p, "")) and failure.role is Role.TTS)

        async def both() -> None:
            await eleven.kill()
            await until(lambda: speaking() == "deepgram.tts")
            await aura.kill()

        failed = await call_and_kill(running, both)
        [usage] = await running.finished()

    primary_voice = pre_rendered(vertical.stage(Role.TTS), APOLOGY)
    assert primary_voice is not None
    assert_apology_then_hang_up(failed, primary_voice)
    assert (usage.ended_by, usage.failed_provider) == ("provider_failed", "deepgram.tts/aura-2-thalia-en")


# --- Twilio takes the call over: a transfer, or an apology in its own voice ----------------------

ACCOUNT = "AC" + "6" * 32
PERSON = "+15550107777"


class FakeTwilioCallUpdates:
    """Twilio's `POST /Accounts/{sid}/Calls/{CallSid}.json`: new TwiML for a live call."""

    def __init__(self) -> None:
        self.updates: list[tuple[str, ElementTree.Element]] = []

    async def update(self, request: web.Request) -> web.Response:
        form = parse_qs(await request.text())
        self.updates.append((request.match_info["call_sid"], ElementTree.fromstring(form["Twiml"][0])))
        return web.json_response({"sid": request.match_info["call_sid"], "status": "in-progress",
                                  "account_sid": ACCOUNT})


@pytest.fixture
async def twilio() -> AsyncIterator[tuple[FakeTwilioCallUpdates, TwilioRest]]:
    """A fake of Twilio's REST API, and the real client pointed at it."""
    fake = FakeTwilioCallUpdates()
    app = web.Application()
    app.router.add_post(f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{{call_sid}}.json", fake.update)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    rest = TwilioRest(ACCOUNT, AUTH_TOKEN, api_base_url=f"http://127.0.0.1:{runner.addresses[0][1]}")
    try:
        yield fake, rest
    finally:
        await rest.close()
        await runner.cleanup()


async def test_with_transfer_to_the_caller_hears_why_and_is_put_through(frontdesk, twilio):
    fake, rest = twilio
    vertical = replace(frontdesk, on_failure=OnFailure(transfer_to=PERSON))
    async with running_bridge(vertical, CASSETTE) as running:
        running.bridge.dialer = rest
        failed = await call_and_kill(running, running.fakes.fakes["deepgram.stt"].kill)
        [usage] = await running.finished()

    assert_apology_then_hang_up(failed, said_by_the_pacer(OnFailure().transfer_message))
    [(call_sid, twiml)] = fake.updates
    assert call_sid == failed.phone.call_sid == usage.call_sid
    assert [(child.tag, child.text) for child in twiml] == [("Dial", PERSON)]  # already heard
    assert (usage.ended_by, usage.failed_provider) == ("provider_failed", "deepgram.stt/nova-3")


async def test_a_dead_speech_to_speech_brain_has_twilio_say_the_apology(twilio):
    fake, rest = twilio
    realtime = load_vertical(FIXTURES.parents[1] / "examples" / "real_estate" / "realtime.vertical.toml")
    greeting = "Hi, OneRoof here."
    vertical = replace(realtime, greeting=greeting)
    cassette = Cassette(llm=[{"match": "Open the call by saying exactly", "text": greeting}])
    async with running_bridge(vertical, cassette) as running:
        running.bridge.dialer = rest
        brain = running.fakes.fakes["openai.realtime"]
        phone = asyncio.create_task(running.softphone().call(CallScript(
            audio=b"\xff" * 8000, parameters={"vertical": vertical.name}, settle_s=20, max_s=30)))
        await until(heard(running, greeting))
        died_at = time.monotonic()
        await brain.stop()  # its socket closes, and nobody answers again
        result = await phone
        hung_up_s = time.monotonic() - died_at
        [usage] = await running.finished()

    assert result.ended_by == "agent_hung_up" and hung_up_s < 1.0
    [(call_sid, twiml)] = fake.updates
    assert call_sid == usage.call_sid
    assert [(child.tag, child.text) for child in twiml] == [("Say", APOLOGY), ("Hangup", None)]
    assert (usage.ended_by, usage.failed_provider) == ("provider_failed", "openai.realtime/gpt-realtime")


def test_one_silent_utterance_is_lived_with_and_many_in_a_row_are_a_failure():
    # pipecat's own words for each (tts_service.TTSService._record_context_audio_outcome)
    assert is_passing("TTS context 0b5c1e2a-77f4-4c55-9d0e-1f3a2b4c5d6e completed with no audio")
    assert not is_passing("3 consecutive TTS contexts completed with no audio")
    assert not is_passing("MulawDeepgramTTS#1 error: no close frame received or sent")
