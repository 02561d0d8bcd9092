"""Where prices come from: a dated catalog file for everything but LLM tokens.

`catalog.toml` ships in this package with one row per priced item (Twilio,
Deepgram, ElevenLabs, our own compute), each with its unit, billing
granularity, source and date, because prices drift and a figure without a date
cannot be re-checked. A vertical can lay negotiated rates over it with
`with_overrides`.

LLM token prices come from the `genai-prices` package's bundled snapshot, read
offline (it is maintained upstream and knows cached-input and cache-write
prices): `Catalog.llm_rates` wraps that lookup.
"""

from __future__ import annotations

import calendar
import datetime as dt
import difflib
import hashlib
import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import genai_prices
from genai_prices.data_snapshot import find_provider_by_id, get_snapshot
from genai_prices.types import ModelPrice, TieredPrices
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from tollbridge.errors import TollbridgeError

Granularity = Literal["minute_ceil", "second", "unit", "month"]

# (granularity, catalog unit) -> (unit of a line item's quantity, catalog units per that unit).
LINE_UNITS: dict[tuple[str, str], tuple[str, int]] = {
    ("minute_ceil", "minute"): ("minute", 1),
    ("second", "minute"): ("second", 60),
    ("second", "core-hour"): ("core-second", 3600),
    ("unit", "1k chars"): ("char", 1000),
    ("unit", "char"): ("char", 1),
    ("unit", "call"): ("call", 1),
    ("month", "number-month"): ("number-month", 1),
    ("month", "stored minute-month"): ("stored minute-month", 1),
}

# For each LLM line kind, the genai-prices price keys to try, most specific first.
# This mirrors genai-prices' own unit hierarchy: a cache write without its own
# price is billed as a generic cache write, then as plain input. Audio never
# falls back to a text price: a missing audio price is an error, not a discount.
LLM_PRICE_KEYS: dict[str, tuple[str, ...]] = {
    "input": ("input_mtok",),
    "cached_input": ("cache_read_mtok", "input_mtok"),
    "cache_write_5m": ("cache_write_5m_mtok", "cache_write_mtok", "input_mtok"),
    "cache_write_1h": ("cache_write_1h_mtok", "cache_write_mtok", "input_mtok"),
    "output": ("output_mtok",),
    "text_in": ("input_text_mtok", "input_mtok"),
    "text_cached_in": ("cache_text_read_mtok", "cache_read_mtok", "input_text_mtok", "input_mtok"),
    "audio_in": ("input_audio_mtok",),
    "audio_cached_in": ("cache_audio_read_mtok", "input_audio_mtok"),
    "text_out": ("output_text_mtok", "output_mtok"),
    "audio_out": ("output_audio_mtok",),
}

_PACKAGED = "catalog.toml"

LLM_BILLING_RULE = (
    "Tokens of each response as the API reported them (OpenAI's final usage chunk, "
    "Anthropic's last cumulative usage event), a reply cut short keeping what it had "
    "reported; a request that failed before reporting usage is not billed."
)
"""How LLM tokens are billed: their prices are genai-prices', so no catalog row says it."""


class CatalogError(TollbridgeError, ValueError):
    """The catalog file or an override is malformed; the message names the row and key."""


class UnknownPriceError(LookupError):
    """Usage names something no price is known for; the message lists close matches."""


class Reading(BaseModel):
    """One independent reading of a row's price, in the row's unit: what a source said, when.

    `date` is as precise as the reading was dated: "2026", "2026-06" or "2026-09-18".
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    usd: Decimal = Field(ge=0, allow_inf_nan=False)
    source: str = Field(min_length=1)
    date: str = Field(pattern=r"^\d{4}(-\d{2}(-\d{2})?)?$")


class CatalogRow(BaseModel):
    """One priced item. `usd` is per `unit`; `granularity` says how usage is counted.

    `readings` are the independent readings the price was chosen from; when they
    name different prices the row is flagged (`readings_disagree`) until re-checked.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str = Field(min_length=1)
    item: str = Field(min_length=1)
    model: str = ""
    granularity: Granularity
    unit: str
    usd: Decimal = Field(ge=0, allow_inf_nan=False)
    source: str = Field(min_length=1)
    date: dt.date
    readings: tuple[Reading, ...] = ()
    note: str = ""
    billing_rule: str = ""
    """What quantity is billed, as the provider bills it (every packaged row says)."""

    @field_validator("unit")
    @classmethod
    def _unit_fits_granularity(cls, unit: str, info: ValidationInfo) -> str:
        granularity = info.data.get("granularity")
        if granularity is not None and (granularity, unit) not in LINE_UNITS:
            allowed = sorted(u for g, u in LINE_UNITS if g == granularity)
            raise ValueError(
                f"unit {unit!r} does not fit granularity {granularity!r}; use one of {allowed}"
            )
        return unit

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.provider, self.item, self.model)

    @property
    def label(self) -> str:
        return " ".join(part for part in self.key if part)

    @property
    def readings_disagree(self) -> bool:
        """The readings name more than one price (the row's own price counts as one)."""
        return bool(self.readings) and len({self.usd, *(r.usd for r in self.readings)}) > 1

    def is_stale(self, today: dt.date) -> bool:
        """Dated more than six months before `today`: due for a re-quote."""
        return today > _add_months(self.date, 6)

    @property
    def line_unit(self) -> str:
        """Unit a line item's quantity is counted in (seconds, chars, whole minutes…)."""
        return LINE_UNITS[(self.granularity, self.unit)][0]

    @property
    def unit_price(self) -> Decimal:
        """Price of one `line_unit`: e.g. a per-minute rate billed per second is usd/60."""
        return self.usd / LINE_UNITS[(self.granularity, self.unit)][1]


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1)
    as_of: dt.date
    rows: list[dict[str, Any]] = Field(min_length=1)


@dataclass(frozen=True)
class LLMRates:
    """One model's token prices from genai-prices (USD per 1M tokens, possibly tiered)."""

    provider: str
    model: str
    model_id: str
    prices: ModelPrice

    def per_token(self, kind: str, total_input_tokens: int) -> Decimal:
        """USD per token for a line kind; tiers pick their rate from the request's gross input."""
        for key in LLM_PRICE_KEYS[kind]:
            price = getattr(self.prices, key)
            if price is not None:
                return _tier_price(price, total_input_tokens) / 1_000_000
        raise UnknownPriceError(
            f"genai-prices {genai_prices.__version__} has no {kind} price for {self.provider} "
            f"model {self.model!r} (priced as {self.model_id!r}); tried {LLM_PRICE_KEYS[kind]}"
        )


class Catalog:
    """The loaded price catalog: rows by (provider, item, model) plus LLM rates."""

    def __init__(self, version: str, as_of: dt.date, rows: Iterable[CatalogRow]) -> None:
        self._version = version
        self._as_of = as_of
        self._rows: dict[tuple[str, str, str], CatalogRow] = {}
        for row in rows:
            if row.key in self._rows:
                raise CatalogError(f"catalog {version}: two rows for {row.label!r}")
            self._rows[row.key] = row

    @classmethod
    def load(cls, path: Path | str | None = None) -> Catalog:
        """Load a catalog file; without a path, the one shipped in this package."""
        if path is None:
            text = resources.files(__package__).joinpath(_PACKAGED).read_text(encoding="utf-8")
            return cls.from_toml(text, where=_PACKAGED)
        path = Path(path)
        return cls.from_toml(path.read_text(encoding="utf-8"), where=str(path))

    @classmethod
    def from_toml(cls, text: str, *, where: str = "catalog") -> Catalog:
        """Parse catalog TOML; floats are read as Decimal so 0.0085 stays 0.0085."""
        try:
            raw = tomllib.loads(text, parse_float=Decimal)
        except tomllib.TOMLDecodeError as exc:
            raise CatalogError(f"{where}: not valid TOML: {exc}") from exc
        try:
            head = _CatalogFile.model_validate(raw)
        except ValidationError as exc:
            raise CatalogError(_describe(where, exc)) from exc
        rows = [_validate_row(where, f"row {n}", data) for n, data in enumerate(head.rows, 1)]
        return cls(head.version, head.as_of, rows)

    @property
    def version(self) -> str:
        return self._version

    @property
    def as_of(self) -> dt.date:
        return self._as_of

    @property
    def rows(self) -> tuple[CatalogRow, ...]:
        return tuple(self._rows.values())

    def find(self, provider: str, item: str, model: str = "") -> CatalogRow:
        """The row pricing `item`; a model matches exactly or by its longest `row.model + "-"`
        prefix, so a voice such as "aura-2-thalia-en" is priced by the "aura-2" row."""
        if row := self._rows.get((provider, item, model)):
            return row
        family = [r for r in self._rows.values() if r.provider == provider and r.item == item]
        by_prefix = [r for r in family if r.model and model.startswith(r.model + "-")]
        if by_prefix:
            return max(by_prefix, key=lambda r: len(r.model))
        wanted = " ".join(part for part in (provider, item, model) if part)
        if family:
            choices = [r.model for r in family]
            close = difflib.get_close_matches(model, choices, n=5, cutoff=0.5) or choices
        else:
            labels = [r.label for r in self._rows.values()]
            close = difflib.get_close_matches(wanted, labels, n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise UnknownPriceError(
            f"no price in catalog {self._version} for {wanted!r}{hint}. "
            f"Add a catalog row or an override."
        )

    def with_overrides(self, rows: Iterable[Mapping[str, Any]]) -> Catalog:
        """A copy with some rows replaced or added, e.g. a vertical's negotiated rates.

        An override names provider, item (and model), the new `usd`, its `source`
        and `date`; unit and granularity are inherited when it replaces a row.
        The version gains a digest of the overrides, so a recorded call says
        exactly which prices it was charged at.
        """
        overrides = [dict(row) for row in rows]
        if not overrides:
            return self
        merged = dict(self._rows)
        for n, raw in enumerate(overrides, 1):
            key = (str(raw.get("provider")), str(raw.get("item")), str(raw.get("model", "")))
            base = merged.get(key)
            inherited = base.model_dump(include={"unit", "granularity"}) if base else {}
            row = _validate_row("overrides", f"override {n}", {**inherited, **raw})
            merged[row.key] = row
        digest = hashlib.sha256(
            json.dumps(overrides, sort_keys=True, default=str).encode()
        ).hexdigest()[:8]
        return Catalog(f"{self._version}+{digest}", self._as_of, merged.values())

    def llm_rates(self, provider: str, model: str, at: dt.datetime) -> LLMRates:
        """A model's token prices in force at `at`, from genai-prices' bundled snapshot.

        Asking `calc_price` to price an empty usage is genai-prices' public way to
        resolve a model (aliases, dated prices) to its `ModelPrice`; nothing is fetched.
        """
        try:
            calc = genai_prices.calc_price(
                genai_prices.Usage(), model, provider_id=provider, genai_request_timestamp=at
            )
        except LookupError as exc:
            raise UnknownPriceError(_unknown_llm(provider, model)) from exc
        return LLMRates(provider, model, calc.model.id, calc.model_price)


def stale_warning(rows: Iterable[CatalogRow], today: dt.date) -> str:
    """A re-quote reminder naming each row dated more than six months before `today`, else ""."""
    stale = _distinct(row for row in rows if row.is_stale(today))
    if not stale:
        return ""
    named = ", ".join(f"{row.label} ({row.date})" for row in stale)
    return f"{len(stale)} price(s) dated more than six months before {today}, re-quote them: {named}"


def disagreement_warning(rows: Iterable[CatalogRow]) -> str:
    """A reminder naming each row whose independent readings disagree, else ""."""
    flagged = _distinct(row for row in rows if row.readings_disagree)
    if not flagged:
        return ""
    named = "; ".join(
        f"{row.label} charged at {row.usd:f}/{row.unit}, read as "
        + ", ".join(f"{r.usd:f} ({r.date})" for r in row.readings)
        for row in flagged
    )
    return f"{len(flagged)} price(s) whose readings disagree, check them before billing: {named}"


def _distinct(rows: Iterable[CatalogRow]) -> list[CatalogRow]:
    """Rows in order with repeats dropped (several verticals share most of their rows)."""
    return list(dict.fromkeys(rows))


def _validate_row(where: str, label: str, data: dict[str, Any]) -> CatalogRow:
    try:
        return CatalogRow.model_validate(data)
    except ValidationError as exc:
        name = " ".join(str(data.get(k, "")) for k in ("provider", "item", "model") if data.get(k))
        raise CatalogError(_describe(f"{where}: {label} ({name or 'unnamed'})", exc)) from exc


def _describe(where: str, exc: ValidationError) -> str:
    problems = [
        f"{where}: key {'.'.join(str(p) for p in err['loc']) or '(row)'!r}: {err['msg']}"
        for err in exc.errors()
    ]
    return "\n".join(problems)


def _tier_price(price: Decimal | TieredPrices, total_input_tokens: int) -> Decimal:
    """genai-prices' cliff rule: above a tier's start, the tier's rate applies to all tokens."""
    if isinstance(price, Decimal):
        return price
    for tier in reversed(price.tiers):
        if total_input_tokens > tier.start:
            return tier.price
    return price.base


def _unknown_llm(provider: str, model: str) -> str:
    providers = get_snapshot().providers
    found = find_provider_by_id(providers, provider)
    if found is None:
        close = difflib.get_close_matches(provider, [p.id for p in providers], n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        return f"genai-prices {genai_prices.__version__} knows no LLM provider {provider!r}{hint}"
    close = difflib.get_close_matches(model.lower(), [m.id for m in found.models], n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return (
        f"genai-prices {genai_prices.__version__} has no price for {provider} model {model!r}{hint}"
    )


def _add_months(day: dt.date, months: int) -> dt.date:
    year, month0 = divmod(day.month - 1 + months, 12)
    year += day.year
    last = calendar.monthrange(year, month0 + 1)[1]
    return dt.date(year, month0 + 1, min(day.day, last))
