"""The speech lead: how far ahead of playback text may reach the TTS without starving it.

    python -m benchmarks.lead                        # leads 0 0.2 0.3 0.5 1 1.5; ~12 min
    python -m benchmarks.lead --leads 0.3,1.0 --calls 1,10 --no-busy
    python -m benchmarks.lead --tts-delay-ms 300     # a TTS slower to first audio

For each `speech_lead_s` (0: no pacing, the whole reply to the TTS at once)
a server process pinned to core 0 runs the real bridge (`create_app` under
uvicorn on uvloop, the front desk test vertical: the real Deepgram STT,
OpenAI LLM and Deepgram TTS services against the local provider fakes, the
Twilio transport with the default `send_ahead_s`, the cost meter). From
another process, on core 1, C softphones call it at once (started 50 ms
apart), each a Twilio peer with a playback buffer. Every call: the greeting,
the caller asks for the opening hours at 6 s, the agent answers with five
sentences (about 17 s of speech), the caller talks over it at 11 s ("wait a
second") and gets a short answer. The rungs are C = 1, 10, 25 and then 25
again with a busy loop pinned to the server's core ("busy": the server gets
about half of its core).

Per rung, per call (means over the calls; lead over every 20 ms tick of
every call):

* underruns: pauses under 1 s inside agent speech for lack of audio (the
  softphone's `underruns`), count and stalled seconds;
* max / p95 lead: agent audio queued at Twilio, unplayed;
* TTS characters synthesized (billed) and heard, the difference, and the
  "speech paid but not heard" dollars (`CallCost.unheard_speech_usd`, the
  catalog's price);
* clears (barge-ins seen at Twilio) and the provider fakes' complaints.

The TTS fake answers at once; `--tts-delay-ms` holds each sentence's audio
back that long, as a provider's time to first audio does.

Prints a table and writes results/lead.json (money as strings).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from decimal import Decimal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
FRONTDESK = ROOT / "tests" / "fixtures" / "frontdesk"
AUTH_TOKEN = "bench-auth-token-0123456789abcdef"
SERVER_CORE, CLIENT_CORE = 0, 1
STAGGER_S = 0.05
PARAMS = {"vertical": "frontdesk", "tenant": "acme", "from": "+15550109999", "to": "+15550100900"}
REPLY = (
    "We are open Monday to Friday, eight to six. On Saturdays we open at nine and close at one. "
    "We are closed on Sundays and public holidays. You can leave a message at any time, and we "
    "call back the next working day. Is there anything else I can help you with?"
)
ANSWER = "Sure, take your time."
CALLER_S = 16.0  # line silence; the STT fake's results are on this audio clock
STT = [
    {"at": 6.0, "transcript": "what are your opening hours", "is_final": True,
     "speech_final": True},
    {"at": 11.0, "transcript": "wait", "is_final": False, "speech_final": False},
    {"at": 11.5, "transcript": "wait a second", "is_final": True, "speech_final": True},
]


@dataclasses.dataclass(frozen=True)
class Rung:
    calls: int
    busy: bool

    @property
    def label(self) -> str:
        return f"{self.calls}{' + busy' if self.busy else ''}"


# ---------------------------------------------------------------- server process


LLM = [{"match": "opening hours", "text": REPLY}, {"match": "wait a second", "text": ANSWER}]


def _every_call_script(turns: list[Any]) -> Any:
    """The LLM fake's script for many calls at once: each request gets the reply whose
    `match` its last message contains, as often as asked (the fake's own `Script` hands
    out replies once each, in order: one call's worth)."""
    from tollbridge.testing.fakes.script import Script, ScriptMismatch

    class EveryCallScript(Script):
        @property
        def remaining(self) -> int:
            return len(self._turns)

        def upcoming(self) -> Any:
            return self._turns[0]

        def check(self, last_message: str) -> Any:
            for turn in self._turns:
                if turn.get("match", "") in last_message:
                    return turn
            raise ScriptMismatch(f"no reply for {last_message!r}")

        def advance(self) -> None:
            pass

        def give_back(self) -> None:
            pass

    return EveryCallScript(turns)


def _delay_tts(delay_s: float) -> None:
    """Hold each flushed sentence's audio back `delay_s` in the TTS fake (time to first audio)."""
    from tollbridge.testing.fakes import deepgram_speak

    original = deepgram_speak._SpeakSession.on_message

    async def on_message(self: Any, message: Any) -> bool:
        if isinstance(message, dict) and message.get("type") == "Flush":
            await asyncio.sleep(delay_s)
        return await original(self, message)

    deepgram_speak._SpeakSession.on_message = on_message  # type: ignore[method-assign]


async def _serve(lead_s: float, rungs: list[Rung], tts_delay_s: float, conn: Connection) -> None:
    from loguru import logger

    from tollbridge import logs
    from tollbridge.bookkeeper import Bookkeeper
    from tollbridge.config import load_vertical
    from tollbridge.costs.catalog import Catalog
    from tollbridge.costs.pricing import price_call
    from tollbridge.costs.usage import CallUsage
    from tollbridge.session import CallSession
    from tollbridge.testing.bridge import running_bridge
    from tollbridge.testing.cassette import Cassette

    logger.remove()
    logs.configure("ERROR")
    if tts_delay_s:
        _delay_tts(tts_delay_s)
    vertical = dataclasses.replace(load_vertical(FRONTDESK), speech_lead_s=lead_s)
    cassette = Cassette(stt=STT, llm=LLM)
    catalog = Catalog.load()
    usages: list[CallUsage] = []
    sessions: list[CallSession] = []

    finished = asyncio.Event()

    async def on_finished(usage: CallUsage) -> None:
        usages.append(usage)
        finished.set()

    async def on_session(session: CallSession) -> None:
        sessions.append(session)

    async with running_bridge(
        vertical, cassette, brain=_every_call_script(LLM), auth_token=AUTH_TOKEN,
        user_speech_timeout=0.3, pricer=Bookkeeper(catalog, [vertical], None).price,
        on_finished=on_finished, on_session=on_session,
    ) as running:
        fakes = running.fakes
        assert fakes is not None
        conn.send(running.bridge.media_url)
        reported = 0  # the fakes' complaints already sent
        while True:
            command = await asyncio.to_thread(conn.recv)
            if command is None:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(20):
                    while len(usages) < command:
                        finished.clear()
                        await finished.wait()
            calls = []
            for usage in usages:
                cost = price_call(usage, catalog)
                calls.append({
                    "synthesized": sum(t.characters for t in usage.tts),
                    "cached": sum(t.avoided_characters for t in usage.tts),
                    "heard": usage.heard_characters,
                    "unheard_usd": str(cost.unheard_speech_usd),
                    "tts_usd": str(sum((line.usd for line in cost.items
                                        if line.item.startswith("tts:")), Decimal(0))),
                })
            bridge_leads = [session.built.playback.heard().max_lead_s
                            for session in sessions if session.built.playback is not None]
            failures, reported = fakes.failures[reported:], len(fakes.failures)
            conn.send({"calls": calls, "failures": failures,
                       "bridge_max_lead_s": max(bridge_leads, default=0.0)})
            usages.clear()
            sessions.clear()


def _server_main(lead_s: float, rungs: list[Rung], tts_delay_s: float, conn: Connection) -> None:
    os.sched_setaffinity(0, {SERVER_CORE})
    import uvloop

    uvloop.run(_serve(lead_s, rungs, tts_delay_s, conn))


# ---------------------------------------------------------------- callers


async def _calls(url: str, count: int) -> list[Any]:
    from tollbridge.testing.softphone import CallScript, Softphone

    script = CallScript(audio=b"\xff" * int(8000 * CALLER_S), parameters=PARAMS, settle_s=1.5,
                        max_s=30)

    async def one(index: int) -> Any:
        await asyncio.sleep(index * STAGGER_S)
        try:
            return await Softphone(url, auth_token=AUTH_TOKEN).call(script)
        except (OSError, TimeoutError) as failed:  # e.g. no handshake within 10 s
            return f"{type(failed).__name__}: {failed}"

    return await asyncio.gather(*(one(i) for i in range(count)))


def _busy_loop() -> subprocess.Popen[bytes]:
    code = f"import os\nos.sched_setaffinity(0, {{{SERVER_CORE}}})\nwhile True:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[int(p * (len(ordered) - 1))] if ordered else 0.0


def summarize(lead_s: float, rung: Rung, results: list[Any], served: dict[str, Any]) -> dict:
    phones = [phone for phone in results if not isinstance(phone, str)] or [None]
    failed = [phone for phone in results if isinstance(phone, str)]
    if phones == [None]:
        raise RuntimeError(f"no call of {rung.label} connected: {failed[0]}")
    calls = served["calls"]
    per_call = max(len(calls), 1)
    leads = [sample for phone in phones for sample in phone.lead_s]
    billed = sum(c["synthesized"] for c in calls)
    synthesized = billed + sum(c["cached"] for c in calls)  # the phrase cache's greeting too
    heard = sum(c["heard"] or 0 for c in calls)
    unheard_usd = sum((Decimal(c["unheard_usd"]) for c in calls), Decimal(0))
    tts_usd = sum((Decimal(c["tts_usd"]) for c in calls), Decimal(0))
    return {
        "speech_lead_s": lead_s,
        "calls": rung.calls,
        "busy": rung.busy,
        "records": len(calls),
        "failed_calls": len(failed),
        "failures": sorted(set(failed))[:3],
        "underruns_per_call": sum(len(p.underruns) for p in phones) / len(phones),
        "stall_s_per_call": sum(sum(p.underruns) for p in phones) / len(phones),
        "calls_with_underruns": sum(bool(p.underruns) for p in phones),
        "max_lead_s": max(leads, default=0.0),
        "p95_lead_s": _percentile(leads, 0.95),
        "bridge_max_lead_s": served["bridge_max_lead_s"],
        "cleared_s_per_call": statistics.fmean(p.cleared_s for p in phones),
        "clears_per_call": statistics.fmean(p.clears for p in phones),
        "billed_chars_per_call": billed / per_call,
        "synthesized_chars_per_call": synthesized / per_call,
        "heard_chars_per_call": heard / per_call,
        "unheard_chars_per_call": (synthesized - heard) / per_call,
        "unheard_usd_per_call": (unheard_usd / per_call).quantize(Decimal("1e-6")),
        "tts_usd_per_call": (tts_usd / per_call).quantize(Decimal("1e-6")),
        "agent_audio_s_per_call": statistics.fmean(p.agent_audio_seconds for p in phones),
        "fake_failures": served["failures"][:5],
    }


def measure_lead(lead_s: float, rungs: list[Rung], tts_delay_s: float) -> list[dict[str, Any]]:
    """Start a server with this lead, warm it with one call, then run every rung."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    server = context.Process(target=_server_main, args=(lead_s, rungs, tts_delay_s, theirs),
                             daemon=True)
    server.start()
    try:
        if not ours.poll(60):
            raise RuntimeError(f"the server for lead {lead_s} did not start")
        url = ours.recv()
        asyncio.run(_calls(url, 1))  # warm-up: first-call imports, the greeting's cache
        ours.send(1)
        ours.recv()
        rows = []
        for rung in rungs:
            busy = _busy_loop() if rung.busy else None
            try:
                phones = asyncio.run(_calls(url, rung.calls))
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
            ours.send(sum(not isinstance(phone, str) for phone in phones))
            row = summarize(lead_s, rung, phones, ours.recv())
            rows.append(row)
            print(line(row), flush=True)
        ours.send(None)
        return rows
    finally:
        server.join(15)
        if server.is_alive():
            server.kill()


# ---------------------------------------------------------------- report

HEADER = ("| speech_lead_s | calls | underruns/call | stall s/call | calls starved | max lead s "
          "| p95 lead s | TTS chars billed/call | billed+cached/call | heard/call | unheard/call "
          "| unheard $/call | TTS $/call |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def line(row: dict[str, Any]) -> str:
    lead = "0 (unpaced)" if row["speech_lead_s"] == 0 else f"{row['speech_lead_s']:g}"
    calls = f"{row['calls']}{' + busy' if row['busy'] else ''}"
    extra = f" ({row['records']} records)" if row["records"] != row["calls"] else ""
    extra += f" ({row['failed_calls']} failed)" if row["failed_calls"] else ""
    return (f"| {lead} | {calls}{extra} | {row['underruns_per_call']:.2f} "
            f"| {row['stall_s_per_call']:.3f} | {row['calls_with_underruns']}/{row['calls']} "
            f"| {row['max_lead_s']:.2f} | {row['p95_lead_s']:.2f} "
            f"| {row['billed_chars_per_call']:.0f} | {row['synthesized_chars_per_call']:.0f} "
            f"| {row['heard_chars_per_call']:.0f} "
            f"| {row['unheard_chars_per_call']:.0f} | {row['unheard_usd_per_call']:f} "
            f"| {row['tts_usd_per_call']:f} |")


def conclusion(rows: list[dict[str, Any]]) -> str:
    leads = sorted({row["speech_lead_s"] for row in rows if row["speech_lead_s"] > 0})
    safe = [lead for lead in leads
            if all(row["calls_with_underruns"] == 0 and not row["fake_failures"]
                   and not row["failed_calls"]
                   for row in rows if row["speech_lead_s"] == lead)]
    # the smallest lead from which every larger lead measured was safe too
    smallest = next((lead for lead in leads if all(lead2 in safe for lead2 in leads
                                                   if lead2 >= lead)), None)
    if smallest is None:
        return "No paced lead measured was free of underruns at every rung."
    return (f"Smallest speech_lead_s that never starved playback at any rung (and neither "
            f"did any larger one): {smallest:g} s.")


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "cpu": cpu, "linux": platform.release(),
            "python": platform.python_version(), "pipecat": version("pipecat-ai"),
            "uvicorn": version("uvicorn"), "commit": commit}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leads", default="0,0.2,0.3,0.5,1.0,1.5",
                        help="speech_lead_s values, comma-separated (0: unpaced)")
    parser.add_argument("--calls", default="1,10,25", help="concurrent calls per rung")
    parser.add_argument("--no-busy", action="store_true",
                        help="skip the last rung again with a busy loop on the server's core")
    parser.add_argument("--busy-only", action="store_true",
                        help="only the rungs with a busy loop on the server's core, one per C")
    parser.add_argument("--tts-delay-ms", type=float, default=0.0,
                        help="hold each sentence's TTS audio back this long")
    parser.add_argument("--out", type=Path, default=None,
                        help="default results/lead.json (results/lead-busy.json with --busy-only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.sched_setaffinity(0, {CLIENT_CORE})
    counts = [int(c) for c in args.calls.split(",")]
    rungs = [Rung(c, False) for c in counts] + ([] if args.no_busy else [Rung(counts[-1], True)])
    if args.busy_only:
        rungs = [Rung(c, True) for c in counts]
    leads = [float(v) for v in args.leads.split(",")]
    began = time.monotonic()
    print(HEADER, flush=True)
    rows = []
    for lead_s in leads:
        rows += measure_lead(lead_s, rungs, args.tts_delay_ms / 1000)
    verdict = conclusion(rows)
    print(f"\n{verdict}")
    report = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "send_ahead_s": "default",
        "tts_delay_ms": args.tts_delay_ms,
        "wall_s": round(time.monotonic() - began, 1),
        "conclusion": verdict,
        "rows": [{**row, "unheard_usd_per_call": f"{row['unheard_usd_per_call']:f}",
                  "tts_usd_per_call": f"{row['tts_usd_per_call']:f}"} for row in rows],
    }
    args.out = args.out or RESULTS / ("lead-busy.json" if args.busy_only else "lead.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out.name} in {args.out.parent.name}/ ({report['wall_s']} s)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
