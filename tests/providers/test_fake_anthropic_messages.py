"""The Anthropic Messages fake, driven by pipecat's AnthropicLLMService and the anthropic SDK."""

import json

import anthropic
import httpx
import pytest
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import (
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
    LLMUpdateSettingsFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.services.anthropic.llm import AnthropicLLMService
from pipecat.services.llm_service import FunctionCallParams

from tests.providers.harness import RunningPipeline, run_pipeline
from tollbridge.testing.fakes.anthropic_messages import AnthropicMessagesFake

KEY = "sk-ant-test-tollbridge"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
# About 1,500 tokens by the fakes' count: over Sonnet's 1024 minimum, under Haiku 4.5's 4096.
SYSTEM = "You are the receptionist at Glambook salon. Keep answers short. " * 95


def llm_for(
    fake: AnthropicMessagesFake, api_key: str = KEY, system_instruction: str | None = SYSTEM
) -> AnthropicLLMService:
    return AnthropicLLMService(
        api_key=api_key,
        client=anthropic.AsyncAnthropic(api_key=api_key, base_url=fake.base_url, max_retries=0),
        settings=AnthropicLLMService.Settings(
            model="claude-sonnet-4-6",
            enable_prompt_caching=True,
            system_instruction=system_instruction,
        ),
    )


def client_for(fake: AnthropicMessagesFake) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=KEY, base_url=fake.base_url, max_retries=0)


def responses(running: RunningPipeline) -> int:
    return len(running.downstream.of_type(LLMFullResponseEndFrame))


async def test_prompt_caching_reads_the_prefix_and_a_new_system_prompt_rewrites_it() -> None:
    script = [
        {"match": "first", "text": "One."},
        {"match": "second", "text": "Two."},
        {"match": "third", "text": "Three."},
    ]
    turn_one = [{"role": "user", "content": "first"}]
    turn_two = [
        *turn_one,
        {"role": "assistant", "content": "One."},
        {"role": "user", "content": "second"},
    ]
    turn_three = [
        *turn_two,
        {"role": "assistant", "content": "Two."},
        {"role": "user", "content": "third"},
    ]
    async with AnthropicMessagesFake(script, api_key=KEY) as fake:
        async with run_pipeline([llm_for(fake)]) as running:
            await running.queue(LLMContextFrame(LLMContext(messages=turn_one)))
            await running.wait_until(lambda: responses(running) == 1)
            await running.queue(LLMContextFrame(LLMContext(messages=turn_two)))
            await running.wait_until(lambda: responses(running) == 2)
            await running.queue(
                LLMUpdateSettingsFrame(
                    delta=AnthropicLLMService.Settings(system_instruction="New rules. " + SYSTEM)
                ),
                LLMContextFrame(LLMContext(messages=turn_three)),
            )
            await running.wait_until(lambda: responses(running) == 3)

    first, second, third = running.usage()
    assert first.cache_read_input_tokens == 0
    assert first.cache_creation_input_tokens >= 1024
    assert first.prompt_tokens > 0, "net input: only what follows the last breakpoint"
    assert second.cache_read_input_tokens == first.cache_creation_input_tokens
    assert 0 < second.cache_creation_input_tokens < 64, "only the new turn is written"
    assert third.cache_read_input_tokens == 0, "a changed system prompt breaks the prefix"
    assert third.cache_creation_input_tokens > second.cache_read_input_tokens
    for usage in (first, second, third):
        assert usage.total_tokens == (
            usage.prompt_tokens
            + usage.cache_read_input_tokens
            + usage.cache_creation_input_tokens
            + usage.completion_tokens
        )
    assert "".join(f.text for f in running.downstream.of_type(LLMTextFrame)) == "One.Two.Three."
    system = fake.requests[0].body["system"]
    assert system[0]["cache_control"] == {"type": "ephemeral"}
    assert fake.failures == []


async def test_tool_use_runs_the_function_and_the_result_goes_back() -> None:
    script = [
        {"match": "Paris", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
        {"match": "sunny", "text": "It is sunny in Paris."},
    ]
    tools = ToolsSchema(
        standard_tools=[
            FunctionSchema(
                name="get_weather",
                description="Current weather for a city",
                properties={"city": {"type": "string"}},
                required=["city"],
            )
        ]
    )
    async with AnthropicMessagesFake(script, api_key=KEY) as fake:
        llm = llm_for(fake)
        calls: list[dict] = []

        async def get_weather(params: FunctionCallParams) -> None:
            calls.append(dict(params.arguments))
            await params.result_callback({"forecast": "sunny"})

        llm.register_function("get_weather", get_weather)
        context = LLMContext(
            messages=[{"role": "user", "content": "What's the weather in Paris?"}], tools=tools
        )
        pair = LLMContextAggregatorPair(context)
        async with run_pipeline([llm], tail=[pair.assistant()]) as running:
            await running.queue(LLMContextFrame(context))
            await running.wait_until(lambda: responses(running) == 2)

    assert calls == [{"city": "Paris"}]
    assert "".join(f.text for f in running.downstream.of_type(LLMTextFrame)) == (
        "It is sunny in Paris."
    )
    first, second = fake.requests
    assert first.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert first.headers["x-api-key"] == "<redacted>"
    tool_use = second.body["messages"][-2]["content"][0]
    assert tool_use["name"] == "get_weather" and tool_use["input"] == {"city": "Paris"}
    result = second.body["messages"][-1]["content"][0]
    assert result["type"] == "tool_result" and result["tool_use_id"] == tool_use["id"]
    assert fake.failures == []


async def test_stream_has_anthropics_event_order() -> None:
    calls = [
        {"name": "lookup", "arguments": {"zip": "94107"}},
        {"name": "lookup", "arguments": {"zip": "10001"}},
    ]
    script = [{"text": "Let me check.", "tool_calls": calls}]
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": "zip?"}],
        "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
    }
    async with AnthropicMessagesFake(script, api_key=KEY) as fake:
        async with httpx.AsyncClient() as http:
            reply = await http.post(f"{fake.base_url}/v1/messages", json=body, headers=HEADERS)
    events = [
        line.removeprefix("event: ")
        for line in reply.text.splitlines()
        if line.startswith("event: ")
    ]
    data = [
        json.loads(line.removeprefix("data: "))
        for line in reply.text.splitlines()
        if line.startswith("data: ")
    ]
    assert events[:3] == ["message_start", "ping", "content_block_start"]
    assert events[-2:] == ["message_delta", "message_stop"]
    assert events.count("content_block_start") == events.count("content_block_stop") == 3
    start = data[0]["message"]["usage"]
    assert set(start) >= {
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "cache_creation",
    }
    tool_uses = [
        d["content_block"] for d in data if d["type"] == "content_block_start" and d["index"] > 0
    ]
    assert [(b["type"], b["name"], b["input"]) for b in tool_uses] == [("tool_use", "lookup", {})] * 2
    assert len({b["id"] for b in tool_uses}) == 2
    partials = [
        "".join(
            d["delta"]["partial_json"]
            for d in data
            if d.get("delta", {}).get("type") == "input_json_delta" and d["index"] == index
        )
        for index in (1, 2)
    ]
    assert [json.loads(partial) for partial in partials] == [c["arguments"] for c in calls]
    final = data[-2]
    assert final["delta"]["stop_reason"] == "tool_use"
    assert final["usage"]["input_tokens"] == start["input_tokens"], "usage is cumulative"
    assert final["usage"]["output_tokens"] > start["output_tokens"]


@pytest.mark.parametrize(
    ("model", "cached"), [("claude-sonnet-4-6", True), ("claude-haiku-4-5", False)]
)
async def test_minimum_cacheable_prefix_depends_on_the_model(model: str, cached: bool) -> None:
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    async with AnthropicMessagesFake([{"text": "Hi."}], api_key=KEY) as fake:
        reply = await client_for(fake).messages.create(
            model=model, max_tokens=100, system=system, messages=[{"role": "user", "content": "hi"}]
        )
    usage = reply.usage
    assert (usage.cache_creation_input_tokens > 1024) is cached
    assert usage.input_tokens + usage.cache_creation_input_tokens > 1024


async def test_cache_writes_split_by_ttl() -> None:
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hello " * 40, "cache_control": {"type": "ephemeral"}}
            ],
        }
    ]
    async with AnthropicMessagesFake([{"text": "Hi."}] * 2, api_key=KEY) as fake:
        client = client_for(fake)
        first = (
            await client.messages.create(
                model="claude-sonnet-4-6", max_tokens=9, system=system, messages=messages
            )
        ).usage
        second = (
            await client.messages.create(
                model="claude-sonnet-4-6", max_tokens=9, system=system, messages=messages
            )
        ).usage
    assert first.cache_creation.ephemeral_1h_input_tokens >= 1024
    assert 0 < first.cache_creation.ephemeral_5m_input_tokens < 100
    assert first.cache_creation_input_tokens == (
        first.cache_creation.ephemeral_1h_input_tokens
        + first.cache_creation.ephemeral_5m_input_tokens
    )
    assert second.cache_read_input_tokens == first.cache_creation_input_tokens
    assert second.cache_creation_input_tokens == 0
    assert second.input_tokens == first.input_tokens


async def test_script_mismatch_fails_loudly() -> None:
    async with AnthropicMessagesFake(
        [{"match": "pizza", "text": "Margherita?"}], api_key=KEY
    ) as fake:
        context = LLMContext(messages=[{"role": "user", "content": "I would like sushi"}])
        async with run_pipeline([llm_for(fake)]) as running:
            await running.queue(LLMContextFrame(context))
            await running.wait_until(lambda: responses(running) == 1)

    [failure] = fake.failures
    assert "- pizza" in failure and "+ I would like sushi" in failure
    [error] = running.errors()
    assert "invalid_request_error" in error and "pizza" in error


async def test_wrong_api_key_is_rejected() -> None:
    async with AnthropicMessagesFake([{"text": "never sent"}], api_key=KEY) as fake:
        context = LLMContext(messages=[{"role": "user", "content": "hello"}])
        async with run_pipeline([llm_for(fake, api_key="sk-ant-wrong")]) as running:
            await running.queue(LLMContextFrame(context))
            await running.wait_until(lambda: responses(running) == 1)

    [error] = running.errors()
    assert "authentication_error" in error
    assert fake.failures == ["401 authentication_error: invalid x-api-key"]


USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("headers", "body", "status", "fragment"),
    [
        ({"anthropic-version": "2023-06-01"}, {}, 401, "x-api-key header is required"),
        (
            {"x-api-key": KEY},
            {"model": "m", "max_tokens": 5, "messages": [USER]},
            400,
            "anthropic-version",
        ),
        (HEADERS, {"max_tokens": 5, "messages": [USER]}, 400, "model: Field required"),
        (HEADERS, {"model": "m", "messages": [USER]}, 400, "max_tokens: Field required"),
        (
            HEADERS,
            {"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}, USER]},
            400,
            'Unexpected role "system"',
        ),
        (
            HEADERS,
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}
                        ],
                    }
                ],
            },
            400,
            "unexpected `tool_use_id` found in `tool_result` blocks: toolu_1",
        ),
        (
            HEADERS,
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [
                    USER,
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
                        ],
                    },
                    USER,
                ],
            },
            400,
            "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_1",
        ),
        (
            HEADERS,
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": str(n), "cache_control": {"type": "ephemeral"}}
                            for n in range(5)
                        ],
                    }
                ],
            },
            400,
            "A maximum of 4 blocks with cache_control may be provided. Found 5.",
        ),
    ],
)
async def test_refuses_what_anthropic_refuses(
    headers: dict[str, str], body: dict, status: int, fragment: str
) -> None:
    async with AnthropicMessagesFake([{"text": "unused"}], api_key=KEY) as fake:
        async with httpx.AsyncClient() as http:
            reply = await http.post(f"{fake.base_url}/v1/messages", json=body, headers=headers)
    assert reply.status_code == status
    error = reply.json()
    assert error["type"] == "error" and fragment in error["error"]["message"]
    assert len(fake.failures) == 1


async def test_injected_failures_leave_the_turn_for_a_retry() -> None:
    messages = [{"role": "user", "content": "hello"}]
    script = [{"text": "Hello there, caller."}]
    async with AnthropicMessagesFake(script, api_key=KEY, outage=529) as fake:
        client = client_for(fake)
        with pytest.raises(anthropic.OverloadedError):
            await client.messages.create(
                model="claude-sonnet-4-6", max_tokens=50, messages=messages
            )

        fake.outage, fake.fail_after = None, 3
        stream = await client.messages.create(
            model="claude-sonnet-4-6", max_tokens=50, messages=messages, stream=True
        )
        seen = []
        with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
            async for event in stream:
                seen.append(event.type)
        assert "message_start" in seen and "message_stop" not in seen

        fake.fail_after = None
        reply = await client.messages.create(
            model="claude-sonnet-4-6", max_tokens=50, messages=messages
        )
    assert reply.content[0].text == "Hello there, caller."
    assert reply.stop_reason == "end_turn"
    assert fake.failures == []
