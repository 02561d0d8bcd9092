"""Anthropic Messages (`anthropic.llm`), streaming with tool use and prompt caching.

`cache_control` goes on the system prompt; tools precede it in Anthropic's
prefix order, so one breakpoint caches tools and system prompt together.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from anthropic import AsyncAnthropic
from pipecat.services.anthropic.llm import AnthropicLLMService
from pipecat.services.llm_service import FunctionCallFromLLM
from pydantic import Field, field_validator

from tollbridge.providers.options import LLMOptions, check_llm_model
from tollbridge.stage import Billing, CallContext, Role, StageKind


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


_USAGE_FIELDS = (
    "input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
)  # fmt: skip


@dataclass
class _ToolUse:
    id: str
    name: str
    partial_json: str = ""

    def call(self, context: Any) -> FunctionCallFromLLM:
        arguments = json.loads(self.partial_json) if self.partial_json else {}
        return FunctionCallFromLLM(
            context=context, tool_call_id=self.id, function_name=self.name, arguments=arguments
        )


class _WatchedReply:
    """One reply's event stream, passed on unchanged while its tool uses and usage are noted."""

    def __init__(self, events: AsyncIterable[Any]):
        self._events = events
        self.tool_uses: dict[int, _ToolUse] = {}
        """Content block index → the tool use it streams, in the reply's order."""
        self.usage: dict[str, int] = {}
        """Anthropic's counts as last reported: each report replaces the one before."""
        self.thinking_tokens: int | None = None

    async def __aiter__(self) -> AsyncIterator[Any]:
        async for event in self._events:
            self._note(event)
            yield event

    def _note(self, event: Any) -> None:
        if event.type == "message_start":
            self._note_usage(event.message.usage)
        elif event.type == "message_delta":
            self._note_usage(event.usage)
        elif event.type == "content_block_start" and event.content_block.type == "tool_use":
            self.tool_uses[event.index] = _ToolUse(event.content_block.id, event.content_block.name)
        elif event.type == "content_block_delta" and event.delta.type == "input_json_delta":
            if use := self.tool_uses.get(event.index):
                use.partial_json += event.delta.partial_json

    def _note_usage(self, usage: Any) -> None:
        for name in _USAGE_FIELDS:
            if (value := getattr(usage, name, None)) is not None:
                self.usage[name] = value
        details = getattr(usage, "output_tokens_details", None)
        if details is not None:
            self.thinking_tokens = getattr(details, "thinking_tokens", None)


class AnthropicReplyLLM(AnthropicLLMService):
    """Claude, with every tool call of a reply run and the usage billed as Anthropic counted it.

    pipecat 1.14 keeps one `tool_use` block per streamed reply (the last), so a reply
    that records an answer and finishes the lead in one go would lose the first call;
    and for a reply cut short it bills a word-count estimate of the output instead of
    what the API reported. This service watches the events pipecat reads and runs
    every tool use of the reply, in its order, and reports the usage Anthropic last
    returned: a partial reply keeps what it was reported, a request that returned no
    usage is not billed.
    """

    _reply: _WatchedReply | None = None

    # overrides a pipecat private method, declared in tollbridge.pipecat_internals
    async def _create_message_stream(self, api_call: Any, params: Any) -> _WatchedReply:
        self._reply = _WatchedReply(await super()._create_message_stream(api_call, params))
        return self._reply

    async def run_function_calls(self, function_calls: Sequence[FunctionCallFromLLM]) -> None:
        reply = self._reply
        uses = list(reply.tool_uses.values()) if reply else []
        if function_calls and uses and function_calls[-1].tool_call_id == uses[-1].id:
            function_calls = [use.call(function_calls[-1].context) for use in uses]
        await super().run_function_calls(function_calls)

    # overrides a pipecat private method, declared in tollbridge.pipecat_internals
    async def _report_usage_metrics(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cache_creation_input_tokens: int,
        cache_read_input_tokens: int,
        reasoning_tokens: int | None = None,
    ) -> None:
        reply, self._reply = self._reply, None
        usage = reply.usage if reply else {}
        await super()._report_usage_metrics(
            prompt_tokens=usage.get("input_tokens", 0),
            completion_tokens=usage.get("output_tokens", 0),
            cache_creation_input_tokens=usage.get("cache_creation_input_tokens", 0),
            cache_read_input_tokens=usage.get("cache_read_input_tokens", 0),
            reasoning_tokens=reply.thinking_tokens if reply else None,
        )


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
        return AnthropicReplyLLM(api_key=options.api_key(call.env), client=client, settings=settings)

    def billing(self, options: AnthropicLLMOptions) -> Billing:
        # pipecat reports Anthropic's input_tokens, which leave cache reads and writes out
        return Billing("anthropic", options.model, options.cache_ttl,
                       prompt_tokens_include_cached=False)

    def with_fallback(self, options: AnthropicLLMOptions) -> AnthropicLLMOptions:
        if options.retries is None:  # fail over at once rather than back off and retry
            return options.model_copy(update={"retries": 0})
        return options
