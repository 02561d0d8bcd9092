"""Builder: a validated vertical + one call → a runnable pipecat pipeline.

The config says what the agent is (transport, STT, LLM, TTS, meter); the
builder adds what pipecat needs around it so the file stays about intent:
the LLM context and its user/assistant aggregators, telephony turn-taking,
the tools, and a codec stage only where two neighbours disagree on audio
format (none on a μ-law chain such as Deepgram + Aura-2).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import LLMRunFrame, MetricsFrame
from pipecat.pipeline.llm_switcher import LLMSwitcher
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.service_switcher import ServiceSwitcher
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.dtmf_aggregator import DTMFAggregator
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.llm_service import FunctionCallParams, LLMService
from pipecat.turns.user_start import TranscriptionUserTurnStartStrategy
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from tollbridge.codec import codec_between
from tollbridge.config import Stage, Vertical
from tollbridge.failover import FailOverOnAnyError
from tollbridge.hangup import HangUpAfterReply
from tollbridge.logs import get_logger
from tollbridge.meter import CostMeter, Service
from tollbridge.phrase_cache import PHRASES, PhraseCaching
from tollbridge.registry import MULAW_8K, AudioFormat, Role
from tollbridge.tools import Tool, ToolContext


@dataclass
class CallContext:
    """Everything a stage may need to build itself for one call."""

    vertical: Vertical
    call_sid: str
    stream_sid: str = ""
    caller: str = ""
    callee: str = ""
    connection: Any = None
    """The transport's live connection for this call (e.g. the Media Streams socket)."""
    base_urls: Mapping[str, str] = field(default_factory=dict)
    """Stage kind → base URL, overriding the config (offline demo, tests)."""
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    """Where API keys are read from (the process environment unless replaying)."""
    user_speech_timeout: float = 0.6
    """Seconds of caller silence after a final transcript that end the caller's turn."""

    def base_url(self, kind: str, configured: str | None) -> str | None:
        return self.base_urls.get(kind) or configured


@dataclass
class BuiltCall:
    """One call's pipeline and the handles the session needs to run and end it."""

    worker: PipelineWorker
    processors: list[FrameProcessor]
    context: LLMContext
    meter: CostMeter | None
    tool_context: ToolContext
    transport: Any


def _audio_of(stage: Stage | None, side: str) -> AudioFormat | None:
    if stage is None:
        return None
    return getattr(stage.kind, side)(stage.options)


def _tool_schemas(tools: list[Tool]) -> ToolsSchema:
    return ToolsSchema(
        standard_tools=[
            FunctionSchema(
                name=t.name, description=t.description, properties=t.properties, required=t.required
            )
            for t in tools
        ]
    )


def _register_tools(llm: LLMService, tools: list[Tool], tool_context: ToolContext, log: Any) -> None:
    for tool in tools:

        async def handler(params: FunctionCallParams, tool: Tool = tool) -> None:
            try:
                result = await tool.handler(dict(params.arguments or {}), tool_context)
            except Exception as error:  # a broken tool is the model's problem, not the call's
                log.warning("tool_failed", tool=tool.name, error=repr(error))
                result = {"error": f"{tool.name} failed: {error}"}
            await params.result_callback(result)

        llm.register_function(tool.name, handler)


def _count_avoided(meter: CostMeter | None, billed: Service, characters: int) -> None:
    if meter:
        meter.avoided_tts(billed.provider, billed.model, characters)


def _telephony_turns(call: CallContext) -> LLMUserAggregatorParams:
    """Turn-taking from transcripts: no per-call VAD model, so nothing heavy per call.

    A caller's words while the agent talks start a turn (barge-in); the turn
    ends after `user_speech_timeout` of silence following a final transcript.
    """
    return LLMUserAggregatorParams(
        user_turn_strategies=UserTurnStrategies(
            start=[TranscriptionUserTurnStartStrategy()],
            stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=call.user_speech_timeout)],
        ),
        audio_idle_timeout=0,
    )


def build_call(call: CallContext, *, observers: list[Any] | None = None) -> BuiltCall:
    """Build (not start) the pipeline for one call of `call.vertical`."""
    vertical = call.vertical
    log = get_logger(call_sid=call.call_sid, tenant=vertical.tenant, vertical=vertical.name)
    stages = {role: vertical.stage(role) for role in Role}
    transport_stage = stages[Role.TRANSPORT]
    assert transport_stage is not None, "validated chains always have a transport"
    transport = transport_stage.kind.build(transport_stage.options, call)

    meter_stage = stages[Role.METER]
    meter: CostMeter | None = None
    if meter_stage:
        meter = meter_stage.kind.build(meter_stage.options, call)

    user_turns: list[FrameProcessor] = []  # the user aggregator, once built

    def service(stage: Stage) -> FrameProcessor:
        """Build a provider stage (with its fallback, if any) and tell the meter who bills."""
        primary = one_service(stage)
        if stage.fallback is None:
            return primary
        backup = one_service(stage.fallback)
        switcher_type = LLMSwitcher if isinstance(primary, LLMService) else ServiceSwitcher
        switcher = switcher_type([primary, backup], strategy_type=FailOverOnAnyError)

        @switcher.strategy.event_handler("on_service_switched")
        async def switched(_strategy, active) -> None:
            log.warning("provider_fallback", stage=stage.name, now=active.name)
            if isinstance(active, LLMService) and user_turns:
                await user_turns[0].queue_frame(LLMRunFrame())  # answer the turn that failed

        return switcher

    def one_service(stage: Stage) -> FrameProcessor:
        processor = stage.kind.build(stage.options, call)
        options = stage.options
        billed = Service(
            provider=stage.kind.name.split(".")[0],
            model=getattr(options, "model", None) or getattr(options, "voice", ""),
            cache_ttl=getattr(options, "cache_ttl", "5m"),
        )
        if meter:
            meter.attach(processor.name, billed, realtime=stage.kind.role is Role.SPEECH_TO_SPEECH)
            if gate := getattr(processor, "silence_gate", None):
                meter.gated_stt(billed.provider, billed.model, gate)
        if isinstance(processor, PhraseCaching) and vertical.phrase_cache:
            processor.use_phrase_cache(
                PHRASES,
                stage=f"{stage.kind.name} {options.model_dump_json()}",
                phrases=vertical.fixed_phrases,
                on_avoided=partial(_count_avoided, meter, billed),
            )
        return processor

    hangup = HangUpAfterReply()

    async def end_call() -> None:
        """Hang up once the agent's reply to this turn has been spoken."""
        hangup.arm()

    tool_context = ToolContext(
        call_sid=call.call_sid,
        tenant=vertical.tenant,
        vertical=vertical.name,
        folder=vertical.folder,
        caller=call.caller,
        callee=call.callee,
        end_call=end_call,
    )

    brain = stages[Role.SPEECH_TO_SPEECH] or stages[Role.LLM]
    assert brain is not None
    llm: LLMService = service(brain)
    tools = brain.options.load_tools(vertical.folder)
    _register_tools(llm, tools, tool_context, log)
    context = LLMContext(tools=_tool_schemas(tools) if tools else ToolsSchema(standard_tools=[]))
    aggregators = LLMContextAggregatorPair(context, user_params=_telephony_turns(call))
    user_turns.append(aggregators.user())

    wire = transport_stage.kind.audio_out(transport_stage.options) or MULAW_8K
    listener = stages[Role.STT] or brain
    speaker = stages[Role.TTS] or brain
    processors: list[FrameProcessor] = [transport.input()]
    processors += codec_between(wire, _audio_of(listener, "audio_in"), inbound=True)
    if stages[Role.STT]:
        processors += [service(stages[Role.STT]), DTMFAggregator(prefix="[keypad] ")]
    processors += [aggregators.user(), llm, hangup]
    if stages[Role.TTS]:
        processors.append(service(stages[Role.TTS]))
    processors += codec_between(_audio_of(speaker, "audio_out"), wire, inbound=False)
    processors += [transport.output(), aggregators.assistant()]

    worker = PipelineWorker(
        Pipeline(processors),
        params=PipelineParams(
            audio_in_sample_rate=8000,
            audio_out_sample_rate=8000,
            enable_metrics=True,
            enable_usage_metrics=True,
        ),
        observers=list(observers or []),
        idle_timeout_secs=None,
        enable_rtvi=False,
        enable_turn_tracking=False,  # an observer: a task wake-up for every frame pushed
        check_dangling_tasks=False,
        conversation_id=call.call_sid,
    )
    if meter:
        worker.add_reached_downstream_filter((MetricsFrame,))

        @worker.event_handler("on_frame_reached_downstream")
        async def metered(_worker, frame) -> None:
            if isinstance(frame, MetricsFrame):
                await meter.on_metrics(frame)

    return BuiltCall(
        worker=worker,
        processors=processors,
        context=context,
        meter=meter,
        tool_context=tool_context,
        transport=transport,
    )
