"""The replay fakes of tollbridge's own stage kinds, registered in pyproject.toml under
``tollbridge.replay_fakes`` exactly as a plugin registers its own."""

from __future__ import annotations

from typing import Any

from tollbridge.testing.cassette import ReplayServer
from tollbridge.testing.fakes.anthropic_messages import AnthropicMessagesFake
from tollbridge.testing.fakes.audio import speaking_rate
from tollbridge.testing.fakes.deepgram_listen import FakeDeepgramListen
from tollbridge.testing.fakes.deepgram_speak import FakeDeepgramSpeak
from tollbridge.testing.fakes.elevenlabs import FakeElevenLabs
from tollbridge.testing.fakes.openai_chat import OpenAIChatFake
from tollbridge.testing.fakes.openai_realtime import OpenAIRealtimeFake


def deepgram_stt(options: Any, script: Any) -> ReplayServer:
    return FakeDeepgramListen("dg-replay-key", script or [])


def deepgram_tts(options: Any, script: Any) -> ReplayServer:
    return FakeDeepgramSpeak("dg-replay-key", chars_per_second=speaking_rate(script))


def elevenlabs_tts(options: Any, script: Any) -> ReplayServer:
    return FakeElevenLabs("xi-replay-key", chars_per_second=speaking_rate(script))


def openai_llm(options: Any, script: Any) -> ReplayServer:
    return OpenAIChatFake(script or [], api_key="sk-replay-key")


def openai_realtime(options: Any, script: Any) -> ReplayServer:
    return OpenAIRealtimeFake(script or [], api_key="sk-replay-key")


def anthropic_llm(options: Any, script: Any) -> ReplayServer:
    return AnthropicMessagesFake(script or [], api_key="sk-ant-replay-key")
