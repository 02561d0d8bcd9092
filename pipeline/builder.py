"""Builder: a validated vertical + one call → a runnable pipecat pipeline.

The chain runs in the file's order. The config says what the agent is; the
builder adds what pipecat needs around it so the file stays about intent:
the LLM context and its user/assistant aggregators, telephony turn-taking,
the tools, a vertical's agents (their handoff tools, and markers that tell
the meter whose usage is whose), keypad presses, fallbacks, the meter's
billing identities (each agent's model and voice), the phrase cache, what a
failure policy needs (which processor is which provider, and a way to the
caller past a dead TTS), and a codec only where two neighbours disagree on
audio format (none on a μ-law chain such as Deepgram + Aura-2).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import EndFrame, LLMRunFrame, MetricsFrame, TTSSpeakFrame
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
from pipecat.transports.base_transport import BaseTransport
from pipecat.turns.user_start import TranscriptionUserTurnStartStrategy
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner

from tollbridge import telemetry
from tollbridge.agents import Agent
from tollbridge.codec import codec_between
from tollbridge.config import Stage, Vertical
from tollbridge.failover import FailOverOnAnyError
from tollbridge.failure import LastWords, ProviderFailure
from tollbridge.handoff import AgentDesk, AgentMarker, AgentOnLine, tool_schema
from tollbridge.hangup import HangUpAfterReply
from tollbridge.logs import get_logger
from tollbridge.meter import CostMeter
from tollbridge.pacing import SpeechPacer, sentences
from tollbridge.phrase_cache import PHRASES, PhraseCaching, PhraseKey
from tollbridge.stage import (
    BRAIN_ROLES,
    MULAW_8K,
    PROVIDER_ROLES,
    AudioFormat,
    BrainOptions,
    CallContext,
    Playback,
    Role,
)
from tollbridge.tools import Tool, ToolContext
from tollbridge.turns import TurnClock

__all__ = ["BuiltCall", "CallContext", "build_call"]


@dataclass
class BuiltCall:
    """One call's pipeline and the handles the session needs to run and end it."""

    worker: PipelineWorker
    processors: list[FrameProcessor]
    context: LLMContext
    meter: CostMeter | None
    tool_context: ToolContext
    transport: BaseTransport
    playback: Playback | None
    """The transport's account of what the caller heard, where it keeps one."""
    brain: FrameProcessor
    """The LLM or speech-to-speech service (or its switcher), past the user aggregator."""
    providers: dict[str, Stage]
    """Processor name → the provider stage (or fallback) that built it."""
    last_words: LastWords
    """Right after the stage that speaks."""
    turn_clock: TurnClock
    """Right before the transport's output: each caller turn and how fast it was answered."""

    def failure(self, processor: FrameProcessor | None, error: str) -> ProviderFailure | None:
        """The provider `processor` stands for, if it is one (a switcher: its active one)."""
        if isinstance(processor, ServiceSwitcher):
            processor = processor.strategy.active_service
        stage = self.providers.get(processor.name) if processor is not None else None
        if stage is None:
            return None
        billing = stage.kind.billing(stage.options)
        return ProviderFailure(stage.kind.role, stage.name, billing.model if billing else "", error)

    def live_providers(self) -> list[str]:
        """The providers the call uses now, once each (a stage with a fallback: its active one)."""
        found = (self.failure(processor, "") for processor in self.processors)
        return list(dict.fromkeys(failure.provider for failure in found if failure))


class StageBuildError(RuntimeError):
    """A stage kind built something the chain cannot use; the message names the stage."""


def _tool_schemas(tools: list[Tool]) -> ToolsSchema:
    return ToolsSchema(standard_tools=[tool_schema(t) for t in tools])


def _register_tools(
    llm: LLMService | LLMSwitcher,
    tools: list[Tool],
    tool_context: ToolContext,
    log: Any,
    desk: AgentDesk | None,
) -> None:
    for tool in tools:

        async def handler(params: FunctionCallParams, tool: Tool = tool) -> None:
            # Let the reply's other calls announce themselves first: pipecat's assistant
            # aggregator asks the model again once no announced call is pending, so a quick
            # result ahead of a sibling's announcement would have the reply answered twice.
            await asyncio.sleep(0)
            if desk is not None and not desk.offers(tool.name):
                await params.result_callback(
                    {"error": f"{tool.name} is not one of {desk.current.name}'s tools"})
                return
            failed = False
            try:
                result = await tool.handler(dict(params.arguments or {}), tool_context)
            except Exception as error:  # a broken tool is the model's problem, not the call's
                log.warning("tool_failed", tool=tool.name, error=repr(error))
                result, failed = {"error": f"{tool.name} failed: {error}"}, True
            if desk is not None:  # with the caller handed on, if the tool asked
                await desk.answer(params, result, failed=failed)
            else:
                await params.result_callback(result)

        llm.register_function(tool.name, handler)
    if desk is not None:
        desk.register(llm)
        tool_context.hand_to = desk.request


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


class _StageBuilder:
    """Builds one stage (and its fallback) for a call: billing, phrase cache, failover."""

    def __init__(self, call: CallContext, meter: CostMeter | None, log: Any):
        self.call = call
        self.meter = meter
        self.log = log
        self.on_llm_fallback: Callable[[], Awaitable[None]] | None = None
        """Run when an LLM stage fails over (to answer the turn that failed)."""
        self.providers: dict[str, Stage] = {}

    def build(self, stage: Stage, agents: Sequence[Agent] = ()) -> list[FrameProcessor]:
        """`stage` as the call's first agent runs it, billed as each agent runs it."""
        primary = self._one(stage, agents)
        if stage.fallback is None:
            return primary
        fallback = stage.fallback
        if agents and isinstance(fallback.options, BrainOptions):  # the same agent, elsewhere
            fallback = replace(fallback, options=fallback.options.instructed(agents[0].prompt))
        [first], [backup] = primary, self._one(fallback)
        switcher: ServiceSwitcher[Any]
        if isinstance(first, LLMService) and isinstance(backup, LLMService):
            switcher = LLMSwitcher([first, backup], strategy_type=FailOverOnAnyError)
        else:
            switcher = ServiceSwitcher([first, backup], strategy_type=FailOverOnAnyError)

        labels = {first.name: provider_label(stage), backup.name: provider_label(fallback)}

        @switcher.strategy.event_handler("on_service_switched")
        async def switched(_strategy: Any, active: FrameProcessor) -> None:
            self.log.warning("provider_fallback", stage=stage.name, now=active.name)
            if (watching := telemetry.active()) is not None:
                left = labels[backup.name if active is first else first.name]
                watching.fallback(stage.name, left, labels[active.name])
            if isinstance(active, LLMService) and self.on_llm_fallback:
                await self.on_llm_fallback()

        return [switcher]

    def _one(self, stage: Stage, agents: Sequence[Agent] = ()) -> list[FrameProcessor]:
        role = stage.kind.role
        runs_as = {agent.name: agent.options_for(role) or stage.options for agent in agents}
        if agents:
            stage = replace(stage, options=runs_as[agents[0].name])
        built = stage.kind.build(stage.options, self.call)
        processors = list(built) if isinstance(built, list | tuple) else [built]
        if not processors or not all(isinstance(p, FrameProcessor) for p in processors):
            raise StageBuildError(f"stage kind {stage.name!r} built {built!r}, not a FrameProcessor")
        if stage.fallback is not None and len(processors) != 1:
            raise StageBuildError(f"stage kind {stage.name!r} has a fallback: it builds one processor")
        billing = stage.kind.billing(stage.options)
        by_agent = {name: stage.kind.billing(options) for name, options in runs_as.items()}
        vertical = self.call.vertical
        for processor in processors:
            if self.meter and billing:
                self.meter.attach(processor, billing, role, {
                    name: bills for name, bills in by_agent.items() if bills is not None})
            if isinstance(processor, PhraseCaching) and vertical.phrase_cache:
                processor.use_phrase_cache(
                    PHRASES,
                    stage=phrase_stage(stage),
                    phrases=_phrase_texts(vertical),
                    voices={getattr(options, "voice", None): phrase_stage(replace(stage, options=options))
                            for options in runs_as.values()},
                )
            if stage.kind.role in PROVIDER_ROLES:
                self.providers[processor.name] = stage
        return processors


def provider_label(stage: Stage) -> str:
    """E.g. "deepgram.stt/nova-3": a provider as the record and the metrics name it."""
    billing = stage.kind.billing(stage.options)
    return ProviderFailure(stage.kind.role, stage.name, billing.model if billing else "",
                           "").provider


def _phrase_texts(vertical: Vertical) -> list[str]:
    """The texts the phrase cache serves: each fixed phrase a sentence at a time, as the
    pacer speaks it, and whole, as it is spoken when the vertical does not pace speech."""
    return [*vertical.fixed_phrases, *(s for text in vertical.fixed_phrases for s in sentences(text))]


def phrase_stage(stage: Stage) -> str:
    """A TTS stage as the phrase cache keys it: kind and options (voice, format, endpoint…)."""
    return f"{stage.name} {stage.options.model_dump_json()}"


def cached_phrase(vertical: Vertical, text: str) -> tuple[tuple[bytes, ...], AudioFormat] | None:
    """`text` as the vertical's TTS stage (or a fallback) recorded it, and in what format."""
    tts = vertical.stage(Role.TTS)
    if tts is None or not vertical.phrase_cache:
        return None
    for _, stage in tts.with_fallbacks():  # stored a sentence at a time, as the pacer speaks
        parts = [PHRASES.get(PhraseKey(phrase_stage(stage), part)) for part in sentences(text)]
        audio = stage.kind.audio_out(stage.options)
        if parts and all(parts) and audio is not None:
            return tuple(chunk for part in parts if part for chunk in part), audio
    return None


RENDER_TIMEOUT_S = 10.0


async def render_phrases(call: CallContext, phrases: list[str]) -> int:
    """Synthesize `phrases` into the phrase cache with each voice of the vertical's TTS stage,
    before any call needs them; returns the characters the provider was sent.

    For what a call must say when its own TTS cannot: the audio has to exist
    before the TTS fails. No call is billed for it (there is none yet); the
    caller logs the characters.
    """
    tts = call.vertical.stage(Role.TTS)
    if tts is None or not call.vertical.phrase_cache:
        return 0
    sent = 0
    for _, stage in tts.with_fallbacks():
        key = phrase_stage(stage)
        wanted = [part for text in phrases for part in sentences(text)]  # as the pacer speaks
        missing = [text for text in wanted if PHRASES.get(PhraseKey(key, text)) is None]
        service = stage.kind.build(stage.options, call) if missing else None
        if not isinstance(service, PhraseCaching):
            continue
        service.use_phrase_cache(PHRASES, stage=key, phrases=missing)
        worker = PipelineWorker(
            Pipeline([service]),
            params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000),
            idle_timeout_secs=None, enable_rtvi=False, enable_turn_tracking=False,
            check_dangling_tasks=False,
        )
        runner = WorkerRunner(handle_sigint=False, check_dangling_tasks=False)
        await runner.add_workers(worker)
        running = asyncio.create_task(runner.run())
        try:
            async with asyncio.timeout(RENDER_TIMEOUT_S):
                await worker.queue_frames([TTSSpeakFrame(text) for text in missing])
                # the service stores each phrase once its provider has sent all of it
                while any(PHRASES.get(PhraseKey(key, text)) is None for text in missing):  # noqa: ASYNC110 - the store has no event to wait on
                    await asyncio.sleep(0.02)
                await worker.queue_frame(EndFrame())
                await running
        finally:
            if not running.done():
                await worker.cancel()
                await asyncio.wait({running}, timeout=RENDER_TIMEOUT_S)
        sent += sum(map(len, missing))
    return sent


def _brain(built: list[FrameProcessor], stage: Stage) -> LLMService | LLMSwitcher:
    """The brain's processor: where its tools are registered (a switcher forwards them)."""
    if len(built) != 1 or not isinstance(built[0], LLMService | LLMSwitcher):
        raise StageBuildError(f"{stage.kind.role} stage {stage.name!r} must build one LLMService")
    return built[0]


def build_call(call: CallContext, *, observers: list[Any] | None = None) -> BuiltCall:
    """Build (not start) the pipeline for one call of `call.vertical`."""
    vertical = call.vertical
    log = get_logger(call_sid=call.call_sid, tenant=vertical.tenant, vertical=vertical.name)
    meter_stage = vertical.stage(Role.METER)
    meter = meter_stage.kind.build(meter_stage.options, call) if meter_stage else None
    transport_stage = _required(vertical, Role.TRANSPORT)
    transport = transport_stage.kind.build(transport_stage.options, call)
    if not isinstance(transport, BaseTransport):
        raise StageBuildError(f"transport {transport_stage.name!r} must build a pipecat BaseTransport")
    hangup = HangUpAfterReply()
    tool_context = _tool_context(call, hangup)
    stages = _StageBuilder(call, meter, log)

    brain_stage = vertical.stage(Role.SPEECH_TO_SPEECH) or _required(vertical, Role.LLM)
    brain = stages.build(brain_stage, vertical.agents)
    llm = _brain(brain, brain_stage)
    assert isinstance(brain_stage.options, BrainOptions), "validated: brains take BrainOptions"
    tools = brain_stage.options.load_tools(vertical.folder)
    context = LLMContext(tools=_tool_schemas(tools) if tools else ToolsSchema(standard_tools=[]))
    aggregators = LLMContextAggregatorPair(context, user_params=_telephony_turns(call))

    async def answer_again() -> None:
        await aggregators.user().queue_frame(LLMRunFrame())

    desk = None
    if vertical.agents:
        primary = llm.strategy.services[0] if isinstance(llm, ServiceSwitcher) else llm
        desk = AgentDesk(vertical.agents, tools, context, llm, primary, answer_again)
        context.set_tools(desk.tools_schema())
    _register_tools(llm, tools, tool_context, log, desk)
    stages.on_llm_fallback = answer_again
    last_words = LastWords()
    processors = [transport.input()]
    output = transport.output()
    playback = output if isinstance(output, Playback) else None
    if desk is not None:  # marks where a handoff falls among the brain's usage
        brain = [*brain, AgentMarker(Role.LLM)]
    processors += _chain(
        vertical, transport_stage, stages, playback, [aggregators.user(), *brain, hangup],
        last_words, desk,
    )
    roles = {name: stage.kind.role for name, stage in stages.providers.items()}
    first = vertical.agents[0].name if vertical.agents else ""
    clock = TurnClock(roles, first, meter.started_at if meter else None)

    @aggregators.user().event_handler("on_user_turn_stopped")
    async def caller_stopped(*_: Any) -> None:
        clock.caller_stopped()

    processors += [clock, transport.output(), aggregators.assistant()]
    return BuiltCall(
        worker=_worker(processors, call, observers, meter),
        processors=processors,
        context=context,
        meter=meter,
        tool_context=tool_context,
        transport=transport,
        playback=playback,
        brain=llm,
        providers=stages.providers,
        last_words=last_words,
        turn_clock=clock,
    )


def _required(vertical: Vertical, role: Role) -> Stage:
    stage = vertical.stage(role)
    assert stage is not None, f"validated chains always have a {role} stage"
    return stage


def _tool_context(call: CallContext, hangup: HangUpAfterReply) -> ToolContext:
    async def end_call() -> None:
        """Hang up once the agent's reply to this turn has been spoken."""
        hangup.arm()

    vertical = call.vertical
    return ToolContext(
        call_sid=call.call_sid,
        tenant=vertical.tenant,
        vertical=vertical.name,
        folder=vertical.folder,
        caller=call.caller,
        callee=call.callee,
        end_call=end_call,
    )


def _chain(
    vertical: Vertical,
    transport: Stage,
    stages: _StageBuilder,
    playback: Playback | None,
    brain: list[FrameProcessor],
    last_words: LastWords,
    desk: AgentDesk | None = None,
) -> list[FrameProcessor]:
    """The processors between the transport's input and output, in the file's order.

    The caller's audio is converted (if at all) right before the stage that
    listens, the agent's right after the stage that speaks (and `last_words`,
    which speaks in its format when it cannot); a processor stage before the
    listener sees the audio as the transport delivers it. Where the transport
    knows what the caller has heard, text reaches the TTS through a pacer, only
    a little ahead of playback.
    """
    wire = transport.kind.audio_out(transport.options) or MULAW_8K
    listener = vertical.stage(Role.STT) or vertical.stage(Role.SPEECH_TO_SPEECH)
    speaker = vertical.stage(Role.TTS) or vertical.stage(Role.SPEECH_TO_SPEECH)
    processors: list[FrameProcessor] = []
    for stage in vertical.chain:
        role = stage.kind.role
        if role in (Role.TRANSPORT, Role.METER):
            continue
        if stage is listener:
            processors += codec_between(wire, stage.kind.audio_in(stage.options), inbound=True)
        if role in BRAIN_ROLES:
            processors += brain
        elif role is Role.STT:
            processors += [*stages.build(stage), DTMFAggregator(prefix="[keypad] ")]
        elif role is Role.TTS:
            if playback is not None and vertical.speech_lead_s:
                processors.append(SpeechPacer(playback, lead_s=vertical.speech_lead_s))
            speaking = stages.build(stage, vertical.agents)
            processors += speaking
            if desk is not None:  # a new voice is for the primary; usage marked by agent
                desk.speaker = speaking[0].strategy.services[0] \
                    if isinstance(speaking[0], ServiceSwitcher) else speaking[0]
                processors.append(AgentMarker(Role.TTS))
        else:
            processors += stages.build(stage)
        if stage is speaker:
            processors.append(last_words)
            processors += codec_between(stage.kind.audio_out(stage.options), wire, inbound=False)
    return processors


def _worker(
    processors: list[FrameProcessor],
    call: CallContext,
    observers: list[Any] | None,
    meter: CostMeter | None,
) -> PipelineWorker:
    traced = telemetry.tracing()  # pipecat's turn and service spans, under the call's
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
        enable_tracing=traced,
        enable_turn_tracking=traced,  # observers: a task wake-up for every frame pushed
        additional_span_attributes={"tollbridge.call_sid": call.call_sid} if traced else None,
        check_dangling_tasks=False,
        conversation_id=call.call_sid,
    )
    if meter:
        worker.add_reached_downstream_filter((MetricsFrame, AgentOnLine))

        @worker.event_handler("on_frame_reached_downstream")
        async def metered(_worker: PipelineWorker, frame: MetricsFrame | AgentOnLine) -> None:
            if isinstance(frame, AgentOnLine):
                meter.on_agent(frame)
            else:
                await meter.on_metrics(frame)

    return worker
