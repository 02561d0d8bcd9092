import asyncio
from pipecat.adapters.schemas.function_schema import FunctionSchema
from pipecat.adapters.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import LLMContextFrame, LLMTextFrame, LLMFullResponseEndFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.services.openai.llm import OpenAILLMService
from providers.fakes.openai_chat import OpenAIChatFake

async def test_probe(run_pipeline):
    fake = OpenAIChatFake([
        {"match": "weather", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
        {"match": "sunny", "text": "It is sunny in Paris."},
    ], api_key="k")
    async with fake:
        llm = OpenAILLMService(api_key="k", base_url=fake.base_url + "/v1", settings=OpenAILLMService.Settings(model="gpt-4o-mini"))
        calls = []
        async def get_weather(params):
            calls.append(dict(params.arguments))
            await params.result_callback({"forecast": "sunny"})
        llm.register_function("get_weather", get_weather)
        tools = ToolsSchema(standard_tools=[FunctionSchema(name="get_weather", description="Weather", properties={"city": {"type": "string"}}, required=["city"])])
        context = LLMContext(messages=[{"role": "user", "content": "What's the weather in Paris?"}], tools=tools)
        pair = LLMContextAggregatorPair(context)
        async with run_pipeline([llm], tail=[pair.assistant()]) as running:
            await running.worker.queue_frame(LLMContextFrame(context))
            await running.downstream.wait_for(lambda: len(running.downstream.of_type(LLMFullResponseEndFrame)) >= 2)
        print(calls)
        print([f.text for f in running.downstream.of_type(LLMTextFrame)])
        print(running.usage(), running.errors(), fake.failures)
        for r in fake.requests: print(r.headers.get("authorization"), r.body["messages"])
