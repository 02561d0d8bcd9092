"""The `cost.meter` stage: watches a call's usage metrics and keeps its running cost.

It is neither a processor in the audio path nor a pipecat observer (an
observer costs a queue item and a task wake-up for every frame pushed
anywhere): the pipeline worker hands it each `MetricsFrame` that reaches the
end of the pipeline, and nothing else. Usage arrives in pipecat's provider-neutral shapes
(STT audio seconds, LLM tokens, TTS characters); the builder tells the meter
which service is which provider and model, so no provider code lives here.
The call's record is produced by `usage()` when the call ends, however it ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from pipecat.frames.frames import MetricsFrame
from pipecat.metrics.metrics import (
    LLMUsageMetricsData,
    STTUsageMetricsData,
    TTSUsageMetricsData,
)
from tollbridge.costs.usage import CallUsage, LLMRequestUsage, RealtimeUsage, STTUsage, TTSUsage
from tollbridge.registry import Role, StageKind, StageOptions

if TYPE_CHECKING:
    from tollbridge.builder import CallContext
    from tollbridge.providers.silence_gate import SilenceGate


class MeterOptions(StageOptions):
    """The meter's settings live on the vertical (budget, price overrides)."""


@dataclass(frozen=True)
class Service:
    """Who bills for a processor's usage."""

    provider: str
    model: str
    cache_ttl: str = "5m"


def _net_tokens(service: Service, usage) -> LLMRequestUsage:
    """Split one LLM request's tokens into net buckets.

    OpenAI's `prompt_tokens` is gross (cache reads and writes included);
    Anthropic's is net. Read the cache fields rather than guessing.
    """
    cached = usage.cache_read_input_tokens or 0
    written = usage.cache_creation_input_tokens or 0
    uncached = usage.prompt_tokens
    if service.provider != "anthropic":
        uncached = max(0, uncached - cached - written)
    one_hour = service.cache_ttl == "1h"
    return LLMRequestUsage(
        provider=service.provider,
        model=service.model,
        input_tokens=uncached,
        cached_input_tokens=cached,
        cache_write_5m_tokens=0 if one_hour else written,
        cache_write_1h_tokens=written if one_hour else 0,
        output_tokens=usage.completion_tokens,
    )


def _realtime_tokens(service: Service, usage) -> RealtimeUsage:
    audio_in = usage.input_audio_tokens or 0
    audio_cached = usage.cache_read_input_audio_tokens or 0
    cached = usage.cache_read_input_tokens or 0
    audio_out = usage.output_audio_tokens or 0
    return RealtimeUsage(
        provider=service.provider,
        model=service.model,
        text_in=max(0, usage.prompt_tokens - audio_in - (cached - audio_cached)),
        text_cached_in=max(0, cached - audio_cached),
        audio_in=max(0, audio_in - audio_cached),
        audio_cached_in=audio_cached,
        text_out=max(0, usage.completion_tokens - audio_out),
        audio_out=audio_out,
    )


class CostMeter:
    """Accumulates one call's billable usage from pipecat's usage metrics."""

    def __init__(self, call: CallContext):
        self.call = call
        self.started_at = datetime.now(UTC)
        self.services: dict[str, Service] = {}
        self.realtime_processors: set[str] = set()
        self.stt: dict[tuple[str, str], Decimal] = {}
        self.llm: list[LLMRequestUsage] = []
        self.realtime: list[RealtimeUsage] = []
        self.tts: dict[tuple[str, str], int] = {}
        self.tts_avoided: dict[tuple[str, str], int] = {}
        self.stt_gates: dict[tuple[str, str], list[SilenceGate]] = {}
        self.on_usage: Callable[[], Awaitable[None]] | None = None
        """Called after each usage report (the session checks the budget here)."""

    def attach(self, processor_name: str, service: Service, *, realtime: bool = False) -> None:
        self.services[processor_name] = service
        if realtime:
            self.realtime_processors.add(processor_name)

    def _service(self, processor: str, role: Role) -> Service:
        if processor in self.services:
            return self.services[processor]
        stage = self.call.vertical.stage(role)
        model = getattr(stage.options, "model", None) or getattr(stage.options, "voice", "")
        return Service(provider=stage.kind.name.split(".")[0], model=model)

    async def on_metrics(self, frame: MetricsFrame) -> None:
        counted = False
        for item in frame.data:
            if isinstance(item, STTUsageMetricsData):
                service = self._service(item.processor, Role.STT)
                key = (service.provider, service.model)
                seconds = Decimal(str(round(item.value.audio_seconds, 6)))
                self.stt[key] = self.stt.get(key, Decimal(0)) + seconds
            elif isinstance(item, LLMUsageMetricsData):
                if item.processor in self.realtime_processors:
                    service = self.services[item.processor]
                    self.realtime.append(_realtime_tokens(service, item.value))
                else:
                    service = self._service(item.processor, Role.LLM)
                    self.llm.append(_net_tokens(service, item.value))
            elif isinstance(item, TTSUsageMetricsData):
                service = self._service(item.processor, Role.TTS)
                key = (service.provider, service.model)
                self.tts[key] = self.tts.get(key, 0) + int(item.value)
            else:
                continue
            counted = True
        if counted and self.on_usage:
            await self.on_usage()

    def avoided_tts(self, provider: str, model: str, characters: int) -> None:
        """Characters a phrase cache served instead of the TTS provider."""
        key = (provider, model)
        self.tts_avoided[key] = self.tts_avoided.get(key, 0) + characters

    def gated_stt(self, provider: str, model: str, gate: SilenceGate) -> None:
        """An STT whose silence gate holds audio back: its withheld seconds are avoided cost."""
        self.stt_gates.setdefault((provider, model), []).append(gate)

    def _stt_usage(self) -> list[STTUsage]:
        usage = []
        for key in sorted(set(self.stt) | set(self.stt_gates)):
            withheld = sum(gate.withheld_seconds for gate in self.stt_gates.get(key, []))
            usage.append(STTUsage(*key, self.stt.get(key, Decimal(0)),
                                  Decimal(str(round(withheld, 6)))))
        return usage

    def usage(self, *, ended_at: datetime | None = None, ended_by: str = "") -> CallUsage:
        """The call's usage so far (final when `ended_at` is given)."""
        vertical = self.call.vertical
        now = ended_at or datetime.now(UTC)
        tts_keys = sorted(set(self.tts) | set(self.tts_avoided))
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
            tts=[
                TTSUsage(p, m, self.tts.get((p, m), 0), self.tts_avoided.get((p, m), 0))
                for p, m in tts_keys
            ],
            realtime=list(self.realtime),
            ended_by=ended_by,
        )


def build(options: MeterOptions, call: CallContext) -> CostMeter:
    return CostMeter(call)


KIND = StageKind(
    name="cost.meter",
    role=Role.METER,
    options=MeterOptions,
    build=build,
    description="Prices the call from its usage metrics; writes the ledger record",
)
