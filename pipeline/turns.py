"""How fast the agent answers: one `Turn` per caller turn, always recorded, at little cost.

A `TurnClock` stands right before the transport's output, in direct mode (no
queue, no task: it runs inside the push of the processor before it) and looks
at a handful of frame types only. It starts a turn when the caller stops
speaking (told by the user aggregator, where the turn ends), takes the providers' latencies from the
metrics frames that pass it (STT finalisation, LLM time to first token, TTS
time to first byte), and closes the turn at the reply's first audio. That is
what the caller waits through, so it is what the dashboard and the turn
latency metrics show. A pipecat observer would do the same at the price of a
task wake-up for every frame pushed anywhere in the pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

from pipecat.frames.frames import (
    Frame,
    MetricsFrame,
    OutputAudioRawFrame,
)
from pipecat.metrics.metrics import TTFBMetricsData
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from tollbridge.costs.usage import Turn
from tollbridge.handoff import AgentOnLine
from tollbridge.stage import Role


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


class TurnClock(FrameProcessor):
    """Right before the transport's output: times each caller turn to the reply's first audio.

    `roles`: processor name → the role of the provider stage it is (which TTFB is
    whose). `agent`: the agent on the line at the start ("" with one agent).
    """

    def __init__(self, roles: Mapping[str, Role], agent: str = "",
                 started_at: datetime | None = None) -> None:
        super().__init__(name="turn-clock", enable_direct_mode=True)
        self._roles = roles
        self._agent = agent
        self._started_at = started_at or datetime.now(UTC)
        self._turns: list[Turn] = []
        self._open: Turn | None = None
        """The caller's turn waiting for its reply (latencies filled in as they come)."""
        self._stopped = 0.0
        """When the open turn's caller stopped speaking (monotonic)."""
        self._stt_ms: int | None = None
        """The last STT finalisation: it comes before the caller's turn is over."""

    @property
    def turns(self) -> tuple[Turn, ...]:
        """The turns so far, in order; one still waiting for a reply last (no first audio)."""
        return (*self._turns, *((self._open,) if self._open else ()))

    def caller_stopped(self) -> None:
        """The caller's turn is over (the user aggregator's `on_user_turn_stopped`): a turn
        starts. A second stop before any reply restarts it: the reply answers the latest words."""
        self._stopped = time.monotonic()
        since_start = (datetime.now(UTC) - self._started_at).total_seconds()
        self._open = Turn(Decimal(str(round(since_start, 3))), stt_ms=self._stt_ms)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputAudioRawFrame):
            if self._open is not None:
                self._answered()
        elif isinstance(frame, MetricsFrame):
            self._latencies(frame)
        elif isinstance(frame, AgentOnLine) and frame.role is Role.TTS:
            self._agent = frame.agent
        await self.push_frame(frame, direction)

    def _answered(self) -> None:
        assert self._open is not None
        self._turns.append(Turn(
            self._open.at_seconds, _ms(time.monotonic() - self._stopped), self._open.stt_ms,
            self._open.llm_ms, self._open.tts_ms, self._agent,
        ))
        self._open, self._stt_ms = None, None

    def _latencies(self, frame: MetricsFrame) -> None:
        for item in frame.data:
            if not isinstance(item, TTFBMetricsData):
                continue
            role = self._roles.get(item.processor)
            if role is Role.STT:
                self._stt_ms = _ms(item.value)
                if self._open is not None:
                    self._open = replace(self._open, stt_ms=self._stt_ms)
            elif self._open is None:
                continue
            elif role in (Role.LLM, Role.SPEECH_TO_SPEECH) and self._open.llm_ms is None:
                self._open = replace(self._open, llm_ms=_ms(item.value))
            elif role is Role.TTS and self._open.tts_ms is None:
                self._open = replace(self._open, tts_ms=_ms(item.value))
