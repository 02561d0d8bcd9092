"""Handoffs inside one call: the agent on the line changes, the call goes on.

The model hands the caller over by calling ``hand_to_NAME`` with a note for
the next agent, or a tool does, through ``ToolContext.hand_to``. The desk gives the context the new agent's tools and sends,
into the brain behind the reply it is giving, the new agent's system prompt
(and model), a `HandoffFrame`, its voice for the TTS, and its entry line. A
processor takes frames in order, so each change reaches the LLM or the TTS
after everything the previous agent said and before anything the new one says.

Who pays for what: usage metrics are system frames, which overtake queued
text on their way to the meter, so the meter cannot tell agents apart by where
a handoff falls among them at the end of the pipeline. An `AgentMarker` sits
right after the brain and right after the TTS, in direct mode (no queue: it
sees frames exactly in the order its service pushed them). When the handoff
passes, it pushes an `AgentOnLine` system frame, which travels behind that
service's earlier usage and ahead of its later usage, all the way to the meter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import (
    DataFrame,
    Frame,
    FunctionCallResultProperties,
    LLMUpdateSettingsFrame,
    SystemFrame,
    TTSSpeakFrame,
    TTSUpdateSettingsFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.llm_service import FunctionCallParams
from pipecat.services.settings import LLMSettings, TTSSettings

from tollbridge.agents import HANDOFF_PROPERTIES, Agent
from tollbridge.stage import Role
from tollbridge.tools import Tool


@dataclass
class HandoffFrame(DataFrame):
    """The caller is now `to_agent`'s; everything before it was `from_agent`'s."""

    from_agent: str = ""
    to_agent: str = ""
    note: str = ""
    interruptible: bool = field(default=False, init=False)
    """A barge-in drops what was to be said, never who is saying it."""


@dataclass
class AgentOnLine(SystemFrame):
    """Usage of the `role` stage that comes after this frame is `agent`'s."""

    role: Role = Role.LLM
    agent: str = ""
    handoff: HandoffFrame | None = None


class AgentMarker(FrameProcessor):
    """Right after a billed stage: marks, among its usage metrics, where each handoff fell."""

    def __init__(self, role: Role) -> None:
        super().__init__(name=f"agent-marker-{role}", enable_direct_mode=True)
        self._role = role

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, HandoffFrame) and direction is FrameDirection.DOWNSTREAM:
            await self.push_frame(AgentOnLine(role=self._role, agent=frame.to_agent, handoff=frame))
        await self.push_frame(frame, direction)


def tool_schema(tool: Tool) -> FunctionSchema:
    """A vertical's tool as the model is shown it."""
    return FunctionSchema(name=tool.name, description=tool.description,
                          properties=tool.properties, required=tool.required)


class AgentDesk:
    """One call's agents: who is on the line, what the model is offered, and the handoffs.

    Each agent's tool list is built once, in the file's order, so its prefix (tools,
    then prompt) is byte-identical on every turn and call: a provider's prompt cache
    stays warm per agent.
    """

    def __init__(
        self,
        agents: Sequence[Agent],
        tools: Sequence[Tool],
        context: LLMContext,
        brain: FrameProcessor,
        primary: FrameProcessor,
        answer_again: Callable[[], Awaitable[None]],
    ) -> None:
        self.agents = {agent.name: agent for agent in agents}
        self.current = agents[0]
        self._context = context
        self._brain = brain
        self._primary = primary
        self._answer_again = answer_again
        self.speaker: FrameProcessor | None = None
        """The TTS a new voice is for (the primary of a switcher); set once built."""
        self._requested: tuple[Agent, str] | None = None
        """A handoff a tool asked for, done with its result."""
        by_name = {tool.name: tool for tool in tools}
        self._schemas = {
            agent.name: ToolsSchema(standard_tools=[
                *(tool_schema(by_name[name]) for name in agent.tools),
                *(self._handoff_schema(self.agents[name]) for name in agent.hands_to),
            ])
            for agent in agents
        }

    def tools_schema(self, agent: Agent | None = None) -> ToolsSchema:
        return self._schemas[(agent or self.current).name]

    def offers(self, tool: str) -> bool:
        """Whether the agent on the line may use `tool` (a model may call one it was not shown)."""
        return tool in self.current.tools

    def register(self, llm: Any) -> None:
        """The handoff tools, on the brain's LLM (or its switcher)."""
        for agent in self.agents.values():

            async def hand_off(params: FunctionCallParams, to: Agent = agent) -> None:
                await asyncio.sleep(0)  # as a tool does: the reply's other calls announce first
                await self._hand_off(params, to)

            llm.register_function(agent.handoff_tool, hand_off)

    @staticmethod
    def _handoff_schema(agent: Agent) -> FunctionSchema:
        return FunctionSchema(name=agent.handoff_tool, description=agent.handoff_description,
                              properties=HANDOFF_PROPERTIES, required=list(HANDOFF_PROPERTIES))

    async def request(self, agent: str, note: str) -> None:
        """A tool's `ToolContext.hand_to`: the handoff happens with the tool's result."""
        to = self.agents.get(agent)
        if to is None or to.name not in self.current.hands_to:
            raise ValueError(f"{self.current.name} cannot hand the caller to {agent!r} "
                             f"(only to: {', '.join(self.current.hands_to) or 'no one'})")
        self._requested = (to, note)

    async def answer(self, params: FunctionCallParams, result: Any, *, failed: bool) -> None:
        """Give a tool's result to the model, and the caller to the agent the tool asked for
        (unless the tool failed after asking)."""
        requested, self._requested = self._requested, None
        if requested is None or failed:
            await params.result_callback(result)
            return
        to, note = requested
        merged = {**result} if isinstance(result, dict) else {"result": result}
        await self._take_over(params, to, note, {**merged, "handed_to": to.name})

    async def _hand_off(self, params: FunctionCallParams, to: Agent) -> None:
        if to.name not in self.current.hands_to:
            await params.result_callback(
                {"error": f"{self.current.name} cannot hand the caller to {to.name}"})
            return
        note = str((params.arguments or {}).get("note", "")).strip()
        await self._take_over(params, to, note, {"handed_to": to.name})

    async def _take_over(
        self, params: FunctionCallParams, to: Agent, note: str, result: dict[str, Any]
    ) -> None:
        """`to` takes the call: its tools now, its prompt, model, voice and entry line behind
        the reply being given; then the model answers `result` as `to`."""
        before, self.current = self.current, to
        self._context.set_tools(self.tools_schema(to))
        for frame in self._changes(before, to, note):
            await self._brain.queue_frame(frame)
        if to.carry == "whole":
            await params.result_callback(result)
            return

        async def only_the_note() -> None:
            told = note or "(no note)"
            self._context.set_messages([{"role": "user", "content":
                                         f"[{before.name} handed the caller to you: {told}]"}])
            await self._answer_again()

        await params.result_callback(result, properties=FunctionCallResultProperties(
            run_llm=False, on_context_updated=only_the_note))

    def _changes(self, before: Agent, to: Agent, note: str) -> list[Frame]:
        """What the brain is sent, in order, for the new agent to take over."""
        frames: list[Frame] = [LLMUpdateSettingsFrame(
            delta=LLMSettings(system_instruction=to.prompt), reach_inactive_services=True)]
        model = getattr(to.llm_options, "model", None)
        if model and model != getattr(before.llm_options, "model", None):
            frames.append(LLMUpdateSettingsFrame(delta=LLMSettings(model=model),
                                                 service=self._primary))
        frames.append(HandoffFrame(from_agent=before.name, to_agent=to.name, note=note))
        voice = getattr(to.tts_options, "voice", None)
        if voice and voice != getattr(before.tts_options, "voice", None):
            # the primary only: a fallback of another provider has voices of its own
            frames.append(TTSUpdateSettingsFrame(delta=TTSSettings(voice=voice),
                                                 service=self.speaker))
        if to.entry_line:
            frames.append(TTSSpeakFrame(to.entry_line))
        return frames
