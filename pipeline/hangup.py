"""Hanging up from the agent's side without cutting its last words off."""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndWorkerFrame,
    Frame,
    LLMFullResponseEndFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor


class HangUpAfterReply(FrameProcessor):
    """Ends the call once the caller has heard the agent's reply, after a tool asked to.

    A tool runs mid-turn, before the model has said goodbye: ending there
    would cut the goodbye off. So the hang-up waits for the end of the reply
    (LLMFullResponseEndFrame) and then for the transport to report that the
    caller has heard all of it (BotStoppedSpeakingFrame, sent when Twilio
    has played the last mark). A reply that produces no speech at all ends
    the call after `SILENT_REPLY_S`.
    """

    SILENT_REPLY_S = 10.0

    def __init__(self) -> None:
        super().__init__(name="hang-up-after-reply")
        self._armed = False
        self._reply_done = False
        self._speaking = False
        self._timer: asyncio.Task | None = None

    def arm(self) -> None:
        self._armed = True

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, BotStartedSpeakingFrame):
            self._speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._speaking = False
            if self._reply_done:
                await self._hang_up()
        elif self._armed and isinstance(frame, LLMFullResponseEndFrame):
            self._armed, self._reply_done = False, True
            self._timer = self.create_task(self._unless_it_speaks(), name="silent-reply")

    async def _unless_it_speaks(self) -> None:
        await asyncio.sleep(self.SILENT_REPLY_S)
        if not self._speaking:
            await self._hang_up()

    async def _hang_up(self) -> None:
        self._reply_done = False
        if self._timer:
            self._timer.cancel()
            self._timer = None
        await self.push_frame(EndWorkerFrame(), FrameDirection.UPSTREAM)

    async def cleanup(self) -> None:
        if self._timer:
            self._timer.cancel()
        await super().cleanup()
