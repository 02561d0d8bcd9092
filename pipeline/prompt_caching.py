"""Whether a brain stage's prompt caching can take effect, judged before any call.

Providers cache a request's stable prefix — tools, then the system prompt — only
from a minimum length, and only while it is byte-identical from call to call.
A prefix below the model's minimum is silently never cached, so every turn pays
full input price; `validate` warns instead.

Lengths are estimated without a tokenizer, at 4 characters per token (OpenAI's
rule of thumb for English; JSON tool schemas run nearer 3, so the estimate errs
towards warning). The minimums are the providers' published ones (see
`MINIMUM_TOKENS`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from typing import TYPE_CHECKING

from tollbridge.agents import HANDOFF_PROPERTIES
from tollbridge.stage import BRAIN_ROLES, BrainOptions

if TYPE_CHECKING:
    from tollbridge.agents import Agent
    from tollbridge.config import Stage, Vertical

CHARS_PER_TOKEN = 4

# Provider → (model prefix, smallest cacheable prefix in tokens), longest prefix wins.
MINIMUM_TOKENS: dict[str, tuple[tuple[str, int], ...]] = {
    # automatic caching from 1,024 tokens, for gpt-4o and newer (realtime included)
    "openai": (("", 1024),),
    # per model, from Anthropic's prompt-caching docs (3rd-party compilation, 2026-07)
    "anthropic": (
        ("claude-haiku-4-5", 4096),
        ("claude-opus-4-5", 4096),
        ("claude-opus-4-6", 4096),
        ("claude-opus-4-7", 2048),
        ("claude-3-5-haiku", 2048),
        ("claude-haiku-3-5", 2048),
        ("claude-opus-5", 512),
        ("claude-opus-4", 1024),
        ("claude-sonnet-4", 1024),
        # documented 1,024, but reported to cache only from ~2,048
        # (anthropics/anthropic-sdk-python#1194): the stricter figure is used
        ("claude-sonnet-4-6", 2048),
    ),
}

# What a prompt template's per-call slot looks like: {caller}, {{ date }}, ${NOW}.
_PLACEHOLDER = re.compile(r"\$\{\w+\}|\{\{\s*[\w.]+\s*\}\}|\{\w+\}")


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def caching_warnings(vertical: Vertical) -> list[str]:
    """One warning per brain stage (or fallback) whose prompt caching cannot take effect."""
    warnings = []
    if vertical.agents:  # each agent's own prefix: its tools and handoffs, then its prompt
        llm = next(s for s in vertical.chain if s.kind.role in BRAIN_ROLES)
        for agent in vertical.agents:
            warning = _stage_warning(replace(llm, options=agent.llm_options), vertical,
                                     _agent_tool_schemas(agent, vertical))
            if warning:
                warnings.append(f"agents.{agent.name} ({llm.name}): {warning}")
        return warnings
    for stage in vertical.chain:
        for where, current in stage.with_fallbacks():
            if current.kind.role in BRAIN_ROLES and isinstance(current.options, BrainOptions):
                warning = _stage_warning(current, vertical)
                if warning:
                    warnings.append(f"{where} ({current.name}): {warning}")
    return warnings


def _schema(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {"name": name, "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required}}


def _agent_tool_schemas(agent: Agent, vertical: Vertical) -> list[dict]:
    llm = next(s for s in vertical.chain if s.kind.role in BRAIN_ROLES)
    assert isinstance(llm.options, BrainOptions)
    tools = {t.name: t for t in llm.options.load_tools(vertical.folder)}
    agents = {a.name: a for a in vertical.agents}
    return [
        *(_schema(n, tools[n].description, tools[n].properties, tools[n].required)
          for n in agent.tools),
        *(_schema(agents[n].handoff_tool, agents[n].handoff_description, HANDOFF_PROPERTIES,
                  list(HANDOFF_PROPERTIES)) for n in agent.hands_to),
    ]


def _stage_warning(stage: Stage, vertical: Vertical, schemas: list[dict] | None = None) -> str:
    billing = stage.kind.billing(stage.options)
    if billing is None:
        return ""
    minimum = minimum_tokens(billing.provider, billing.model)
    if minimum is None:
        return ""
    assert isinstance(stage.options, BrainOptions)
    if schemas is None:
        schemas = [_schema(t.name, t.description, t.properties, t.required)
                   for t in stage.options.load_tools(vertical.folder)]
    tools = json.dumps(schemas) if schemas else ""
    prompt = stage.options.system_prompt()
    slot = _PLACEHOLDER.search(prompt)
    stable = estimate_tokens(tools + (prompt[: slot.start()] if slot else prompt))
    if slot:  # a template's slot: whatever fills it differs between calls
        if billing.provider == "openai" and stable >= minimum:
            return ""  # OpenAI caches the longest stable prefix, in 128-token steps
        line = prompt.count("\n", 0, slot.start()) + 1
        reason = f"the prompt's {slot.group(0)} (line {line}) looks filled in per call"
        if stable < minimum:
            reason += (f", and the stable prefix before it is ~{stable} tokens, below "
                       f"{billing.model}'s minimum cacheable prefix of {minimum}")
        else:
            reason += ", and the cached system prompt must be identical on every call"
        return (f"prompt caching cannot take effect: {reason}; keep per-call facts out of "
                f"the prompt (a tool can return them)")
    if stable < minimum:
        return (
            f"prompt caching cannot take effect: tools and system prompt are ~{stable} tokens "
            f"({CHARS_PER_TOKEN} characters a token), below {billing.model}'s minimum of "
            f"{minimum}: never cached across calls, and within a call only once the "
            f"conversation passes {minimum} tokens"
        )
    return ""


def minimum_tokens(provider: str, model: str) -> int | None:
    """The model's smallest cacheable prefix in tokens; None where we know no rule."""
    matches = [
        (len(prefix), minimum)
        for prefix, minimum in MINIMUM_TOKENS.get(provider, ())
        if model == prefix or model.startswith(prefix)
    ]
    return max(matches)[1] if matches else None
