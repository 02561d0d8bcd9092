"""Several agents in one vertical: who answers, and whom each may hand the caller to.

A vertical file may declare ``[agents.NAME]`` tables; the first one answers
the call. Each agent has its own prompt (after the chain LLM stage's prompt,
if it has one: the house rules every agent shares), picks its tools by name
from the LLM stage's tools module, and lists the agents it may hand the
caller to (`hands_to`): the model sees one handoff tool per name. An agent
may think with another model and speak with another voice: those are the
chain's LLM and TTS stage options, validated as those stages validate them.

Everything is checked before any call, each problem naming its key: a handoff
to an agent that does not exist, an agent no one can reach, an unknown tool.
What happens during a call is `tollbridge.handoff`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tollbridge.stage import BrainOptions, Role, StageOptions, did_you_mean

if TYPE_CHECKING:
    from tollbridge.config import Stage

HANDOFF_TOOL_PREFIX = "hand_to_"
"""The model hands the caller to agent NAME by calling `hand_to_NAME`."""

HANDOFF_PROPERTIES = {"note": {
    "type": "string",
    "description": "What the next agent needs to know: who the caller is and what they "
                   "want, in a sentence or two.",
}}
"""A handoff tool's one (required) argument."""

Problems = list[tuple[str, str]]


class AgentFile(BaseModel):
    """One ``[agents.NAME]`` table of a vertical file."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    """This agent's prompt file, beside the vertical file."""
    description: str = ""
    """What the other agents' handoff tool says this agent is for."""
    tools: list[str] = Field(default_factory=list)
    """Names of the chain LLM stage's tools this agent may use."""
    hands_to: list[str] = Field(default_factory=list)
    model: str | None = None
    """This agent's model on the chain's LLM stage (its fallback keeps its own)."""
    voice: str | None = None
    """This agent's voice on the chain's TTS stage."""
    entry_line: str | None = Field(None, min_length=1)
    """Said when the caller is handed to this agent, before it answers."""
    carry: Literal["whole", "summary"] = "whole"
    """What this agent is given of the conversation so far: all of it, or the handing agent's
    note (fewer tokens on every later turn)."""


@dataclass(frozen=True)
class Agent:
    """A validated agent, with the LLM and TTS options it runs with."""

    name: str
    prompt: str
    """The whole system prompt: the house prompt, then the agent's own."""
    description: str
    tools: tuple[str, ...]
    hands_to: tuple[str, ...]
    entry_line: str | None
    carry: Literal["whole", "summary"]
    llm_options: BrainOptions
    """The chain LLM stage's options with this agent's model and whole prompt."""
    tts_options: StageOptions | None
    """The chain TTS stage's options with this agent's voice."""

    @property
    def handoff_tool(self) -> str:
        return HANDOFF_TOOL_PREFIX + self.name

    @property
    def handoff_description(self) -> str:
        """What the handing agent's model is told this agent is for."""
        what = f": {self.description}" if self.description else ""
        return (f"Hand the caller to {self.name.replace('_', ' ')}{what}. "
                "Tell the caller first, in one short sentence.")

    def options_for(self, role: Role) -> StageOptions | None:
        """The options the chain's `role` stage runs with for this agent (None: as it is)."""
        return {Role.LLM: self.llm_options, Role.TTS: self.tts_options}.get(role)


def load_agents(
    tables: Mapping[str, AgentFile], chain: list[Stage], folder: Path
) -> tuple[list[Agent], Problems]:
    """The agents of a vertical whose chain is valid, or the problems with their tables."""
    if not tables:
        return [], []
    llm = next((s for s in chain if s.kind.role is Role.LLM), None)
    if llm is None:
        return [], [("agents", "agents need a cascaded chain (stt → llm → tts): a "
                     "speech-to-speech brain is one agent")]
    tts = next((s for s in chain if s.kind.role is Role.TTS), None)
    tool_names = _tool_names(llm, folder)
    problems: Problems = []
    agents = []
    for name, table in tables.items():
        where = f"agents.{name}"
        found = _check_names(where, name, table, tables, tool_names)
        prompt, prompt_problem = _prompt(llm.options, folder / table.prompt, table.prompt)
        if prompt_problem:
            found.append((f"{where}.prompt", prompt_problem))
        llm_options = _with(llm, "model", table.model, f"{where}.model", found, folder)
        tts_options = _with(tts, "voice", table.voice, f"{where}.voice", found, folder)
        if table.voice and tts is None:
            found.append((f"{where}.voice", "the chain has no TTS stage to speak with it"))
        problems += found
        if not found and isinstance(llm_options, BrainOptions):
            agents.append(Agent(
                name=name, prompt=prompt, description=table.description,
                tools=tuple(table.tools), hands_to=tuple(table.hands_to),
                entry_line=table.entry_line, carry=table.carry,
                llm_options=llm_options.instructed(prompt), tts_options=tts_options,
            ))
    problems += _unreachable(tables)
    return agents, problems


def _tool_names(llm: Stage, folder: Path) -> list[str]:
    load = getattr(llm.options, "load_tools", None)
    return [tool.name for tool in load(folder)] if load else []


def _check_names(
    where: str, name: str, table: AgentFile, tables: Mapping[str, AgentFile], tools: list[str]
) -> Problems:
    problems: Problems = []
    if not name.replace("_", "").isalnum() or not name.isascii():
        problems.append((where, f'agent name "{name}" must be letters, digits and _ '
                         "(it is part of a tool name)"))
    for i, tool in enumerate(table.tools):
        if tool not in tools:
            known = f" (tools: {', '.join(tools)})" if tools else \
                " (the chain's LLM stage declares no tools)"
            problems.append((f"{where}.tools[{i}]",
                             f'unknown tool "{tool}"{did_you_mean(tool, tools)}{known}'))
        elif tool.startswith(HANDOFF_TOOL_PREFIX):
            problems.append((f"{where}.tools[{i}]", f'"{tool}" is a handoff tool\'s name; '
                             f"list the agent in hands_to instead"))
    agents = list(tables)
    for i, other in enumerate(table.hands_to):
        if other == name:
            problems.append((f"{where}.hands_to[{i}]", "an agent cannot hand the caller to itself"))
        elif other not in tables:
            problems.append((f"{where}.hands_to[{i}]", f'no agent "{other}"'
                             f"{did_you_mean(other, agents)} (agents: {', '.join(agents)})"))
    return problems


def _prompt(house: StageOptions, path: Path, shown: str) -> tuple[str, str]:
    """The agent's system prompt (house prompt first), or why its file cannot be read."""
    try:
        own = path.read_text(encoding="utf-8").strip()
    except OSError:
        return "", f'file "{shown}" not found (looked for {path.resolve()})'
    house_file = getattr(house, "prompt", None)
    house_text = Path(house_file).read_text(encoding="utf-8").strip() if house_file else ""
    return "\n\n".join(part for part in (house_text, own) if part), ""


def _with(
    stage: Stage | None, option: str, value: str | None, where: str, problems: Problems,
    folder: Path,
) -> StageOptions | None:
    """`stage`'s options with `option` set to `value`, validated as the stage validates it."""
    if stage is None:
        return None
    if value is None:
        return stage.options
    if option not in type(stage.options).model_fields:
        problems.append((where, f"{stage.name} has no {option} option"))
        return None
    settings: dict[str, Any] = {**stage.options.model_dump(exclude_unset=True), option: value}
    try:
        return type(stage.options).model_validate(
            settings, context={"kind": stage.name, "base_dir": folder})
    except ValidationError as error:
        problems += [(where, e["msg"].removeprefix("Value error, ")) for e in error.errors()]
        return None


def _unreachable(tables: Mapping[str, AgentFile]) -> Problems:
    """Agents the first cannot reach through any chain of handoffs."""
    names = list(tables)
    reached, todo = {names[0]}, [names[0]]
    while todo:
        for other in tables[todo.pop()].hands_to:
            if other in tables and other not in reached:
                reached.add(other)
                todo.append(other)
    return [(f"agents.{name}", f'no agent can reach it: the call starts with "{names[0]}"; '
             f'add "{name}" to the hands_to of an agent that is reached')
            for name in names if name not in reached]
