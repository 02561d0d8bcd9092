"""Run real pipecat services in a tiny pipeline against a fake, keeping every frame for assertions."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TypeVar

import pytest
from pipecat.frames.frames import EndFrame, ErrorFrame, Frame, MetricsFrame
from pipecat.metrics.metrics import LLMTokenUsage, LLMUsageMetricsData, MetricsData
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

F = TypeVar("F", bound=Frame)
M = TypeVar("M", bound=MetricsData)


class FrameLog(FrameProcessor):
    """Keeps each frame travelling one way, with when it arrived, and passes everything on."""

    def __init__(self, direction: FrameDirection) -> None:
        super().__init__()
        self._direction = direction
        self._arrived = asyncio.Condition()
        self.frames: list[tuple[float, Frame]] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == self._direction:
            async with self._arrived:
                self.frames.append((time.monotonic(), frame))
                self._arrived.notify_all()
        await self.push_frame(frame, direction)

    def of_type(self, frame_type: type[F]) -> list[F]:
        """Logged frames of one type, in arrival order."""
        return [frame for _, frame in self.frames if isinstance(frame, frame_type)]

    async def wait_until(self, condition: Callable[[], bool], seconds: float) -> None:
        """Wait until ``condition()`` holds, re-checking as each frame arrives."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(condition), seconds)

    async def wait_for(self, frame_type: type[Frame], count: int = 1, seconds: float = 3.0) -> None:
        """Wait until `count` frames of `frame_type` have arrived."""
        await self.wait_until(lambda: len(self.of_type(frame_type)) >= count, seconds)


class RunningPipeline:
    """A started ``[upstream log, *processors, downstream log, *tail]`` pipeline."""

    def __init__(self, worker: PipelineWorker, upstream: FrameLog, downstream: FrameLog) -> None:
        self.worker = worker
        self.upstream = upstream
        """Frames pushed upstream to the start: errors, mostly."""
        self.downstream = downstream
        """Frames that reached the end of the pipeline (before any tail)."""

    async def queue(self, *frames: Frame) -> None:
        """Push frames in at the start of the pipeline."""
        await self.worker.queue_frames(list(frames))

    async def wait_until(self, condition: Callable[[], bool], seconds: float = 4.0) -> None:
        """Wait until ``condition()`` holds; fail with the frames seen if it doesn't."""
        try:
            await self.downstream.wait_until(condition, seconds)
        except TimeoutError:
            kinds = [type(frame).__name__ for _, frame in self.downstream.frames]
            pytest.fail(
                f"condition not met within {seconds}s; frames: {kinds}; errors: {self.errors()}"
            )

    def metrics(self, data_type: type[M]) -> list[M]:
        """Every metrics item of one type the services reported, in order."""
        return [
            item
            for frame in self.downstream.of_type(MetricsFrame)
            for item in frame.data
            if isinstance(item, data_type)
        ]

    def usage(self) -> list[LLMTokenUsage]:
        """LLM token usage reports, in order."""
        return [data.value for data in self.metrics(LLMUsageMetricsData)]

    def errors(self) -> list[str]:
        """Errors the services pushed upstream."""
        return [frame.error for frame in self.upstream.of_type(ErrorFrame)]


@asynccontextmanager
async def run_pipeline(
    processors: Sequence[FrameProcessor], tail: Sequence[FrameProcessor] = ()
) -> AsyncIterator[RunningPipeline]:
    """Run ``processors`` at telephony rates (8 kHz in and out) with usage metrics on.

    ``tail`` goes after the downstream log: the assistant context aggregator
    belongs there, since it swallows the frames a test wants to see. Leaving the
    block sends an EndFrame and waits for the pipeline to finish, as at
    hang-up: services close their connections and report trailing usage.
    """
    upstream = FrameLog(FrameDirection.UPSTREAM)
    downstream = FrameLog(FrameDirection.DOWNSTREAM)
    worker = PipelineWorker(
        Pipeline([upstream, *processors, downstream, *tail]),
        params=PipelineParams(
            audio_in_sample_rate=8000, audio_out_sample_rate=8000, enable_usage_metrics=True
        ),
        enable_rtvi=False,
        cancel_on_idle_timeout=False,
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _on_started(worker: PipelineWorker, frame: Frame) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        # Frames queued before the StartFrame has gone through are dropped.
        await asyncio.wait_for(started.wait(), 4.0)
        yield RunningPipeline(worker, upstream, downstream)
        await worker.queue_frame(EndFrame())
        # a stage may finish its work at hang-up: the local recogniser transcribes what is
        # queued, which on a loaded machine takes seconds
        await asyncio.wait_for(asyncio.shield(running), 20.0)
    finally:
        if not running.done():
            await worker.cancel()
            await asyncio.wait_for(running, 4.0)
