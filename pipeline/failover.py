"""Fallback providers: a stage hands over to its fallback on the first provider error."""

from __future__ import annotations

from pipecat.frames.frames import ErrorFrame
from pipecat.pipeline.service_switcher import ServiceSwitcherStrategyFailover
from pipecat.processors.frame_processor import FrameProcessor

from tollbridge import pipecat_internals


class FailOverOnAnyError(ServiceSwitcherStrategyFailover):
    """Move to the fallback on any error from the active provider.

    pipecat fails over only when a service declares itself unusable; its
    WebSocket TTS services and the LLM services report a refused connection
    or an overloaded API as recoverable and retry on the next sentence or
    turn. On a phone call those retries are silence, so the first error hands
    the stage to its fallback, and the provider it leaves is written off for
    the rest of the call: a fallback that fails in turn never hands the stage
    back to it. Its error then travels on, for the call's failure policy.
    """

    async def handle_error(self, error: ErrorFrame) -> FrameProcessor | None:
        failed = error.processor or self.active_service
        if failed is not self.active_service:
            return None
        here = self.services.index(failed)
        for step in range(1, len(self.services)):
            candidate = self.services[(here + step) % len(self.services)]
            if candidate.is_usable:
                await failed.set_usable(False)
                return await pipecat_internals.activate(self, candidate)
        return None
