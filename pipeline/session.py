"""One call's life: build the pipeline, run it, end it, and always leave its usage.

The transport's reader (the socket side) and the pipeline run side by side.
Whichever ends first ends the call: the caller hanging up or the socket
dropping cancels the pipeline at once; the agent ending the call (a tool, the
budget) closes the socket after the last words were played. Either way the
meter's usage reaches `on_finished` exactly once — a dropped call still gets
its cost record.

A provider that fails with no fallback left ends the call too, never in
silence: the caller hears the vertical's apology (see `tollbridge.failure`),
then the call is hung up or transferred, and the record names the provider.
Where the call's own audio cannot carry the apology (the speaking stage died
with nothing pre-rendered), the telephony provider says it instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from pipecat.frames.frames import (
    EndWorkerFrame,
    ErrorFrame,
    Frame,
    LLMMessagesAppendFrame,
    TTSSpeakFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.workers.runner import WorkerRunner

from tollbridge import telemetry
from tollbridge.builder import BuiltCall, build_call, cached_phrase
from tollbridge.costs.lineitem import CallCost
from tollbridge.costs.usage import CallUsage
from tollbridge.failure import ProviderFailure, is_passing
from tollbridge.logs import get_logger
from tollbridge.stage import Billing, CallContext, Role

CANCEL_TIMEOUT_S = 5.0
LAST_WORDS_START_S = 4.0
"""Words said before a hang-up must be on their way within this, or the call ends without."""
LAST_WORDS_HEARD_S = 20.0
"""...and heard within this (recorded audio: within its length and `PLAYBACK_GRACE_S`)."""
PLAYBACK_GRACE_S = 3.0
PROVIDER_FAILED = "provider_failed"
SPEAKER_ROLES = (Role.TTS, Role.SPEECH_TO_SPEECH)

UsageSink = Callable[[CallUsage], Awaitable[object]]
Pricer = Callable[[CallUsage], CallCost]


class CallControl(Protocol):
    """The telephony provider's hold on a live call (Twilio's REST API)."""

    async def redirect(self, call_sid: str, *, say: str | None, dial: str | None) -> None:
        """Take the call off the stream: say `say` with the provider's own voice, then put
        the caller through to `dial`, or hang up."""


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
        control: CallControl | None = None,
    ):
        self.call = call
        self.on_finished = on_finished
        self.pricer = pricer
        self.control = control
        self.log = get_logger(
            call_sid=call.call_sid, tenant=call.vertical.tenant, vertical=call.vertical.name
        )
        self.built: BuiltCall = build_call(call, observers=observers)
        self.ended_by = ""
        self.failed_provider = ""
        self.usage: CallUsage | None = None
        self._ending: asyncio.Task | None = None
        """The last words being said before a hang-up (a failure, a speech-to-speech farewell)."""
        self._caller_side: asyncio.Future | None = None
        self._hang_up_now = False
        self._unpriced_noted: set[str] = set()
        self._cpu_seconds = 0.0
        meter = self.built.meter
        if meter and pricer and call.vertical.budget_usd is not None:
            meter.on_usage = self._check_budget

        @self.worker.event_handler("on_pipeline_error")
        async def on_error(_worker: Any, frame: ErrorFrame) -> None:
            self._provider_error(frame)

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
        if farewell and self.call.vertical.stage(Role.SPEECH_TO_SPEECH) is not None:
            # the brain says it as a reply of its own, which an EndFrame right behind would cut off
            self._ending = asyncio.ensure_future(self._say_then_hang_up(farewell))
            return
        if farewell:
            await self.worker.queue_frame(TTSSpeakFrame(farewell))
        await self.built.transport.input().push_frame(EndWorkerFrame(), FrameDirection.UPSTREAM)

    async def _say_then_hang_up(self, text: str) -> None:
        await self._last_words(text)
        self.hang_up_now(self.ended_by)

    def _provider_error(self, frame: ErrorFrame) -> None:
        """An error that reached the worker: from a provider, its stage has no fallback left."""
        failure = self.built.failure(frame.processor, frame.error)
        if self.ended_by or failure is None:
            return
        if (watching := telemetry.active()) is not None:
            watching.provider_error(failure.provider)
        if is_passing(frame.error):
            self.log.warning("provider_warning", provider=failure.provider, error=frame.error)
            return
        self.ended_by, self.failed_provider = PROVIDER_FAILED, failure.provider
        self.log.error("provider_failed", stage=str(failure.role), provider=failure.stage,
                       model=failure.model, error=failure.error)
        self._ending = asyncio.ensure_future(self._fail(failure))

    async def _fail(self, failure: ProviderFailure) -> None:
        """Apologize, transfer the call if the vertical names someone, and hang up."""
        policy = self.call.vertical.on_failure
        heard = await self._last_words(policy.phrase, speaker_failed=failure.role in SPEAKER_ROLES)
        say, dial = (None if heard else policy.phrase), policy.transfer_to
        if self.control is None and dial:
            self.log.error("transfer_unavailable", to=dial,
                           reason="no Twilio REST account (TWILIO_ACCOUNT_SID)")
        elif self.control is not None and (say or dial):
            try:
                await self.control.redirect(self.call.call_sid, say=say, dial=dial)
                self.log.warning("call_redirected", transferred_to=dial, apology_by_twilio=bool(say))
            except Exception as error:  # the caller must not stay on a dead line
                self.log.error("redirect_failed", to=dial, error=repr(error))
        self.hang_up_now(PROVIDER_FAILED)

    async def _last_words(self, text: str, *, speaker_failed: bool = False) -> bool:
        """Have the caller hear `text` before the hang-up: said by the stage that speaks, or
        played from its pre-rendered audio when that stage is the one that failed. Gives up
        when it cannot start or play in time: False."""
        words, heard_within = self.built.last_words, LAST_WORDS_HEARD_S
        if speaker_failed:
            cached = cached_phrase(self.call.vertical, text)
            if cached is None:
                self.log.warning("last_words_unavailable", reason="no pre-rendered audio")
                return False
            chunks, audio = cached
            bytes_per_second = audio.sample_rate * (1 if audio.encoding == "mulaw" else 2)
            heard_within = sum(map(len, chunks)) / bytes_per_second + PLAYBACK_GRACE_S
            await words.play(chunks, audio.sample_rate)
        elif self.call.vertical.stage(Role.SPEECH_TO_SPEECH) is not None:
            words.listen()
            # into the brain itself: the user aggregator would take an instruction in as
            # context without a response, once the session is under way
            await self.built.brain.queue_frame(self._say(text))
        else:
            words.listen()
            said = TTSSpeakFrame(text)
            said.interruptible = False  # the TTS keeps it through a caller talking over it
            await self.worker.queue_frame(said)
        try:
            async with asyncio.timeout(LAST_WORDS_START_S):
                await words.spoke.wait()
            async with asyncio.timeout(heard_within):
                await words.heard.wait()
        except TimeoutError:
            self.log.warning("last_words_not_heard", spoke=words.spoke.is_set())
            return False
        return True

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
        watching = telemetry.active()
        with watching.call_started(self.call, self.built.live_providers(), self._billings()) \
                if watching else contextlib.nullcontext():  # the pipeline runs in the call's trace
            pipeline = asyncio.create_task(runner.run(), name=f"pipeline {self.call.call_sid}")
        reader = self._caller_side = asyncio.ensure_future(caller_side)
        if self._hang_up_now:
            reader.cancel()
        self.log.info("call_started", caller=self.call.caller, callee=self.call.callee)
        try:
            if self.call.vertical.greeting:
                await self.worker.queue_frame(self._say(self.call.vertical.greeting, opening=True))
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
            for task in (pipeline, reader, self._ending):
                if task is not None and not task.done():
                    task.cancel()
            self._cpu_seconds = (time.process_time() - self._cpu_start) / (
                (self._active_start + CallSession.active) / 2
            )
            CallSession.active -= 1
            await self._finish()
            if watching is not None:
                watching.call_ended(self.call.call_sid, self.ended_by,
                                    self.built.live_providers())
        return self.usage

    def _billings(self) -> list[tuple[Role, Billing]]:
        return self.built.meter.billings() if self.built.meter else []

    def _say(self, text: str, *, opening: bool = False) -> Frame:
        """The cascade's TTS says it as written; a speech-to-speech brain (which has no
        TTS to take a `TTSSpeakFrame`) is asked to."""
        if self.call.vertical.stage(Role.SPEECH_TO_SPEECH) is None:
            return TTSSpeakFrame(text)
        when = "Open the call" if opening else "Now end the call"
        instruction = f'{when} by saying exactly this, and nothing else: "{text}"'
        return LLMMessagesAppendFrame([{"role": "developer", "content": instruction}], run_llm=True)

    async def _finish(self) -> None:
        meter = self.built.meter
        self.log.info("call_ended", ended_by=self.ended_by)
        if meter is None:
            return
        self.usage = meter.usage(ended_at=datetime.now(UTC), ended_by=self.ended_by)
        self.usage.failed_provider = self.failed_provider
        self.usage.compute_cpu_seconds = Decimal(str(round(self._cpu_seconds, 4)))
        self.usage.turns = self.built.turn_clock.turns
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
