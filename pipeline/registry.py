"""Stage kinds: the names a vertical's `chain` may `use`.

A kind is a factory plus what the builder needs to know before anything runs:
its role in the chain, the options it takes (a pydantic model, so the config
file is validated and the JSON Schema enumerates them) and the audio format it
consumes or produces (so the builder inserts a codec only where formats
differ). Built-in kinds register on import of `providers`/`transports`;
third-party packages add kinds through the `tollbridge.stages` entry-point
group, each entry point naming a `StageKind` or a list of them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from tollbridge.builder import CallContext

ENTRY_POINT_GROUP = "tollbridge.stages"


class Role(enum.StrEnum):
    """Where a stage sits in a cascaded call; the builder checks the order."""

    TRANSPORT = "transport"
    STT = "stt"
    LLM = "llm"
    TTS = "tts"
    SPEECH_TO_SPEECH = "speech_to_speech"
    METER = "meter"


@dataclass(frozen=True)
class AudioFormat:
    """Audio on the wire between two stages."""

    encoding: str  # "mulaw" | "pcm16"
    sample_rate: int

    def __str__(self) -> str:
        return f"{self.encoding}/{self.sample_rate}"


MULAW_8K = AudioFormat("mulaw", 8000)


class StageOptions(BaseModel):
    """Base of every kind's options: unknown keys are errors, not silently ignored,
    and values are not coerced ("yes" is not a boolean, "8000" is not a number)."""

    model_config = ConfigDict(extra="forbid", strict=True)


@dataclass(frozen=True)
class StageKind:
    """A registered kind of stage.

    `build(options, call)` returns the pipecat processor(s) for one call;
    `audio_in` / `audio_out` are the formats the stage consumes / produces
    given its options (None when it handles no audio on that side).
    `api_key_env` names the environment variable holding its key, if any.
    """

    name: str
    role: Role
    options: type[StageOptions]
    build: Callable[[Any, CallContext], Any]
    description: str = ""
    audio_in: Callable[[Any], AudioFormat | None] = lambda _options: None
    audio_out: Callable[[Any], AudioFormat | None] = lambda _options: None
    api_key_env: Callable[[Any], str | None] = lambda options: getattr(
        options, "api_key_env", None
    )


class Registry:
    """Kind name → StageKind."""

    def __init__(self) -> None:
        self._kinds: dict[str, StageKind] = {}

    def register(self, kind: StageKind) -> StageKind:
        if kind.name in self._kinds and self._kinds[kind.name] is not kind:
            raise ValueError(f"stage kind {kind.name!r} is already registered")
        self._kinds[kind.name] = kind
        return kind

    def get(self, name: str) -> StageKind | None:
        return self._kinds.get(name)

    def names(self) -> list[str]:
        return sorted(self._kinds)

    def kinds(self) -> Iterable[StageKind]:
        return (self._kinds[name] for name in self.names())


def _load_builtins(registry: Registry) -> None:
    from tollbridge.meter import KIND as meter
    from tollbridge.providers import BUILTIN_KINDS as provider_kinds
    from tollbridge.transports import BUILTIN_KINDS as transport_kinds

    for kind in (*transport_kinds, *provider_kinds, meter):
        registry.register(kind)


def _load_entry_points(registry: Registry) -> None:
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        loaded = entry_point.load()
        for kind in loaded if isinstance(loaded, list | tuple) else [loaded]:
            if not isinstance(kind, StageKind):
                raise TypeError(
                    f"entry point {entry_point.name!r} in {ENTRY_POINT_GROUP!r} "
                    f"must name a StageKind or a list of them, not {type(kind).__name__}"
                )
            registry.register(kind)


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry: built-in kinds plus installed plugins."""
    global _default
    if _default is None:
        registry = Registry()
        _load_builtins(registry)
        _load_entry_points(registry)
        _default = registry
    return _default
