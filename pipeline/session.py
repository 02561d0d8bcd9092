"""One call's life: build the pipeline, run it, end it, and always leave its usage.

The transport's reader (the socket side) and the pipeline run side by side.
Whichever ends first ends the call: the caller hanging up or the socket
dropping cancels the pipeline at once; the agent ending the call (a tool, the
budget) closes the socket after the last words were played. Either way the
meter's usage reaches `on_finished` exactly once — a dropped call still gets
its cost record.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pipecat.frames.frames import EndWorkerFrame, Frame, LLMMessagesAppendFrame, TTSSpeakFrame
from pipecat.processors.frame_processor import FrameDirection
from pipecat.workers.runner import WorkerRunner

from tollbridge.builder import BuiltCall, build_call
from tollbridge.costs.lineitem import CallCost
from tollbridge.costs.usage import CallUsage
from tollbridge.logs import get_logger
from tollbridge.stage import CallContext, Role

CANCEL_TIMEOUT_S = 5.0

UsageSink = Callable[[CallUsage], Awaitable[object]]
Pricer = Callable[[CallUsage], CallCost]


class CallSession:
    """Runs one call's pipeline and guarantees that its usage is reported.

    The call's share of the bridge's own compute is estimated as the process
    CPU time spent while it ran divided by the average number of calls the
    process was serving, so the ledger can carry infrastructure cost too.
    """

    active = 0
    """Calls this process is running now (CPU time is a process-wide quantity)."""

    def __init__(
        self,
        call: CallContext,
        *,
        on_finished: UsageSink | None = None,
        pricer: Pricer | None = None,
        observers: list[Any] | None = None,
    ):
        self.call = call
        self.on_finished = on_finished
        self.pricer = pricer
        self.log = get_logger(
            call_sid=call.call_sid, tenant=call.vertical.tenant, vertical=call.vertical.name
        )
        self.built: BuiltCall = build_call(call, observers=observers)
        self.ended_by = ""
        self.usage: CallUsage | None = None
        self._caller_side: asyncio.Future | None = None
        self._hang_up_now = False
        self._unpriced_noted: set[str] = set()
        self._cpu_seconds = 0.0
        meter = self.built.meter
        if meter and pricer and call.vertical.budget_usd is not None:
            meter.on_usage = self._check_budget

    async def _check_budget(self) -> None:
        """At the budget, the agent wraps up politely and hangs up (once).

        Usage with no price counts as nothing here (it is logged once per item):
        the budget can only be held to what is priced.
        """
        if self.ended_by or self.built.meter is None or self.pricer is None:
            return
        cost = self.pricer(self.built.meter.usage())
        for line in cost.unpriced_items:
            if line.item not in self._unpriced_noted:
                self._unpriced_noted.add(line.item)
                self.log.warning("budget_counts_priced_usage_only", item=line.item,
                                 reason=line.unpriced)
        spent = cost.total_usd
        budget = self.call.vertical.budget_usd
        if budget is not None and spent >= budget:
            self.log.warning("budget_reached", spent_usd=str(spent), budget_usd=str(budget))
            await self.end(farewell=self.call.vertical.budget_farewell, reason="budget")

    @property
    def worker(self):
        return self.built.worker

    async def end(self, *, farewell: str | None = None, reason: str = "agent") -> None:
        """End the call from the agent's side: say `farewell`, let it play, hang up."""
        self.ended_by = self.ended_by or reason
        if farewell:
            await self.worker.queue_frame(TTSSpeakFrame(farewell))
        await self.built.transport.input().push_frame(EndWorkerFrame(), FrameDirection.UPSTREAM)

    def hang_up_now(self, reason: str) -> None:
        """End the call at once, with no farewell (the server must stop now); the
        call still leaves its record."""
        self.ended_by = self.ended_by or reason
        self._hang_up_now = True
        if self._caller_side is not None:
            self._caller_side.cancel()

    async def run(self, caller_side: Awaitable[str]) -> CallUsage | None:
        """Run until either side ends the call. `caller_side` returns why it ended."""
        CallSession.active += 1
        self._cpu_start, self._active_start = time.process_time(), CallSession.active
        runner = WorkerRunner(handle_sigint=False, check_dangling_tasks=False)
        await runner.add_workers(self.worker)
        pipeline = asyncio.create_task(runner.run(), name=f"pipeline {self.call.call_sid}")
        reader = self._caller_side = asyncio.ensure_future(caller_side)
        if self._hang_up_now:
            reader.cancel()
        self.log.info("call_started", caller=self.call.caller, callee=self.call.callee)
        try:
            if self.call.vertical.greeting:
                await self.worker.queue_frame(self._greeting(self.call.vertical.greeting))
            done, _ = await asyncio.wait({pipeline, reader}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                self.ended_by = self.ended_by or _result(reader, "transport_error")
                await self.worker.cancel(reason=self.ended_by)
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(pipeline, CANCEL_TIMEOUT_S)
            else:
                self.ended_by = self.ended_by or "agent"
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
        except asyncio.CancelledError:
            self.ended_by = self.ended_by or "server_shutdown"
            raise
        finally:
            for task in (pipeline, reader):
                if not task.done():
                    task.cancel()
            self._cpu_seconds = (time.process_time() - self._cpu_start) / (
                (self._active_start + CallSession.active) / 2
            )
            CallSession.active -= 1
            await self._finish()
        return self.usage

    def _greeting(self, text: str) -> Frame:
        """The cascade's TTS says it as written; a speech-to-speech brain is asked to."""
        if self.call.vertical.stage(Role.SPEECH_TO_SPEECH) is None:
            return TTSSpeakFrame(text)
        instruction = f'Open the call by saying exactly this, and nothing else: "{text}"'
        return LLMMessagesAppendFrame([{"role": "developer", "content": instruction}], run_llm=True)

    async def _finish(self) -> None:
        meter = self.built.meter
        self.log.info("call_ended", ended_by=self.ended_by)
        if meter is None:
            return
        self.usage = meter.usage(ended_at=datetime.now(UTC), ended_by=self.ended_by)
        self.usage.compute_cpu_seconds = Decimal(str(round(self._cpu_seconds, 4)))
        if self.built.playback is not None:
            heard = self.built.playback.heard()
            self.usage.heard_characters = heard.characters
            self.log.info("call_playback", heard_characters=heard.characters,
                          max_lead_s=heard.max_lead_s, p95_lead_s=heard.p95_lead_s)
        if self.on_finished:
            try:
                await self.on_finished(self.usage)
            except Exception as error:  # the sink spools; this is the last line of defence
                self.log.error("cost_record_failed", error=repr(error))


def _result(task: asyncio.Future, default: str) -> str:
    if task.cancelled() or task.exception() is not None:
        return default
    return str(task.result() or default)
