"""Turn a call's usage into line items, following each provider's billing rules.

Twilio rounds every leg up to whole minutes (a 61 s call bills 2 minutes) and
charges nothing for calls that never connect; Deepgram bills streaming audio
by the second; TTS bills per character; LLMs per token, with cache reads and
cache writes at their own rates. The phone number's monthly fee is spread over
the minutes the number is expected to carry in a month.

The same functions serve the live meter, the estimator and the ledger's
reconciliation, so an estimate and a real call are priced identically.

Usage nothing prices (a model missing from the catalog or from genai-prices)
never stops a call from being recorded: it becomes a line flagged unpriced,
with its quantity and the reason, and the call's total is marked incomplete.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from decimal import ROUND_CEILING, Decimal
from typing import ParamSpec, TypeVar

import genai_prices

from tollbridge.costs.catalog import Catalog, CatalogRow, UnknownPriceError
from tollbridge.costs.lineitem import CallCost, LineItem
from tollbridge.costs.usage import CallUsage

P = ParamSpec("P")
T = TypeVar("T")

# Twilio final statuses that carry no minute charges.
UNBILLED_STATUSES = frozenset({"busy", "no-answer", "failed", "canceled"})

# Line kinds (before the first ".") whose quantity is the call's own duration,
# so they are re-priced when Twilio reports the billed duration.
CALL_TIME_KINDS = frozenset({"number", "voice", "media_streams"})
AMD_ITEM = "amd"
"""Twilio's answering-machine detection: one per call that asked for it, whatever answered."""
UNSTREAMED_ANSWERS = frozenset({"machine_start", "machine_end_beep", "machine_end_silence",
                                "machine_end_other", "fax"})
"""Machine detection verdicts the bridge answers with TwiML alone (a voicemail, a hang-up):
such a call never opens a Media Stream."""
RECORDING_ITEM = "recording"
"""Bills Twilio's RecordingDuration (whole minutes), not the call's: nothing until
Twilio reports a recording really happened."""

_LLM_KINDS = ("input", "cached_input", "cache_write_5m", "cache_write_1h", "output")
_REALTIME_KINDS = (
    "text_in",
    "text_cached_in",
    "audio_in",
    "audio_cached_in",
    "text_out",
    "audio_out",
)


def price_call(usage: CallUsage, catalog: Catalog) -> CallCost:
    """Price one call: one line per billable thing, in a stable order."""
    seconds = usage.measured_seconds if usage.billed_seconds is None else usage.billed_seconds
    items = [
        *_telephony_lines(usage, catalog, Decimal(seconds)),
        *_stt_lines(usage, catalog),
        *_token_lines(usage, catalog),
        *_tts_lines(usage, catalog),
        *_compute_lines(usage, catalog),
    ]
    return CallCost(
        call_sid=usage.call_sid,
        tenant=usage.tenant,
        vertical=usage.vertical,
        direction=usage.direction,
        number_type=usage.number_type,
        from_number=usage.from_number,
        to_number=usage.to_number,
        started_at=usage.started_at,
        ended_at=usage.ended_at,
        measured_seconds=usage.measured_seconds,
        billed_seconds=usage.billed_seconds,
        catalog_version=f"{catalog.version} genai-prices/{genai_prices.__version__}",
        items=tuple(items),
        ended_by=usage.ended_by,
        failed_provider=usage.failed_provider,
        handoffs=tuple(usage.handoffs),
        answered_by=usage.answered_by,
        turns=usage.turns,
    )


def call_quantity(unit: str, seconds: Decimal | int, status: str = "measured") -> Decimal:
    """How much call time a line bills: whole minutes rounded up, or exact seconds."""
    if status in UNBILLED_STATUSES or not seconds:
        return Decimal(0)
    if unit == "second":
        return Decimal(seconds)
    if unit == "minute":
        return (Decimal(seconds) / 60).to_integral_value(rounding=ROUND_CEILING)
    raise ValueError(f"cannot bill call time in {unit!r}")


def rebill(cost: CallCost, billed_seconds: int, status: str) -> CallCost:
    """Re-price the call-time lines from Twilio's CallDuration and final CallStatus.

    Each line keeps the unit price it was charged at, so a reconciled call stays
    on the catalog version it was priced with.
    """
    items = tuple(
        _requantified(line, call_quantity(line.unit, billed_seconds, status))
        if line.kind.split(".")[0] in CALL_TIME_KINDS
        else line
        for line in cost.items
    )
    rebilled = replace(cost, billed_seconds=billed_seconds, status=status, items=items)
    if rebilled.twilio_price_usd is None:
        return rebilled
    return with_twilio_price(rebilled, rebilled.twilio_price_usd)


def with_recording(cost: CallCost, recorded_seconds: int) -> CallCost:
    """Bill the recording Twilio reports (its RecordingDuration) on the recording line,
    at the unit price the call was priced with. A call priced without a recording
    line (its vertical does not record) keeps its lines; the seconds are kept."""
    items = tuple(
        _requantified(line, call_quantity(line.unit, recorded_seconds))
        if line.item == RECORDING_ITEM
        else line
        for line in cost.items
    )
    return replace(cost, recorded_seconds=recorded_seconds, items=items)


def _requantified(line: LineItem, quantity: Decimal) -> LineItem:
    if line.unpriced:
        return replace(line, quantity=quantity)
    return LineItem.priced(line.item, line.provider, quantity, line.unit, line.unit_price_usd)


def stt_row(catalog: Catalog, provider: str, model: str) -> CatalogRow:
    """The row pricing an STT model's audio; UnknownPriceError if none can."""
    row = catalog.find(provider, "stt", model)
    if row.line_unit not in ("minute", "second"):
        raise UnknownPriceError(f"catalog row {row.label!r} must bill audio per minute or second")
    return row


def tts_row(catalog: Catalog, provider: str, model: str) -> CatalogRow:
    """The row pricing a TTS model's (or voice's) characters; UnknownPriceError if none can."""
    row = catalog.find(provider, "tts", model)
    if row.line_unit != "char":
        raise UnknownPriceError(f"catalog row {row.label!r} must bill TTS per character")
    return row


def telephony_rows(
    catalog: Catalog, direction: str, number_type: str, recording: bool, *,
    streamed: bool = True,
) -> list[tuple[str, CatalogRow | str]]:
    """Each call-time item a call of this kind bills, with its row or why none prices it
    (no Media Streams for a call that never streamed: a machine, answered by TwiML alone)."""
    items = [
        f"number.{number_type}",
        "voice.outbound" if direction == "outbound" else f"voice.inbound_{number_type}",
        *(["media_streams"] if streamed else []),
        *([RECORDING_ITEM] if recording else []),
    ]
    return [(item, _price_or_reason(_call_time_row, catalog, item)) for item in items]


def _call_time_row(catalog: Catalog, item: str) -> CatalogRow:
    row = catalog.find("twilio", item)
    wanted = ("number-month",) if item.startswith("number.") else ("minute", "second")
    if row.line_unit not in wanted:
        raise UnknownPriceError(
            f"catalog row {row.label!r} must bill per {' or '.join(wanted)}, not {row.line_unit}"
        )
    return row


def _price_or_reason(find: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | str:
    """What `find` returns, or why nothing prices it (UnknownPriceError's message)."""
    try:
        return find(*args, **kwargs)
    except UnknownPriceError as missing:
        return str(missing)


def with_twilio_price(cost: CallCost, price_usd: Decimal) -> CallCost:
    """Attach Twilio's own price for the call and how far ours is from it.

    Twilio reports charges as negative amounts and covers connectivity only, so
    the magnitude is compared with our carrier-minute (`voice.*`) lines alone.
    """
    price = abs(Decimal(price_usd))
    ours = sum((line.usd for line in cost.items if line.kind.startswith("voice.")), Decimal(0))
    return replace(cost, twilio_price_usd=price, drift_usd=price - ours)


def without_savings(usage: CallUsage) -> CallUsage:
    """The same call as it would have been billed with none of the cost features on.

    Prompt caching off: every cache read and cache write is billed as plain input
    (the prompt size, and so any tier, is unchanged). No TTS phrase cache: avoided
    characters are synthesised. No STT silence gate: avoided seconds are streamed.
    The input is left untouched.
    """
    return replace(
        usage,
        llm=[
            replace(
                req,
                input_tokens=req.total_input_tokens,
                cached_input_tokens=0,
                cache_write_5m_tokens=0,
                cache_write_1h_tokens=0,
            )
            for req in usage.llm
        ],
        realtime=[
            replace(
                req,
                text_in=req.text_in + req.text_cached_in,
                text_cached_in=0,
                audio_in=req.audio_in + req.audio_cached_in,
                audio_cached_in=0,
            )
            for req in usage.realtime
        ],
        tts=[
            replace(tts, characters=tts.characters + tts.avoided_characters, avoided_characters=0)
            for tts in usage.tts
        ],
        stt=[
            replace(
                stt,
                audio_seconds=stt.audio_seconds + stt.avoided_seconds,
                avoided_seconds=Decimal(0),
            )
            for stt in usage.stt
        ],
    )


def _telephony_lines(usage: CallUsage, catalog: Catalog, seconds: Decimal) -> list[LineItem]:
    """Number, carrier, stream and recording lines: always present (maybe zero) so a
    later reconciliation has their unit prices to re-bill with."""
    lines = []
    minutes = call_quantity("minute", seconds)
    streamed = usage.answered_by not in UNSTREAMED_ANSWERS
    rows = telephony_rows(catalog, usage.direction, usage.number_type, usage.recording,
                          streamed=streamed)
    for item, row in rows:
        # the recording bills what Twilio recorded: zero until its callback says how much
        item_seconds = Decimal(usage.recorded_seconds or 0) if item == RECORDING_ITEM else seconds
        if isinstance(row, str):
            quantity = call_quantity("minute", item_seconds)
            lines.append(LineItem.without_price(item, "twilio", quantity, "minute", row))
        elif item.startswith("number."):  # the monthly fee, spread over the month's minutes
            price = row.usd / usage.monthly_minutes_per_number
            lines.append(LineItem.priced(row.item, row.provider, minutes, "minute", price))
        else:
            quantity = call_quantity(row.line_unit, item_seconds)
            lines.append(
                LineItem.priced(row.item, row.provider, quantity, row.line_unit, row.unit_price)
            )
    if usage.answered_by:  # the call asked Twilio to tell a person from a machine
        amd = _price_or_reason(catalog.find, "twilio", AMD_ITEM)
        lines.append(LineItem.without_price(AMD_ITEM, "twilio", 1, "call", amd)
                     if isinstance(amd, str)
                     else LineItem.priced(AMD_ITEM, "twilio", 1, "call", amd.unit_price))
    return lines


def _stt_lines(usage: CallUsage, catalog: Catalog) -> list[LineItem]:
    seconds: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    avoided: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for stt in usage.stt:
        seconds[(stt.provider, stt.model)] += Decimal(stt.audio_seconds)
        avoided[(stt.provider, stt.model)] += Decimal(stt.avoided_seconds)
    lines = []
    for (provider, model), audio in seconds.items():
        row = _price_or_reason(stt_row, catalog, provider, model)
        if isinstance(row, str):
            lines.append(LineItem.without_price(f"stt:{model}", provider, audio, "second", row))
        else:
            # a provider that rounds each stream up to the minute, or one billing by the second
            quantity = call_quantity("minute", audio) if row.line_unit == "minute" else audio
            lines.append(
                LineItem.priced(f"stt:{model}", provider, quantity, row.line_unit, row.unit_price)
            )
        if avoided[(provider, model)]:  # memo: silence not streamed, at no cost
            lines.append(LineItem.priced(
                f"stt.avoided:{model}", provider, avoided[(provider, model)], "second", Decimal(0)
            ))
    return lines


def _tts_lines(usage: CallUsage, catalog: Catalog) -> list[LineItem]:
    chars: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for tts in usage.tts:
        counts = chars[(tts.provider, tts.model, tts.agent)]
        counts[0] += tts.characters
        counts[1] += tts.avoided_characters
    unheard = max(0, sum(map(sum, chars.values())) - (usage.heard_characters or 0))
    never_heard: dict[tuple[str, str, str], int] = {}
    for key, (sent, avoided) in reversed(chars.items()):  # the caller cuts the last one off
        never_heard[key] = min(unheard, sent + avoided) if usage.heard_characters is not None else 0
        unheard -= never_heard[key]
    lines = []
    for (provider, model, agent), (sent, avoided) in chars.items():
        row = _price_or_reason(tts_row, catalog, provider, model)
        if sent and isinstance(row, str):
            lines.append(LineItem.without_price(f"tts:{model}", provider, sent, "char", row, agent))
        elif sent and isinstance(row, CatalogRow):
            lines.append(LineItem.priced(f"tts:{model}", provider, sent, "char", row.unit_price,
                                         agent))
        if avoided:  # memo: what the phrase cache saved, at no cost
            lines.append(LineItem.priced(f"tts.avoided:{model}", provider, avoided, "char",
                                         Decimal(0), agent))
        if cut := never_heard[(provider, model, agent)]:
            # memo: synthesized (or cached), then cut off by the caller
            lines.append(LineItem.priced(f"tts.unheard:{model}", provider, cut, "char",
                                         Decimal(0), agent))
    return lines


def _token_lines(usage: CallUsage, catalog: Catalog) -> list[LineItem]:
    """LLM and speech-to-speech token lines, summed per model, kind and unit price.

    A tiered model can charge two requests different rates; those stay on
    separate lines so every line's arithmetic still checks out.
    """
    tokens: dict[tuple[str, str, Decimal | str, str], int] = defaultdict(int)
    requests = [
        (
            "llm",
            req.provider,
            req.model,
            req.total_input_tokens,
            {kind: getattr(req, f"{kind}_tokens") for kind in _LLM_KINDS},
            req.agent,
        )
        for req in usage.llm
    ] + [
        (
            "realtime",
            req.provider,
            req.model,
            req.total_input_tokens,
            {kind: getattr(req, kind) for kind in _REALTIME_KINDS},
            "",
        )
        for req in usage.realtime
    ]
    for family, provider, model, total_input, counts, agent in requests:
        rates = _price_or_reason(catalog.llm_rates, provider, model, usage.started_at)
        for kind, count in counts.items():
            if count:  # a price per token, or why nothing prices these tokens
                price = rates if isinstance(rates, str) else _price_or_reason(
                    rates.per_token, kind, total_input
                )
                tokens[(f"{family}.{kind}:{model}", provider, price, agent)] += count
    return [
        LineItem.without_price(item, provider, count, "token", price, agent)
        if isinstance(price, str)
        else LineItem.priced(item, provider, count, "token", price, agent)
        for (item, provider, price, agent), count in tokens.items()
    ]


def _compute_lines(usage: CallUsage, catalog: Catalog) -> list[LineItem]:
    if not usage.compute_cpu_seconds:
        return []
    row = _price_or_reason(catalog.find, "self", "compute")
    if isinstance(row, str):
        return [LineItem.without_price(
            "compute", "self", Decimal(usage.compute_cpu_seconds), "core-second", row
        )]
    return [
        LineItem.priced(
            "compute",
            row.provider,
            Decimal(usage.compute_cpu_seconds),
            row.line_unit,
            row.unit_price,
        )
    ]
