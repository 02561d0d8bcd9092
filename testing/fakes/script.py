"""Scripted model replies for the LLM fakes.

A script is the list of replies a test expects the model to give, in order, one per
model request. Each reply names text the request's last user or tool message must
contain, so a test that drives the conversation wrong fails at the request that went
wrong, with a diff, instead of later on a confusing assertion.
"""

import difflib
import itertools
import re
from collections.abc import Iterable, Sequence
from typing import Any, NotRequired, TypedDict


class ToolCallSpec(TypedDict):
    """A function call the scripted model makes."""

    name: str
    arguments: dict[str, Any]


class ScriptedTurn(TypedDict):
    """One scripted reply.

    Keys:
        match: Text the last user or tool message must contain ("" or absent: anything).
        text: What the model says.
        tool_calls: Functions the model calls, in order.
        heard: Realtime only: what the fake pretends to transcribe from the caller's
            speech that leads to this reply. Defaults to ``match``.

    A turn has ``text``, ``tool_calls`` or both.
    """

    match: NotRequired[str]
    text: NotRequired[str]
    tool_calls: NotRequired[list[ToolCallSpec]]
    heard: NotRequired[str]


_TURN_KEYS = frozenset(ScriptedTurn.__annotations__)


class ScriptMismatch(Exception):
    """A request the script did not expect; the message says what differs."""


def _validated(index: int, turn: ScriptedTurn) -> ScriptedTurn:
    """Catch a mistyped script when the fake is built, not when a request arrives."""
    unknown = set(turn) - _TURN_KEYS
    if unknown:
        raise ValueError(f"script turn {index}: unknown keys {sorted(unknown)}")
    if not turn.get("text") and not turn.get("tool_calls"):
        raise ValueError(f"script turn {index}: needs 'text', 'tool_calls' or both")
    for call in turn.get("tool_calls", []):
        if set(call) != {"name", "arguments"} or not isinstance(call["arguments"], dict):
            raise ValueError(
                f"script turn {index}: a tool call is {{'name': str, 'arguments': dict}}, "
                f"got {call!r}"
            )
    return turn


class Script:
    """Replies consumed in order; a fake checks each request against the next one."""

    def __init__(self, turns: Sequence[ScriptedTurn]) -> None:
        self._turns = [_validated(i, turn) for i, turn in enumerate(turns, start=1)]
        self._next = 0

    @property
    def remaining(self) -> int:
        """Scripted turns not used yet."""
        return len(self._turns) - self._next

    def upcoming(self) -> ScriptedTurn | None:
        """The reply the next request will get, if the script has one left."""
        return self._turns[self._next] if self.remaining else None

    def check(self, last_message: str, offered: Iterable[str] | None = None) -> ScriptedTurn:
        """The reply for a request whose last user/tool message is ``last_message`` and that
        offers the model the tools named `offered` (None: not checked).

        Does not consume the reply (`advance` does). Raises `ScriptMismatch` if the
        script expected other text, calls a tool the request did not offer (a model
        can only call what it is shown), or has run out.
        """
        turn = self.upcoming()
        if turn is None:
            raise ScriptMismatch(
                f"script exhausted: all {len(self._turns)} scripted turns are used, "
                f"but another request arrived; its last user/tool message was "
                f"{last_message!r}"
            )
        expected = turn.get("match", "")
        if expected not in last_message:
            diff = "\n".join(
                itertools.chain(
                    ["--- expected (substring)", "+++ actual last user/tool message"],
                    (line.rstrip("\n") for line in difflib.ndiff([expected], [last_message])),
                )
            )
            raise ScriptMismatch(
                f"script turn {self._next + 1} of {len(self._turns)}: the last user/tool "
                f"message does not contain {expected!r}\n{diff}"
            )
        names = set(offered) if offered is not None else None
        for call in turn.get("tool_calls", []):
            if names is not None and call["name"] not in names:
                raise ScriptMismatch(
                    f"script turn {self._next + 1} of {len(self._turns)}: calls "
                    f"{call['name']!r}, which the request does not offer (it offers: "
                    f"{', '.join(sorted(names)) or 'no tools'})"
                )
        return turn

    def advance(self) -> None:
        """Consume the reply `check` returned."""
        self._next += 1

    def give_back(self) -> None:
        """Un-consume the last reply: the fake broke it off, so a retry gets it again."""
        self._next -= 1


def words(text: str) -> list[str]:
    """Split reply text the way streamed deltas arrive: each word with its leading space."""
    return re.findall(r"\s*\S+\s*$|\s*\S+", text) or [text]


def fragments(text: str, size: int = 6) -> list[str]:
    """Split tool-call arguments into the short pieces a stream delivers them in."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]
