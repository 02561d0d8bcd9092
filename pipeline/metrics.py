"""A bridge's calls as Prometheus metrics, for users without an OpenTelemetry collector.

Served by the bridge at ``/metrics`` (behind the API token). Each finished call
is counted once, when its record is priced: how it ended, what it cost and
what that came to per minute, what each line-item kind and each agent
spent, how long each caller turn waited for the reply's first audio, and
which provider's failure ended it. Dollars are exported as
floats, as Prometheus needs; the ledger keeps the exact `Decimal` amounts.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tollbridge.costs.lineitem import CallCost

COST_BUCKETS_USD = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
PER_MINUTE_BUCKETS_USD = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5)
"""Around the margin floors of phone agents: a few cents to a few dimes a minute."""
TURN_BUCKETS_S = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)
"""Around what callers notice: under a second feels live, past two is a pause."""


class CallMetrics:
    """One bridge's metrics, in a registry of its own (several bridges may share a process)."""

    def __init__(self, active_calls: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        gauge = Gauge("tollbridge_active_calls", "Calls with a live Media Stream on this bridge",
                      registry=self.registry)
        gauge.set_function(active_calls)
        call = ["tenant", "vertical"]
        self._ended = Counter("tollbridge_calls", "Calls ended, by what ended them",
                              [*call, "ended_by"], registry=self.registry)
        self._cost = Histogram("tollbridge_call_cost_usd", "What each call cost, all lines",
                               call, buckets=COST_BUCKETS_USD, registry=self.registry)
        self._per_minute = Histogram(
            "tollbridge_call_usd_per_minute", "Each call's cost per minute of call time",
            call, buckets=PER_MINUTE_BUCKETS_USD, registry=self.registry)
        self._spent = Counter("tollbridge_spend_usd", "Dollars billed, by line item kind",
                              [*call, "kind"], registry=self.registry)
        self._agents = Counter("tollbridge_agent_spend_usd", "Each agent's LLM and TTS dollars",
                               [*call, "agent"], registry=self.registry)
        self._turns = Histogram(
            "tollbridge_turn_first_audio_seconds",
            "From the caller's end of turn to the reply's first audio", [*call, "agent"],
            buckets=TURN_BUCKETS_S, registry=self.registry)
        self._failed = Counter("tollbridge_provider_failures",
                               "Calls a provider's failure ended, by provider",
                               ["provider"], registry=self.registry)

    def call_priced(self, cost: CallCost) -> None:
        who = {"tenant": cost.tenant, "vertical": cost.vertical}
        self._ended.labels(**who, ended_by=cost.ended_by or "unknown").inc()
        self._cost.labels(**who).observe(float(cost.total_usd))
        if cost.usd_per_minute is not None:
            self._per_minute.labels(**who).observe(float(cost.usd_per_minute))
        for line in cost.items:
            if line.usd:
                self._spent.labels(**who, kind=line.kind).inc(float(line.usd))
        for agent, usd in cost.agent_usd().items():
            self._agents.labels(**who, agent=agent).inc(float(usd))
        for turn in cost.turns:
            if turn.first_audio_ms is not None:
                self._turns.labels(**who, agent=turn.agent).observe(turn.first_audio_ms / 1000)
        if cost.failed_provider:
            self._failed.labels(provider=cost.failed_provider).inc()

    def render(self) -> bytes:
        """The Prometheus text format."""
        return generate_latest(self.registry)
