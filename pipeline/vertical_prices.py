"""The prices a vertical's calls need, checked before any call runs.

Every stage that bills (STT audio, LLM tokens, TTS characters, speech-to-speech
tokens), its fallback, and every telephony item must have a price in the
vertical's catalog — the packaged catalog with the vertical's `[[prices]]`
overrides laid over it — or its calls would be recorded with unpriced lines.
`load_vertical` refuses such a stage, so `validate`, `serve` and `call` all do.
The same rows are the ones whose age and disagreeing readings are worth a warning.
"""

from __future__ import annotations

import datetime as dt
import difflib
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from genai_prices.data_snapshot import find_provider_by_id, get_snapshot
from genai_prices.types import ModelPrice

from tollbridge.costs.catalog import (
    LLM_PRICE_KEYS,
    Catalog,
    CatalogRow,
    UnknownPriceError,
    disagreement_warning,
    stale_warning,
)
from tollbridge.costs.pricing import AMD_ITEM, stt_row, telephony_rows, tts_row
from tollbridge.stage import Billing, Role

if TYPE_CHECKING:
    from tollbridge.agents import Agent
    from tollbridge.config import PriceOverride, Stage, Telephony, Vertical

# How the row pricing each role's usage is found (and checked for a fitting unit).
_ROW_FINDERS = {Role.STT: stt_row, Role.TTS: tts_row}

# The token prices a brain cannot run without (cache reads and writes fall back to input).
_TOKEN_KINDS = {
    Role.LLM: ("input", "output"),
    Role.SPEECH_TO_SPEECH: ("text_in", "audio_in", "text_out", "audio_out"),
}


def vertical_catalog(catalog: Catalog, prices: Iterable[PriceOverride]) -> Catalog:
    """The catalog a vertical's calls are priced with: `catalog` plus its negotiated rates."""
    return catalog.with_overrides(p.model_dump(exclude_none=True) for p in prices)


def price_problems(
    chain: list[Stage],
    telephony: Telephony,
    catalog: Catalog,
    at: dt.datetime,
    agents: Iterable[Agent] = (),
) -> list[tuple[str, str]]:
    """(key path, message) for each stage, agent's model or voice, or telephony item nothing
    in `catalog` prices."""
    problems = [
        ("telephony", f"{item} has no price in the catalog: {reason}")
        for item, reason in _telephony(telephony, catalog)
        if isinstance(reason, str)
    ]
    for stage in chain:
        for where, current in stage.with_fallbacks():
            problem = _stage_problem(current, catalog, at)
            if problem:
                key, message = problem
                problems.append((f"{where}.{key}", message))
    for agent in agents:
        for stage in _agent_stages(chain, agent):
            if problem := _stage_problem(stage, catalog, at):
                key, message = problem
                problems.append((f"agents.{agent.name}.{key}", message))
    return problems


def _agent_stages(chain: Iterable[Stage], agent: Agent) -> list[Stage]:
    """The chain's LLM and TTS stages as `agent` runs them (its model, its voice)."""
    return [replace(stage, options=options, fallback=None)
            for stage in chain if (options := agent.options_for(stage.kind.role)) is not None]


def rows_in_use(vertical: Vertical, catalog: Catalog) -> list[CatalogRow]:
    """The catalog rows the vertical's calls are priced with (telephony, STT, TTS, compute)."""
    rows = [row for _, row in _telephony(vertical.telephony, catalog) if isinstance(row, CatalogRow)]
    stages = [current for stage in vertical.chain for _, current in stage.with_fallbacks()]
    stages += [stage for agent in vertical.agents for stage in _agent_stages(vertical.chain, agent)]
    for current in stages:
        billing = current.kind.billing(current.options)
        find = _ROW_FINDERS.get(current.kind.role)
        if billing and find:
            try:
                rows.append(find(catalog, billing.provider, billing.model))
            except UnknownPriceError:
                pass  # refused when the vertical loaded
    try:
        rows.append(catalog.find("self", "compute"))
    except UnknownPriceError:
        pass  # a catalog without a compute price leaves the compute line unpriced
    return rows


def price_warnings(verticals: Iterable[Vertical], catalog: Catalog, today: dt.date) -> dict[str, str]:
    """Warnings about the prices these verticals' calls use, by log event: rows older than
    six months on `today` ("prices_stale") and rows whose readings disagree ("prices_disagree")."""
    rows = [
        row for v in verticals for row in rows_in_use(v, vertical_catalog(catalog, v.prices))
    ]
    found = {"prices_stale": stale_warning(rows, today), "prices_disagree": disagreement_warning(rows)}
    return {event: warning for event, warning in found.items() if warning}


def _telephony(telephony: Telephony, catalog: Catalog) -> list[tuple[str, CatalogRow | str]]:
    rows = telephony_rows(
        catalog, telephony.direction, telephony.number_type, telephony.recording
    )
    if telephony.voicemail:  # every call asks Twilio to detect a machine
        try:
            rows.append((AMD_ITEM, catalog.find("twilio", AMD_ITEM)))
        except UnknownPriceError as missing:
            rows.append((AMD_ITEM, str(missing)))
    return rows


def _stage_problem(stage: Stage, catalog: Catalog, at: dt.datetime) -> tuple[str, str] | None:
    billing = stage.kind.billing(stage.options)
    role = stage.kind.role
    if billing is None:
        return None
    key = _option_naming(stage, billing.model)
    if role in _ROW_FINDERS:
        item = str(role)
        try:
            catalog.find(billing.provider, item, billing.model)
        except UnknownPriceError:
            priced = [r.model for r in catalog.rows if (r.provider, r.item) == (billing.provider, item)]
            return key, (
                f'"{billing.model}" has no {billing.provider} {item} price in the catalog; '
                + (f"priced: {', '.join(priced)} (or a name starting with one and \"-\"); "
                   if priced else "")
                + "or price it with a prices entry in the vertical file"
            )
        try:
            _ROW_FINDERS[role](catalog, billing.provider, billing.model)
        except UnknownPriceError as unusable:  # a row in a unit this usage cannot be billed in
            return key, f'"{billing.model}": {unusable}'
        return None
    if role in _TOKEN_KINDS:
        missing = _missing_token_prices(billing, _TOKEN_KINDS[role], catalog, at)
        if missing:
            alternatives = _priced_models(billing.provider, _TOKEN_KINDS[role], billing.model, at)
            hint = f"; priced: {', '.join(alternatives)}" if alternatives else ""
            return key, f'"{billing.model}" has no price: {missing}{hint}'
    return None


def _missing_token_prices(
    billing: Billing, kinds: tuple[str, ...], catalog: Catalog, at: dt.datetime
) -> str:
    try:
        rates = catalog.llm_rates(billing.provider, billing.model, at)
        for kind in kinds:
            rates.per_token(kind, 0)
    except UnknownPriceError as missing:
        return str(missing)
    return ""


def _priced_models(
    provider: str, kinds: tuple[str, ...], near: str, at: dt.datetime
) -> list[str]:
    """genai-prices models of `provider` with every price `kinds` need, closest to `near` first."""
    found = find_provider_by_id(get_snapshot().providers, provider)
    if found is None:
        return []

    def priced(prices: ModelPrice) -> bool:
        return all(
            any(getattr(prices, key) is not None for key in LLM_PRICE_KEYS[kind]) for kind in kinds
        )

    ids = [m.id for m in found.models if priced(m.get_prices(at))]
    return difflib.get_close_matches(near, ids, n=5, cutoff=0.3)


def _option_naming(stage: Stage, value: str) -> str:
    """The option holding the billed model or voice (e.g. "model", "voice")."""
    for name in type(stage.options).model_fields:
        if getattr(stage.options, name) == value:
            return name
    return "model"
