"""OpenAI Chat Completions (`openai.llm`), streaming with tool calls.

OpenAI caches a prompt's prefix automatically; we keep that prefix (system
prompt, then tools) byte-stable and send a `prompt_cache_key` per tenant and
vertical so calls of the same agent land on the same cache. A stage with a
fallback does not retry: the SDK's back-off on a 5xx is seconds of silence on
the line, and the fallback answers sooner.
"""

from __future__ import annotations

from typing import Any

from pipecat.services.openai.llm import OpenAILLMService
from pydantic import Field, field_validator

from tollbridge.providers.options import LLMOptions, check_llm_model
from tollbridge.stage import Billing, CallContext, Role, StageKind


class OpenAILLMOptions(LLMOptions):
    api_key_env: str = "OPENAI_API_KEY"
    model: str = "gpt-4o-mini"
    retries: int | None = Field(None, ge=0, le=5)
    """SDK retries on a 5xx, a rate limit or a network error; the SDK's default (2), or 0
    when the stage has a fallback."""

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return check_llm_model("openai", "openai.llm", value)


class RetryingOpenAILLM(OpenAILLMService):
    """pipecat's Chat Completions service with the SDK's retries as the stage sets them."""

    def __init__(self, *, max_retries: int | None, **kwargs: Any):
        self._max_retries = max_retries  # read by create_client, which the base's __init__ calls
        super().__init__(**kwargs)

    def create_client(self, *args: Any, **kwargs: Any) -> Any:
        client = super().create_client(*args, **kwargs)
        return client if self._max_retries is None else client.with_options(
            max_retries=self._max_retries)


class OpenAILLM(StageKind):
    name = "openai.llm"
    role = Role.LLM
    options = OpenAILLMOptions
    description = "OpenAI Chat Completions, streaming, tools, automatic prompt caching"

    def build(self, options: OpenAILLMOptions, call: CallContext) -> OpenAILLMService:
        settings = OpenAILLMService.Settings(
            model=options.model,
            system_instruction=options.system_prompt(),
            max_completion_tokens=options.max_tokens,
            extra={"prompt_cache_key": f"{call.vertical.tenant}:{call.vertical.name}"},
        )
        if options.temperature is not None:
            settings.temperature = options.temperature
        return RetryingOpenAILLM(
            api_key=options.api_key(call.env),
            base_url=call.base_url(self.name, options.base_url),
            settings=settings,
            max_retries=options.retries,
        )

    def billing(self, options: OpenAILLMOptions) -> Billing:
        return Billing("openai", options.model)

    def with_fallback(self, options: OpenAILLMOptions) -> OpenAILLMOptions:
        if options.retries is None:  # fail over at once rather than back off and retry
            return options.model_copy(update={"retries": 0})
        return options
