"""OpenAI Realtime (`openai.realtime`): a speech-to-speech brain, μ-law in and out.

The session asks for `audio/pcmu` both ways, so Twilio's bytes go to OpenAI
as they came and OpenAI's come back ready for Twilio. pipecat 1.14's service
assumes 24 kHz PCM whatever the session says (it resamples what it sends and
labels what it receives as 24 kHz), so the subclass below sends μ-law as is,
labels replies as μ-law 8 kHz and measures truncation in μ-law bytes.
"""

from __future__ import annotations

import base64
from typing import Literal

from pipecat.frames.frames import Frame, InputAudioRawFrame, TTSAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.openai.realtime import events
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pydantic import Field, field_validator

from tollbridge.providers.options import LLMOptions, check_llm_model
from tollbridge.stage import (
    MULAW_8K,
    AudioFormat,
    Billing,
    CallContext,
    Role,
    StageKind,
)

MULAW_RATE = 8000


class OpenAIRealtimeOptions(LLMOptions):
    api_key_env: str = "OPENAI_API_KEY"
    model: str = "gpt-realtime"
    voice: str = "marin"
    turn_detection: Literal["server_vad", "semantic_vad"] = "server_vad"
    silence_ms: int = Field(500, ge=100, le=3000)
    max_tokens: int = Field(4096, gt=0)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return check_llm_model("openai", "openai.realtime", value)


class MulawRealtime(OpenAIRealtimeLLMService):
    """pipecat's Realtime service with the session's μ-law format honoured both ways."""

    # overrides a pipecat private method, declared in tollbridge.pipecat_internals
    async def _send_user_audio(self, frame: InputAudioRawFrame) -> None:
        if frame.audio:
            payload = base64.b64encode(frame.audio).decode("ascii")
            await self.send_client_event(events.InputAudioBufferAppendEvent(audio=payload))

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        if isinstance(frame, TTSAudioRawFrame):
            frame.sample_rate = MULAW_RATE
            frame.num_frames = len(frame.audio)
        await super().push_frame(frame, direction)

    # overrides a pipecat private method, declared in tollbridge.pipecat_internals
    def _calculate_audio_duration_ms(
        self, total_bytes: int, sample_rate: int = MULAW_RATE, bytes_per_sample: int = 1
    ) -> int:
        return int(total_bytes * 1000 / MULAW_RATE)


class OpenAIRealtime(StageKind):
    name = "openai.realtime"
    role = Role.SPEECH_TO_SPEECH
    options = OpenAIRealtimeOptions
    description = "OpenAI Realtime speech-to-speech, μ-law 8 kHz both ways"

    def build(self, options: OpenAIRealtimeOptions, call: CallContext) -> OpenAIRealtimeLLMService:
        turns: events.TurnDetection | events.SemanticTurnDetection
        if options.turn_detection == "server_vad":
            turns = events.TurnDetection(silence_duration_ms=options.silence_ms)
        else:
            turns = events.SemanticTurnDetection()
        session = events.SessionProperties(
            instructions=options.system_prompt(),
            audio=events.AudioConfiguration(
                input=events.AudioInput(format=events.PCMUAudioFormat(), turn_detection=turns),
                output=events.AudioOutput(format=events.PCMUAudioFormat(), voice=options.voice),
            ),
            max_output_tokens=options.max_tokens,
        )
        return MulawRealtime(
            api_key=options.api_key(call.env),
            base_url=call.base_url(self.name, options.base_url)
            or "wss://api.openai.com/v1/realtime",
            settings=OpenAIRealtimeLLMService.Settings(
                model=options.model, system_instruction=options.system_prompt(),
                session_properties=session,
            ),
        )

    def billing(self, options: OpenAIRealtimeOptions) -> Billing:
        return Billing("openai", options.model)

    def audio_in(self, options: OpenAIRealtimeOptions) -> AudioFormat:
        return MULAW_8K

    def audio_out(self, options: OpenAIRealtimeOptions) -> AudioFormat:
        return MULAW_8K
