"""What OpenTelemetry costs a call: CPU per replayed call with it absent, off, and on.

    python -m benchmarks.telemetry                 # 3 rounds of 6 calls per mode; ~3 min
    python -m benchmarks.telemetry --calls 10 --rounds 5

Each mode runs in a child process of its own, the same replayed call (the
bridge tests' front desk: two questions, two answers, through the real bridge,
softphone and provider fakes) `--calls` times after one warm-up call, and
reports the process CPU time per call (bridge, fakes and softphone alike: the
same work in every mode, so differences are telemetry's):

* **no-sdk** — the `otel` extra not installed (the OpenTelemetry SDK cannot be
  imported, so pipecat's tracing decorators are not even applied);
* **off** — the extra installed, no `OTEL_*` variable set: the default;
* **on** — traces and metrics on, into the SDK's in-memory exporter and reader.

Modes alternate within each round so noise on a shared machine falls on all;
the table shows medians over the rounds and each mode's ratio to **off**.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from decimal import Decimal

MODES = ("no-sdk", "off", "on")
SPEED = 2.0


class _NoSDK:
    """An import hook that makes the OpenTelemetry SDK look not installed."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "opentelemetry.sdk" or name.startswith("opentelemetry.sdk."):
            raise ModuleNotFoundError(f"No module named {name!r} (benchmark: no-sdk)")


async def _calls(mode: str, calls: int) -> dict[str, float]:
    from tests.conftest import running_bridge
    from tests.transports.test_bridge_calls import final, script
    from tollbridge import telemetry
    from tollbridge.config import load_vertical
    from tollbridge.testing.cassette import Cassette

    if mode == "on":
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        spans = InMemorySpanExporter()
        telemetry.install(spans, InMemoryMetricReader())
    cassette = Cassette(
        stt=[final(2.0, "what are your opening hours"), final(4.5, "and on saturday")],
        llm=[{"match": "opening hours", "text": "We are open Monday to Friday, eight to six."},
             {"match": "saturday", "text": "Saturdays we are closed."}],
    )
    from tests.conftest import FIXTURES

    vertical = load_vertical(FIXTURES / "frontdesk")
    seconds = Decimal(0)
    async with running_bridge(vertical, cassette) as running:
        await running.softphone().call(script(speed=SPEED))  # warm-up: imports, first call
        await running.finished(1)
        cpu = time.process_time()
        for n in range(calls):
            await running.softphone().call(script(speed=SPEED))
            [*_, usage] = await running.finished(n + 2)
            seconds += usage.measured_seconds * Decimal(str(SPEED))
        cpu = time.process_time() - cpu
    if mode == "on":
        spans.clear()
    return {"cpu_per_call_ms": cpu / calls * 1000,
            "cpu_per_call_minute_s": cpu / (float(seconds) / 60)}


def _child(mode: str, calls: int) -> None:
    if mode == "no-sdk":
        sys.meta_path.insert(0, _NoSDK())  # type: ignore[arg-type]
    import logging

    from loguru import logger

    logger.remove()
    logging.disable(logging.CRITICAL)
    print(json.dumps(asyncio.run(_calls(mode, calls))))


def _measure(mode: str, calls: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.telemetry", "--child", mode, "--calls", str(calls)],
        capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.calls)
        return
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for round_ in range(args.rounds):
        for mode in MODES[round_ % len(MODES):] + MODES[:round_ % len(MODES)]:
            runs[mode].append(_measure(mode, args.calls))
            print(f"round {round_ + 1} {mode:>6}: {runs[mode][-1]['cpu_per_call_ms']:.1f} ms CPU "
                  "per call", file=sys.stderr)
    medians = {mode: {key: statistics.median(r[key] for r in results) for key in results[0]}
               for mode, results in runs.items()}
    off = medians["off"]["cpu_per_call_ms"]
    print(f"{args.rounds} rounds x {args.calls} calls per mode (medians); the same replayed "
          f"2-turn call at {SPEED:g}x, CPU of the whole process")
    print(f"{'mode':>8}  {'CPU ms/call':>12}  {'CPU s/call-min':>15}  {'vs off':>7}")
    for mode in MODES:
        m = medians[mode]
        print(f"{mode:>8}  {m['cpu_per_call_ms']:>12.1f}  {m['cpu_per_call_minute_s']:>15.3f}  "
              f"{m['cpu_per_call_ms'] / off:>7.3f}")


if __name__ == "__main__":
    main()
