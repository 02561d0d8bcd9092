"""Where a server's CPU goes under load: py-spy on the server, summed per asyncio task.

    pip install py-spy        # not a project dependency
    python -m benchmarks.hotspots --calls 40 --seconds 20 [--server tollbridge]

The server runs pinned to core 0 as in `benchmarks.run`, is warmed up with
one call, then sampled by py-spy while the load generator places `--calls`
calls. Each sample is charged to the asyncio task it was taken in (the
coroutine a pipecat processor's input or process task, the socket reader,
the TTS audio task, an observer proxy…), which says more about per-frame
cost in an asyncio server than a flat list of functions. Samples spent
waiting in epoll are left out: the shares are of CPU time.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.load import TURN_S, LoadGenerator
from benchmarks.servers import SERVERS, start_server

SERVER_CORE, LOAD_CORE = 0, 1
_WHERE = re.compile(r" \((?:[^)]*/)?([^/):]+)(?::\d+)?\)")


_LOOP_DISPATCH = ("Handle._run (asyncio/events.py", "Runner.run (asyncio/runners.py")
"""The frame right above a task's coroutine: asyncio's callback handle; uvloop's is C."""


def _short(frame: str) -> str:
    return _WHERE.sub(r" (\1)", frame)


def _task_of(frames: list[str]) -> str:
    """The coroutine the sampled task runs, and for a processor's task, which processor."""
    steps = [i for i, frame in enumerate(frames) if frame.startswith(_LOOP_DISPATCH)]
    if not steps or steps[-1] + 1 >= len(frames):
        return "event loop (polling, scheduling callbacks)"
    i = steps[-1] + 1
    if "run_coroutine" in frames[i] and i + 1 < len(frames):
        i += 1  # pipecat's TaskManager wrapper
    task = _short(frames[i])
    if "_frame_task_handler" in task:
        processor = next((_short(f) for f in frames[i + 1 :]
                          if ".process_frame" in f and not f.startswith("FrameProcessor.")), None)
        task += " → " + (processor or "pipecat internals")
    return task


def by_task(raw: Path) -> tuple[int, list[tuple[str, int]]]:
    """(CPU samples, [(task, samples)]) from py-spy's raw (collapsed) output."""
    tasks: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not frames[0].startswith("<module>") or frames[-1].startswith("EpollSelector.select"):
            continue  # a partial stack, or the loop waiting for work
        tasks[_task_of(frames)] += int(count)
    return sum(tasks.values()), tasks.most_common()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hotspots", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=SERVERS, default="tollbridge")
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    # pip puts it beside the interpreter, which need not be on PATH (a venv not activated)
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        parser.error("py-spy is not installed (pip install py-spy)")
    work = Path(tempfile.mkdtemp(prefix="tollbridge-profile-"))
    raw = work / f"{args.server}.txt"
    server = start_server(args.server, loop="uvloop", core=SERVER_CORE, log_dir=work)
    load = LoadGenerator(LOAD_CORE)
    try:
        load.run(server.url, calls=1, seconds=TURN_S)
        spy = subprocess.Popen(
            [py_spy, "record", "--pid", str(server.pid), "--rate", "250", "--format", "raw",
             "--duration", str(round(args.seconds)), "--output", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        cpu_before = server.cpu_seconds()
        report = load.run(server.url, calls=args.calls, seconds=args.seconds)
        cpu = server.cpu_seconds() - cpu_before
        spy.wait()
    finally:
        load.close()
        server.stop()
    inbound = report.call_seconds * 50
    print(f"{args.server}, {args.calls} calls: {cpu:.2f} CPU-s, "
          f"{cpu / (report.call_seconds / 60):.3f} CPU-s per call-minute; "
          f"{inbound:.0f} caller frames in, {report.frames_received:.0f} agent frames out "
          f"({cpu / inbound * 1e6:.0f} µs of CPU per caller frame, all work included)")
    samples, tasks = by_task(raw)
    print(f"{samples} CPU samples (raw stacks: {raw})")
    for task, count in tasks[: args.top]:
        print(f"{100 * count / samples:5.1f}%  {task}")


if __name__ == "__main__":
    main()
