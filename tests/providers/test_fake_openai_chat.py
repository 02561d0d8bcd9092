"""The OpenAI Chat Completions fake, driven by pipecat's OpenAILLMService and the openai SDK."""

import httpx
import openai
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
from pipecat.services.llm_service import FunctionCallParams
from pipecat.services.openai.llm import OpenAILLMService

from tests.providers.harness import RunningPipeline, run_pipeline
from tollbridge.testing.fakes.openai_chat import OpenAIChatFake

KEY = "sk-test-tollbridge"
# About 1,500 tokens by the fakes' count: enough for OpenAI to cache.
SYSTEM = "You are the receptionist at Glambook salon. Keep answers short. " * 95
WEATHER = ToolsSchema(
    standard_tools=[
        FunctionSchema(
            name="get_weather",
            description="Current weather for a city",
            properties={"city": {"type": "string"}},
            required=["city"],
        )
    ]
)


def llm_for(
    fake: OpenAIChatFake, api_key: str = KEY, system_instruction: str | None = None
) -> OpenAILLMService:
    return OpenAILLMService(
        api_key=api_key,
        base_url=fake.base_url + "/v1",
        settings=OpenAILLMService.Settings(
            model="gpt-4o-mini", system_instruction=system_instruction
        ),
    )


def responses(running: RunningPipeline) -> int:
    return len(running.downstream.of_type(LLMFullResponseEndFrame))


def text_of(running: RunningPipeline) -> str:
    return "".join(frame.text for frame in running.downstream.of_type(LLMTextFrame))


async def test_streams_scripted_text() -> None:
    async with OpenAIChatFake(
        [{"match": "opening hours", "text": "We open at nine every day."}], api_key=KEY
    ) as fake:
        context = LLMContext(messages=[{"role": "user", "content": "What are your opening hours?"}])
        async with run_pipeline([llm_for(fake)]) as running:
            await running.queue(LLMContextFrame(context))
            await running.wait_until(lambda: responses(running) == 1)

    assert text_of(running) == "We open at nine every day."
    assert len(running.downstream.of_type(LLMTextFrame)) > 1, "text arrives in pieces"
    [usage] = running.usage()
    assert usage.prompt_tokens > 0 and usage.completion_tokens == 7
    assert usage.cache_read_input_tokens == 0
    [request] = fake.requests
    assert request.body["stream"] is True
    assert request.body["stream_options"] == {"include_usage": True}
    assert request.headers["authorization"] == "<redacted>"
    assert fake.failures == [] and running.errors() == []


async def test_tool_call_runs_the_function_and_the_result_goes_back() -> None:
    script = [
        {"match": "Paris", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
        {"match": "sunny", "text": "It is sunny in Paris."},
    ]
    async with OpenAIChatFake(script, api_key=KEY) as fake:
        llm = llm_for(fake)
        calls: list[dict] = []

        async def get_weather(params: FunctionCallParams) -> None:
            calls.append(dict(params.arguments))
            await params.result_callback({"forecast": "sunny"})

        llm.register_function("get_weather", get_weather)
        context = LLMContext(
            messages=[{"role": "user", "content": "What's the weather in Paris?"}], tools=WEATHER
        )
        pair = LLMContextAggregatorPair(context)
        async with run_pipeline([llm], tail=[pair.assistant()]) as running:
            await running.queue(LLMContextFrame(context))
            await running.wait_until(lambda: responses(running) == 2)

    assert calls == [{"city": "Paris"}]
    assert text_of(running) == "It is sunny in Paris."
    first, second = (request.body for request in fake.requests)
    assert first["tools"][0]["function"]["name"] == "get_weather"
    call = second["messages"][-2]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert second["messages"][-1] == {
        "role": "tool",
        "tool_call_id": call["id"],
        "content": '{"forecast": "sunny"}',
    }
    assert fake.failures == []


async def test_cached_tokens_follow_the_stable_prompt_prefix() -> None:
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
    async with OpenAIChatFake(script, api_key=KEY) as fake:
        llm = llm_for(fake, system_instruction=SYSTEM)
        async with run_pipeline([llm]) as running:
            await running.queue(LLMContextFrame(LLMContext(messages=turn_one)))
            await running.wait_until(lambda: responses(running) == 1)
            await running.queue(LLMContextFrame(LLMContext(messages=turn_two)))
            await running.wait_until(lambda: responses(running) == 2)
            await running.queue(
                LLMUpdateSettingsFrame(
                    delta=OpenAILLMService.Settings(system_instruction="New rules. " + SYSTEM)
                ),
                LLMContextFrame(LLMContext(messages=turn_three)),
            )
            await running.wait_until(lambda: responses(running) == 3)

    first, second, third = running.usage()
    assert first.prompt_tokens >= 1024
    assert first.cache_read_input_tokens == 0
    assert second.cache_read_input_tokens >= 1024
    assert (second.cache_read_input_tokens - 1024) % 128 == 0
    assert second.prompt_tokens - second.cache_read_input_tokens < 128 + 20
    assert third.prompt_tokens > second.prompt_tokens
    assert third.cache_read_input_tokens == 0, "a changed system prompt breaks the prefix"
    assert fake.failures == []


async def test_prompt_cache_key_separates_caches() -> None:
    script = [{"text": "Hi."}] * 3
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hello"}]
    async with OpenAIChatFake(script, api_key=KEY) as fake:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=fake.base_url + "/v1", max_retries=0)
        cached = []
        for key in ("tenant-a", "tenant-b", "tenant-a"):
            reply = await client.chat.completions.create(
                model="gpt-4o-mini", messages=messages, prompt_cache_key=key
            )
            cached.append(reply.usage.prompt_tokens_details.cached_tokens)
    assert cached[0] == cached[1] == 0
    assert cached[2] >= 1024


async def test_non_streaming_reply_with_tool_call() -> None:
    script = [
        {"text": "Checking.", "tool_calls": [{"name": "lookup", "arguments": {"zip": "94107"}}]}
    ]
    async with OpenAIChatFake(script, api_key=KEY) as fake:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=fake.base_url + "/v1", max_retries=0)
        reply = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "zip?"}],
            tools=[{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
        )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."
    assert choice.message.tool_calls[0].function.arguments == '{"zip": "94107"}'
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


async def test_a_scripted_call_to_a_tool_the_request_does_not_offer_is_refused() -> None:
    """A model calls only what it is shown: an agent offered the wrong tools fails loudly."""
    script = [{"tool_calls": [{"name": "lookup", "arguments": {}}]}]
    async with OpenAIChatFake(script, api_key=KEY) as fake:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=fake.base_url + "/v1", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="calls 'lookup', which the request "
                           r"does not offer \(it offers: book\)"):
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "zip?"}],
                tools=[{"type": "function", "function": {"name": "book", "parameters": {}}}],
            )


async def test_script_mismatch_fails_loudly() -> None:
    async with OpenAIChatFake([{"match": "pizza", "text": "Margherita?"}], api_key=KEY) as fake:
        context = LLMContext(messages=[{"role": "user", "content": "I would like sushi"}])
        async with run_pipeline([llm_for(fake)]) as running:
            await running.queue(LLMContextFrame(context))
            await running.wait_until(lambda: responses(running) == 1)

    [failure] = fake.failures
    assert "- pizza" in failure and "+ I would like sushi" in failure
    [error] = running.errors()
    assert "400" in error and "pizza" in error
    assert fake.script.remaining == 1


async def test_wrong_api_key_is_rejected() -> None:
    async with OpenAIChatFake([{"text": "never sent"}], api_key=KEY) as fake:
        context = LLMContext(messages=[{"role": "user", "content": "hello"}])
        async with run_pipeline([llm_for(fake, api_key="sk-wrong-key-123")]) as running:
            await running.queue(LLMContextFrame(context))
            await running.wait_until(lambda: responses(running) == 1)

    [error] = running.errors()
    assert "401" in error and "Incorrect API key provided" in error
    assert fake.failures and "sk-wrong-key-123" not in fake.failures[0]


@pytest.mark.parametrize(
    ("headers", "body", "status", "fragment"),
    [
        ({}, {"model": "gpt-4o-mini", "messages": []}, 401, "didn't provide an API key"),
        (
            {"Authorization": f"Bearer {KEY}"},
            {"messages": [{"role": "user", "content": "x"}]},
            400,
            "model parameter",
        ),
        (
            {"Authorization": f"Bearer {KEY}"},
            {"model": "gpt-4o-mini", "messages": []},
            400,
            "empty array",
        ),
        (
            {"Authorization": f"Bearer {KEY}"},
            {
                "model": "gpt-4o-mini",
                "messages": [{"role": "tool", "tool_call_id": "call_1", "content": "x"}],
            },
            400,
            "must be a response to a preceeding message with 'tool_calls'",
        ),
        (
            {"Authorization": f"Bearer {KEY}"},
            {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{}"},
                            }
                        ],
                    },
                    {"role": "user", "content": "y"},
                ],
            },
            400,
            "did not have response messages: call_1",
        ),
    ],
)
async def test_refuses_what_openai_refuses(
    headers: dict[str, str], body: dict, status: int, fragment: str
) -> None:
    async with OpenAIChatFake([{"text": "unused"}], api_key=KEY) as fake:
        async with httpx.AsyncClient() as client:
            reply = await client.post(
                f"{fake.base_url}/v1/chat/completions", json=body, headers=headers
            )
    assert reply.status_code == status
    error = reply.json()["error"]
    assert fragment in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert len(fake.failures) == 1


async def test_injected_failures_leave_the_turn_for_a_retry() -> None:
    messages = [{"role": "user", "content": "hello"}]
    async with OpenAIChatFake(
        [{"text": "Hello there, caller."}], api_key=KEY, outage=500
    ) as fake:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=fake.base_url + "/v1", max_retries=0)
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=messages)

        fake.outage, fake.fail_after = None, 2
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, stream=True
        )
        received = []
        with pytest.raises(openai.APIError, match="server had an error"):
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
        assert 0 < len("".join(received)) < len("Hello there, caller.")

        fake.fail_after = None
        reply = await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert reply.choices[0].message.content == "Hello there, caller."
    assert fake.failures == []
