"""OpenTelemetry: a replayed call's trace and metrics against its priced record; nothing when off."""

from __future__ import annotations

import sys
from decimal import Decimal

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import running_bridge
from tests.transports.test_bridge_calls import final, script
from tollbridge import telemetry
from tollbridge.costs.lineitem import CallCost
from tollbridge.telemetry import CONTENT_ATTRIBUTES, TelemetryUnavailable
from tollbridge.testing.cassette import Cassette

OURS = {"call", "conversation", "turn", "stt", "llm", "tts"}
REPLIES = ["We are open Monday to Friday, eight to six.", "Saturdays we are closed."]


def two_questions() -> Cassette:
    return Cassette(
        stt=[final(2.0, "what are your opening hours"), final(4.5, "and on saturday")],
        llm=[{"match": "opening hours", "text": REPLIES[0]},
             {"match": "saturday", "text": REPLIES[1]}],
    )


@pytest.fixture
def otel():
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry.install(spans, reader)
    yield spans, reader
    telemetry.uninstall()


def metric_points(reader: InMemoryMetricReader) -> dict[str, list]:
    data = reader.get_metrics_data()
    assert data is not None
    return {metric.name: list(metric.data.data_points)
            for resource in data.resource_metrics for scope in resource.scope_metrics
            for metric in scope.metrics}


async def run_call(frontdesk):
    async with running_bridge(frontdesk, two_questions()) as running:
        await running.softphone().call(script())
        [usage] = await running.finished()
        return running.bridge.pricer(usage), running.sessions[0]


@pytest.mark.long(10)
async def test_a_traced_call_is_one_tree_with_its_ids_tokens_latencies_and_cost(frontdesk, otel):
    exporter, reader = otel
    cost, session = await run_call(frontdesk)
    spans = [s for s in exporter.get_finished_spans() if s.name in OURS]
    [call] = [s for s in spans if s.name == "call"]
    assert call.parent is None  # the root of the call's own trace
    assert {s.context.trace_id for s in spans} == {call.context.trace_id}
    assert call.attributes.items() >= {
        "tollbridge.call_sid": cost.call_sid, "tollbridge.tenant": "acme",
        "tollbridge.vertical": "frontdesk", "tollbridge.direction": "inbound",
        "tollbridge.ended_by": cost.ended_by}.items()
    assert Decimal(call.attributes["tollbridge.cost.usd"]) == cost.total_usd > 0

    by_id = {s.context.span_id: s for s in spans}
    [conversation] = [s for s in spans if s.name == "conversation"]
    assert conversation.parent.span_id == call.context.span_id
    turns = [s for s in spans if s.name == "turn"]
    assert turns and all(t.parent.span_id == conversation.context.span_id for t in turns)
    providers = [s for s in spans if s.name in ("stt", "llm", "tts")]
    assert {s.name for s in providers} == {"stt", "llm", "tts"}
    assert all(by_id[s.parent.span_id].name == "turn" for s in providers)

    # the GenAI conventions, and the tokens the record was billed for
    llm = [s for s in providers if s.name == "llm"]
    assert len(llm) == len(REPLIES) == len(session.usage.llm)
    assert {(s.attributes["gen_ai.system"], s.attributes["gen_ai.request.model"]) for s in llm} \
        == {("openai", "gpt-4o-mini")}
    assert sum(s.attributes["gen_ai.usage.input_tokens"] for s in llm) == sum(
        r.total_input_tokens for r in session.usage.llm)
    assert sum(s.attributes["gen_ai.usage.output_tokens"] for s in llm) == sum(
        r.output_tokens for r in session.usage.llm)
    assert all("gen_ai.usage.cache_read.input_tokens" in s.attributes for s in llm)
    assert {s.attributes["gen_ai.system"] for s in providers if s.name != "llm"} == {"deepgram"}
    # each use's cost at the record's prices: LLM and TTS spans add up to their lines
    for name, kinds in (("llm", ("llm.input", "llm.output")), ("tts", ("tts",))):
        lines = sum((i.usd for i in cost.items if i.kind in kinds), Decimal(0))
        spent = sum(Decimal(s.attributes["tollbridge.cost.usd"])
                    for s in providers if s.name == name)
        assert abs(spent - lines) <= Decimal("0.000001") * 4, name
    # a turn's cost is its providers'; its latencies are the call's Turn records
    timed = [t for t in turns if "tollbridge.turn.first_audio_ms" in t.attributes]
    assert [t.attributes["tollbridge.turn.first_audio_ms"] for t in timed] == [
        turn.first_audio_ms for turn in cost.turns]
    for turn in turns:
        children = [s for s in providers if s.parent.span_id == turn.context.span_id]
        assert Decimal(turn.attributes["tollbridge.cost.usd"]) == sum(
            Decimal(s.attributes["tollbridge.cost.usd"]) for s in children)
    # what was said stays out of the backend
    assert not [(s.name, key) for s in spans for key in s.attributes if key in CONTENT_ATTRIBUTES]

    points = metric_points(reader)
    [ended] = points["tollbridge.calls"]
    assert dict(ended.attributes)["ended_by"] == cost.ended_by and ended.value == 1
    [spend] = points["tollbridge.call.cost"]
    assert spend.count == 1 and spend.sum == pytest.approx(float(cost.total_usd))
    [per_minute] = points["tollbridge.call.usd_per_minute"]
    assert per_minute.sum == pytest.approx(float(cost.usd_per_minute))
    [latency] = points["tollbridge.turn.latency"]
    assert latency.count == len(cost.turns) == len(REPLIES)
    assert latency.sum == sum(turn.first_audio_ms for turn in cost.turns)
    assert [p.value for p in points["tollbridge.calls.active"]] == [0]
    connections = {dict(p.attributes)["provider"]: p.value
                   for p in points["tollbridge.provider.connections"]}
    assert connections == {"deepgram.stt/nova-3": 0, "openai.llm/gpt-4o-mini": 0,
                           "deepgram.tts/aura-2-thalia-en": 0}
    assert sum(p.value for p in points["tollbridge.spend"]) == pytest.approx(
        float(cost.total_usd))


@pytest.mark.long(10)
async def test_with_otel_off_no_span_is_made_yet_each_answer_is_a_timed_turn(frontdesk):
    telemetry.install(InMemorySpanExporter())  # the SDK's tracer provider global, as traced
    telemetry.uninstall()
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    seen = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(seen))
    assert telemetry.active() is None
    cost, session = await run_call(frontdesk)
    assert session.worker.turn_tracking_observer is None
    assert session.worker.turn_trace_observer is None
    assert not [s.name for s in seen.get_finished_spans() if s.name in OURS]
    seen.shutdown()  # the provider keeps its processor; a shut exporter keeps nothing

    turns = cost.turns  # recorded whether telemetry is on or off
    assert len(turns) == len(REPLIES)
    # the caller stops at each final transcript plus the speech timeout (0.3 s here)
    for turn, said_at in zip(turns, (2.0, 4.5), strict=True):
        assert Decimal(str(said_at)) < turn.at_seconds < Decimal(str(said_at + 1.5))
        assert turn.first_audio_ms is not None and 0 <= turn.first_audio_ms < 2000
        assert turn.llm_ms is not None and turn.tts_ms is not None
        assert 0 <= turn.llm_ms <= turn.first_audio_ms  # the reply's first token comes first
        assert turn.agent == ""
    assert turns[0].at_seconds < turns[1].at_seconds
    assert session.usage.turns == turns
    again = CallCost.from_dict(cost.to_dict())
    assert again.turns == turns and again == cost


def test_asking_for_an_exporter_that_is_not_there_says_what_to_install(monkeypatch):
    assert telemetry.from_env({}) is None  # off by default
    assert telemetry.from_env({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}) \
        is None
    assert telemetry.from_env({"OTEL_TRACES_EXPORTER": "none"}) is None
    with pytest.raises(TelemetryUnavailable, match=r"tollbridge\[otel\]"):
        telemetry.from_env({"OTEL_TRACES_EXPORTER": "zipkin_json"})
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace.export", None)  # not installed
    with pytest.raises(TelemetryUnavailable, match=r"not installed: pip install 'tollbridge\[otel\]'"):
        telemetry.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
