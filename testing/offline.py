"""Calls with no accounts at all: the caller recognised locally, a brain that needs no model.

`offline(vertical)` swaps the vertical's speech-to-text for the local recogniser
(``whisper.stt``, from the ``tollbridge[offline]`` extra); its LLM and TTS stay
its own kinds, served by their local fakes, so the cost shown is what that
conversation would be billed by the vertical's real LLM and TTS.

The brain's replies (`brain_script`) come from a cassette in order, without
checking what the caller said (recognised words differ from a cassette's), or,
with no cassette, are improvised deterministically from what was recognised:

* "bye" or "goodbye" calls the vertical's ``end_call`` tool;
* words naming a tool that needs no arguments (e.g. "opening hours" →
  ``opening_hours``) call it, and the reply to its result says it was looked
  up (or, after ``end_call``, says goodbye);
* anything else is answered "You said: …", so the caller hears back what
  the recogniser heard.

On a vertical with several agents it improvises with the tools of the agent on
the line, and a new agent greets the caller ("Hello, how can I help?").
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from tollbridge.config import Stage, Vertical
from tollbridge.errors import TollbridgeError
from tollbridge.registry import default_registry
from tollbridge.stage import BrainOptions, Role
from tollbridge.testing.fakes.script import Script, ScriptedTurn
from tollbridge.tools import Tool

RECOGNISER = "whisper.stt"
GOODBYE = re.compile(r"\b(good\s?bye|bye)\b", re.IGNORECASE)
_GENERIC_WORDS = frozenset({"call", "end", "get", "the", "and", "for", "with"})


class OfflineError(TollbridgeError):
    """A vertical that cannot run offline; the message says why."""


def offline(vertical: Vertical) -> Vertical:
    """`vertical` with its speech-to-text stage replaced by the local recogniser."""
    stt = vertical.stage(Role.STT)
    if stt is None:
        brain = vertical.stage(Role.SPEECH_TO_SPEECH)
        raise OfflineError(
            f"{vertical.path}: an offline call recognises the caller with a local STT stage, "
            f"but this chain has none ({brain.name if brain else 'no brain'} hears the caller "
            "itself); use a vertical with an STT → LLM → TTS chain"
        )
    kind = default_registry().get(RECOGNISER)
    if kind is None:
        raise OfflineError(f"the local recogniser {RECOGNISER!r} is not registered")
    try:
        options = kind.options()
    except ValidationError as error:  # e.g. the offline extra is not installed
        reasons = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in error.errors())
        raise OfflineError(reasons) from None
    local = Stage(index=stt.index, kind=kind, options=options)
    chain = [local if stage is stt else stage for stage in vertical.chain]
    return dataclasses.replace(vertical, chain=chain)


def brain_script(vertical: Vertical, replies: list[Any] | None) -> Script:
    """What the offline brain answers: `replies` in order, then improvised ones."""
    brain = vertical.stage(Role.LLM)
    tools = brain.options.load_tools(vertical.folder) \
        if brain and isinstance(brain.options, BrainOptions) else []
    return OfflineScript(replies or [], tools)


class OfflineScript(Script):
    """Replies for requests whose wording cannot be known in advance: never a mismatch.

    Improvised replies depend on the request alone, so calls served at once (`serve
    --offline`) cannot mix up each other's turns."""

    def __init__(self, replies: list[ScriptedTurn], tools: list[Tool]) -> None:
        super().__init__(replies)
        self._tools = tools
        self._took_reply = False

    @property
    def remaining(self) -> int:
        return max(self._replies_left, 1)  # it can always improvise one more

    @property
    def _replies_left(self) -> int:
        return len(self._turns) - self._next

    def upcoming(self) -> ScriptedTurn | None:
        return self._turns[self._next] if self._replies_left else None

    def check(self, last_message: str, offered: Iterable[str] | None = None) -> ScriptedTurn:
        """The next reply, whatever the request says (see the module's rules); improvised
        with the tools the request `offered` (the agent on the line's), if it says."""
        if self._replies_left:
            return self._turns[self._next]
        names = set(offered) if offered is not None else None
        return self._improvise(last_message, [
            tool for tool in self._tools if names is None or tool.name in names])

    def advance(self) -> None:
        self._took_reply = bool(self._replies_left)
        if self._took_reply:
            super().advance()

    def give_back(self) -> None:
        if self._took_reply:  # an improvised reply is simply improvised again
            super().give_back()

    def _improvise(self, heard: str, tools: list[Tool]) -> ScriptedTurn:
        result = _tool_result(heard)
        if isinstance(result, dict) and "handed_to" in result:  # a new agent takes the call
            return {"text": "Hello, how can I help?"}
        if result is not None:  # the request carries a tool's result
            ending = isinstance(result, dict) and result.get("ending_call")
            return {"text": "Thanks for calling. Goodbye!" if ending
                    else "I looked that up for you."}
        names = {tool.name for tool in tools}
        if GOODBYE.search(heard) and "end_call" in names:
            return {"tool_calls": [{"name": "end_call", "arguments": {}}]}
        tool = _named_tool(heard, tools)
        if tool is not None:
            return {"tool_calls": [{"name": tool.name, "arguments": {}}]}
        said = " ".join(heard.split()) or "nothing"
        return {"text": f"You said: {said}"}


def _tool_result(message: str) -> Any:
    """A tool's result, when the request's last message is one (tools answer in JSON)."""
    if not message.lstrip().startswith(("{", "[")):
        return None
    try:
        return json.loads(message)
    except ValueError:
        return None


def _words(text: str) -> set[str]:
    return {word.rstrip("s") for word in re.findall(r"[a-z]+", text.lower())}


def _named_tool(heard: str, tools: list[Tool]) -> Tool | None:
    """The tool needing no arguments whose name's words the caller said most of."""
    said = _words(heard)
    best, best_score = None, 0
    for tool in tools:
        if tool.required or tool.name == "end_call":
            continue
        named = _words(tool.name.replace("_", " ")) - _GENERIC_WORDS
        score = len(named & said)
        if score > best_score:
            best, best_score = tool, score
    return best
