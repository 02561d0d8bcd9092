"""Options every provider stage shares: where its key lives and where its API is."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator
from tollbridge.config import ConfigFile, did_you_mean
from tollbridge.registry import StageOptions
from tollbridge.tools import Tool, load_tools

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class ProviderOptions(StageOptions):
    """`api_key_env` names the environment variable with the key (the key itself
    is never written in a config file); `base_url` points the client elsewhere
    (a proxy, a regional endpoint, or a local fake)."""

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


class LLMOptions(ProviderOptions):
    """What a cascaded LLM stage needs beyond its client: the agent's prompt and tools.

    The prompt file is read once per process, so the cacheable prefix (system
    prompt + tools) is byte-identical across turns and across calls.
    """

    model: str
    prompt: ConfigFile | None = None
    tools: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int = Field(300, gt=0)

    @field_validator("tools")
    @classmethod
    def _tools_import(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            load_tools(value, Path((info.context or {}).get("base_dir", ".")))
        return value

    def system_prompt(self) -> str:
        return _read_prompt(self.prompt) if self.prompt else "You are a helpful phone agent."

    def load_tools(self, folder: Path) -> list[Tool]:
        return load_tools(self.tools, folder) if self.tools else []


def check_llm_model(provider: str, kind: str, model: str) -> str:
    """Reject a model genai-prices does not know: we could not price its calls."""
    from genai_prices import data_snapshot

    snapshot = data_snapshot.get_snapshot()
    try:
        snapshot.find_provider_model(model, None, provider, None)
    except LookupError:
        known = [m.id for p in snapshot.providers if p.id == provider for m in p.models]
        raise ValueError(f'unknown model "{model}" for {kind}{did_you_mean(model, known)}') from None
    return model


@functools.cache
def _read_prompt(path: str) -> str:
    return Path(path).read_text(encoding="utf-8").strip()
