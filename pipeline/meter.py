"""The `cost.meter` stage: watches a call's usage metrics and keeps its running cost.

It is neither a processor in the audio path nor a pipecat observer (an
observer costs a queue item and a task wake-up for every frame pushed
anywhere): the pipeline worker hands it each `MetricsFrame` that reaches the
end of the pipeline (and, on a vertical with several agents, each
`AgentOnLine` mark: from then on that stage's usage is the new agent's).
Usage arrives in pipecat's provider-neutral shapes (STT audio seconds, LLM
tokens, TTS characters); the builder tells the meter which service is which
provider and model (per agent), so no provider code lives here. The call's
record is produced by `usage()` when the call ends, however it ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pipecat.frames.frames import MetricsFrame
from pipecat.metrics.metrics import (
    LLMTokenUsage,
    LLMUsageMetricsData,
    STTUsageMetricsData,
    TTSUsageMetricsData,
)

from tollbridge.costs.usage import (
    CallUsage,
    Handoff,
    LLMRequestUsage,
    RealtimeUsage,
    STTUsage,
    TTSUsage,
)
from tollbridge.handoff import AgentOnLine
from tollbridge.logs import get_logger
from tollbridge.stage import AvoidedUsage, Billing, CallContext, Role, StageKind, StageOptions


class MeterOptions(StageOptions):
    """The meter's settings live on the vertical (budget, price overrides)."""


def _net_tokens(billing: Billing, usage: LLMTokenUsage, agent: str) -> LLMRequestUsage:
    """Split one LLM request's tokens into net buckets, as the service counted them."""
    cached = usage.cache_read_input_tokens or 0
    written = usage.cache_creation_input_tokens or 0
    uncached = usage.prompt_tokens
    if billing.prompt_tokens_include_cached:
        uncached = max(0, uncached - cached - written)
    one_hour = billing.cache_ttl == "1h"
    return LLMRequestUsage(
        provider=billing.provider,
        model=billing.model,
        input_tokens=uncached,
        cached_input_tokens=cached,
        cache_write_5m_tokens=0 if one_hour else written,
        cache_write_1h_tokens=written if one_hour else 0,
        output_tokens=usage.completion_tokens,
        agent=agent,
    )


def _realtime_tokens(billing: Billing, usage: LLMTokenUsage) -> RealtimeUsage:
    audio_in = usage.input_audio_tokens or 0
    audio_cached = usage.cache_read_input_audio_tokens or 0
    cached = usage.cache_read_input_tokens or 0
    audio_out = usage.output_audio_tokens or 0
    return RealtimeUsage(
        provider=billing.provider,
        model=billing.model,
        text_in=max(0, usage.prompt_tokens - audio_in - (cached - audio_cached)),
        text_cached_in=max(0, cached - audio_cached),
        audio_in=max(0, audio_in - audio_cached),
        audio_cached_in=audio_cached,
        text_out=max(0, usage.completion_tokens - audio_out),
        audio_out=audio_out,
    )


class CostMeter:
    """Accumulates one call's billable usage from pipecat's usage metrics.

    The builder `attach`es each processor that reports usage with the stage's
    billing identity and role; usage from a processor nobody attached is
    logged and left out, never priced as somebody else's.
    """

    def __init__(self, call: CallContext):
        self.call = call
        self.started_at = datetime.now(UTC)
        self.billed: dict[str, tuple[Billing, Role, Any]] = {}
        """Processor name → (who bills, the stage's role, the processor)."""
        self.by_agent: dict[str, Mapping[str, Billing]] = {}
        """Processor name → agent → who bills, where an agent has its own model or voice."""
        first = call.vertical.agents[0].name if call.vertical.agents else ""
        self.agent = {Role.LLM: first, Role.TTS: first}
        """The agent each role's usage is now for (see `tollbridge.handoff`)."""
        self.handoffs: list[Handoff] = []
        self.stt: dict[tuple[str, str], Decimal] = {}
        self.llm: list[LLMRequestUsage] = []
        self.realtime: list[RealtimeUsage] = []
        self.tts: dict[tuple[str, str, str], int] = {}
        self._unbilled: set[str] = set()
        self.on_usage: Callable[[], Awaitable[None]] | None = None
        """Called after each usage report (the session checks the budget here)."""

    def attach(
        self, processor: Any, billing: Billing, role: Role,
        by_agent: Mapping[str, Billing] | None = None,
    ) -> None:
        self.billed[processor.name] = (billing, role, processor)
        if by_agent:
            self.by_agent[processor.name] = by_agent

    def billings(self) -> list[tuple[Role, Billing]]:
        """Every billing identity of the call's stages, each agent's included."""
        return [*((role, billing) for billing, role, _ in self.billed.values()),
                *((self.billed[name][1], billing) for name, agents in self.by_agent.items()
                  for billing in agents.values())]

    def on_agent(self, frame: AgentOnLine) -> None:
        """From here on, `frame.role`'s usage is `frame.agent`'s; the LLM's marks the handoff."""
        self.agent[frame.role] = frame.agent
        if frame.role is Role.LLM and frame.handoff is not None:
            at = Decimal(str(round((datetime.now(UTC) - self.started_at).total_seconds(), 3)))
            self.handoffs.append(Handoff(at, frame.handoff.from_agent, frame.handoff.to_agent))

    async def on_metrics(self, frame: MetricsFrame) -> None:
        counted = False
        for item in frame.data:
            if not isinstance(item, STTUsageMetricsData | LLMUsageMetricsData | TTSUsageMetricsData):
                continue
            if item.processor not in self.billed:
                if item.processor not in self._unbilled:
                    self._unbilled.add(item.processor)
                    get_logger(call_sid=self.call.call_sid).warning(
                        "usage_not_billed", processor=item.processor,
                        reason="no stage of the chain declares who bills for it",
                    )
                continue
            billing, role, _ = self.billed[item.processor]
            agent = self.agent.get(role, "")
            billing = self.by_agent.get(item.processor, {}).get(agent, billing)
            if isinstance(item, STTUsageMetricsData):
                key = (billing.provider, billing.model)
                seconds = Decimal(str(round(item.value.audio_seconds, 6)))
                self.stt[key] = self.stt.get(key, Decimal(0)) + seconds
            elif isinstance(item, LLMUsageMetricsData):
                if role is Role.SPEECH_TO_SPEECH:
                    self.realtime.append(_realtime_tokens(billing, item.value))
                else:
                    self.llm.append(_net_tokens(billing, item.value, agent))
            else:
                spoken = (billing.provider, billing.model, agent)
                self.tts[spoken] = self.tts.get(spoken, 0) + int(item.value)
            counted = True
        if counted and self.on_usage:
            await self.on_usage()

    def _avoided(self, role: Role) -> dict[tuple[str, str], float]:
        """What the processors of `role` saved (silence not streamed, phrases not sent)."""
        avoided: dict[tuple[str, str], float] = {}
        for billing, stage_role, processor in self.billed.values():
            if stage_role is role and isinstance(processor, AvoidedUsage):
                key = (billing.provider, billing.model)
                avoided[key] = avoided.get(key, 0) + processor.avoided_usage()
        return avoided

    def _stt_usage(self) -> list[STTUsage]:
        avoided = self._avoided(Role.STT)
        return [
            STTUsage(*key, self.stt.get(key, Decimal(0)), Decimal(str(round(avoided.get(key, 0), 6))))
            for key in sorted(set(self.stt) | {k for k, v in avoided.items() if v})
        ]

    def _tts_usage(self) -> list[TTSUsage]:
        """Characters per voice and agent, in the order first spoken. What the phrase cache
        saved is the first agent's: the phrases it serves (the greeting above all) open the
        call, before any handoff."""
        avoided = self._avoided(Role.TTS)
        first = self.agent_names[0] if self.agent_names else ""
        spoken = dict.fromkeys([*self.tts, *((*key, first) for key, v in avoided.items() if v)])
        return [
            TTSUsage(provider, model, self.tts.get((provider, model, agent), 0),
                     int(avoided.get((provider, model), 0)) if agent == first else 0, agent)
            for provider, model, agent in spoken
        ]

    @property
    def agent_names(self) -> list[str]:
        return [agent.name for agent in self.call.vertical.agents]

    def usage(self, *, ended_at: datetime | None = None, ended_by: str = "") -> CallUsage:
        """The call's usage so far (final when `ended_at` is given)."""
        vertical = self.call.vertical
        now = ended_at or datetime.now(UTC)
        return CallUsage(
            call_sid=self.call.call_sid,
            tenant=vertical.tenant,
            vertical=vertical.name,
            direction=vertical.telephony.direction,
            number_type=vertical.telephony.number_type,
            from_number=self.call.caller,
            to_number=self.call.callee,
            started_at=self.started_at,
            ended_at=ended_at,
            measured_seconds=Decimal(str(round((now - self.started_at).total_seconds(), 3))),
            billed_seconds=None,
            recording=vertical.telephony.recording,
            monthly_minutes_per_number=vertical.telephony.monthly_minutes_per_number,
            stt=self._stt_usage(),
            llm=list(self.llm),
            tts=self._tts_usage(),
            realtime=list(self.realtime),
            ended_by=ended_by,
            handoffs=list(self.handoffs),
            answered_by=self.call.answered_by,
        )


class CostMeterKind(StageKind):
    name = "cost.meter"
    role = Role.METER
    options = MeterOptions
    description = "Prices the call from its usage metrics; writes the ledger record"

    def build(self, options: MeterOptions, call: CallContext) -> CostMeter:
        return CostMeter(call)
