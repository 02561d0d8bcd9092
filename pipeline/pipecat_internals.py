"""The private pipecat members tollbridge relies on, all reached from this module.

tollbridge pins pipecat `>=1.14,<2`, and any release may rename or drop a
name that starts with `_`. A few things tollbridge must do have no public
way in: bill STT audio only once a live socket took it (μ-law at one byte
a sample), run every tool call of an Anthropic reply, ask ElevenLabs for
`ulaw_8000`, play a cached phrase with the words pipecat would have sent,
pass μ-law to OpenAI Realtime untouched. The functions below do them, and
`PRIVATE_MEMBERS` lists every private member involved with why we need it;
`tests/test_pipecat_internals.py` checks each entry against the installed
pipecat and names the one that moved. When upgrading pipecat, look here.

No other module reads, writes or calls a pipecat private member. A subclass
overriding one keeps its override where it reads best, declared in the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipecat.frames.frames import TTSAudioRawFrame
    from pipecat.pipeline.service_switcher import ServiceSwitcherStrategy
    from pipecat.processors.frame_processor import FrameProcessor
    from pipecat.services.deepgram.stt import DeepgramSTTService
    from pipecat.services.elevenlabs.tts import ElevenLabsTTSService
    from pipecat.services.stt_service import STTService
    from pipecat.services.tts_service import TTSService


class Kind(StrEnum):
    METHOD = "method"
    """Defined on the class; we call, override or replace it."""
    ATTRIBUTE = "attribute"
    """Defined on the class or module itself."""
    INSTANCE_ATTRIBUTE = "instance attribute"
    """Set on `self` by the class, usually in `__init__`."""


@dataclass(frozen=True)
class PrivateMember:
    """A private pipecat member tollbridge relies on, and why."""

    owner: str
    """Dotted path of the pipecat class (or module) we reach it through."""
    name: str
    kind: Kind
    why: str
    params: tuple[str, ...] = ()
    """A method's parameters after `self`, as we call or override it."""

    def __str__(self) -> str:
        return f"{self.owner}.{self.name}"


STT = "pipecat.services.stt_service.STTService"
DEEPGRAM_STT = "pipecat.services.deepgram.stt.DeepgramSTTService"
ANTHROPIC = "pipecat.services.anthropic.llm.AnthropicLLMService"
TTS = "pipecat.services.tts_service.TTSService"
AUDIO_CONTEXTS = "pipecat.utils.context.audio_context_manager.AudioContextManager"
ELEVENLABS = "pipecat.services.elevenlabs.tts.ElevenLabsTTSService"
REALTIME = "pipecat.services.openai.realtime.llm.OpenAIRealtimeLLMService"
SWITCHER = "pipecat.pipeline.service_switcher.ServiceSwitcherStrategy"

PRIVATE_MEMBERS: tuple[PrivateMember, ...] = (
    # Deepgram STT (tollbridge.providers.deepgram): usage billed for the bytes really sent;
    # Whisper STT (tollbridge.providers.whisper): the μ-law it was handed, one byte a sample.
    PrivateMember(STT, "_record_stt_audio_usage", Kind.METHOD, params=("audio",),
                  why="overridden: pipecat counts every frame handed over, sent or not, as PCM16"),
    PrivateMember(STT, "_stt_usage_pending_seconds", Kind.INSTANCE_ATTRIBUTE,
                  why="what the next usage metric reports: we add the μ-law or gated audio sent"),
    PrivateMember(DEEPGRAM_STT, "_connection", Kind.INSTANCE_ATTRIBUTE,
                  why="the open Listen socket (None while down): audio counts once sent on it"),
    # Phrase cache (tollbridge.phrase_cache): a cached phrase's words sent as pipecat would.
    PrivateMember(TTS, "_push_text_frames", Kind.INSTANCE_ATTRIBUTE,
                  why="whether a cached phrase sends its own words or pipecat sends them"),
    PrivateMember(TTS, "_tts_contexts", Kind.INSTANCE_ATTRIBUTE,
                  why="whether a cached phrase's words join the LLM context, as its frame asked"),
    # μ-law TTS (tollbridge.providers.mulaw_tts): bytes passed on as the provider sent them.
    PrivateMember(TTS, "_audio_context_manager", Kind.INSTANCE_ATTRIBUTE,
                  why="holds the service's audio alignment, which μ-law must bypass"),
    PrivateMember(AUDIO_CONTEXTS, "_align_audio_frame", Kind.METHOD, params=("context_id", "frame"),
                  why="replaced: it pads a held-back odd byte with 0x00, a click in μ-law"),
    # ElevenLabs (tollbridge.providers.elevenlabs): ulaw_8000 instead of pcm_<rate>.
    PrivateMember(ELEVENLABS, "_output_format", Kind.INSTANCE_ATTRIBUTE,
                  why="the output format pipecat puts in the WebSocket URL"),
    PrivateMember(ELEVENLABS, "_connect_websocket", Kind.METHOD,
                  why="overridden: sets our format just before each (re)connection builds the URL"),
    PrivateMember(ELEVENLABS, "_close_context", Kind.METHOD, params=("context_id",),
                  why="overridden: a phrase served from the cache has no ElevenLabs context"),
    # OpenAI Realtime (tollbridge.providers.openai_realtime): the session's μ-law, both ways.
    PrivateMember(REALTIME, "_send_user_audio", Kind.METHOD, params=("frame",),
                  why="overridden: pipecat resamples caller audio to 24 kHz PCM; we send μ-law"),
    PrivateMember(REALTIME, "_calculate_audio_duration_ms", Kind.METHOD,
                  params=("total_bytes", "sample_rate", "bytes_per_sample"),
                  why="overridden: barge-in truncation is measured in μ-law bytes"),
    # Anthropic (tollbridge.providers.anthropic): every tool call of a reply, usage as returned.
    PrivateMember(ANTHROPIC, "_create_message_stream", Kind.METHOD, params=("api_call", "params"),
                  why="overridden: watches the reply's events for every tool_use block and usage"),
    PrivateMember(ANTHROPIC, "_report_usage_metrics", Kind.METHOD,
                  params=("prompt_tokens", "completion_tokens", "cache_creation_input_tokens",
                          "cache_read_input_tokens", "reasoning_tokens"),
                  why="overridden: reports Anthropic's own counts, not a guess for a cut reply"),
    # Failover (tollbridge.failover): any provider error hands the stage to its fallback.
    PrivateMember(SWITCHER, "_set_active_if_available", Kind.METHOD, params=("service",),
                  why="called: how a switcher strategy makes a fallback the active service"),
)


def add_stt_seconds(service: STTService, seconds: float) -> None:
    """Count `seconds` of audio into the service's next STT usage metric."""
    service._stt_usage_pending_seconds += seconds


def live_stt_connection(service: DeepgramSTTService) -> object | None:
    """The Deepgram Listen socket audio is sent on now, or None while there is none."""
    return service._connection


def pushes_text_frames(service: TTSService) -> bool:
    """Whether the service pushes its words as text frames (if not, pipecat does at the stop)."""
    return service._push_text_frames


def appends_to_context(service: TTSService, context_id: str) -> bool:
    """Whether words spoken in `context_id` join the LLM context (by default they do)."""
    context = service._tts_contexts.get(context_id)
    return context.append_to_context if context else True


def install_mulaw_alignment(service: TTSService) -> None:
    """Pass the service's audio on byte for byte: μ-law has no half samples to hold back."""
    # an instance attribute shadowing the bound method: this service only
    setattr(service._audio_context_manager, "_align_audio_frame", _whole_mulaw_samples)  # noqa: B010


def _whole_mulaw_samples(_context_id: str, frame: TTSAudioRawFrame) -> bool:
    """`_align_audio_frame` for one-byte samples: keep every byte, drop only an empty frame."""
    frame.num_frames = len(frame.audio)
    return bool(frame.audio)


def set_elevenlabs_output_format(service: ElevenLabsTTSService, output_format: str) -> None:
    """Make the next WebSocket connection ask ElevenLabs for `output_format`."""
    service._output_format = output_format


async def activate(
    strategy: ServiceSwitcherStrategy, service: FrameProcessor
) -> FrameProcessor | None:
    """Make `service` the active one, if it is among the strategy's services and usable."""
    return await strategy._set_active_if_available(service)
