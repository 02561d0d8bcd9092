"""Recording a call into a cassette, from what the pipeline saw.

The recorder is a pipecat observer, so it is provider-agnostic: it notes
each transcript with the amount of caller audio received when it arrived (the
call's audio clock), and each LLM request's reply — its text and tool calls —
keyed by the text the request ended with. Run a call against live providers
with a recorder attached and the resulting cassette replays that call
offline; run it against fakes and the replay must reproduce the same call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pipecat.frames.frames import (
    FunctionCallsStartedFrame,
    InterimTranscriptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
    TranscriptionFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.stt_service import STTService

from tollbridge.testing.cassette import Cassette

DOWNSTREAM = FrameDirection.DOWNSTREAM  # pipecat announces function calls both ways
MATCH_CHARS = 60
"""How much of a request's last message a replay checks (a prefix: stable, readable)."""


def _last_message_text(context: Any) -> str:
    for message in reversed(context.get_messages()):
        if message.get("role") in ("user", "tool"):
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


class CassetteRecorder(BaseObserver):
    """Builds a cassette of one call as it happens."""

    def __init__(self, audio_seconds: Callable[[], float]):
        # every push: the context reaches the LLM on a later hop than its first
        super().__init__(observe_every_push=True)
        self._audio_seconds = audio_seconds
        self.stt: list[dict[str, Any]] = []
        self.llm: list[dict[str, Any]] = []
        self._turn: dict[str, Any] | None = None

    async def on_push_frame(self, data: FramePushed) -> None:
        frame = data.frame
        if isinstance(data.source, STTService) and isinstance(frame, TranscriptionFrame):
            self._transcript(frame.text, final=True)
        elif isinstance(data.source, STTService) and isinstance(frame, InterimTranscriptionFrame):
            self._transcript(frame.text, final=False)
        elif isinstance(frame, LLMContextFrame) and isinstance(data.destination, LLMService):
            self._close_turn()
            match = _last_message_text(frame.context).strip()[:MATCH_CHARS]
            self._turn = {"match": match, "text": "", "tool_calls": []}
        elif self._turn is not None and isinstance(data.source, LLMService):
            if isinstance(frame, LLMTextFrame):
                self._turn["text"] += frame.text
            elif isinstance(frame, FunctionCallsStartedFrame) and data.direction is DOWNSTREAM:
                self._turn["tool_calls"] += [
                    {"name": call.function_name, "arguments": json.loads(json.dumps(call.arguments))}
                    for call in frame.function_calls
                ]
            elif isinstance(frame, LLMFullResponseEndFrame):
                self._close_turn()

    def _transcript(self, text: str, *, final: bool) -> None:
        self.stt.append({"at": round(self._audio_seconds(), 3), "transcript": text,
                         "is_final": final, "speech_final": final})

    def _close_turn(self) -> None:
        turn, self._turn = self._turn, None
        if turn is None or not (turn["text"] or turn["tool_calls"]):
            return
        self.llm.append({k: v for k, v in turn.items() if v or k == "match"})

    def cassette(self, description: str = "") -> Cassette:
        self._close_turn()
        return Cassette(stt=list(self.stt), llm=list(self.llm), description=description)
