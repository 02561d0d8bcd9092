"""A handoff that carries only the note: the next agent starts from it, not the whole call.

The caller's words come from the cassette at the salon_booking audio's turn times
(what the replayed STT hears does not depend on the audio's content).
"""

from __future__ import annotations

import pytest

from tests.conftest import FIXTURES
from tests.examples.conftest import EXAMPLES
from tollbridge.testing.cassette import Cassette

pytestmark = [pytest.mark.usefixtures("example_databases"), pytest.mark.long(20)]

NOTE = "Jane wants to move booking GB-101 to Saturday at eleven."


def final(at: float, text: str) -> dict:
    return {"at": at, "transcript": text, "is_final": True, "speech_final": True}


MOVE = Cassette(
    stt=[final(11.17, "Hi, it's Jane, I need to move my booking to Saturday."),
            final(33.43, "Okay, thank you, bye.")],
    llm=[
        {"match": "move my booking", "text": "Changes and billing can do that for you.",
         "tool_calls": [{"name": "hand_to_billing", "arguments": {"note": NOTE}}]},
        {"match": "handed the caller to you", "tool_calls": [
            {"name": "reschedule", "arguments": {"reference": "GB-101", "day": "Saturday",
                                                 "time": "11:00"}}]},
        {"text": "I can't find booking G B 1 0 1. Could you check the reference?"},
        {"match": "bye", "tool_calls": [{"name": "end_call", "arguments": {}}]},
        {"match": "ending", "text": "Goodbye!"},
    ],
)


async def test_the_billing_agent_is_given_the_note_not_the_conversation(replay_call):
    result = await replay_call(EXAMPLES / "salon", audio=FIXTURES / "calls" / "salon_booking.wav",
                               cassette=MOVE, speed=2.0, settle_s=4.0)
    requests = [r.messages[0] for r in result.provider_fakes["openai.llm"].requests]
    first, taken_over = requests[0], requests[1]
    assert any("move my booking" in str(m.get("content")) for m in first["messages"])
    # all the billing agent was told is its prompt and the front desk's note
    said = [m for m in taken_over["messages"] if m["role"] != "system"]
    assert said == [{"role": "user",
                     "content": f"[front_desk handed the caller to you: {NOTE}]"}]
    assert "changes and billing" in taken_over["messages"][0]["content"]
    assert sorted(t["function"]["name"] for t in taken_over["tools"]) == [
        "cancel", "end_call", "hand_to_booking", "hand_to_front_desk", "reschedule"]
    assert [(h.from_agent, h.to_agent) for h in result.cost.handoffs] == [("front_desk", "billing")]
    assert result.said("agent")[-1] == "Goodbye!" and result.phone.ended_by == "agent_hung_up"
    assert [r.agent for r in result.usage.llm] == ["front_desk"] + ["billing"] * (len(requests) - 1)
