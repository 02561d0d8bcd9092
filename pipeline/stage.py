"""The stage contract: everything a stage kind declares, in one place.

A vertical's chain is a list of stages; each names a registered *kind*
(``use = "deepgram.stt"``). A kind is a `StageKind` subclass that says,
before any call runs:

* its `role` — what the builder must do around it (a transport first, one
  brain: STT → LLM → TTS or a speech-to-speech service, a meter, and any
  number of plain `PROCESSOR` stages wherever the file puts them);
* its `options` — a pydantic model, so a config file is validated (every
  error names the key) and the JSON Schema lists every option;
* how it `build`s its pipecat processor for one call;
* its `billing` identity — which provider, model or voice each usage line
  it causes is priced as (never guessed from the kind's name);
* the audio it consumes and produces (`audio_in` / `audio_out`), so a codec
  is inserted only where two neighbours disagree;
* optional hooks: `with_fallback` (options for a stage that has a fallback)
  and `warm_up` (load what every call shares, such as a model, before the first).

A kind's replay fake (the local fake of its provider a cassette is replayed
through) lives in the testing layer, registered under the
``tollbridge.replay_fakes`` entry-point group, so production never imports it.

A processor may also report work it saved (a phrase cache, a silence gate)
by implementing `AvoidedUsage`; the meter shows it as an avoided line.

Built-in kinds register exactly as a plugin's do: through the
``tollbridge.stages`` entry-point group, each entry naming a `StageKind`
subclass. "Writing a stage" in the README walks through one end to end.
"""

from __future__ import annotations

import difflib
import enum
import functools
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, Self, runtime_checkable

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
)

from tollbridge.tools import Tool, load_tools

if TYPE_CHECKING:
    from tollbridge.config import Vertical


class Role(enum.StrEnum):
    """What a stage is to the builder; the chain's rules are written in roles."""

    TRANSPORT = "transport"
    STT = "stt"
    LLM = "llm"
    TTS = "tts"
    SPEECH_TO_SPEECH = "speech_to_speech"
    METER = "meter"
    PROCESSOR = "processor"
    """Any pipecat processor, run where the chain puts it."""


BRAIN_ROLES = (Role.LLM, Role.SPEECH_TO_SPEECH)
PROVIDER_ROLES = (Role.STT, Role.LLM, Role.TTS, Role.SPEECH_TO_SPEECH)
"""Roles whose stages talk to a provider: each can have a fallback and must be replayable."""


@dataclass(frozen=True)
class AudioFormat:
    """Audio on the wire between two stages."""

    encoding: str  # "mulaw" | "pcm16"
    sample_rate: int

    def __str__(self) -> str:
        return f"{self.encoding}/{self.sample_rate}"


MULAW_8K = AudioFormat("mulaw", 8000)


@dataclass(frozen=True)
class Billing:
    """Who bills for a stage's usage: the price catalog's provider and model (or voice)."""

    provider: str
    model: str
    cache_ttl: Literal["5m", "1h"] = "5m"
    """Which cache-write price applies to the LLM's cached prefix."""
    prompt_tokens_include_cached: bool = True
    """pipecat's `prompt_tokens` counts cache reads and writes (OpenAI's way); False where
    the service reports them apart (Anthropic's)."""


@dataclass
class CallContext:
    """Everything a stage may need to build itself for one call."""

    vertical: Vertical
    call_sid: str
    stream_sid: str = ""
    caller: str = ""
    callee: str = ""
    connection: Any = None
    """The transport's live connection for this call (e.g. the Media Streams socket)."""
    base_urls: Mapping[str, str] = field(default_factory=dict)
    """Stage kind → base URL, overriding the config (offline demo, replay)."""
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    """Where API keys are read from (the process environment unless replaying)."""
    user_speech_timeout: float = 0.6
    """Seconds of caller silence after a final transcript that end the caller's turn."""
    answered_by: str = ""
    """Twilio's machine detection verdict for an outbound call that asked for one."""

    def base_url(self, kind: str, configured: str | None) -> str | None:
        return self.base_urls.get(kind) or configured


def did_you_mean(value: str, choices: list[str]) -> str:
    """A hint for an error message: '; did you mean "x"?' or nothing."""
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    return f'; did you mean "{close[0]}"?' if close else ""


def _resolve_file(value: str, info: ValidationInfo) -> str:
    base = Path((info.context or {}).get("base_dir", "."))
    path = (base / value).resolve()
    if not path.is_file():
        raise ValueError(f'file "{value}" not found (looked for {path})')
    return str(path)


ConfigFile = Annotated[str, AfterValidator(_resolve_file)]
"""An option naming a file: resolved against the config file's folder, must exist."""

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class StageOptions(BaseModel):
    """Base of every kind's options: unknown keys are errors, not silently ignored,
    and values are not coerced ("yes" is not a boolean, "8000" is not a number)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ProviderOptions(StageOptions):
    """What every provider stage shares. `api_key_env` names the environment variable
    with the key (a key is never written in a config file); `base_url` points the
    client elsewhere (a proxy, a regional endpoint, a local fake)."""

    api_key_env: str = Field(pattern=_ENV_NAME)
    base_url: str | None = None

    @field_validator("base_url")
    @classmethod
    def _url_scheme(cls, value: str | None) -> str | None:
        if value and value.split("://", 1)[0] not in ("http", "https", "ws", "wss"):
            raise ValueError(f'"{value}" is not an http(s):// or ws(s):// URL')
        return value

    def api_key(self, env: Mapping[str, str] | None = None) -> str:
        """The key, read when a call needs it (config validation never needs it)."""
        value = (os.environ if env is None else env).get(self.api_key_env, "")
        if not value:
            raise RuntimeError(f"environment variable {self.api_key_env} is not set")
        return value


class BrainOptions(StageOptions):
    """What the builder reads from a brain (LLM or speech-to-speech) stage: the agent's
    prompt and tools. The prompt file is read once per process, so the cacheable prefix
    (system prompt + tools) is byte-identical across turns and calls."""

    prompt: ConfigFile | None = None
    tools: str | None = None
    """``module:ATTRIBUTE`` beside the vertical file, a list of `Tool`."""
    _instructions: str | None = PrivateAttr(None)

    @field_validator("tools")
    @classmethod
    def _tools_import(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            load_tools(value, Path((info.context or {}).get("base_dir", ".")))
        return value

    def system_prompt(self) -> str:
        if self._instructions is not None:
            return self._instructions
        return _read_prompt(self.prompt) if self.prompt else "You are a helpful phone agent."

    def instructed(self, instructions: str) -> Self:
        """These options with `instructions` as the system prompt (one agent's of several)."""
        copy = self.model_copy()
        copy._instructions = instructions
        return copy

    def load_tools(self, folder: Path) -> list[Tool]:
        return load_tools(self.tools, folder) if self.tools else []


@functools.cache
def _read_prompt(path: str) -> str:
    return Path(path).read_text(encoding="utf-8").strip()


@dataclass(frozen=True)
class Heard:
    """What the caller heard of the agent, by the transport's account."""

    characters: int
    """Characters of agent text whose audio was played (of an interrupted reply: its words played)."""
    max_lead_s: float
    p95_lead_s: float
    """Agent audio queued unplayed at the far end (e.g. Twilio) right after each send."""


@runtime_checkable
class Playback(Protocol):
    """What a transport knows of the agent audio it took in: how much the caller has yet to
    hear and how much it received in all (seconds), and what was heard. The builder paces
    speech by it; the call's record says what was paid for but never heard."""

    def unplayed_seconds(self) -> float: ...

    def received_seconds(self) -> float: ...

    def utterances_ended(self) -> int:
        """TTS utterances whose synthesis has ended (their TTSStoppedFrame arrived)."""
        ...

    def heard(self) -> Heard: ...


@runtime_checkable
class AvoidedUsage(Protocol):
    """A processor that saved billable work (audio it did not stream, text it did not
    send) says how much, in its role's unit: STT seconds or TTS characters."""

    def avoided_usage(self) -> float: ...


class StageKind(ABC):
    """A kind of stage. Subclass it, set the class attributes, implement `build`.

    Hooks take the stage's validated options (an instance of `options`).
    """

    name: str
    """What a chain entry's `use` says, e.g. "acme.tts"."""
    role: Role
    options: type[StageOptions] = StageOptions
    description: str = ""
    local: bool = False
    """Runs on the bridge's own CPU: no provider account, nothing to replay (e.g. an
    offline recogniser)."""

    @abstractmethod
    def build(self, options: Any, call: CallContext) -> Any:
        """The pipecat processor for one call (a transport kind: a pipecat `BaseTransport`;
        the meter kind: the call's meter)."""

    def billing(self, options: Any) -> Billing | None:
        """Who bills for the usage metrics the built processor reports (None: nobody)."""
        return None

    def audio_in(self, options: Any) -> AudioFormat | None:
        """The audio the stage consumes (None: it takes no audio)."""
        return None

    def audio_out(self, options: Any) -> AudioFormat | None:
        """The audio the stage produces (None: it makes no audio)."""
        return None

    def api_key_env(self, options: Any) -> str | None:
        """The environment variable a call needs set, if any."""
        return options.api_key_env if isinstance(options, ProviderOptions) else None

    def with_fallback(self, options: Any) -> Any:
        """Options for this stage when it has a fallback (e.g. fail over instead of
        retrying with back-off: on a phone call a retry is silence)."""
        return options

    async def warm_up(self, options: Any) -> None:
        """Load what every call of this stage shares (a model, say) before the first call
        needs it; the bridge runs it at start-up. Most kinds share nothing."""
        return None

    def __repr__(self) -> str:
        return f"<stage kind {self.name!r} ({self.role})>"
