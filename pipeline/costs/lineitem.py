"""The money record every part of the cost layer speaks: line items and a call's cost.

A line item says what was billed, how much of it, at what unit price and for
how many dollars, so anyone can redo the multiplication. Money is `Decimal`
(never float) and serialises as a string, so nothing is lost in JSON or TEXT
columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from tollbridge.costs.usage import Handoff, Turn

USD_PLACES = Decimal("0.000001")


def round_usd(amount: Decimal) -> Decimal:
    """Round to a millionth of a dollar: fine enough that per-call sums stay exact to the cent."""
    return amount.quantize(USD_PLACES, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class LineItem:
    """One billable thing on a call.

    `item` names the kind of charge and, for model-priced things, the model after
    a colon (`stt:nova-3`, `llm.cached_input:gpt-4o-mini`); `kind` drops the model.
    Invariant: `usd == round_usd(quantity * unit_price_usd)`.

    A line no price is known for keeps its usage and says why in `unpriced`; its
    price and amount are 0 and never guessed, and the call's total is incomplete.
    """

    item: str
    provider: str
    quantity: Decimal
    unit: str
    unit_price_usd: Decimal
    usd: Decimal
    unpriced: str = ""
    """Why this line has no price (empty for a priced line)."""
    agent: str = ""
    """The agent this LLM or TTS line is for, on a vertical with several agents."""

    @classmethod
    def priced(
        cls, item: str, provider: str, quantity: Decimal | int, unit: str, unit_price_usd: Decimal,
        agent: str = "",
    ) -> LineItem:
        """Build a line whose usd is computed, never typed in, so the invariant holds."""
        quantity = Decimal(quantity)
        return cls(item, provider, quantity, unit, unit_price_usd,
                   round_usd(quantity * unit_price_usd), agent=agent)

    @classmethod
    def without_price(
        cls, item: str, provider: str, quantity: Decimal | int, unit: str, reason: str,
        agent: str = "",
    ) -> LineItem:
        """A line for usage no price is known for: counted, flagged, charged nothing."""
        return cls(item, provider, Decimal(quantity), unit, Decimal(0), Decimal(0), reason,
                   agent=agent)

    @property
    def kind(self) -> str:
        return self.item.partition(":")[0]

    def to_dict(self) -> dict[str, str]:
        line = {
            "item": self.item,
            "provider": self.provider,
            "quantity": f"{self.quantity:f}",
            "unit": self.unit,
            "unit_price_usd": f"{self.unit_price_usd:f}",
            "usd": f"{self.usd:f}",
            "unpriced": self.unpriced,
        }
        return {**line, "agent": self.agent} if self.agent else line

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LineItem:
        return cls(
            item=data["item"],
            provider=data["provider"],
            quantity=Decimal(data["quantity"]),
            unit=data["unit"],
            unit_price_usd=Decimal(data["unit_price_usd"]),
            usd=Decimal(data["usd"]),
            unpriced=data.get("unpriced", ""),
            agent=data.get("agent", ""),
        )


@dataclass(frozen=True)
class CallCost:
    """A priced call: who and what it was, its line items, and the prices' version.

    `status` is "measured" until Twilio's status callback replaces it with the
    final CallStatus. Twilio's own price covers connectivity only; `drift_usd` is
    Twilio's figure minus our carrier-minute items. `recorded_seconds` is
    Twilio's RecordingDuration, once its recording status callback came.
    """

    call_sid: str
    tenant: str
    vertical: str
    direction: str
    number_type: str
    from_number: str
    to_number: str
    started_at: datetime
    ended_at: datetime | None
    measured_seconds: Decimal
    billed_seconds: int | None
    catalog_version: str
    items: tuple[LineItem, ...] = field(default_factory=tuple)
    ended_by: str = ""
    status: str = "measured"
    twilio_price_usd: Decimal | None = None
    drift_usd: Decimal | None = None
    recorded_seconds: int | None = None
    failed_provider: str = ""
    """The provider whose failure ended the call, if one did."""
    handoffs: tuple[Handoff, ...] = ()
    """Where the caller was handed between agents (a vertical with several agents)."""
    answered_by: str = ""
    """Twilio's machine detection verdict, when the call asked for one."""
    turns: tuple[Turn, ...] = ()
    """Each caller turn and how fast it was answered (`Turn`): the call page's timeline."""

    @property
    def seconds(self) -> Decimal:
        """Duration that counts: Twilio's billed seconds once known, our measurement before."""
        return (
            Decimal(self.billed_seconds)
            if self.billed_seconds is not None
            else self.measured_seconds
        )

    @property
    def minutes(self) -> Decimal:
        return self.seconds / 60

    @property
    def total_usd(self) -> Decimal:
        """The priced lines' sum: a lower bound when the call is not `complete`."""
        return sum((line.usd for line in self.items), Decimal(0))

    @property
    def unheard_speech_usd(self) -> Decimal:
        """Speech paid for but never heard (cut off by the caller): each `tts.unheard` memo's
        characters at its TTS line's price, in the share of that voice's speech that was
        synthesized rather than served from the phrase cache. Already in the TTS lines."""
        return unheard_speech_usd(self.items)

    def agent_usd(self) -> dict[str, Decimal]:
        """What each agent's LLM and TTS lines cost, in the order they first bill."""
        totals: dict[str, Decimal] = {}
        for line in self.items:
            if line.agent:
                totals[line.agent] = totals.get(line.agent, Decimal(0)) + line.usd
        return totals

    @property
    def unpriced_items(self) -> tuple[LineItem, ...]:
        return tuple(line for line in self.items if line.unpriced)

    @property
    def complete(self) -> bool:
        """Every line is priced, so `total_usd` is the whole cost of the call."""
        return not self.unpriced_items

    @property
    def usd_per_minute(self) -> Decimal | None:
        """Cost per minute of call time; None for a call that lasted no time (no-answer, busy)."""
        if not self.seconds:
            return None
        return round_usd(self.total_usd * 60 / self.seconds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "call_sid": self.call_sid,
            "tenant": self.tenant,
            "vertical": self.vertical,
            "direction": self.direction,
            "number_type": self.number_type,
            "from_number": self.from_number,
            "to_number": self.to_number,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "measured_seconds": f"{self.measured_seconds:f}",
            "billed_seconds": self.billed_seconds,
            "catalog_version": self.catalog_version,
            "items": [line.to_dict() for line in self.items],
            "ended_by": self.ended_by,
            "status": self.status,
            "twilio_price_usd": _str_or_none(self.twilio_price_usd),
            "drift_usd": _str_or_none(self.drift_usd),
            "recorded_seconds": self.recorded_seconds,
            "failed_provider": self.failed_provider,
            "answered_by": self.answered_by,
            "handoffs": [handoff.to_dict() for handoff in self.handoffs],
            "turns": [turn.to_dict() for turn in self.turns],
            "agent_usd": {agent: f"{usd:f}" for agent, usd in self.agent_usd().items()},
            "total_usd": f"{self.total_usd:f}",
            "complete": self.complete,
            "usd_per_minute": _str_or_none(self.usd_per_minute),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CallCost:
        """Inverse of `to_dict`; the derived totals in the dict are ignored and recomputed."""
        return cls(
            call_sid=data["call_sid"],
            tenant=data["tenant"],
            vertical=data["vertical"],
            direction=data["direction"],
            number_type=data["number_type"],
            from_number=data["from_number"],
            to_number=data["to_number"],
            started_at=datetime.fromisoformat(data["started_at"]),
            ended_at=datetime.fromisoformat(data["ended_at"]) if data["ended_at"] else None,
            measured_seconds=Decimal(data["measured_seconds"]),
            billed_seconds=data["billed_seconds"],
            catalog_version=data["catalog_version"],
            items=tuple(LineItem.from_dict(line) for line in data["items"]),
            ended_by=data.get("ended_by", ""),
            status=data.get("status", "measured"),
            twilio_price_usd=_decimal_or_none(data.get("twilio_price_usd")),
            drift_usd=_decimal_or_none(data.get("drift_usd")),
            recorded_seconds=data.get("recorded_seconds"),
            failed_provider=data.get("failed_provider", ""),
            handoffs=tuple(Handoff.from_dict(h) for h in data.get("handoffs", ())),
            answered_by=data.get("answered_by", ""),
            turns=tuple(Turn.from_dict(t) for t in data.get("turns", ())),
        )


def _str_or_none(value: Decimal | None) -> str | None:
    return None if value is None else f"{value:f}"


def _decimal_or_none(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def unheard_speech_usd(items: Iterable[LineItem]) -> Decimal:
    """`CallCost.unheard_speech_usd` of one call's line items (as the ledger stores them)."""
    lines = tuple(items)
    by_item = {(line.item, line.agent): line for line in lines}
    total = Decimal(0)
    for line in lines:
        if not line.item.startswith("tts.unheard:"):
            continue
        model = line.item.removeprefix("tts.unheard:")
        paid = by_item.get((f"tts:{model}", line.agent))
        cached = by_item.get((f"tts.avoided:{model}", line.agent))
        if paid is None or paid.unpriced:
            continue
        share = paid.quantity / (paid.quantity + (cached.quantity if cached else 0))
        total += line.quantity * share * paid.unit_price_usd
    return round_usd(total)
