"""OpenTelemetry: one trace per call and the bridge's metrics, off unless the environment asks.

Configured only by the standard variables, read once per process when the
first bridge starts: `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER` (`otlp`,
`console`, or any exporter installed under OpenTelemetry's entry points) turn
traces / metrics on; `OTEL_EXPORTER_OTLP_ENDPOINT` alone turns both on with
OTLP; `OTEL_SDK_DISABLED=true` keeps everything off. Endpoint, headers,
protocol (`http/protobuf` unless `OTEL_EXPORTER_OTLP_PROTOCOL` says `grpc`),
`OTEL_SERVICE_NAME` (default "tollbridge") and `OTEL_RESOURCE_ATTRIBUTES` are
read by the SDK's own classes. With none of them set nothing is imported, no
observer is added and no span is made. Set without the `otel` extra
installed, the bridge logs one error naming the extra and runs without.

Traces build on pipecat's: with tracing on, each call's worker runs pipecat's
turn tracing (a `conversation` span, a `turn` span per exchange, and `stt`,
`llm`, `tts` spans from its service decorators). tollbridge adds the root
`call` span and, because a call is priced only after it ended, holds the
call's spans until its record is priced, then exports them with what pipecat
cannot know: `tollbridge.*` ids and costs, the turn's latencies (`Turn`),
`gen_ai.system` and the billed model. What the caller and agent said
(transcripts, prompts, replies) is dropped from the spans: a phone call's
words are personal data and do not belong in a metrics backend.

Tests and benchmarks `install()` in-memory exporters and readers instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from tollbridge.costs.lineitem import CallCost, LineItem, round_usd
from tollbridge.costs.usage import Turn
from tollbridge.errors import TollbridgeError
from tollbridge.logs import get_logger
from tollbridge.stage import Billing, CallContext, Role

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
    from opentelemetry.sdk.trace.export import SpanExporter

log = get_logger(component="telemetry")
EXTRA = "pip install 'tollbridge[otel]'"
COST_BUCKETS_USD = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
PER_MINUTE_BUCKETS_USD = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5)
TURN_BUCKETS_MS = (250, 500, 750, 1000, 1250, 1500, 2000, 3000, 5000)
"""Around what callers notice: under a second feels live, past two is a pause."""
CONTENT_ATTRIBUTES = frozenset({
    "input", "output", "text", "transcript", "messages", "system_instructions", "tools",
    "gen_ai.system_instructions", "gen_ai.input.messages", "gen_ai.output.messages",
    "gen_ai.tool.definitions", "user_id",
})
"""What pipecat records of the conversation itself; never exported (see module docstring)."""
PROVIDER_SPANS = {"stt": Role.STT, "llm": Role.LLM, "tts": Role.TTS}


class TelemetryUnavailable(TollbridgeError, RuntimeError):
    """The environment asks for OpenTelemetry but it cannot be set up; the message says why."""


def _wanted(env: Mapping[str, str], signal: str) -> str | None:
    """The exporter `env` asks for on `signal` ("traces" or "metrics"), or None."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    name = env.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower()
    if not name and env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        name = "otlp"
    return name.split(",")[0].strip() if name and name != "none" else None


def _exporter(env: Mapping[str, str], signal: str, name: str) -> Any:
    """An exporter instance, found the way the SDK finds them (by entry point name)."""
    from importlib.metadata import entry_points

    if name == "otlp":
        protocol = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL") \
            or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
        name = "otlp_proto_grpc" if protocol == "grpc" else "otlp_proto_http"
    found = entry_points(group=f"opentelemetry_{signal}_exporter", name=name)
    if not found:
        raise TelemetryUnavailable(
            f"OTEL_{signal.upper()}_EXPORTER asks for the {name!r} exporter, which is not "
            f"installed (OTLP over HTTP and console come with {EXTRA})")
    return next(iter(found)).load()()


class _HeldSpans:
    """Between pipecat's spans and the exporter: holds a call's spans until it is priced."""

    def __init__(self) -> None:
        self.downstream: SpanProcessor | None = None
        self._held: dict[int, list[ReadableSpan]] = {}

    def hold(self, trace_id: int) -> None:
        self._held[trace_id] = []

    def release(self, trace_id: int) -> list[ReadableSpan]:
        return self._held.pop(trace_id, [])

    def export(self, spans: Iterable[ReadableSpan]) -> None:
        if self.downstream is not None:
            for span in spans:
                self.downstream.on_end(span)

    # the SpanProcessor interface
    def on_start(self, span: Span, parent_context: Any = None) -> None:
        pass

    def _on_ending(self, span: Span) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        held = self._held.get(span.context.trace_id) if span.context else None
        if held is not None:
            held.append(span)
        else:
            self.export([span])

    def shutdown(self) -> None:
        if self.downstream is not None:
            self.downstream.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.downstream.force_flush(timeout_millis) if self.downstream else True


_HELD = _HeldSpans()
"""The one per process: OpenTelemetry's tracer provider is global and set once."""
_tracer_provider: Any = None


def _tracer_provider_once() -> Any:
    """The process's SDK tracer provider, made global the first time (pipecat's decorators
    and turn observer take their tracers from the global one)."""
    global _tracer_provider
    if _tracer_provider is None:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider

        resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME")
                                    or "tollbridge"})
        _tracer_provider = TracerProvider(resource=resource)
        _tracer_provider.add_span_processor(_HELD)
        trace.set_tracer_provider(_tracer_provider)
    return _tracer_provider


@dataclass
class _Call:
    """A live call as telemetry follows it."""

    call: CallContext
    providers: list[str]
    billings: list[tuple[Role, Billing]]
    span: Any = None
    priced: bool = False
    labels: dict[str, str] = field(default_factory=dict)


class Telemetry:
    """The process's OpenTelemetry: the calls' traces (if on) and metrics (if on)."""

    def __init__(self, span_processor: SpanProcessor | None,
                 metric_reader: MetricReader | None) -> None:
        self.tracing = span_processor is not None
        self._calls: dict[str, _Call] = {}
        self._tracer: Any = None
        if span_processor is not None:
            _HELD.downstream = span_processor
            self._tracer = _tracer_provider_once().get_tracer("tollbridge")
        self._meter_provider: Any = None
        if metric_reader is not None:
            self._instruments(metric_reader)

    def _instruments(self, reader: MetricReader) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource

        resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME")
                                    or "tollbridge"})
        self._meter_provider = MeterProvider(metric_readers=[reader], resource=resource)
        meter = self._meter_provider.get_meter("tollbridge")
        self._active = meter.create_up_down_counter(
            "tollbridge.calls.active", "{call}", "Calls with a live Media Stream")
        self._ended = meter.create_counter(
            "tollbridge.calls", "{call}", "Calls ended, by what ended them (ended_by)")
        self._cost = meter.create_histogram(
            "tollbridge.call.cost", "USD", "What each call cost, all lines",
            explicit_bucket_boundaries_advisory=COST_BUCKETS_USD)
        self._per_minute = meter.create_histogram(
            "tollbridge.call.usd_per_minute", "USD/min", "Each call's cost per minute",
            explicit_bucket_boundaries_advisory=PER_MINUTE_BUCKETS_USD)
        self._spent = meter.create_counter(
            "tollbridge.spend", "USD", "Dollars billed, by line item kind")
        self._turns = meter.create_histogram(
            "tollbridge.turn.latency", "ms",
            "From the caller's end of turn to the reply's first audio",
            explicit_bucket_boundaries_advisory=TURN_BUCKETS_MS)
        self._errors = meter.create_counter(
            "tollbridge.provider.errors", "{error}", "Errors a provider reported mid-call")
        self._fallbacks = meter.create_counter(
            "tollbridge.provider.fallbacks", "{fallback}",
            "A stage handing over to its fallback, by the provider it left")
        self._failures = meter.create_counter(
            "tollbridge.provider.failures", "{call}", "Calls a provider's failure ended")
        self._connections = meter.create_up_down_counter(
            "tollbridge.provider.connections", "{connection}",
            "Providers in use by live calls, by provider")

    @property
    def metering(self) -> bool:
        return self._meter_provider is not None

    # -- a call's life -----------------------------------------------------------------

    @contextmanager
    def call_started(
        self, call: CallContext, providers: list[str], billings: list[tuple[Role, Billing]],
    ) -> Iterator[None]:
        """Open the call: its root span is current inside the block, so the pipeline task
        started there (and pipecat's conversation span) belongs to the call's trace."""
        followed = self._calls[call.call_sid] = _Call(call, providers, billings)
        who = {"tenant": call.vertical.tenant, "vertical": call.vertical.name}
        followed.labels = who
        if self.metering:
            self._active.add(1, who)
            for provider in providers:
                self._connections.add(1, {"provider": provider})
        if self._tracer is None:
            yield
            return
        from opentelemetry import context, trace

        followed.span = self._tracer.start_span(
            "call", context=context.Context(),  # a root: one trace per call
            attributes={"tollbridge.call_sid": call.call_sid,
                        "tollbridge.tenant": call.vertical.tenant,
                        "tollbridge.vertical": call.vertical.name,
                        "tollbridge.direction": call.vertical.telephony.direction})
        _HELD.hold(followed.span.get_span_context().trace_id)
        token = context.attach(trace.set_span_in_context(followed.span))
        try:
            yield
        finally:
            context.detach(token)

    def provider_error(self, provider: str) -> None:
        if self.metering:
            self._errors.add(1, {"provider": provider})

    def fallback(self, stage: str, left: str, now: str) -> None:
        """A stage of a live call failed over from provider `left` to `now`."""
        if self.metering:
            self._fallbacks.add(1, {"stage": stage, "provider": left, "to": now})
            self._connections.add(-1, {"provider": left})
            self._connections.add(1, {"provider": now})

    def call_priced(self, cost: CallCost) -> None:
        """The call's record is priced: count it, and finish and export its trace."""
        if self.metering:
            self._count(cost)
        followed = self._calls.get(cost.call_sid)
        if followed is not None and followed.span is not None and not followed.priced:
            followed.priced = True
            span = followed.span
            span.set_attributes({
                "tollbridge.ended_by": cost.ended_by,
                "tollbridge.cost.usd": f"{cost.total_usd:f}",
                "tollbridge.cost.complete": cost.complete,
                "tollbridge.turns": len(cost.turns),
                **({"tollbridge.usd_per_minute": f"{cost.usd_per_minute:f}"}
                   if cost.usd_per_minute is not None else {}),
                **({"tollbridge.failed_provider": cost.failed_provider}
                   if cost.failed_provider else {}),
            })
            self._finish_trace(followed, cost)

    def call_ended(self, call_sid: str, ended_by: str, providers: list[str]) -> None:
        """The call is over (priced or not): stop following it. `providers`: those live at the
        end (fallbacks taken)."""
        followed = self._calls.pop(call_sid, None)
        if followed is None:
            return
        if self.metering:
            self._active.add(-1, followed.labels)
            for provider in providers:
                self._connections.add(-1, {"provider": provider})
        if followed.span is not None and not followed.priced:  # no record: no cost to tell
            followed.span.set_attribute("tollbridge.ended_by", ended_by)
            self._finish_trace(followed, None)

    def _count(self, cost: CallCost) -> None:
        who = {"tenant": cost.tenant, "vertical": cost.vertical}
        self._ended.add(1, {**who, "ended_by": cost.ended_by or "unknown"})
        self._cost.record(float(cost.total_usd), who)
        if cost.usd_per_minute is not None:
            self._per_minute.record(float(cost.usd_per_minute), who)
        for line in cost.items:
            if line.usd:
                self._spent.add(float(line.usd), {**who, "kind": line.kind})
        for turn in cost.turns:
            if turn.first_audio_ms is not None:
                self._turns.record(turn.first_audio_ms, {**who, "agent": turn.agent})
        if cost.failed_provider:
            self._failures.add(1, {"provider": cost.failed_provider})

    def _finish_trace(self, followed: _Call, cost: CallCost | None) -> None:
        followed.span.end()
        spans = _HELD.release(followed.span.get_span_context().trace_id)
        _HELD.export(_Enricher(followed, cost).spans(spans))

    def shutdown(self) -> None:
        """Export what is pending (the SDK also does at exit)."""
        if self.tracing and _tracer_provider is not None:
            _tracer_provider.force_flush()
        if self._meter_provider is not None:
            self._meter_provider.shutdown()


class _Enricher:
    """A priced call's held spans, with what only the record knows (see module docstring)."""

    def __init__(self, followed: _Call, cost: CallCost | None) -> None:
        self.followed = followed
        self.cost = cost
        self.call_sid = followed.call.call_sid
        self._prices = {(line.item, line.provider): line for line in cost.items} if cost else {}

    def spans(self, spans: list[ReadableSpan]) -> list[ReadableSpan]:
        by_turn: dict[int, Decimal] = {}
        out: list[ReadableSpan] = []
        provider_spans = []
        for span in spans:
            if span.name in PROVIDER_SPANS:
                attributes, usd = self._provider(span)
                if usd is not None and span.parent is not None:
                    by_turn[span.parent.span_id] = by_turn.get(span.parent.span_id, Decimal(0)) + usd
                provider_spans.append(_with(span, attributes))
            elif span.name == "turn":
                out.append(span)  # enriched below, once its providers are priced
            else:
                out.append(_with(span, self._plain(span)))
        turns = self._turns_by_span(out)
        out = [
            _with(span, {**self._plain(span), **turns.get(span.context.span_id, {}),
                         **({"tollbridge.cost.usd": f"{round_usd(by_turn[span.context.span_id]):f}"}
                            if span.context.span_id in by_turn else {})})
            if span.name == "turn" else span
            for span in out
        ]
        return [*out, *provider_spans]

    def _plain(self, span: ReadableSpan) -> dict[str, Any]:
        kept = {k: v for k, v in (span.attributes or {}).items() if k not in CONTENT_ATTRIBUTES}
        return {**kept, "tollbridge.call_sid": self.call_sid}

    def _turns_by_span(self, spans: list[ReadableSpan]) -> dict[int, dict[str, Any]]:
        """Each caller turn's latencies on pipecat's turn span whose time holds its end."""
        if self.cost is None or not self.cost.turns:
            return {}
        started = self.cost.started_at
        found: dict[int, dict[str, Any]] = {}
        turn_spans = [s for s in spans if s.name == "turn" and s.start_time and s.end_time]
        for turn in self.cost.turns:
            at = _ns(started) + int(turn.at_seconds * 1_000_000_000)
            for span in turn_spans:
                assert span.start_time is not None and span.end_time is not None
                if span.start_time <= at <= span.end_time and span.context.span_id not in found:
                    found[span.context.span_id] = _turn_attributes(turn)
                    break
        return found

    def _provider(self, span: ReadableSpan) -> tuple[dict[str, Any], Decimal | None]:
        attributes = self._plain(span)
        role = PROVIDER_SPANS[span.name]
        billing = self._billing(role, attributes)
        if billing is None:
            return attributes, None
        attributes["gen_ai.system"] = billing.provider
        attributes["tollbridge.model"] = billing.model
        if attributes.get("gen_ai.request.model") in (None, "unknown"):
            attributes["gen_ai.request.model"] = billing.model
        usd = self._usd(role, billing, attributes)
        if usd is not None:
            attributes["tollbridge.cost.usd"] = f"{usd:f}"
        return attributes, usd

    def _billing(self, role: Role, attributes: Mapping[str, Any]) -> Billing | None:
        """Who bills for the span's provider: the one of its role whose model the span names,
        else the only one of its role."""
        named = {attributes.get("gen_ai.request.model"), attributes.get("voice_id")}
        of_role = list(dict.fromkeys(b for r, b in self.followed.billings if r is role))
        matching = [b for b in of_role if b.model in named]
        if matching:
            return matching[0]
        return of_role[0] if len(of_role) == 1 else None

    def _usd(self, role: Role, billing: Billing, attributes: Mapping[str, Any]) -> Decimal | None:
        """The span's usage at the unit prices the call's record charged."""
        lines: list[tuple[LineItem | None, Decimal | int]]
        if role is Role.LLM:
            counts = _llm_tokens(billing, attributes)
            lines = [(self._line(f"llm.{kind}:{billing.model}", billing), count)
                     for kind, count in counts.items() if count]
        elif role is Role.TTS:
            lines = [(self._line(f"tts:{billing.model}", billing),
                      attributes.get("metrics.character_count", 0))]
        else:
            line = self._line(f"stt:{billing.model}", billing)
            seconds = Decimal(str(attributes.get("metrics.audio_seconds", 0)))
            lines = [(line, seconds / 60 if line and line.unit == "minute" else seconds)]
        if not lines or any(line is None for line, _ in lines):
            return None
        return round_usd(sum((Decimal(q) * line.unit_price_usd for line, q in lines if line),
                             Decimal(0)))

    def _line(self, item: str, billing: Billing) -> LineItem | None:
        line = self._prices.get((item, billing.provider))
        return None if line is None or line.unpriced else line


def _llm_tokens(billing: Billing, attributes: Mapping[str, Any]) -> dict[str, int]:
    """The span's tokens in the record's net buckets (as the meter splits them)."""
    cached = int(attributes.get("gen_ai.usage.cache_read.input_tokens", 0) or 0)
    written = int(attributes.get("gen_ai.usage.cache_creation.input_tokens", 0) or 0)
    uncached = int(attributes.get("gen_ai.usage.input_tokens", 0) or 0)
    if billing.prompt_tokens_include_cached:
        uncached = max(0, uncached - cached - written)
    write = "cache_write_1h" if billing.cache_ttl == "1h" else "cache_write_5m"
    return {"input": uncached, "cached_input": cached, write: written,
            "output": int(attributes.get("gen_ai.usage.output_tokens", 0) or 0)}


def _turn_attributes(turn: Turn) -> dict[str, Any]:
    values = {"tollbridge.turn.at_seconds": f"{turn.at_seconds:f}",
              "tollbridge.turn.first_audio_ms": turn.first_audio_ms,
              "tollbridge.turn.stt_ms": turn.stt_ms, "tollbridge.turn.llm_ms": turn.llm_ms,
              "tollbridge.turn.tts_ms": turn.tts_ms, "tollbridge.agent": turn.agent or None}
    return {key: value for key, value in values.items() if value is not None}


def _ns(moment: datetime) -> int:
    return round(moment.timestamp() * 1_000_000_000)


def _with(span: ReadableSpan, attributes: Mapping[str, Any]) -> ReadableSpan:
    """A copy of the ended `span` with these attributes (an ended span cannot be changed)."""
    from opentelemetry.sdk.trace import ReadableSpan

    return ReadableSpan(
        name=span.name, context=span.context, parent=span.parent, resource=span.resource,
        attributes=dict(attributes), events=span.events, links=span.links, kind=span.kind,
        status=span.status, start_time=span.start_time, end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


# -- the process's telemetry -------------------------------------------------------------

_active: Telemetry | None = None
_configured = False


def active() -> Telemetry | None:
    """The process's telemetry; None when off (the default)."""
    return _active


def tracing() -> bool:
    """Whether calls are traced (their workers then run pipecat's turn tracing)."""
    return _active is not None and _active.tracing


def configure(env: Mapping[str, str] | None = None) -> Telemetry | None:
    """Set up OpenTelemetry from the `OTEL_*` variables, once per process (later calls, and
    calls after `install`, change nothing). Asked for but unavailable: logs why, stays off."""
    global _active, _configured
    if _configured:
        return _active
    _configured = True
    env = os.environ if env is None else env
    try:
        _active = from_env(env)
    except TelemetryUnavailable as error:
        log.error("telemetry_unavailable", detail=str(error))
        return None
    if _active is not None:
        log.info("telemetry_on", traces=_wanted(env, "traces") or "off",
                 metrics=_wanted(env, "metrics") or "off")
    return _active


def from_env(env: Mapping[str, str]) -> Telemetry | None:
    """The telemetry `env` asks for (None: off); TelemetryUnavailable says why it cannot be."""
    traces, metrics = _wanted(env, "traces"), _wanted(env, "metrics")
    if traces is None and metrics is None:
        return None
    try:
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise TelemetryUnavailable(
            "the OTEL_* variables ask for OpenTelemetry, which is not installed: "
            f"{EXTRA}") from None
    processor = BatchSpanProcessor(_exporter(env, "traces", traces)) if traces else None
    reader = PeriodicExportingMetricReader(_exporter(env, "metrics", metrics)) if metrics \
        else None
    return Telemetry(processor, reader)


def install(span_exporter: SpanExporter | None = None,
            metric_reader: MetricReader | None = None) -> Telemetry:
    """Use these (e.g. the SDK's in-memory exporter and reader) from now on, whatever the
    environment says: for tests and benchmarks. Spans are exported as each call is priced."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    global _active, _configured
    _configured = True
    processor = SimpleSpanProcessor(span_exporter) if span_exporter is not None else None
    _active = Telemetry(processor, metric_reader)
    return _active


def uninstall() -> None:
    """Telemetry off again (what `install` set stops receiving anything)."""
    global _active
    if _active is not None and _active.metering:
        _active._meter_provider.shutdown()
    _active = None
    _HELD.downstream = None
