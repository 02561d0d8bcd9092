"""An LLM reply's tool calls all run, in the model's order, and its tokens are billed as the
API reported them: the stage kinds' real services against the Anthropic and OpenAI fakes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import (
    ErrorFrame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
    MetricsFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.services.llm_service import FunctionCallParams, LLMService

from tests.conftest import FIXTURES, running_bridge
from tests.providers.harness import RunningPipeline, run_pipeline
from tollbridge.config import Vertical, load_vertical
from tollbridge.meter import CostMeter
from tollbridge.providers.anthropic import AnthropicLLM, AnthropicLLMOptions
from tollbridge.providers.openai import OpenAILLM, OpenAILLMOptions
from tollbridge.stage import CallContext, StageKind
from tollbridge.testing.cassette import Cassette
from tollbridge.testing.fakes.anthropic_messages import AnthropicMessagesFake
from tollbridge.testing.fakes.openai_chat import OpenAIChatFake
from tollbridge.testing.softphone import CallScript

KEY = "sk-test-replies"
ENV = {"ANTHROPIC_API_KEY": KEY, "OPENAI_API_KEY": KEY}
SALES = FIXTURES.parents[1] / "examples" / "sales"

CITY = {"city": {"type": "string"}}
TOOLS = ToolsSchema(
    standard_tools=[
        FunctionSchema(name="get_weather", description="Weather", properties=CITY, required=[]),
        FunctionSchema(name="get_time", description="Local time", properties=CITY, required=[]),
    ]
)
THREE_CALLS = [
    {"name": "get_weather", "arguments": {"city": "Paris"}},
    {"name": "get_weather", "arguments": {"city": "Rome"}},
    {"name": "get_time", "arguments": {"city": "Paris"}},
]


def build(kind: StageKind, options: Any, vertical: Vertical, url: str) -> tuple[LLMService, CostMeter]:
    """The stage's service as a call builds it, pointed at `url`, with a meter attached."""
    call = CallContext(vertical=vertical, call_sid="CAreplies", base_urls={kind.name: url}, env=ENV)
    service = kind.build(options, call)
    meter = CostMeter(call)
    meter.attach(service, kind.billing(options), kind.role)
    return service, meter


async def metered(meter: CostMeter, running: RunningPipeline) -> CostMeter:
    for frame in running.downstream.of_type(MetricsFrame):
        await meter.on_metrics(frame)
    return meter


async def run_tools(llm: LLMService) -> list[tuple[str, dict[str, Any]]]:
    """Ask about two cities, with handlers that note each call as it runs."""
    ran: list[tuple[str, dict[str, Any]]] = []

    async def handler(params: FunctionCallParams) -> None:
        ran.append((params.function_name, dict(params.arguments)))
        await params.result_callback({"forecast": "sunny", "for": params.arguments["city"]})

    llm.register_function(None, handler)
    context = LLMContext(messages=[{"role": "user", "content": "Weather in Paris and Rome?"}], tools=TOOLS)
    pair = LLMContextAggregatorPair(context)
    async with run_pipeline([llm], tail=[pair.assistant()]) as running:
        await running.queue(LLMContextFrame(context))
        await running.wait_until(lambda: len(running.downstream.of_type(LLMFullResponseEndFrame)) == 2)
    return ran


SCRIPT = [
    {"match": "Paris and Rome", "text": "Let me check.", "tool_calls": THREE_CALLS},
    {"match": "sunny", "text": "Sunny in both."},
]


async def test_every_tool_use_block_of_a_claude_reply_runs_in_order(frontdesk: Vertical) -> None:
    async with AnthropicMessagesFake(SCRIPT, api_key=KEY) as fake:
        llm, _ = build(AnthropicLLM(), AnthropicLLMOptions(), frontdesk, fake.base_url)
        ran = await run_tools(llm)

    served = [b for b in fake.replies[0]["content"] if b["type"] == "tool_use"]
    assert len(served) == 3
    assert ran == [(block["name"], block["input"]) for block in served]
    blocks = [b for m in fake.requests[1].body["messages"] for b in m["content"] if isinstance(b, dict)]
    answered = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
    assert answered == [block["id"] for block in served], "each call's result went back"
    assert len(fake.requests) == 2 and fake.failures == []


async def test_every_tool_call_of_an_openai_reply_runs_in_order(frontdesk: Vertical) -> None:
    async with OpenAIChatFake(SCRIPT, api_key=KEY) as fake:
        llm, _ = build(OpenAILLM(), OpenAILLMOptions(), frontdesk, fake.client_url)
        ran = await run_tools(llm)

    assert ran == [(call["name"], call["arguments"]) for call in THREE_CALLS]
    second = fake.requests[1].body["messages"]
    asked = [call["id"] for m in second for call in m.get("tool_calls") or []]
    assert len(asked) == 3
    assert [m["tool_call_id"] for m in second if m["role"] == "tool"] == asked
    assert len(fake.requests) == 2 and fake.failures == []


async def test_a_claude_reply_cut_short_bills_the_usage_anthropic_had_reported(
    frontdesk: Vertical,
) -> None:
    long_reply = "Well, " + "let me tell you all about our opening hours and prices. " * 6
    script = [{"match": "hours", "text": long_reply}]
    async with AnthropicMessagesFake(script, api_key=KEY, event_delay_s=0.02) as fake:
        llm, meter = build(AnthropicLLM(), AnthropicLLMOptions(), frontdesk, fake.base_url)
        context = LLMContext(messages=[{"role": "user", "content": "Your hours?"}])
        async with run_pipeline([llm]) as running:
            await running.queue(LLMContextFrame(context))
            await running.wait_until(lambda: bool(running.downstream.of_type(LLMTextFrame)))
            await running.queue(InterruptionFrame())
            await running.wait_until(lambda: bool(running.downstream.of_type(LLMFullResponseEndFrame)))

    heard = "".join(frame.text for frame in running.downstream.of_type(LLMTextFrame))
    assert 0 < len(heard) < len(long_reply), "the reply was cut short"
    [reported] = fake.reported_usage
    [billed] = (await metered(meter, running)).usage().llm
    assert (billed.input_tokens, billed.output_tokens) == (
        reported["input_tokens"],
        reported["output_tokens"],
    ), "Anthropic's own counts, not an estimate from the words received"
    assert billed.cached_input_tokens == reported["cache_read_input_tokens"]


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
async def test_a_request_that_failed_without_usage_bills_nothing(frontdesk: Vertical, kind: str) -> None:
    script = [{"text": "Never said."}]
    if kind == "anthropic":
        fake: Any = AnthropicMessagesFake(script, api_key=KEY, outage=500)
        stage: tuple[StageKind, Any] = (AnthropicLLM(), AnthropicLLMOptions(retries=0))
    else:
        fake = OpenAIChatFake(script, api_key=KEY, outage=500)
        stage = (OpenAILLM(), OpenAILLMOptions())
    async with fake:
        llm, meter = build(*stage, frontdesk, fake.client_url)
        context = LLMContext(messages=[{"role": "user", "content": "hello"}])
        async with run_pipeline([llm]) as running:
            await running.queue(LLMContextFrame(context))
            await running.upstream.wait_for(ErrorFrame, seconds=8)

    assert fake.requests, "the request reached the provider"
    assert (await metered(meter, running)).usage().llm == []


async def test_the_sales_lead_is_written_when_claude_records_and_finishes_in_one_reply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "leads.jsonl"
    monkeypatch.setenv("BRIGHTPATH_RESULTS", str(results))
    answers = [
        {"question": "budget", "answer": "about $20k", "score": 2},
        {"question": "authority", "answer": "signs off", "score": 3},
        {"question": "need", "answer": "CRM failing", "score": 3},
        {"question": "timeline", "answer": "this quarter", "score": 2},
    ]
    heard = "Twenty thousand, I sign off, our CRM is failing, this quarter."
    cassette = Cassette(
        stt=[{"at": 1.0, "transcript": heard, "is_final": True, "speech_final": True}],
        llm=[
            {
                "match": "Twenty thousand",
                "tool_calls": [
                    *({"name": "record_answer", "arguments": a} for a in answers),
                    {"name": "finish_qualification", "arguments": {}},
                ],
            },
            {"match": "verdict", "text": "Great, an account executive will call you."},
        ],
        tts={"chars_per_second": 100.0},
    )
    async with running_bridge(load_vertical(SALES), cassette) as running:
        await running.softphone().call(
            CallScript(
                audio=b"\xff" * 16000,
                parameters={"vertical": "sales", "tenant": "brightpath"},
                settle_s=1.5,
                speed=2.0,
                max_s=20,
            )
        )
        [usage] = await running.finished()
        claude = running.fakes.fakes["anthropic.llm"]

    assert running.fakes.failures == []
    served = [b for b in claude.replies[0]["content"] if b["type"] == "tool_use"]
    assert [b["name"] for b in served] == ["record_answer"] * 4 + ["finish_qualification"]
    [lead] = [json.loads(line) for line in results.read_text().splitlines()]
    assert (lead["call_sid"], lead["outcome"], lead["score"]) == (usage.call_sid, "qualified", 10)
    assert lead["answers"] == {a["question"]: {"answer": a["answer"], "score": a["score"]} for a in answers}
    assert {request.provider for request in usage.llm} == {"anthropic"}


async def test_a_caller_hanging_up_mid_reply_keeps_the_usage_claude_had_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIGHTPATH_RESULTS", str(tmp_path / "leads.jsonl"))
    long_reply = "Thanks, Sam. " + "Let me walk you through what BrightPath offers. " * 8
    cassette = Cassette(
        stt=[{"at": 1.0, "transcript": "Yes, this is Sam.", "is_final": True, "speech_final": True}],
        llm=[{"match": "Sam", "text": long_reply}],
        tts={"chars_per_second": 100.0},
    )
    async with running_bridge(load_vertical(SALES), cassette) as running:
        claude = running.fakes.fakes["anthropic.llm"]
        claude.event_delay_s = 0.05  # the reply is still streaming when the caller hangs up
        await running.softphone().call(
            CallScript(
                audio=b"\xff" * 16000,
                parameters={"vertical": "sales", "tenant": "brightpath"},
                hang_up_at=2.0,
                max_s=20,
            )
        )
        [usage] = await running.finished()

    [reported] = claude.reported_usage
    assert reported["output_tokens"] == 1, "only message_start had arrived: the reply was cut"
    [billed] = usage.llm
    assert (billed.provider, billed.input_tokens, billed.output_tokens) == (
        "anthropic",
        reported["input_tokens"],
        reported["output_tokens"],
    )
