"""OpenAI Chat Completions (`openai.llm`), streaming with tool calls.

OpenAI caches a prompt's prefix automatically; we keep that prefix (system
prompt, then tools) byte-stable and send a `prompt_cache_key` per tenant and
vertical so calls of the same agent land on the same cache.
"""

from __future__ import annotations

from typing import Any

from pipecat.services.openai.llm import OpenAILLMService
from pydantic import field_validator

from tollbridge.providers.options import LLMOptions, check_llm_model
from tollbridge.stage import Billing, CallContext, ReplayServer, Role, StageKind

REPLAY_KEY = "sk-replay-key"


class OpenAILLMOptions(LLMOptions):
    api_key_env: str = "OPENAI_API_KEY"
    model: str = "gpt-4o-mini"

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return check_llm_model("openai", "openai.llm", value)


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
        return OpenAILLMService(
            api_key=options.api_key(call.env),
            base_url=call.base_url(self.name, options.base_url),
            settings=settings,
        )

    def billing(self, options: OpenAILLMOptions) -> Billing:
        return Billing("openai", options.model)

    def replay_fake(self, options: OpenAILLMOptions, script: Any) -> ReplayServer:
        from tollbridge.providers.fakes.openai_chat import OpenAIChatFake

        return OpenAIChatFake(script or [], api_key=REPLAY_KEY)
