"""Codec work per call-minute of the example chains, counted on the built pipelines.

The builder inserts an `AudioConverter` only where two neighbours disagree on
audio format. Each example vertical is built for a call (nothing connects),
its converters are found in the pipeline and fed one minute of 20 ms frames
in their source format, and their own counters say how many μ-law↔PCM
conversions and resamples that minute cost. A μ-law-native chain (Deepgram
STT + Aura-2, or ElevenLabs μ-law) has no converter, so it shows zero. One
contrast chain (the salon on 16 kHz PCM STT and 24 kHz PCM TTS) shows the
counting is real.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pipecat.processors.frame_processor import FrameProcessor

from tollbridge.builder import CallContext, build_call
from tollbridge.codec import AudioConverter
from tollbridge.config import ConfigError, Vertical, find_vertical_files, load_vertical
from tollbridge.stage import Role
from tollbridge.transports.twilio.transport import MediaStreamConnection

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FRAMES_PER_MINUTE = 3000


def _pcm_variant(salon: Vertical) -> Vertical:
    """The salon with PCM16 16 kHz STT and PCM16 24 kHz TTS: a chain that must transcode."""
    updates = {Role.STT: {"encoding": "linear16", "sample_rate": 16000},
               Role.TTS: {"encoding": "linear16", "sample_rate": 24000}}
    chain = [
        dataclasses.replace(s, options=s.options.model_copy(update=updates[s.kind.role]))
        if s.kind.role in updates else s
        for s in salon.chain
    ]
    return dataclasses.replace(salon, name="salon (PCM 16/24 kHz variant)", chain=chain)


def _walk(processors: Iterable[FrameProcessor]) -> Iterator[FrameProcessor]:
    """Every processor, including those inside switchers and parallel pipelines."""
    for processor in processors:
        yield processor
        yield from _walk(processor.processors)


async def _nowhere(*_args: Any) -> None:
    """The socket of a call that is only built: nothing is sent, nothing closes."""


def _count(vertical: Vertical) -> dict[str, Any]:
    connection = MediaStreamConnection(_nowhere, _nowhere, "MZ" + "0" * 32)
    keys = {name: "bench-key" for name in vertical.required_env()}
    built = build_call(CallContext(vertical, "CA" + "0" * 32, connection=connection, env=keys))
    converters = [p for p in _walk(built.processors) if isinstance(p, AudioConverter)]
    started = time.process_time()
    for converter in converters:
        width = 1 if converter.source.encoding == "mulaw" else 2
        frame = b"\xff" * (converter.source.sample_rate // 50 * width)
        for _ in range(FRAMES_PER_MINUTE):
            converter.convert(frame)
    cpu = time.process_time() - started
    return {
        "vertical": vertical.name,
        "chain": [stage.name for stage in vertical.chain],
        "converters": [
            {"name": c.name, "inbound": c.inbound, "conversions": c.conversions,
             "resamples": c.resamples}
            for c in converters
        ],
        "conversions_per_call_minute": sum(c.conversions for c in converters),
        "resamples_per_call_minute": sum(c.resamples for c in converters),
        "codec_cpu_s_per_call_minute": round(cpu, 4),
    }


def codec_counts() -> list[dict[str, Any]]:
    """One row per example chain (plus the PCM contrast), each for one minute each way."""
    rows = []
    for path in find_vertical_files(EXAMPLES):
        try:
            vertical = load_vertical(path)
        except ConfigError as error:
            rows.append({"vertical": path.parent.name, "error": str(error)})
            continue
        rows.append(_count(vertical))
        if vertical.name == "salon":
            rows.append(_count(_pcm_variant(vertical)))
    return rows
