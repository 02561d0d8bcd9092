"""What one call consumed, in billable units, before any price is applied.

The cost meter fills these from pipecat's usage metrics while the call runs;
the estimator fills them from a profile file. Keeping usage apart from money
lets the same call be re-priced when the catalog changes or Twilio reports the
billed duration.

Token counts are **net**: each bucket counts only its own tokens, so
`input_tokens` excludes cache reads and cache writes. Anthropic reports
`input_tokens` net already; OpenAI reports `prompt_tokens` gross (cached tokens
included). Turning a provider's report into net buckets is the meter's job,
using the cache fields rather than subtracting blindly (pipecat's
`LLMTokenUsage` warns about exactly this).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

Direction = Literal["inbound", "outbound"]
NumberType = Literal["local", "toll_free"]


@dataclass(frozen=True)
class STTUsage:
    """Seconds of audio streamed to one STT model (silence included: streaming bills it).

    `avoided_seconds` is line silence the call held back instead of streaming.
    """

    provider: str
    model: str
    audio_seconds: Decimal
    avoided_seconds: Decimal = Decimal(0)


@dataclass(frozen=True)
class LLMRequestUsage:
    """One LLM request's tokens, each bucket net of the others (see module docstring)."""

    provider: str
    model: str
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    agent: str = ""
    """The agent whose prompt the request ran with (a vertical with several agents)."""

    @property
    def total_input_tokens(self) -> int:
        """Gross prompt size: what tiered prices (e.g. above 200k tokens) are keyed on."""
        return (
            self.input_tokens
            + self.cached_input_tokens
            + self.cache_write_5m_tokens
            + self.cache_write_1h_tokens
        )


@dataclass(frozen=True)
class TTSUsage:
    """Characters sent to one TTS model; `avoided_characters` were served from a phrase cache."""

    provider: str
    model: str
    characters: int
    avoided_characters: int = 0
    agent: str = ""
    """The agent who said it (a vertical with several agents)."""


@dataclass(frozen=True)
class Handoff:
    """The caller handed from one agent to another, `at_seconds` into the call."""

    at_seconds: Decimal
    from_agent: str
    to_agent: str

    def to_dict(self) -> dict[str, str]:
        return {"at_seconds": f"{self.at_seconds:f}", "from_agent": self.from_agent,
                "to_agent": self.to_agent}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> Handoff:
        return cls(Decimal(data["at_seconds"]), data["from_agent"], data["to_agent"])


@dataclass(frozen=True)
class Turn:
    """One caller turn and how long the agent took to answer it, for the latency dashboard.

    `at_seconds`: when the caller stopped speaking, from the start of the call.
    `first_audio_ms`: from then until the reply's first audio went to the caller (None: the
    call ended before any reply). `stt_ms`, `llm_ms`, `tts_ms`: the providers' shares as
    pipecat measures them (STT finalisation after speech end, LLM time to first token, TTS
    time to first byte); None where the provider reported none (STT needs a VAD for it).
    `agent`: who answered ("" on a vertical with one agent).
    """

    at_seconds: Decimal
    first_audio_ms: int | None = None
    stt_ms: int | None = None
    llm_ms: int | None = None
    tts_ms: int | None = None
    agent: str = ""

    def to_dict(self) -> dict[str, str | int | None]:
        return {"at_seconds": f"{self.at_seconds:f}", "first_audio_ms": self.first_audio_ms,
                "stt_ms": self.stt_ms, "llm_ms": self.llm_ms, "tts_ms": self.tts_ms,
                "agent": self.agent}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Turn:
        return cls(Decimal(data["at_seconds"]), data.get("first_audio_ms"), data.get("stt_ms"),
                   data.get("llm_ms"), data.get("tts_ms"), data.get("agent", ""))


@dataclass(frozen=True)
class RealtimeUsage:
    """One speech-to-speech response's tokens, each bucket net (cached tokens not in `*_in`)."""

    provider: str
    model: str
    text_in: int = 0
    text_cached_in: int = 0
    audio_in: int = 0
    audio_cached_in: int = 0
    text_out: int = 0
    audio_out: int = 0

    @property
    def total_input_tokens(self) -> int:
        """Gross prompt size, for tiered prices."""
        return self.text_in + self.text_cached_in + self.audio_in + self.audio_cached_in


@dataclass
class CallUsage:
    """Everything billable about one call (mutable: the meter fills it as the call runs).

    `measured_seconds` is our own clock; `billed_seconds` is Twilio's
    `CallDuration`, known only after the status callback, so it starts as None
    and the ledger reconciles it later. `recording` says the call is recorded;
    `recorded_seconds` is how much Twilio recorded, known from its recording
    status callback (the estimator assumes the whole call), and is what the
    recording line bills. `heard_characters` against the TTS characters tells
    what speech was paid for (or served from the phrase cache) but never heard.
    """

    call_sid: str
    tenant: str
    vertical: str
    direction: Direction
    number_type: NumberType
    from_number: str
    to_number: str
    started_at: datetime
    ended_at: datetime | None
    measured_seconds: Decimal
    billed_seconds: int | None
    recording: bool
    monthly_minutes_per_number: int
    stt: list[STTUsage] = field(default_factory=list)
    llm: list[LLMRequestUsage] = field(default_factory=list)
    tts: list[TTSUsage] = field(default_factory=list)
    realtime: list[RealtimeUsage] = field(default_factory=list)
    compute_cpu_seconds: Decimal = Decimal(0)
    ended_by: str = ""
    recorded_seconds: Decimal = Decimal(0)
    heard_characters: int | None = None
    """Characters of agent speech the caller heard (None: the transport cannot tell)."""
    failed_provider: str = ""
    """The provider whose failure ended the call (e.g. "deepgram.stt/nova-3"), if one did."""
    handoffs: list[Handoff] = field(default_factory=list)
    answered_by: str = ""
    """Twilio's machine detection verdict (human, machine_end_beep, …); "" when the call did
    not ask for detection."""
    turns: tuple[Turn, ...] = ()
    """Each caller turn and the agent's latency answering it, in order (not billed)."""

    def __post_init__(self) -> None:
        if self.direction not in ("inbound", "outbound"):
            raise ValueError(
                f"call {self.call_sid}: direction must be inbound or outbound, "
                f"not {self.direction!r}"
            )
        if self.number_type not in ("local", "toll_free"):
            raise ValueError(
                f"call {self.call_sid}: number_type must be local or toll_free, "
                f"not {self.number_type!r}"
            )
        if self.monthly_minutes_per_number <= 0:
            raise ValueError(
                f"call {self.call_sid}: monthly_minutes_per_number must be > 0, "
                f"not {self.monthly_minutes_per_number}"
            )
        if self.measured_seconds < 0 or (
            self.billed_seconds is not None and self.billed_seconds < 0
        ):
            raise ValueError(f"call {self.call_sid}: call seconds cannot be negative")
