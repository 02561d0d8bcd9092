"""The OpenAI Realtime fake, driven by pipecat's OpenAIRealtimeLLMService and a raw WebSocket."""

import asyncio
import base64
import json
import math
from typing import Any

import numpy as np
import pytest
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import (
    InputAudioRawFrame,
    LLMContextFrame,
    LLMTextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.services.llm_service import FunctionCallParams
from pipecat.services.openai.realtime import events
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from tests.providers.harness import RunningPipeline, run_pipeline
from tollbridge.testing.fakes.openai_realtime import MS_PER_CHARACTER, OpenAIRealtimeFake

KEY = "sk-test-tollbridge"
# About 1,500 tokens by the fakes' count: enough for OpenAI to cache.
INSTRUCTIONS = "You are the receptionist at Glambook salon. Keep answers short. " * 95


def llm_for(
    fake: OpenAIRealtimeFake,
    api_key: str = KEY,
    audio: events.AudioConfiguration | None = None,
    instructions: str | None = None,
) -> OpenAIRealtimeLLMService:
    return OpenAIRealtimeLLMService(
        api_key=api_key,
        base_url=fake.ws_url,
        settings=OpenAIRealtimeLLMService.Settings(
            model="gpt-realtime",
            system_instruction=instructions,
            session_properties=events.SessionProperties(audio=audio),
        ),
    )


def caller_audio(speech_ms: int, silence_ms: int) -> InputAudioRawFrame:
    """8 kHz PCM16: a loud tone for the speech, then digital silence."""
    t = np.arange(speech_ms * 8) / 8000
    tone = (8000 * np.sin(2 * np.pi * 300 * t)).astype("<i2")
    samples = np.concatenate([tone, np.zeros(silence_ms * 8, dtype="<i2")])
    return InputAudioRawFrame(audio=samples.tobytes(), sample_rate=8000, num_channels=1)


def spoken(running: RunningPipeline) -> str:
    return "".join(frame.text for frame in running.downstream.of_type(LLMTextFrame))


async def test_spoken_reply_in_mulaw_with_transcript_and_usage() -> None:
    reply = "Glambook, how can I help?"
    pcmu = events.AudioConfiguration(
        input=events.AudioInput(format=events.PCMAudioFormat()),
        output=events.AudioOutput(format=events.PCMUAudioFormat(), voice="marin"),
    )
    async with OpenAIRealtimeFake([{"match": "Hello", "text": reply}], api_key=KEY) as fake:
        context = LLMContext(messages=[{"role": "user", "content": "Hello"}])
        async with run_pipeline([llm_for(fake, audio=pcmu)]) as running:
            await running.queue(LLMContextFrame(context))
            await running.wait_until(lambda: len(running.usage()) == 1)

    duration_ms = len(reply) * MS_PER_CHARACTER
    audio = b"".join(frame.audio for frame in running.downstream.of_type(TTSAudioRawFrame))
    assert len(audio) == duration_ms * 8, "8 kHz μ-law: one byte per sample"
    assert spoken(running) == reply
    [usage] = running.usage()
    assert usage.output_audio_tokens == math.ceil(duration_ms / 50)
    assert usage.completion_tokens == usage.output_audio_tokens + math.ceil(len(reply) / 4)
    assert usage.input_audio_tokens == 0 and usage.prompt_tokens > 0
    assert usage.cache_read_input_tokens == 0
    [session] = fake.sessions
    assert session.config["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert fake.requests[0].headers["authorization"] == "<redacted>"
    assert fake.failures == [] and running.errors() == []


async def test_function_call_round_trip_with_cached_instructions() -> None:
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
    async with OpenAIRealtimeFake(script, api_key=KEY) as fake:
        llm = llm_for(fake, instructions=INSTRUCTIONS)
        calls: list[dict] = []

        async def get_weather(params: FunctionCallParams) -> None:
            calls.append(dict(params.arguments))
            await params.result_callback({"forecast": "sunny"})

        llm.register_function("get_weather", get_weather)
        context = LLMContext(
            messages=[{"role": "user", "content": "What's the weather in Paris?"}], tools=tools
        )
        pair = LLMContextAggregatorPair(context)
        async with run_pipeline([pair.user(), llm], tail=[pair.assistant()]) as running:
            await running.queue(LLMContextFrame(context))
            await running.wait_until(lambda: len(running.usage()) == 2)

    assert calls == [{"city": "Paris"}]
    assert spoken(running) == "It is sunny in Paris."
    [session] = fake.sessions
    output = next(item for item in session.items if item["type"] == "function_call_output")
    call = next(item for item in session.items if item["type"] == "function_call")
    assert output["call_id"] == call["call_id"] and "sunny" in output["output"]
    first, second = running.usage()
    assert first.cache_read_input_tokens == 0
    assert second.cache_read_input_tokens >= 1024
    assert (second.cache_read_input_tokens - 1024) % 128 == 0
    assert second.cache_read_input_audio_tokens == 0
    assert fake.failures == []


async def test_caller_speech_is_detected_transcribed_and_answered() -> None:
    transcribing = events.AudioConfiguration(
        input=events.AudioInput(transcription=events.InputAudioTranscription())
    )
    script = [{"match": "book", "heard": "I'd like to book a haircut", "text": "For when?"}]
    async with OpenAIRealtimeFake(script, api_key=KEY) as fake:
        async with run_pipeline([llm_for(fake, audio=transcribing)]) as running:
            await running.queue(caller_audio(speech_ms=600, silence_ms=400))
            await running.wait_until(lambda: len(running.usage()) == 1)

    assert spoken(running) == "For when?"
    [transcript] = running.upstream.of_type(TranscriptionFrame)
    assert transcript.text == "I'd like to book a haircut"
    [session] = fake.sessions
    [caller, reply] = session.items
    assert caller["role"] == "user" and caller["content"][0]["type"] == "input_audio"
    assert reply["role"] == "assistant"
    [usage] = running.usage()
    # About 600 ms of speech plus 200 ms of trailing silence, 1 token per 100 ms.
    assert 7 <= usage.input_audio_tokens <= 10
    assert fake.failures == []


async def test_barge_in_cancels_the_reply_and_truncation_shrinks_the_next_input() -> None:
    long_reply = "Our salon offers cuts, colour, styling and treatments."
    script = [
        {"match": "services", "text": long_reply},
        {"match": "price", "heard": "What's the price?", "text": "From forty dollars."},
    ]
    async with OpenAIRealtimeFake(script, api_key=KEY, audio_pace=1.0) as fake:
        context = LLMContext(messages=[{"role": "user", "content": "What services do you have?"}])
        async with run_pipeline([llm_for(fake)]) as running:
            await running.queue(LLMContextFrame(context))
            await running.wait_until(lambda: len(running.downstream.of_type(TTSAudioRawFrame)) >= 4)
            await running.queue(caller_audio(speech_ms=300, silence_ms=300))
            await running.wait_until(lambda: len(running.usage()) == 2)

    cancelled, answered = running.usage()
    full_ms = len(long_reply) * MS_PER_CHARACTER
    assert 0 < cancelled.output_audio_tokens < math.ceil(full_ms / 50)
    events = [e for r in fake.requests for e in r.messages]
    [truncate] = [e for e in events if e["type"] == "conversation.item.truncate"]
    assert 0 < truncate["audio_end_ms"] < full_ms
    caller_tokens = answered.input_audio_tokens - math.ceil(truncate["audio_end_ms"] / 50)
    assert 3 <= caller_tokens <= 6, "the caller's ~500 ms turn, next to the truncated reply"
    assert spoken(running).endswith("From forty dollars.")
    assert fake.failures == []


async def test_wrong_api_key_is_refused_at_the_handshake() -> None:
    async with OpenAIRealtimeFake([{"text": "never sent"}], api_key=KEY) as fake:
        async with run_pipeline([llm_for(fake, api_key="sk-wrong-key-123")]) as running:
            await running.wait_until(lambda: bool(running.errors()))
    assert "401" in running.errors()[0]
    assert len(fake.failures) == 1 and "sk-wrong-key-123" not in fake.failures[0]


async def connected(fake: OpenAIRealtimeFake, **headers: str) -> ClientConnection:
    return await connect(
        f"{fake.ws_url}?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {KEY}", **headers},
    )


async def next_of(ws: ClientConnection, event_type: str) -> dict[str, Any]:
    """The next server event of one type, skipping the others."""
    async with asyncio.timeout(2):
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == event_type:
                return event


async def test_the_beta_header_is_refused() -> None:
    async with OpenAIRealtimeFake([{"text": "unused"}], api_key=KEY) as fake:
        with pytest.raises(InvalidStatus) as refused:
            await connected(fake, **{"OpenAI-Beta": "realtime=v1"})
    assert refused.value.response.status_code == 400
    assert "OpenAI-Beta" in fake.failures[0]


@pytest.mark.parametrize(
    ("session", "code"),
    [
        ({"type": "realtime", "input_audio_format": "g711_ulaw"}, "unknown_parameter"),
        ({"type": "realtime", "modalities": ["audio"]}, "unknown_parameter"),
        ({"instructions": "hi"}, "missing_required_parameter"),
        (
            {"type": "realtime", "audio": {"output": {"format": {"type": "g711_ulaw"}}}},
            "invalid_value",
        ),
    ],
)
async def test_beta_and_malformed_session_fields_are_refused(session: dict, code: str) -> None:
    async with OpenAIRealtimeFake([{"text": "unused"}], api_key=KEY) as fake:
        async with await connected(fake) as ws:
            await next_of(ws, "session.created")
            await ws.send(json.dumps({"type": "session.update", "session": session}))
            error = await next_of(ws, "error")
    assert error["error"]["code"] == code
    assert fake.failures


async def test_script_mismatch_and_unknown_tool_call_fail_loudly() -> None:
    async with OpenAIRealtimeFake([{"match": "pizza", "text": "Margherita?"}], api_key=KEY) as fake:
        async with await connected(fake) as ws:
            item = {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "sushi"}],
            }
            await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
            await ws.send(json.dumps({"type": "response.create"}))
            mismatch = await next_of(ws, "error")
            output = {"type": "function_call_output", "call_id": "call_nope", "output": "{}"}
            await ws.send(json.dumps({"type": "conversation.item.create", "item": output}))
            unknown_call = await next_of(ws, "error")
    assert mismatch["error"]["code"] == "fake_script_mismatch"
    assert "- pizza" in mismatch["error"]["message"] and "+ sushi" in mismatch["error"]["message"]
    assert unknown_call["error"]["code"] == "invalid_tool_call_id"
    assert len(fake.failures) == 2 and fake.script.remaining == 1


async def test_injected_failures() -> None:
    script = [{"text": "A reply long enough to be cut off halfway through."}]
    async with OpenAIRealtimeFake(script, api_key=KEY, outage=503) as fake:
        with pytest.raises(InvalidStatus):
            await connected(fake)

        fake.outage, fake.fail_after = None, 20
        async with await connected(fake) as ws:
            await ws.send(json.dumps({"type": "response.create"}))
            await next_of(ws, "response.output_audio.delta")
            error = await next_of(ws, "error")
            with pytest.raises(ConnectionClosedError):
                await ws.recv()
    assert error["error"]["type"] == "server_error"
    assert fake.script.remaining == 1, "a failed response does not use up its turn"
    assert fake.failures == []


async def test_changed_instructions_break_the_cached_prefix() -> None:
    script = [{"text": "One."}, {"text": "Two."}, {"text": "Three."}]
    cached = []
    async with OpenAIRealtimeFake(script, api_key=KEY) as fake:
        async with await connected(fake) as ws:
            for instructions in (INSTRUCTIONS, INSTRUCTIONS, "New rules. " + INSTRUCTIONS):
                session = {"type": "realtime", "instructions": instructions}
                await ws.send(json.dumps({"type": "session.update", "session": session}))
                await ws.send(json.dumps({"type": "response.create"}))
                done = await next_of(ws, "response.done")
                cached.append(done["response"]["usage"]["input_token_details"]["cached_tokens"])
    assert cached[0] == 0
    assert cached[1] >= 1024
    assert cached[2] == 0
    assert fake.failures == []


async def test_audio_is_logged_by_size() -> None:
    async with OpenAIRealtimeFake([{"text": "unused"}], api_key=KEY) as fake:
        async with await connected(fake) as ws:
            audio = base64.b64encode(bytes(4800)).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            committed = await next_of(ws, "input_audio_buffer.committed")
    assert fake.requests[0].messages[0]["audio"] == "<4800 bytes>"
    assert fake.sessions[0].items[0]["id"] == committed["item_id"]
    assert fake.sessions[0].audio_bytes_received == 4800
