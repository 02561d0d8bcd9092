"""Several agents in one vertical file: what loads, and each mistake named by file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.conftest import FIXTURES, running_bridge
from tests.examples.conftest import EXAMPLES
from tollbridge.config import ConfigError, load_vertical
from tollbridge.prompt_caching import caching_warnings
from tollbridge.schema import vertical_schema
from tollbridge.testing.cassette import Cassette
from tollbridge.testing.softphone import CallScript
from tollbridge.transports.twilio.caller_audio import load_caller_audio

SPEECH = load_caller_audio(FIXTURES / "calls" / "salon_barge_in_dtmf.wav")

TOOLS = '''
from tollbridge.tools import Tool


async def _noop(args, call):
    return {}


async def _check_account(args, call):
    """A tool that decides the caller is bookings' business."""
    await call.hand_to("bookings", "Account in good standing; wants to book.")
    return {"account": "ok"}


async def _hand_to_a_stranger(args, call):
    await call.hand_to("billing", "no such agent")
    return {"never": "returned"}

TOOLS = [Tool(name=n, description=f"the {n} tool", handler=_noop)
         for n in ("hours", "book", "cancel", "end_call")] + [
    Tool(name="check_account", description="Check the account", handler=_check_account),
    Tool(name="stray", description="Hand to no one", handler=_hand_to_a_stranger),
]
'''

CHAIN = """
name = "desk"
tenant = "acme"
numbers = ["+15550100200"]

[[chain]]
use = "twilio"
[[chain]]
use = "deepgram.stt"
[[chain]]
use = "openai.llm"
model = "gpt-4o-mini"
prompt = "house.md"
tools = "tools:TOOLS"
[[chain]]
use = "deepgram.tts"
voice = "aura-2-thalia-en"
[[chain]]
use = "cost.meter"
"""

AGENTS = """
[agents.front]
prompt = "front.md"
tools = ["hours", "check_account", "stray", "end_call"]
hands_to = ["bookings"]

[agents.bookings]
prompt = "bookings.md"
description = "books appointments"
tools = ["book", "end_call"]
hands_to = ["front"]
model = "gpt-4o"
voice = "aura-2-orion-en"
entry_line = "Bookings here."
carry = "summary"
"""


def write(tmp_path: Path, agents: str = AGENTS, chain: str = CHAIN) -> Path:
    (tmp_path / "tools.py").write_text(TOOLS)
    (tmp_path / "house.md").write_text("House rules.")
    for name in ("front", "bookings", "billing"):
        (tmp_path / f"{name}.md").write_text(f"You are {name}.")
    path = tmp_path / "vertical.toml"
    path.write_text(chain + agents)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as error:
        load_vertical(path)
    return [problem.split("vertical.toml: ", 1)[1] for problem in error.value.problems]


def test_agents_load_in_file_order_with_their_prompt_model_and_voice(tmp_path):
    vertical = load_vertical(write(tmp_path))
    front, bookings = vertical.agents
    assert (front.name, bookings.name) == ("front", "bookings")  # the first answers
    assert bookings.llm_options.system_prompt() == "House rules.\n\nYou are bookings."
    assert bookings.llm_options.model == "gpt-4o"
    assert front.llm_options.model == "gpt-4o-mini"  # the chain's, unless the agent says
    assert bookings.tts_options.voice == "aura-2-orion-en"
    assert (bookings.tools, bookings.hands_to, bookings.carry) == (
        ("book", "end_call"), ("front",), "summary")


def test_a_vertical_without_agents_has_none(tmp_path):
    assert load_vertical(write(tmp_path, agents="")).agents == ()


@pytest.mark.parametrize(("change", "expected"), [
    (('hands_to = ["bookings"]', 'hands_to = ["booking"]'),
     'agents.front.hands_to[0]: no agent "booking"; did you mean "bookings"? '
     "(agents: front, bookings)"),
    (('tools = ["book", "end_call"]', 'tools = ["boook", "end_call"]'),
     'agents.bookings.tools[0]: unknown tool "boook"; did you mean "book"? '
     "(tools: hours, book, cancel, end_call, check_account, stray)"),
    (('hands_to = ["front"]', 'hands_to = ["bookings"]'),
     "agents.bookings.hands_to[0]: an agent cannot hand the caller to itself"),
    (('model = "gpt-4o"', 'model = "gpt-4o-mni"'),
     'agents.bookings.model: unknown model "gpt-4o-mni" for openai.llm; did you mean '
     '"gpt-4o-mini"?'),
    (('voice = "aura-2-orion-en"', 'voice = "aura-2-nobody-en"'),
     'agents.bookings.voice: unknown voice "aura-2-nobody-en" for deepgram.tts'),
    (('carry = "summary"', 'carry = "gist"'),
     "agents.bookings.carry: Input should be 'whole' or 'summary'"),
    (('prompt = "bookings.md"', 'prompt = "missing.md"'),
     'agents.bookings.prompt: file "missing.md" not found'),
    (('entry_line = "Bookings here."', 'entry_lines = "Bookings here."'),
     "agents.bookings.entry_lines: unknown option"),
])
def test_each_mistake_names_the_key(tmp_path, change, expected):
    old, new = change
    assert old in AGENTS
    found = problems(write(tmp_path, AGENTS.replace(old, new)))
    assert any(problem.startswith(expected) for problem in found), found


def test_an_agent_no_one_can_reach_is_named(tmp_path):
    unreachable = AGENTS + '\n[agents.billing]\nprompt = "billing.md"\ntools = ["cancel"]\n'
    assert problems(write(tmp_path, unreachable)) == [
        'agents.billing: no agent can reach it: the call starts with "front"; add "billing" '
        "to the hands_to of an agent that is reached"]


def test_a_speech_to_speech_brain_is_one_agent(tmp_path):
    realtime = CHAIN.split("[[chain]]\nuse = \"deepgram.stt\"")[0] + """[[chain]]
use = "openai.realtime"
prompt = "house.md"
tools = "tools:TOOLS"
[[chain]]
use = "cost.meter"
"""
    assert problems(write(tmp_path, chain=realtime)) == [
        "agents: agents need a cascaded chain (stt → llm → tts): a speech-to-speech brain "
        "is one agent"]


def test_prompt_caching_is_judged_per_agent_prefix(tmp_path):
    warnings = caching_warnings(load_vertical(write(tmp_path)))
    assert [w.split(" ", 1)[0] for w in warnings] == ["agents.front", "agents.bookings"]
    assert "gpt-4o's minimum" in warnings[1]


def test_the_schema_and_the_examples_cover_agents():
    agent = vertical_schema()["$defs"]["AgentFile"]["properties"]
    assert {"prompt", "tools", "hands_to", "model", "voice", "entry_line", "carry"} <= set(agent)
    salon = load_vertical(EXAMPLES / "salon")
    assert [a.name for a in salon.agents] == ["front_desk", "booking", "colour", "billing"]
    estate = load_vertical(EXAMPLES / "real_estate")
    assert [a.name for a in estate.agents] == ["listings", "showings"]


def final(at: float, text: str) -> dict:
    return {"at": at, "transcript": text, "is_final": True, "speech_final": True}


async def test_a_tool_can_hand_the_caller_on_with_its_result(tmp_path):
    vertical = load_vertical(write(tmp_path))
    cassette = Cassette(stt=[final(2.0, "I'd like to book, my account is 42")], llm=[
        {"match": "account is 42", "tool_calls": [{"name": "stray", "arguments": {}},
                                                   {"name": "check_account", "arguments": {}}]},
        # bookings carries only the note: the front desk's tool wrote it
        {"match": "front handed the caller to you: Account in good standing",
         "text": "Bookings here. Which day?"},
    ])
    params = {"vertical": "desk", "tenant": "acme", "from": "+15550109999", "to": "+15550100200"}
    async with running_bridge(vertical, cassette) as running:
        with capture_logs() as logged:
            await running.softphone().call(CallScript(
                audio=SPEECH[: 8000 * 5], parameters=params, settle_s=1.0, speed=2.0, max_s=20))
            [usage] = await running.finished()
        bodies = [r.messages[0] for r in running.fakes.fakes["openai.llm"].requests]
        assert running.fakes.failures == []
    assert [(h.from_agent, h.to_agent) for h in usage.handoffs] == [("front", "bookings")]
    assert [body["model"] for body in bodies] == ["gpt-4o-mini", "gpt-4o"]
    assert sorted(t["function"]["name"] for t in bodies[1]["tools"]) == [
        "book", "end_call", "hand_to_front"]
    # the tool that named an agent its agent cannot reach failed, and handed no one on
    [stray] = [line for line in logged if line.get("tool") == "stray"]
    assert stray["event"] == "tool_failed"
    assert "front cannot hand the caller to 'billing' (only to: bookings)" in stray["error"]
