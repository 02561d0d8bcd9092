"""Provider stages: one module per provider, each building a pipecat service."""

from tollbridge.providers import anthropic, deepgram, elevenlabs, openai, openai_realtime

BUILTIN_KINDS = [
    deepgram.STT,
    deepgram.TTS,
    openai.LLM,
    anthropic.LLM,
    elevenlabs.TTS,
    openai_realtime.KIND,
]
