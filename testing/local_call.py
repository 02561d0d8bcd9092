"""One complete phone call on this machine: `tollbridge call` and the test plugin.

The real bridge runs under uvicorn on 127.0.0.1, the softphone plays the
caller's audio into it over a real WebSocket exactly as Twilio would (signed
with a throwaway auth token), the providers are either the live services or,
with a cassette, local fakes replaying it — and the call comes back with its
conversation, its audio, what crossed the socket and its priced cost record.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from pipecat.frames.frames import FunctionCallsStartedFrame, TranscriptionFrame, TTSSpeakFrame
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.aggregators.dtmf_aggregator import DTMFAggregator
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.stt_service import STTService
from pipecat.services.tts_service import TTSService
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tollbridge.bookkeeper import Bookkeeper
from tollbridge.config import Vertical
from tollbridge.costs.catalog import Catalog
from tollbridge.costs.lineitem import CallCost
from tollbridge.costs.spool import SpoolingLedger
from tollbridge.costs.usage import CallUsage
from tollbridge.errors import TollbridgeError
from tollbridge.handoff import HandoffFrame
from tollbridge.session import CallSession
from tollbridge.testing import require_extra
from tollbridge.testing.bridge import running_bridge
from tollbridge.testing.cassette import Cassette
from tollbridge.testing.offline import brain_script
from tollbridge.testing.offline import offline as offline_vertical
from tollbridge.testing.recorder import CassetteRecorder
from tollbridge.testing.softphone import CallScript, Softphone, SoftphoneResult, ring
from tollbridge.tools import shutdown as shutdown_tools
from tollbridge.transports.twilio.caller_audio import load_caller_audio
from tollbridge.transports.twilio.transport import ConnectionStats, TwilioTransport
from tollbridge.vertical_prices import price_warnings

require_extra()

CALLER_NUMBER = "+15550109999"


class CallFailed(TollbridgeError):
    """A local call that ran but cannot be taken as good; the message says why."""


@dataclass
class ToolUse:
    name: str
    arguments: dict[str, Any]
    result: Any = None


@dataclass
class LocalCall:
    """Everything one local call produced."""

    vertical: Vertical
    phone: SoftphoneResult
    usage: CallUsage
    cost: CallCost
    stats: ConnectionStats
    conversation: list[tuple[str, str]] = field(default_factory=list)
    """(speaker, text) in order: "caller", "agent", or "tool" lines, from the LLM's context
    (a handoff that carries only a note leaves the earlier turns out)."""
    lines: list[tuple[str, str]] = field(default_factory=list)
    """(who, text) as it happened (`ConversationTap`): on a vertical with several agents each
    agent line is its agent's by name, and each handoff is a line of its own."""
    tools: list[ToolUse] = field(default_factory=list)
    replay_failures: list[str] = field(default_factory=list)
    provider_fakes: dict[str, Any] = field(default_factory=dict)
    price_warnings: list[str] = field(default_factory=list)
    """Prices this vertical's calls use that are due for a re-quote or whose readings disagree."""

    @property
    def transcript(self) -> str:
        return "\n".join(f"{who}: {text}" for who, text in self.conversation)

    @property
    def prompt_cache_hit_after_first_turn(self) -> bool:
        """Every LLM request after the first (each agent's first, with several agents: a new
        agent's prefix is new) read its prefix from the provider's cache."""
        agents = dict.fromkeys(request.agent for request in self.usage.llm)
        later = [r for agent in agents for r in [q for q in self.usage.llm if q.agent == agent][1:]]
        return bool(later) and all(request.cached_input_tokens > 0 for request in later)

    @property
    def problems(self) -> list[str]:
        """Why this call cannot be taken as good (empty when it can): a replay that strayed
        from its cassette, an agent that said nothing, a call ended by an error."""
        found = []
        if self.replay_failures:
            found.append(f"the call did not follow its cassette ({len(self.replay_failures)} "
                         "request(s) refused: see the replay mismatches above)")
        if not self.phone.agent_audio:
            billed = sum(tts.characters for tts in self.usage.tts)
            found.append("the agent played no audio"
                         + (f" ({billed} TTS characters billed)" if billed else ""))
        if self.cost.ended_by.endswith("error"):
            found.append(f"the call ended by {self.cost.ended_by}")
        return found

    def said(self, speaker: str) -> list[str]:
        return [text for who, text in self.conversation if who == speaker]

    def write_agent_audio(self, path: str | Path) -> None:
        from tollbridge.testing.softphone import write_wav

        write_wav(path, self.phone.agent_audio)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _conversation(messages: Sequence[Any]) -> tuple[list[tuple[str, str]], list[ToolUse]]:
    lines: list[tuple[str, str]] = []
    tools: dict[str, ToolUse] = {}
    order: list[ToolUse] = []
    for message in messages:
        role = message.get("role")
        if role == "user" and _text(message.get("content")).strip():
            lines.append(("caller", _text(message["content"]).strip()))
        elif role == "assistant":
            if _text(message.get("content")).strip():
                lines.append(("agent", _text(message["content"]).strip()))
            for call in message.get("tool_calls") or []:
                function = call.get("function", {})
                try:
                    arguments = json.loads(function.get("arguments") or "{}")
                except json.JSONDecodeError:
                    arguments = {"raw": function.get("arguments")}
                use = ToolUse(function.get("name", ""), arguments)
                tools[call.get("id", "")] = use
                order.append(use)
        elif role == "tool":
            answered = tools.get(message.get("tool_call_id", ""))
            content = _text(message.get("content"))
            try:
                result = json.loads(content)
            except (json.JSONDecodeError, TypeError):
                result = content
            if answered:
                answered.result = result
                lines.append(("tool", f"{answered.name}({json.dumps(answered.arguments)}) → "
                                      f"{content}"))
    return lines, order


async def run_local_call(
    vertical: Vertical,
    *,
    audio: str | Path | bytes,
    cassette: str | Path | Cassette | None = None,
    ledger_url: str | None = None,
    spool_path: str | Path | None = None,
    dtmf: Sequence[tuple[float, str]] = (),
    hang_up_at: float | None = None,
    settle_s: float = 2.0,
    max_s: float = 180.0,
    user_speech_timeout: float = 0.6,
    catalog: Catalog | None = None,
    record_to: str | Path | None = None,
    speed: float = 1.0,
    offline: bool = False,
    on_line: Callable[[str, str], None] | None = None,
) -> LocalCall:
    """Place one call through the real bridge; providers replayed from `cassette` if given.

    With `offline`, no provider is used at all: the caller's audio is recognised by
    the local recogniser, and the brain answers from `cassette` in order or, without
    one, improvises (see `tollbridge.testing.offline`). With `record_to`, what the
    providers answered is written there as a cassette. `on_line(who, text)` hears
    the conversation as it happens. `speed` above 1 plays the caller faster than
    real time (tests); the call's seconds, and so its per-minute prices, are then
    restated on the caller's clock.
    """
    caller_audio = audio if isinstance(audio, bytes) else load_caller_audio(audio)
    if isinstance(cassette, str | Path):
        cassette = Cassette.load(cassette)
    brain = None
    if offline:
        vertical = offline_vertical(vertical)
        brain = brain_script(vertical, cassette.llm if cassette else None)
        cassette = cassette or Cassette()
    ledger = None
    if ledger_url:
        ledger = await SpoolingLedger.open(
            ledger_url, spool_path or Path(f"tollbridge-{vertical.name}.spool")
        )
    catalog = catalog or Catalog.load()
    bookkeeper = Bookkeeper(catalog, [vertical], ledger)
    sessions: list[CallSession] = []
    lines: list[tuple[str, str]] = []
    recorded = asyncio.Event()

    recorders: list[CassetteRecorder] = []

    async def keep(session: CallSession) -> None:
        sessions.append(session)
        def heard(who: str, text: str) -> None:
            lines.append((who, text))
            if on_line is not None:
                on_line(who, text)

        first = vertical.agents[0].name if vertical.agents else "agent"
        session.worker.add_observer(ConversationTap(heard, first))
        if record_to:
            stats = _stats(session)
            recorder = CassetteRecorder(lambda: stats.audio_bytes_in / 8000)
            session.worker.add_observer(recorder)
            recorders.append(recorder)

    async def finished(usage: CallUsage) -> None:
        if speed != 1:  # a replay faster than a phone line: its length on the line's clock
            usage.measured_seconds = (usage.measured_seconds * Decimal(str(speed))).quantize(
                Decimal("0.001"))
        await bookkeeper.call_finished(usage)
        recorded.set()

    try:
        async with running_bridge(
            vertical, cassette, brain=brain, user_speech_timeout=user_speech_timeout,
            pricer=bookkeeper.price, on_finished=finished, on_session=keep,
        ) as running:
            script = CallScript(
                audio=caller_audio,
                parameters={"vertical": vertical.name, "tenant": vertical.tenant,
                            "from": CALLER_NUMBER, "to": (vertical.numbers or [""])[0]},
                dtmf=list(dtmf),
                hang_up_at=hang_up_at,
                settle_s=settle_s,
                max_s=max_s,
                speed=speed,
            )
            phone = await running.softphone().call(script)
            with contextlib.suppress(TimeoutError):  # the bridge finishes the call's record
                await asyncio.wait_for(recorded.wait(), 10.0)
            failures = running.fakes.failures if running.fakes else []
            fakes = dict(running.fakes.fakes) if running.fakes else {}
        await bookkeeper.drain()
    finally:
        await bookkeeper.close()
        await shutdown_tools()

    if not sessions or sessions[0].usage is None:
        raise CallFailed(f"the call never started (the caller's side ended: {phone.ended_by})")
    session = sessions[0]
    usage = session.usage
    assert usage is not None
    if record_to and recorders:
        recorders[0].cassette(f"{vertical.name} call {session.call.call_sid}").save(record_to)
    conversation, tools = _conversation(session.built.context.get_messages())
    return LocalCall(
        vertical=vertical,
        phone=phone,
        usage=usage,
        cost=bookkeeper.costs[session.call.call_sid],
        stats=_stats(session),
        conversation=conversation,
        lines=lines,
        tools=tools,
        replay_failures=failures,
        provider_fakes=fakes,
        price_warnings=list(price_warnings([vertical], catalog, dt.date.today()).values()),
    )


async def call_bridge(
    vertical: Vertical,
    bridge_url: str,
    *,
    audio: str | Path | bytes,
    dtmf: Sequence[tuple[float, str]] = (),
    auth_token: str | None = None,
    max_s: float = 180.0,
) -> SoftphoneResult:
    """Call a bridge that is already running (e.g. `tollbridge serve --offline`) as Twilio
    would: its voice webhook first, then the Media Stream its TwiML names. The call's
    record is the bridge's to keep (in its ledger)."""
    caller_audio = audio if isinstance(audio, bytes) else load_caller_audio(audio)
    call_sid = "CA" + secrets.token_hex(16)
    callee = (vertical.numbers or [""])[0]
    try:
        answer = await ring(f"{bridge_url.rstrip('/')}/voice", call_sid=call_sid,
                            caller=CALLER_NUMBER, callee=callee, auth_token=auth_token)
    except httpx.HTTPStatusError as error:
        hint = " (is TWILIO_AUTH_TOKEN the token the bridge checks?)" \
            if error.response.status_code == 403 else ""
        raise CallFailed(f"the bridge's voice webhook answered "
                         f"{error.response.status_code}{hint}") from None
    except (httpx.HTTPError, ET.ParseError) as error:
        raise CallFailed(f"no answer from a bridge's voice webhook at {bridge_url}: "
                         f"{error or type(error).__name__}") from None
    if not answer.stream_url:
        raise CallFailed(f"the bridge at {bridge_url} did not connect the call to {callee}"
                         + (f"; it said: {answer.said!r}" if answer.said else ""))
    phone = Softphone(answer.stream_url, auth_token=auth_token)
    script = CallScript(audio=caller_audio, parameters=answer.parameters, dtmf=list(dtmf),
                        max_s=max_s)
    return await phone.call(script, call_sid=call_sid)


class ConversationTap(BaseObserver):
    """Hands each line of the conversation to `on_line(who, text)` as it happens: what the
    caller said (each final transcript, each keypad entry), each sentence sent to the TTS
    (whether or not the caller let it play), each tool call, each handoff. An agent's lines
    are the agent's by name on a vertical with several ("agent" otherwise)."""

    def __init__(self, on_line: Callable[[str, str], None], agent: str = "agent") -> None:
        super().__init__()
        self._on_line = on_line
        self._speaking = agent
        """Whose voice the TTS speaks in now: it changes when a handoff reaches it."""
        self._told: set[int] = set()
        """Transcripts already told: the keypad aggregator passes the STT's on as well."""

    async def on_push_frame(self, data: FramePushed) -> None:
        frame = data.frame
        if isinstance(frame, TranscriptionFrame) and frame.id not in self._told \
                and isinstance(data.source, STTService | DTMFAggregator):
            self._told.add(frame.id)
            self._on_line("caller", frame.text.strip())
        elif isinstance(frame, TTSSpeakFrame) and isinstance(data.destination, TTSService):
            self._on_line(self._speaking, frame.text.strip())
        elif isinstance(frame, HandoffFrame) and isinstance(data.destination, TTSService):
            # told where the caller hears it: after the last words of the agent before
            self._on_line("handoff", f"{frame.from_agent} → {frame.to_agent}: {frame.note}")
            self._speaking = frame.to_agent
        elif isinstance(frame, FunctionCallsStartedFrame) and isinstance(data.source, LLMService) \
                and data.direction is FrameDirection.DOWNSTREAM:
            for call in frame.function_calls:
                self._on_line("tool", f"{call.function_name}({json.dumps(call.arguments)})")


def _stats(session: CallSession) -> ConnectionStats:
    transport = session.built.transport
    assert isinstance(transport, TwilioTransport), "local calls run behind the Media Streams socket"
    return transport.connection.stats


def print_line(console: Console, who: str, text: str) -> None:
    """One line of the conversation: who spoke (the caller, the agent or an agent by name,
    a tool, a handoff), then the text as said (no markup)."""
    style = {"caller": "cyan", "tool": "yellow", "handoff": "magenta"}.get(who, "green")
    shown = text if who != "tool" or len(text) <= 110 else text[:107] + "…"
    console.print(Text.assemble((f"{who:>10}", style), "  ", shown))


def print_call(call: LocalCall, console: Console, *, conversation: bool = True) -> None:
    """The conversation turn by turn (unless it was shown as it happened), then the cost
    line items and totals."""
    if conversation:
        console.rule(f"{call.vertical.name} — call {call.cost.call_sid}")
        for who, text in call.conversation:
            print_line(console, who, text)
    else:
        console.rule(f"call {call.cost.call_sid}")
    table = Table(title=f"cost — catalog {call.cost.catalog_version}")
    agents = call.cost.agent_usd()
    columns = ("item", "provider", *(("agent",) if agents else ()), "quantity", "unit",
               "unit price $", "$")
    for column in columns:
        left = column in ("item", "provider", "agent", "unit")
        table.add_column(column, justify="left" if left else "right", no_wrap=column == "item")
    for item in call.cost.items:
        unit_price = item.unit_price_usd.quantize(Decimal("1e-12")).normalize()
        table.add_row(item.item, item.provider, *((item.agent,) if agents else ()),
                      f"{item.quantity.normalize():f}", item.unit,
                      "unpriced" if item.unpriced else f"{unit_price:f}",
                      "—" if item.unpriced else f"{item.usd:.6f}")
    console.print(table)
    if agents:
        console.print("agents (LLM and TTS): " + ", ".join(
            f"{agent} ${usd:.6f}" for agent, usd in agents.items()), highlight=False)
        console.print("handoffs: " + (", ".join(
            f"{h.from_agent} → {h.to_agent} at {h.at_seconds}s" for h in call.cost.handoffs)
            or "none"), highlight=False)
    for warning in call.price_warnings:  # printed literally: no rich markup in prices' text
        console.print(Text.assemble(("warning: ", "yellow"), warning), soft_wrap=True)
    for line in call.cost.unpriced_items:
        console.print(Text.assemble(("unpriced: ", "yellow"), f"{line.item}: {line.unpriced}"),
                      soft_wrap=True)
    per_minute = call.cost.usd_per_minute
    incomplete = "" if call.cost.complete else " (INCOMPLETE: only priced lines counted)"
    console.print(
        f"call {call.usage.measured_seconds}s, "
        f"ended by {call.cost.ended_by}: total ${call.cost.total_usd:.4f}{incomplete}"
        + (f", ${per_minute:.4f}/min" if per_minute is not None else ""),
        highlight=False,
    )
    console.print(
        f"audio: {call.phone.agent_audio_seconds:.1f}s agent speech played, "
        f"{call.stats.marks_sent} marks, {call.stats.clears} clears, "
        f"{call.stats.media_in} caller frames; lead at Twilio max "
        f"{call.phone.max_lead_s:.2f}s, p95 {call.phone.p95_lead_s:.2f}s",
        highlight=False,
    )
    unheard = sum(i.quantity for i in call.cost.items if i.item.startswith("tts.unheard:"))
    console.print(
        f"speech: {sum(t.characters + t.avoided_characters for t in call.usage.tts)} characters "
        f"synthesized, {call.usage.heard_characters or 0} heard; paid but not heard: "
        f"{unheard} characters, ${call.cost.unheard_speech_usd:.6f}",
        highlight=False,
    )
    for failure in call.replay_failures:
        console.print(Text.assemble(("replay mismatch: ", "red"), failure))
