"""TTS services whose audio is μ-law: one byte a sample, silence 0xFF.

pipecat's TTS audio contexts assume 16-bit PCM: they hold back an odd byte
until the next chunk and, at the end of an utterance, pad it with 0x00 —
which in μ-law is the loudest negative sample, a click on the caller's line.
Services configured for μ-law output use this mixin so every byte passes as
the provider sent it.
"""

from __future__ import annotations

from tollbridge import pipecat_internals


class MulawAudio:
    """Mixin (before the pipecat TTS class) for a service configured for μ-law output."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        pipecat_internals.install_mulaw_alignment(self)
