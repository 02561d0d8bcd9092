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

`replay(cassette, vertical)` starts the fakes a vertical's chain needs and
returns the base URLs to point the real clients at.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tollbridge.config import Stage, Vertical

VERSION = 1
FAKE_KEYS = {
    "DEEPGRAM_API_KEY": "dg-replay-key",
    "OPENAI_API_KEY": "sk-replay-key",
    "ANTHROPIC_API_KEY": "sk-ant-replay-key",
    "ELEVENLABS_API_KEY": "xi-replay-key",
}
"""Keys the fakes accept: replay needs no account."""


class CassetteError(ValueError):
    """A cassette file that cannot be replayed; the message says where."""


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
        if data.get("version") != VERSION:
            raise CassetteError(f"{path}: version: expected {VERSION}, got {data.get('version')!r}")
        unknown = set(data) - {"version", "stt", "llm", "tts", "description"}
        if unknown:
            raise CassetteError(f"{path}: unknown keys {sorted(unknown)}")
        for index, result in enumerate(data.get("stt", [])):
            if not isinstance(result.get("at"), int | float) or "transcript" not in result:
                raise CassetteError(f"{path}: stt[{index}]: needs a numeric 'at' and a 'transcript'")
        return cls(
            stt=list(data.get("stt", [])),
            llm=list(data.get("llm", [])),
            tts=dict(data.get("tts", {})),
            description=str(data.get("description", "")),
        )

    def save(self, path: str | Path) -> None:
        body = {"version": VERSION, "description": self.description, "stt": self.stt,
                "llm": self.llm, "tts": self.tts}
        Path(path).write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n")


@dataclass
class Replay:
    """The running fakes of one replayed call."""

    base_urls: dict[str, str]
    fakes: dict[str, Any]
    env: dict[str, str]
    """API key variables → the keys the fakes accept."""

    @property
    def failures(self) -> list[str]:
        """Requests the fakes refused or did not expect (empty for a faithful replay)."""
        found: list[str] = []
        for kind, fake in self.fakes.items():
            found += [f"{kind}: {failure}" for failure in getattr(fake, "failures", [])]
        return found


def _fake_for(kind: str, cassette: Cassette) -> tuple[Any, str, str]:
    """The fake serving `kind`, and the scheme and path its pipecat service expects."""
    speaking_rate = float(cassette.tts.get("chars_per_second", 14.0))
    if kind == "deepgram.stt":
        from tollbridge.providers.fakes.deepgram_listen import FakeDeepgramListen

        return FakeDeepgramListen(FAKE_KEYS["DEEPGRAM_API_KEY"], cassette.stt), "ws", ""
    if kind == "deepgram.tts":
        from tollbridge.providers.fakes.deepgram_speak import FakeDeepgramSpeak

        return FakeDeepgramSpeak(FAKE_KEYS["DEEPGRAM_API_KEY"], chars_per_second=speaking_rate), "ws", ""
    if kind == "elevenlabs.tts":
        from tollbridge.providers.fakes.elevenlabs import FakeElevenLabs

        return FakeElevenLabs(FAKE_KEYS["ELEVENLABS_API_KEY"], chars_per_second=speaking_rate), "ws", ""
    if kind == "openai.llm":
        from tollbridge.providers.fakes.openai_chat import OpenAIChatFake

        return OpenAIChatFake(cassette.llm, api_key=FAKE_KEYS["OPENAI_API_KEY"]), "http", "/v1"
    if kind == "openai.realtime":
        from tollbridge.providers.fakes.openai_realtime import OpenAIRealtimeFake

        return OpenAIRealtimeFake(cassette.llm, api_key=FAKE_KEYS["OPENAI_API_KEY"]), "ws", "/v1/realtime"
    if kind == "anthropic.llm":
        from tollbridge.providers.fakes.anthropic_messages import AnthropicMessagesFake

        return AnthropicMessagesFake(cassette.llm, api_key=FAKE_KEYS["ANTHROPIC_API_KEY"]), "http", ""
    raise CassetteError(f"no local fake can replay stage kind {kind!r}")


def _provider_stages(vertical: Vertical) -> list[Stage]:
    """Every stage that talks to a provider, fallbacks included."""
    found = []
    for stage in vertical.chain:
        current = stage
        while current is not None and current.kind.role.value not in ("transport", "meter"):
            found.append(current)
            current = current.fallback
    return found


@contextlib.asynccontextmanager
async def replay(cassette: Cassette, vertical: Vertical) -> AsyncIterator[Replay]:
    """Start a fake for each provider stage of `vertical`, serving `cassette`."""
    fakes: dict[str, Any] = {}
    urls: dict[str, str] = {}
    env: dict[str, str] = {}
    async with contextlib.AsyncExitStack() as stack:
        for stage in _provider_stages(vertical):
            if stage.name in fakes:
                continue
            fake, scheme, path = _fake_for(stage.name, cassette)
            await stack.enter_async_context(fake)
            fakes[stage.name] = fake
            env[stage.options.api_key_env] = fake.api_key
            urls[stage.name] = f"{scheme}://127.0.0.1:{fake.port}{path}"
        yield Replay(base_urls=urls, fakes=fakes, env=env)
