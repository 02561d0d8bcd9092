"""The three servers under test, each in its own process pinned to one core.

* ``tollbridge`` — the real bridge app (`create_app`) with the benchmark
  vertical (stand-in stages, the real transport and cost meter), signatures off;
* ``pipecat`` — a plain pipecat pipeline set up the way pipecat's Twilio docs
  show: `FastAPIWebsocketTransport` + `TwilioFrameSerializer`
  (auto_hang_up=False), the same stand-ins, no VAD;
* ``relay`` — a bare relay doing only the unavoidable per-frame work: parse
  JSON, base64-decode, hand the bytes to the endpointer, and for replies
  base64-encode and send.

All three run under the same uvicorn settings (tollbridge's `running`) on the
same event loop kind, and answer ``GET /bench/stats`` with their event-loop
lag and garbage-collection pauses, so a stall at hang-up shows up as a number.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import http.client
import json
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, WebSocket

from benchmarks import standins

ServerName = Literal["tollbridge", "pipecat", "relay"]
SERVERS: tuple[ServerName, ...] = ("tollbridge", "pipecat", "relay")
LoopKind = Literal["asyncio", "uvloop"]
LAG_TICK_S = 0.05
STARTUP_TIMEOUT_S = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class LoopWatch:
    """Event-loop lag (how late a 50 ms sleep wakes up) and full-GC pauses, in ms."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.full_gcs = 0
        self.gc_max_ms = 0.0
        self._gc_started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        self.gc_max_ms = max(self.gc_max_ms, (time.perf_counter() - self._gc_started) * 1000)
        self.full_gcs += info["generation"] == 2

    async def run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(LAG_TICK_S)
            self.lags.append((time.perf_counter() - before - LAG_TICK_S) * 1000)

    def report(self, calls: int, reset: bool) -> dict[str, Any]:
        """Figures since the last reset."""
        lags = sorted(self.lags) or [0.0]
        report = {
            "calls": calls,
            "lag_p99_ms": lags[min(len(lags) - 1, int(len(lags) * 0.99))],
            "lag_max_ms": lags[-1],
            "full_gcs": self.full_gcs,
            "gc_max_ms": self.gc_max_ms,
        }
        if reset:
            self.lags, self.full_gcs, self.gc_max_ms = [], 0, 0.0
        return report


def tollbridge_app() -> tuple[FastAPI, Callable[[], int]]:
    from tollbridge.config import load_vertical
    from tollbridge.transports.twilio.server import Bridge, BridgeSettings, create_app

    vertical = load_vertical(standins.VERTICAL, registry=standins.registry())
    bridge = Bridge(
        [vertical],
        BridgeSettings(validate_signatures=False, user_speech_timeout=standins.TURN_STOP_S),
    )
    return create_app(bridge), lambda: len(bridge.sessions)


def pipecat_app() -> tuple[FastAPI, Callable[[], int]]:
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.serializers.twilio import TwilioFrameSerializer
    from pipecat.transports.websocket.fastapi import (
        FastAPIWebsocketParams,
        FastAPIWebsocketTransport,
    )
    from pipecat.turns.user_start import TranscriptionUserTurnStartStrategy
    from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy
    from pipecat.turns.user_turn_strategies import UserTurnStrategies
    from pipecat.workers.runner import WorkerRunner

    app = FastAPI()
    calls = 0

    async def run_bot(ws: WebSocket, stream_sid: str, call_sid: str) -> None:
        serializer = TwilioFrameSerializer(
            stream_sid=stream_sid,
            call_sid=call_sid,
            params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
        )
        transport = FastAPIWebsocketTransport(
            websocket=ws,
            params=FastAPIWebsocketParams(
                audio_in_enabled=True,
                audio_out_enabled=True,
                add_wav_header=False,
                serializer=serializer,
            ),
        )
        # No VAD, so the same transcript-based turn-taking tollbridge's builder uses.
        turns = UserTurnStrategies(
            start=[TranscriptionUserTurnStartStrategy()],
            stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=standins.TURN_STOP_S)],
        )
        aggregators = LLMContextAggregatorPair(
            LLMContext(), user_params=LLMUserAggregatorParams(user_turn_strategies=turns)
        )
        pipeline = Pipeline([
            transport.input(),
            standins.StandInSTT(encoding="pcm16"),
            aggregators.user(),
            standins.StandInLLM(),
            standins.StandInTTS(encoding="pcm16"),
            transport.output(),
            aggregators.assistant(),
        ])
        worker = PipelineWorker(
            pipeline,
            params=PipelineParams(
                audio_in_sample_rate=8000,
                audio_out_sample_rate=8000,
                enable_metrics=True,
                enable_usage_metrics=True,
            ),
        )

        @transport.event_handler("on_client_disconnected")
        async def on_client_disconnected(_transport: Any, _client: Any) -> None:
            await worker.cancel()

        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await runner.run()

    @app.websocket("/media")
    async def media(ws: WebSocket) -> None:
        nonlocal calls
        await ws.accept()
        messages = ws.iter_text()
        await messages.__anext__()  # "connected"
        start = json.loads(await messages.__anext__())["start"]
        calls += 1
        try:
            await run_bot(ws, start["streamSid"], start["callSid"])
        finally:
            calls -= 1

    return app, lambda: calls


def relay_app() -> tuple[FastAPI, Callable[[], int]]:
    app = FastAPI()
    calls = 0
    reply = standins.reply_chunks("mulaw")
    answer_after = standins.TURN_STOP_S + standins.LLM_DELAY_S + standins.TTS_DELAY_S

    async def answer(ws: WebSocket, stream_sid: str) -> None:
        await asyncio.sleep(answer_after)
        for chunk in reply:
            payload = base64.b64encode(chunk).decode("ascii")
            await ws.send_text(
                f'{{"event":"media","streamSid":"{stream_sid}","media":{{"payload":"{payload}"}}}}'
            )

    @app.websocket("/media")
    async def media(ws: WebSocket) -> None:
        nonlocal calls
        await ws.accept()
        calls += 1
        endpointer = standins.Endpointer("mulaw")
        stream_sid = ""
        answers: set[asyncio.Task] = set()
        try:
            while (message := await ws.receive())["type"] != "websocket.disconnect":
                event = json.loads(message["text"])
                kind = event.get("event")
                if kind == "media":
                    if endpointer.feed(base64.b64decode(event["media"]["payload"])):
                        task = asyncio.create_task(answer(ws, stream_sid))
                        answers.add(task)
                        task.add_done_callback(answers.discard)
                elif kind == "start":
                    stream_sid = event["start"]["streamSid"]
                elif kind == "stop":
                    break
        finally:
            calls -= 1
            for task in answers:
                task.cancel()

    return app, lambda: calls


APPS: dict[ServerName, Callable[[], tuple[FastAPI, Callable[[], int]]]] = {
    "tollbridge": tollbridge_app,
    "pipecat": pipecat_app,
    "relay": relay_app,
}


def _quiet_logs(name: ServerName) -> None:
    """Production log level: tollbridge's default (WARNING), and the same for pipecat."""
    if name == "tollbridge":
        from tollbridge import logs

        logs.configure("WARNING", json=True)
    else:
        from loguru import logger

        logger.remove()
        logger.add(sys.stderr, level="WARNING")


async def _serve(name: ServerName, conn: Connection) -> None:
    from tollbridge.transports.twilio.server import running

    _quiet_logs(name)
    app, active_calls = APPS[name]()
    watch = LoopWatch()

    @app.get("/bench/stats")
    async def stats(reset: bool = False) -> dict[str, Any]:
        return watch.report(active_calls(), reset)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    watcher = asyncio.create_task(watch.run())
    async with running(app) as url:
        if name == "tollbridge":
            from tollbridge.serve import freeze_startup_heap

            freeze_startup_heap()  # as `tollbridge serve` does
        conn.send(int(url.rsplit(":", 1)[1]))
        await stop.wait()
    watcher.cancel()


def _main(name: ServerName, loop: LoopKind, core: int, log_path: str, conn: Connection) -> None:
    os.sched_setaffinity(0, {core})
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 2)
    if loop == "uvloop":
        import uvloop

        uvloop.run(_serve(name, conn))
    else:
        asyncio.run(_serve(name, conn))


@dataclass
class ServerProcess:
    """A running server and what the kernel says about it."""

    name: ServerName
    process: multiprocessing.Process
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        """The Media Streams WebSocket URL."""
        return f"ws://127.0.0.1:{self.port}/media"

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time so far (all threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def _status_kb(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def rss_mb(self) -> float:
        return self._status_kb("VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        return self._status_kb("VmHWM") / 1024

    def reset_peak_rss(self) -> None:
        """Make VmHWM count from now (Linux: write 5 to clear_refs)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def stats(self, *, reset: bool = False) -> dict[str, Any]:
        """Active calls, loop lag and full-GC pauses since the last reset."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", "/bench/stats" + ("?reset=true" if reset else ""))
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()

    def stop(self) -> None:
        if self.process.is_alive():
            os.kill(self.pid, signal.SIGTERM)
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def start_server(name: ServerName, *, loop: LoopKind, core: int, log_dir: Path) -> ServerProcess:
    """Start `name` in a fresh process pinned to `core`; return once it listens."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    log_path = log_dir / f"{name}.log"
    process = context.Process(
        target=_main, args=(name, loop, core, str(log_path), child), name=f"bench-{name}", daemon=True
    )
    process.start()
    child.close()
    try:
        if not parent.poll(STARTUP_TIMEOUT_S):
            raise EOFError
        port = parent.recv()
    except EOFError:
        process.kill()
        raise RuntimeError(f"the {name} server did not start; see {log_path}") from None
    return ServerProcess(name=name, process=process, port=port, log_path=log_path)
