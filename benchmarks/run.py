"""One command for the capacity benchmark: three servers, a ladder of concurrent calls.

    python -m benchmarks.run                       # full ladder, ~10 minutes
    python -m benchmarks.run --quick               # 1, 10, 25 calls once each, ~2 minutes
    python -m benchmarks.run --ladder 1,10,25,50 --seconds 15 --repeat 3

The servers (tollbridge, plain pipecat, bare relay) start once, each in its
own process pinned to core 0, and are warmed up with one call; the load
generator runs on core 1. For each rung of the ladder the three are measured
in turn, the order rotating every repeat so that machine noise falls on all
of them alike; figures are medians over the repeats. A server that is not
real time at some N is not asked for more.

A run is real time when every call connected and stayed up, every turn was
answered, late plus missing reply audio is at most 1 % of it, the p95 added
latency is at most 100 ms, and the server used at most 90 % of its core
(beyond that a burst has nowhere to go).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import standins
from benchmarks.codec import codec_counts
from benchmarks.load import FRAME_BYTES, TURN_S, LoadGenerator
from benchmarks.servers import SERVERS, LoopKind, ServerName, ServerProcess, start_server

SERVER_CORE, LOAD_CORE = 0, 1
RESULTS = Path(__file__).with_name("results")
MAX_BAD_AUDIO = 0.01
MAX_P95_MS = 100.0
MAX_BUSY = 0.90
DRAIN_TIMEOUT_S = 15.0
FULL = {"ladder": [1, 10, 25, 50, 100, 200], "seconds": 12.0, "repeat": 3}
QUICK = {"ladder": [1, 10, 25], "seconds": 8.0, "repeat": 1}


@dataclass
class Run:
    """One measurement: one server, N calls, one repeat."""

    server: ServerName
    calls: int
    repeat: int
    cpu_s: float
    busy: float
    cpu_s_per_call_minute: float
    peak_rss_mb: float
    rss_per_call_mb: float
    rss_after_mb: float
    latency_ms: dict[str, float | None]
    turns: int
    unanswered: int
    reply_frames: float
    late_frames: float
    gap_ms: float
    missing_frames: float
    extra_frames: float
    """Agent audio outside any reply (there should be none)."""
    marks_echoed: int
    failed_calls: int
    loop_lag_max_ms: float
    full_gcs: int
    gc_max_ms: float
    client_cpu_share: float
    client_lag_max_ms: float
    realtime: bool
    why_not: list[str] = field(default_factory=list)


def _percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def _drain(server: ServerProcess) -> dict[str, Any]:
    """Wait until the server has ended every call (teardown is part of the cost)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while (stats := server.stats())["calls"] and time.monotonic() < deadline:
        time.sleep(0.1)
    return stats


def measure(
    load_generator: LoadGenerator,
    server: ServerProcess,
    calls: int,
    seconds: float,
    idle_mb: float,
    repeat: int,
) -> Run:
    """Run `calls` calls against `server` and read what it cost."""
    server.stats(reset=True)
    server.reset_peak_rss()
    cpu_before = server.cpu_seconds()
    load = load_generator.run(server.url, calls=calls, seconds=seconds)
    stats = _drain(server)
    cpu = server.cpu_seconds() - cpu_before
    peak = server.peak_rss_mb()
    latencies = [x * 1000 for x in load.latencies]
    latency = {f"p{p}": _percentile(latencies, p / 100) for p in (50, 95, 99)}
    busy = cpu / load.client_wall_s
    bad_audio = load.late_frames + load.missing_frames
    expected_frames = load.frames_received + load.missing_frames
    why_not = [
        reason
        for reason, failed in (
            ("calls failed", bool(load.failures)),
            ("turns unanswered", load.unanswered > 0),
            ("late/missing audio", bad_audio > MAX_BAD_AUDIO * max(expected_frames, 1)),
            (f"p95 > {MAX_P95_MS:.0f} ms", (latency["p95"] or 0) > MAX_P95_MS),
            (f"CPU > {MAX_BUSY:.0%}", busy > MAX_BUSY),
        )
        if failed
    ]
    return Run(
        server=server.name,
        calls=calls,
        repeat=repeat,
        cpu_s=cpu,
        busy=busy,
        cpu_s_per_call_minute=cpu / max(load.call_seconds / 60, 1e-9),
        peak_rss_mb=peak,
        rss_per_call_mb=max(0.0, peak - idle_mb) / calls,
        rss_after_mb=server.rss_mb(),
        latency_ms=latency,
        turns=load.turns,
        unanswered=load.unanswered,
        reply_frames=load.frames_received,
        late_frames=load.late_frames,
        gap_ms=load.gap_s * 1000,
        missing_frames=load.missing_frames,
        extra_frames=load.extra_bytes / FRAME_BYTES,
        marks_echoed=load.marks_echoed,
        failed_calls=len(load.failures),
        loop_lag_max_ms=stats["lag_max_ms"],
        full_gcs=stats["full_gcs"],
        gc_max_ms=stats["gc_max_ms"],
        client_cpu_share=load.client_cpu_s / load.client_wall_s,
        client_lag_max_ms=load.client_lag_max_ms,
        realtime=not why_not,
        why_not=why_not,
    )


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Medians over the repeats of one server at one N; real time if most repeats were."""

    def median(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    return {
        "server": runs[0].server,
        "calls": runs[0].calls,
        "repeats": len(runs),
        "cpu_s_per_call_minute": median([r.cpu_s_per_call_minute for r in runs]),
        "busy": median([r.busy for r in runs]),
        "peak_rss_mb": median([r.peak_rss_mb for r in runs]),
        "rss_per_call_mb": median([r.rss_per_call_mb for r in runs]),
        "latency_ms": {p: median([r.latency_ms[p] for r in runs]) for p in ("p50", "p95", "p99")},
        "late_frames": median([r.late_frames for r in runs]),
        "missing_frames": median([r.missing_frames for r in runs]),
        "loop_lag_max_ms": median([r.loop_lag_max_ms for r in runs]),
        "gc_max_ms": median([r.gc_max_ms for r in runs]),
        "realtime": sum(r.realtime for r in runs) * 2 > len(runs),
        "why_not": {
            reason: sum(reason in r.why_not for r in runs)
            for reason in dict.fromkeys(reason for r in runs for reason in r.why_not)
        },
    }


def ratios(summaries: list[dict[str, Any]], of: str, to: str) -> list[dict[str, Any]]:
    """`of` / `to` per N where both were real time: below 1 means `of` needs less."""
    by = {(s["server"], s["calls"]): s for s in summaries}

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    rows = []
    for (server, calls), mine in sorted(by.items(), key=lambda item: item[0][1]):
        theirs = by.get((to, calls))
        if server != of or theirs is None or not (mine["realtime"] and theirs["realtime"]):
            continue
        rows.append({
            "calls": calls,
            "cpu_s_per_call_minute": ratio(mine["cpu_s_per_call_minute"],
                                           theirs["cpu_s_per_call_minute"]),
            "rss_per_call_mb": ratio(mine["rss_per_call_mb"], theirs["rss_per_call_mb"]),
            "latency_p95_ms": ratio(mine["latency_ms"]["p95"], theirs["latency_ms"]["p95"]),
        })
    return rows


def machine(loop: LoopKind) -> dict[str, Any]:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pipecat": version("pipecat-ai"),
        "uvicorn": version("uvicorn"),
        "event_loop": loop,
    }


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table_rows(summaries: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            s["server"], str(s["calls"]),
            _fmt(s["cpu_s_per_call_minute"], ".3f"), _fmt(s["busy"], ".0%"),
            _fmt(s["rss_per_call_mb"], ".2f"), _fmt(s["peak_rss_mb"], ".0f"),
            _fmt(s["latency_ms"]["p50"], ".1f"), _fmt(s["latency_ms"]["p95"], ".1f"),
            _fmt(s["latency_ms"]["p99"], ".1f"),
            f"{s['late_frames']:.0f}/{s['missing_frames']:.0f}",
            _fmt(s["loop_lag_max_ms"], ".0f"), _fmt(s["gc_max_ms"], ".0f"),
            ("yes" if s["realtime"] else "no") + "".join(
                f"; {reason} ({count}/{s['repeats']})" for reason, count in s["why_not"].items()
            ),
        ]
        for s in sorted(summaries, key=lambda s: (s["calls"], SERVERS.index(s["server"])))
    ]


HEADERS = ["server", "calls", "CPU-s/call-min", "busy", "MB/call", "peak MB", "p50 ms",
           "p95 ms", "p99 ms", "late/missing", "max lag ms", "max GC ms", "real time"]


def markdown(report: dict[str, Any]) -> str:
    """The results as the README shows them."""
    m = report["machine"]
    lines = [
        f"{m['cpus']} × {m['cpu_model']}, Linux {m['kernel']}, Python {m['python']}, "
        f"pipecat {m['pipecat']}, uvicorn {m['uvicorn']}, {m['event_loop']} event loop; "
        f"{report['seconds']:.0f} s calls, {report['repeat']} repeat(s), medians.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
        *("| " + " | ".join(row) + " |" for row in table_rows(report["summaries"])),
        "",
        *_extras(report),
    ]
    return "\n".join(lines) + "\n"


def _extras(report: dict[str, Any]) -> list[str]:
    """Largest real-time N, the ratios and the codec counts, as markdown lines."""
    lines = [
        "Largest real-time N: " + ", ".join(
            f"{name} {n if n else 'none'}" for name, n in report["largest_realtime"].items()),
        "",
        "| ratio | calls | CPU-s/call-min | MB/call | p95 latency |",
        "|---|---|---|---|---|",
    ]
    for name, rows in report["ratios"].items():
        for row in rows:
            lines.append(
                f"| {name} | {row['calls']} | {_fmt(row['cpu_s_per_call_minute'], '.2f')} | "
                f"{_fmt(row['rss_per_call_mb'], '.2f')} | {_fmt(row['latency_p95_ms'], '.2f')} |"
            )
    lines += ["", "| chain | converters | conversions/call-min | resamples/call-min | "
              "codec CPU-s/call-min |", "|---|---|---|---|---|"]
    for row in report["codec"]:
        if "error" in row:
            lines.append(f"| {row['vertical']} | not loadable: {row['error']} | | | |")
            continue
        names = ", ".join(c["name"] for c in row["converters"]) or "none"
        lines.append(f"| {row['vertical']} ({' → '.join(row['chain'])}) | {names} | "
                     f"{row['conversions_per_call_minute']} | {row['resamples_per_call_minute']} | "
                     f"{row['codec_cpu_s_per_call_minute']} |")
    return lines


def print_report(console: Console, report: dict[str, Any]) -> None:
    table = Table(title="tollbridge vs pipecat vs bare relay (one core each)")
    for header in HEADERS:
        table.add_column(header, overflow="fold")
    for row in table_rows(report["summaries"]):
        table.add_row(*row)
    console.print(table)
    console.print("\n".join(_extras(report)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1, 10, 25 calls, 8 s, once")
    parser.add_argument("--ladder", type=lambda text: [int(n) for n in text.split(",")])
    parser.add_argument("--seconds", type=float, help="length of each call")
    parser.add_argument("--repeat", type=int)
    parser.add_argument("--servers", type=lambda text: text.split(","), default=list(SERVERS))
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop",
                        help="event loop of the servers (tollbridge serve and uvicorn.run use "
                        "uvloop when installed)")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.seconds < TURN_S:
        parser.error(f"--seconds must be at least {TURN_S:.1f} (one turn)")
    unknown = set(args.servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; choose from {', '.join(SERVERS)}")
    return args


def climb(args: argparse.Namespace, console: Console, log_dir: Path, began: float) -> list[Run]:
    """Run the ladder, alternating the servers; stop climbing for one once it falls behind."""
    servers: dict[ServerName, ServerProcess] = {}
    load_generator = LoadGenerator(LOAD_CORE)
    runs: list[Run] = []
    try:
        for name in args.servers:
            servers[name] = start_server(name, loop=args.loop, core=SERVER_CORE, log_dir=log_dir)
        idle_mb = {}
        for name, server in servers.items():  # first-call imports and caches are not per call
            load_generator.run(server.url, calls=1, seconds=TURN_S)
            _drain(server)
            idle_mb[name] = server.rss_mb()
        climbing = list(servers)
        for calls in args.ladder:
            for repeat in range(args.repeat):
                shift = repeat % len(climbing)
                for name in climbing[shift:] + climbing[:shift]:
                    run = measure(load_generator, servers[name], calls, args.seconds,
                                  idle_mb[name], repeat)
                    runs.append(run)
                    verdict = "real time" if run.realtime else "NOT real time: " + ", ".join(
                        run.why_not)
                    console.print(
                        f"[{time.monotonic() - began:4.0f} s] {name:>10} × {calls:<4} "
                        f"{run.cpu_s_per_call_minute:.3f} CPU-s/call-min, {run.busy:.0%} busy, "
                        f"p95 {_fmt(run.latency_ms['p95'], '.1f')} ms, {verdict}"
                    )
            at_n = [summarize([r for r in runs if r.server == n and r.calls == calls])
                    for n in climbing]
            climbing = [s["server"] for s in at_n if s["realtime"]]
            if not climbing:
                break
    finally:
        load_generator.close()
        for server in servers.values():
            server.stop()
    return runs


def main(argv: list[str] | None = None) -> None:
    from loguru import logger

    logger.remove()  # pipecat logs every pipeline it links; the codec count builds a few
    args = parse_args(argv)
    console = Console(width=max(Console().width, 160))
    log_dir = Path(tempfile.mkdtemp(prefix="tollbridge-bench-"))
    console.print(f"servers: {', '.join(args.servers)}; ladder {args.ladder}; "
                  f"{args.seconds:.0f} s calls; {args.repeat} repeat(s); logs in {log_dir}")
    began = time.monotonic()
    runs = climb(args, console, log_dir, began)
    groups: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.server, run.calls), []).append(run)
    summaries = [summarize(group) for group in groups.values()]
    report = {
        "machine": machine(args.loop),
        "ladder": args.ladder,
        "seconds": args.seconds,
        "repeat": args.repeat,
        "stand_ins": {
            "endpoint_ms": standins.ENDPOINT_MS, "turn_stop_s": standins.TURN_STOP_S,
            "llm_delay_s": standins.LLM_DELAY_S, "tts_delay_s": standins.TTS_DELAY_S,
            "fixed_delay_s": standins.FIXED_DELAY_S, "reply_s": standins.REPLY_S,
            "reply_chunk_ms": standins.REPLY_CHUNK_MS,
        },
        "summaries": summaries,
        "largest_realtime": {
            name: max((s["calls"] for s in summaries if s["server"] == name and s["realtime"]),
                      default=0)
            for name in args.servers
        },
        "ratios": {
            f"tollbridge/{other}": ratios(summaries, "tollbridge", other)
            for other in ("pipecat", "relay") if {"tollbridge", other} <= set(args.servers)
        },
        "codec": codec_counts(),
        "runs": [asdict(run) for run in runs],
        "wall_s": time.monotonic() - began,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print_report(console, report)
    console.print(f"wrote {args.out} and {args.out.with_suffix('.md')} "
                  f"in {report['wall_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
