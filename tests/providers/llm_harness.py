"""Run real pipecat LLM services in a tiny pipeline and keep every frame for assertions."""

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import pytest
from pipecat.frames.frames import ErrorFrame, Frame, MetricsFrame
from pipecat.metrics.metrics import LLMTokenUsage, LLMUsageMetricsData
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

F = TypeVar("F", bound=Frame)


class FrameCollector(FrameProcessor):
    """Passes frames on and keeps them, so a test can wait for and inspect them."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []
        self._arrived = asyncio.Condition()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        async with self._arrived:
            self.frames.append(frame)
            self._arrived.notify_all()
        await self.push_frame(frame, direction)

    def of_type(self, frame_type: type[F]) -> list[F]:
        return [frame for frame in self.frames if isinstance(frame, frame_type)]

    async def wait_for(self, condition: Callable[[], bool], seconds: float) -> None:
        """Wait until ``condition()`` holds, re-checking as each frame arrives."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(condition), seconds)


@dataclass
class RunningPipeline:
    """A started pipeline: queue frames into it, read what came out at either end."""

    worker: PipelineWorker
    downstream: FrameCollector
    """Frames that reached the end of the pipeline (before any ``tail``)."""
    upstream: FrameCollector
    """Frames pushed upstream to the start: errors, mostly."""

    async def queue(self, *frames: Frame) -> None:
        await self.worker.queue_frames(list(frames))

    async def wait_until(self, condition: Callable[[], bool], seconds: float = 4.0) -> None:
        """Wait until ``condition()`` holds; fail with the frames seen if it doesn't."""
        try:
            await self.downstream.wait_for(condition, seconds)
        except TimeoutError:
            kinds = [type(frame).__name__ for frame in self.downstream.frames]
            pytest.fail(
                f"condition not met within {seconds}s; frames: {kinds}; errors: {self.errors()}"
            )

    def usage(self) -> list[LLMTokenUsage]:
        """Token usage reports, in order."""
        return [
            data.value
            for frame in self.downstream.of_type(MetricsFrame)
            for data in frame.data
            if isinstance(data, LLMUsageMetricsData)
        ]

    def errors(self) -> list[str]:
        return [frame.error for frame in self.upstream.of_type(ErrorFrame)]


@asynccontextmanager
async def run_pipeline(
    processors: Sequence[FrameProcessor], tail: Sequence[FrameProcessor] = ()
) -> AsyncIterator[RunningPipeline]:
    """Run ``processors`` at telephony rates (8 kHz) with usage metrics on.

    ``tail`` goes after the downstream collector: the assistant context aggregator
    belongs there, since it swallows the frames a test wants to see. Leaving the
    ``async with`` block cancels the pipeline.
    """
    upstream, downstream = FrameCollector(), FrameCollector()
    worker = PipelineWorker(
        Pipeline([upstream, *processors, downstream, *tail]),
        params=PipelineParams(
            enable_usage_metrics=True, audio_in_sample_rate=8000, audio_out_sample_rate=8000
        ),
        cancel_on_idle_timeout=False,
        enable_rtvi=False,
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker: PipelineWorker, frame: Frame) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(started.wait(), 4.0)
        yield RunningPipeline(worker, downstream, upstream)
    finally:
        await worker.cancel()
        await asyncio.wait_for(running, 4.0)
