"""Anthropic Messages (`anthropic.llm`), streaming with tool use and prompt caching.

`cache_control` goes on the system prompt; tools precede it in Anthropic's
prefix order, so one breakpoint caches tools and system prompt together.
"""

from __future__ import annotations

from typing import Any, Literal

from anthropic import AsyncAnthropic
from pipecat.services.anthropic.llm import AnthropicLLMService
from pydantic import Field, field_validator

from tollbridge.providers.options import LLMOptions, check_llm_model
from tollbridge.stage import Billing, CallContext, ReplayServer, Role, StageKind

REPLAY_KEY = "sk-ant-replay-key"


class AnthropicLLMOptions(LLMOptions):
    api_key_env: str = "ANTHROPIC_API_KEY"
    model: str = "claude-haiku-4-5"
    cache_ttl: Literal["5m", "1h"] = "5m"
    retries: int | None = Field(None, ge=0, le=5)
    """SDK retries on overload or network errors; default 2, or 0 when the stage has a
    fallback (the fallback answers faster than a retry's back-off)."""

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return check_llm_model("anthropic", "anthropic.llm", value)


class AnthropicLLM(StageKind):
    name = "anthropic.llm"
    role = Role.LLM
    options = AnthropicLLMOptions
    description = "Anthropic Messages, streaming, tools, cache_control on system prompt"

    def build(self, options: AnthropicLLMOptions, call: CallContext) -> AnthropicLLMService:
        settings = AnthropicLLMService.Settings(
            model=options.model,
            system_instruction=options.system_prompt(),
            max_tokens=options.max_tokens,
            enable_prompt_caching=True,
            system_prompt_cache_ttl=options.cache_ttl,
        )
        if options.temperature is not None:
            settings.temperature = options.temperature
        client = AsyncAnthropic(
            api_key=options.api_key(call.env),
            base_url=call.base_url(self.name, options.base_url),
            max_retries=2 if options.retries is None else options.retries,
        )
        return AnthropicLLMService(api_key=options.api_key(call.env), client=client, settings=settings)

    def billing(self, options: AnthropicLLMOptions) -> Billing:
        # pipecat reports Anthropic's input_tokens, which leave cache reads and writes out
        return Billing("anthropic", options.model, options.cache_ttl,
                       prompt_tokens_include_cached=False)

    def with_fallback(self, options: AnthropicLLMOptions) -> AnthropicLLMOptions:
        if options.retries is None:  # fail over at once rather than back off and retry
            return options.model_copy(update={"retries": 0})
        return options

    def replay_fake(self, options: AnthropicLLMOptions, script: Any) -> ReplayServer:
        from tollbridge.providers.fakes.anthropic_messages import AnthropicMessagesFake

        return AnthropicMessagesFake(script or [], api_key=REPLAY_KEY)
