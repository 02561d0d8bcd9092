"""TTS usage for services that stream text over a socket.

pipecat's WebSocket TTS services (Deepgram, ElevenLabs) send text without
reporting usage; the HTTP ones do. Billing is per character sent, so the
mixin reports each piece of text as it is handed to the provider.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from pipecat.frames.frames import Frame


class ReportsCharacters:
    """Mixin (before the pipecat TTS class): TTS usage = characters actually sent."""

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        if text.strip():
            await self.start_tts_usage_metrics(text)
        async for frame in super().run_tts(text, context_id):
            yield frame
