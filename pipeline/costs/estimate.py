"""Price a call that has not happened yet, from a profile file.

A profile describes a typical call of a vertical (how long, which models, how
many tokens and characters). It becomes a `CallUsage` and goes through the
same `price_call` as a real call, so an estimate can only differ from a real
bill by its usage assumptions, never by its arithmetic.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tollbridge.costs.usage import CallUsage, LLMRequestUsage, RealtimeUsage, STTUsage, TTSUsage
from tollbridge.errors import TollbridgeError

_Request = TypeVar("_Request", LLMRequestUsage, RealtimeUsage)


class ProfileError(TollbridgeError, ValueError):
    """A profile file is malformed; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _STT(_Strict):
    provider: str = "deepgram"
    model: str
    audio_seconds: Decimal = Field(ge=0)
    avoided_seconds: Decimal = Field(Decimal(0), ge=0)


class _LLM(_Strict):
    provider: str
    model: str
    requests: int = Field(1, gt=0)
    input_tokens: int = Field(0, ge=0)
    cached_input_tokens: int = Field(0, ge=0)
    cache_write_5m_tokens: int = Field(0, ge=0)
    cache_write_1h_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)
    agent: str = ""
    """Which agent of a vertical with several these requests are (its line items say so)."""


class _TTS(_Strict):
    provider: str = "deepgram"
    model: str
    characters: int = Field(ge=0)
    avoided_characters: int = Field(0, ge=0)
    agent: str = ""


class _Realtime(_Strict):
    provider: str = "openai"
    model: str
    requests: int = Field(1, gt=0)
    text_in: int = Field(0, ge=0)
    text_cached_in: int = Field(0, ge=0)
    audio_in: int = Field(0, ge=0)
    audio_cached_in: int = Field(0, ge=0)
    text_out: int = Field(0, ge=0)
    audio_out: int = Field(0, ge=0)


class _Profile(_Strict):
    name: str = ""
    description: str = ""
    tenant: str = "estimate"
    vertical: str = "estimate"
    direction: Literal["inbound", "outbound"]
    number_type: Literal["local", "toll_free"] = "local"
    call_seconds: Decimal = Field(ge=0)
    monthly_minutes_per_number: int = Field(1000, gt=0)
    recording: bool = False
    priced_at: dt.datetime | None = None
    compute_cpu_seconds: Decimal = Field(Decimal(0), ge=0)
    stt: list[_STT] = []
    llm: list[_LLM] = []
    tts: list[_TTS] = []
    realtime: list[_Realtime] = []

    @field_validator("stt", "llm", "tts", "realtime", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        """`[llm]` (one table) and `[[llm]]` (several) both work."""
        return [value] if isinstance(value, dict) else value


def _split(kind: type[_Request], totals: _LLM | _Realtime) -> list[_Request]:
    """Spread a profile's call totals over its requests, as tiered prices are per request."""
    fields: dict[str, Any] = totals.model_dump(exclude={"requests"})
    n = totals.requests
    shares: list[dict[str, Any]] = [
        {
            key: value if isinstance(value, str) else value // n + (i < value % n)
            for key, value in fields.items()
        }
        for i in range(n)
    ]
    return [kind(**share) for share in shares]


def load_profile(path: Path | str) -> CallUsage:
    """Read a profile TOML into the usage of one imagined call.

    LLM prices can change over time; `priced_at` pins the date to price at,
    otherwise the call is priced as if it happened now.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
        if "chain" in raw:
            raise ProfileError(
                f"{path}: a vertical file, not a usage profile: estimate a profile such as "
                "examples/profiles/profile_a.toml"
            )
        profile = _Profile.model_validate(raw)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from exc
    except ValidationError as exc:
        raise ProfileError(
            "\n".join(
                f"{path}: key {'.'.join(str(p) for p in err['loc'])!r}: {err['msg']}"
                for err in exc.errors()
            )
        ) from exc
    started = profile.priced_at or dt.datetime.now(dt.UTC)
    if started.tzinfo is None:
        started = started.replace(tzinfo=dt.UTC)
    return CallUsage(
        call_sid=f"estimate:{profile.name or path.stem}",
        tenant=profile.tenant,
        vertical=profile.vertical,
        direction=profile.direction,
        number_type=profile.number_type,
        from_number="",
        to_number="",
        started_at=started,
        ended_at=started + dt.timedelta(seconds=float(profile.call_seconds)),
        measured_seconds=profile.call_seconds,
        billed_seconds=None,
        recording=profile.recording,
        monthly_minutes_per_number=profile.monthly_minutes_per_number,
        stt=[STTUsage(**s.model_dump()) for s in profile.stt],
        llm=[req for r in profile.llm for req in _split(LLMRequestUsage, r)],
        tts=[TTSUsage(**t.model_dump()) for t in profile.tts],
        realtime=[req for r in profile.realtime for req in _split(RealtimeUsage, r)],
        compute_cpu_seconds=profile.compute_cpu_seconds,
        ended_by="estimate",
        recorded_seconds=profile.call_seconds if profile.recording else Decimal(0),
    )
