"""Cassettes: what each provider answered during one call, replayable through the fakes.

A cassette is a human-readable JSON file beside the caller's audio:

    {"version": 1,
     "stt": [{"at": 2.4, "transcript": "hi, I'd like a haircut",
              "is_final": true, "speech_final": true}, …],
     "llm": [{"match": "haircut", "text": "Sure! Which day suits you?"},
             {"match": "Friday", "tool_calls": [{"name": "find_slots",
                                                 "arguments": {"day": "friday"}}]}, …],
     "tts": {"chars_per_second": 14.0}}

`stt[].at` is on the call's audio clock: a result is sent only once that
many seconds of caller audio have reached the STT service. `llm` holds one
reply per model request, in order; `match` is text the request's last user or
tool message must contain, so a prompt or tool change that alters the
conversation fails loudly at the request that went wrong. TTS audio is
synthesized deterministically from the text, so it needs no storage.

`replay(cassette, vertical)` starts each provider stage's replay fake and
returns the URLs to point the real clients at. A kind's replay fake is
registered under the ``tollbridge.replay_fakes`` entry-point group with the
kind's name, naming a factory ``(options, script) -> ReplayServer``; a kind
that extends another (a subclass) replays through its parent's fake unless it
registers its own. tollbridge's own kinds register exactly as a plugin's do.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from tollbridge.config import Stage, Vertical
from tollbridge.errors import TollbridgeError
from tollbridge.stage import BRAIN_ROLES, PROVIDER_ROLES, Role, StageKind

VERSION = 1
REPLAY_FAKES_GROUP = "tollbridge.replay_fakes"


class CassetteError(TollbridgeError, ValueError):
    """A cassette file that cannot be replayed; the message says where."""


@runtime_checkable
class ReplayServer(Protocol):
    """A local fake of a provider, speaking its real wire protocol (an async context
    manager: serving while entered)."""

    api_key: str
    """The key the fake accepts (replay needs no account)."""
    failures: list[str]
    """Requests it refused or did not expect: empty for a faithful replay."""

    @property
    def client_url(self) -> str:
        """Where the stage's real client connects, once entered."""
        ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any: ...


ReplayFake = Callable[[Any, Any], ReplayServer]
"""A kind's replay fake factory: (the stage's options, its role's cassette script) → a fake."""


@dataclass
class Cassette:
    stt: list[dict[str, Any]] = field(default_factory=list)
    llm: list[dict[str, Any]] = field(default_factory=list)
    tts: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @classmethod
    def load(cls, path: str | Path) -> Cassette:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise CassetteError(f"{path}: not JSON: {error}") from None
        if not isinstance(data, dict):
            raise CassetteError(
                f"{path}: expected a JSON object with version, stt, llm and tts; "
                f"got {_json_kind(data)}"
            )
        if data.get("version") != VERSION:
            raise CassetteError(f"{path}: version: expected {VERSION}, got {data.get('version')!r}")
        unknown = set(data) - {"version", "stt", "llm", "tts", "description"}
        if unknown:
            raise CassetteError(f"{path}: unknown keys {sorted(unknown)}")
        for key, kind in (("stt", list), ("llm", list), ("tts", dict)):
            if not isinstance(data.get(key, kind()), kind):
                raise CassetteError(f"{path}: {key}: expected {_json_kind(kind())}, "
                                    f"got {_json_kind(data[key])}")
        for index, result in enumerate(data.get("stt", [])):
            if not isinstance(result, dict) or not isinstance(result.get("at"), int | float) \
                    or "transcript" not in result:
                raise CassetteError(f"{path}: stt[{index}]: needs a numeric 'at' and a 'transcript'")
        return cls(
            stt=list(data.get("stt", [])),
            llm=list(data.get("llm", [])),
            tts=dict(data.get("tts", {})),
            description=str(data.get("description", "")),
        )

    def script(self, role: Role) -> Any:
        """What the providers of `role` answered: a replay fake's script."""
        if role is Role.STT:
            return self.stt
        if role is Role.TTS:
            return self.tts
        return self.llm  # the brain: an LLM or a speech-to-speech service

    def save(self, path: str | Path) -> None:
        body = {"version": VERSION, "description": self.description, "stt": self.stt,
                "llm": self.llm, "tts": self.tts}
        Path(path).write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n")


def _json_kind(value: Any) -> str:
    """What a JSON value is, in JSON's own words."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    kinds: dict[type, str] = {dict: "an object", list: "an array", str: "a string"}
    return kinds.get(type(value), "a number")


@dataclass
class Replay:
    """The running fakes of one replayed call."""

    base_urls: dict[str, str]
    fakes: dict[str, ReplayServer]
    env: dict[str, str]
    """API key variables → the keys the fakes accept."""

    @property
    def failures(self) -> list[str]:
        """Requests the fakes refused or did not expect (empty for a faithful replay)."""
        found: list[str] = []
        for kind, fake in self.fakes.items():
            found += [f"{kind}: {failure}" for failure in fake.failures]
        return found


def _provider_stages(vertical: Vertical) -> list[Stage]:
    """Every stage that talks to a provider, fallbacks included."""
    found = []
    for stage in vertical.chain:
        current: Stage | None = stage
        while current is not None and current.kind.role in PROVIDER_ROLES \
                and not current.kind.local:
            found.append(current)
            current = current.fallback
    return found


@functools.cache
def _registered_fakes() -> dict[str, Any]:
    return {entry.name: entry for entry in entry_points(group=REPLAY_FAKES_GROUP)}


def replay_fake(kind: StageKind) -> ReplayFake:
    """The replay fake factory registered for `kind`, or for the nearest kind it extends."""
    registered = _registered_fakes()
    for cls in type(kind).__mro__:
        name = getattr(cls, "name", None)
        if isinstance(cls, type) and issubclass(cls, StageKind) and name in registered:
            factory: ReplayFake = registered[name].load()
            return factory
    raise CassetteError(
        f"stage kind {kind.name!r} has no replay fake: register a factory for it under the "
        f"{REPLAY_FAKES_GROUP!r} entry-point group"
    )


@contextlib.asynccontextmanager
async def replay(
    cassette: Cassette, vertical: Vertical, *, brain: Any = None
) -> AsyncIterator[Replay]:
    """Start each provider stage's own replay fake, serving its role's part of `cassette`
    (the brain's fake serves `brain` instead, when given)."""
    fakes: dict[str, ReplayServer] = {}
    urls: dict[str, str] = {}
    env: dict[str, str] = {}
    async with contextlib.AsyncExitStack() as stack:
        for stage in _provider_stages(vertical):
            if stage.name in fakes:
                continue
            script = cassette.script(stage.kind.role)
            if brain is not None and stage.kind.role in BRAIN_ROLES:
                script = brain
            fake = replay_fake(stage.kind)(stage.options, script)
            await stack.enter_async_context(fake)
            fakes[stage.name] = fake
            if name := stage.kind.api_key_env(stage.options):
                env[name] = fake.api_key
            urls[stage.name] = fake.client_url
        yield Replay(base_urls=urls, fakes=fakes, env=env)
