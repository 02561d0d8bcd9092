"""TTS phrase cache: a vertical's fixed phrases are synthesized once per process.

A salon's greeting is the same on every call. Paying the TTS provider to say
it again costs characters and puts the provider's time to first byte in front
of every caller's first words. The first call records the audio the provider
sends for a fixed phrase (the greeting, the budget farewell); later calls in
the same process play those bytes, and the ledger shows the characters as
avoided. Entries are keyed by stage kind, the stage's full options (voice,
model, output format, speed, endpoint…) and the exact text, so two voices or
formats never share audio. Only a phrase spoken on its own (a
`TTSSpeakFrame`) and received whole from the provider is stored: not one cut
short by the caller talking over it, nor one the provider went quiet in.
The failure apology cannot wait for a first call to say it (it is needed
exactly when the TTS cannot speak): `builder.render_phrases` records it
before any call.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipecat.frames.frames import (
    Frame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    TTSUpdateSettingsFrame,
)
from pipecat.processors.frame_processor import FrameDirection

from tollbridge import pipecat_internals

if TYPE_CHECKING:
    from pipecat.services.tts_service import TTSService

    _TTSMixin = TTSService
else:
    _TTSMixin = object  # a mixin: the TTS service is a later base

MAX_CACHE_BYTES = 8 * 1024 * 1024
"""About 17 minutes of μ-law: far more fixed phrases than a process serves."""


@dataclass(frozen=True)
class PhraseKey:
    stage: str
    """Stage kind and its options, as JSON: which voice, model, format and endpoint."""
    text: str


class PhraseStore:
    """Recorded phrase audio shared by every call in the process, least recently used first out."""

    def __init__(self, max_bytes: int = MAX_CACHE_BYTES):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[PhraseKey, tuple[bytes, ...]] = OrderedDict()
        self._bytes = 0

    def get(self, key: PhraseKey) -> tuple[bytes, ...] | None:
        chunks = self._entries.get(key)
        if chunks is not None:
            self._entries.move_to_end(key)
        return chunks

    def put(self, key: PhraseKey, chunks: tuple[bytes, ...]) -> None:
        size = sum(map(len, chunks))
        if key in self._entries or not size or size > self.max_bytes:
            return
        self._entries[key] = chunks
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= sum(map(len, evicted))

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)


PHRASES = PhraseStore()
"""The process-wide store."""


@dataclass
class _Recording:
    key: PhraseKey
    chunks: list[bytes] = field(default_factory=list)
    ended: bool = False
    """The provider ended the context; a context that only went quiet may be cut short."""


class PhraseCaching(_TTSMixin):
    """Mixin (first among a pipecat TTS service's bases) serving fixed phrases from a store.

    Until `use_phrase_cache` is called the service behaves exactly as its base.
    """

    _phrase_store: PhraseStore | None = None

    def use_phrase_cache(
        self,
        store: PhraseStore,
        *,
        stage: str,
        phrases: Iterable[str],
        voices: Mapping[str | None, str] | None = None,
    ) -> None:
        """Serve `phrases` from `store`, as `stage` records them; `voices` keys the phrases
        of each voice the service may be switched to mid-call (another agent's)."""
        self._phrase_store = store
        self._phrase_stage: str | None = stage
        self._voice_stages = dict(voices or {})
        self._phrases = {text.strip() for text in phrases if text and text.strip()}
        self._avoided_characters = 0
        self._speaking_phrase: str | None = None
        self._recording: dict[str, _Recording] = {}
        self._served: set[str] = set()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, TTSUpdateSettingsFrame) and frame.service in (None, self) \
                and frame.delta is not None and isinstance(frame.delta.voice, str):
            # another voice from here on: its own recordings, or none
            self._phrase_stage = self._voice_stages.get(frame.delta.voice)
        phrase = frame.text.strip() if isinstance(frame, TTSSpeakFrame) else None
        if self._phrase_store is None or self._phrase_stage is None or phrase not in self._phrases:
            await super().process_frame(frame, direction)
            return
        self._speaking_phrase = phrase  # the base synthesizes it before returning
        try:
            await super().process_frame(frame, direction)
        finally:
            self._speaking_phrase = None

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        if self._phrase_store is None or self._phrase_stage is None \
                or text.strip() != self._speaking_phrase:
            async for frame in super().run_tts(text, context_id):
                yield frame
            return
        key = PhraseKey(self._phrase_stage, text.strip())
        chunks = self._phrase_store.get(key)
        if chunks is None:
            self._recording[context_id] = _Recording(key)
            async for frame in super().run_tts(text, context_id):
                yield frame
            return
        self._avoided_characters += len(text)
        if not self.audio_context_available(context_id):  # a service that opens its own
            await self.create_audio_context(context_id)
            yield TTSStartedFrame(context_id=context_id)
        for chunk in chunks:
            yield TTSAudioRawFrame(chunk, self.sample_rate, 1, context_id=context_id)
        if pipecat_internals.pushes_text_frames(self):  # if not, the base sends them untimed
            spoken = TTSTextFrame(text.strip(), text_type="sentence")
            spoken.context_id = context_id
            spoken.append_to_context = pipecat_internals.appends_to_context(self, context_id)
            yield spoken
        yield TTSStoppedFrame(context_id=context_id)
        self._served.add(context_id)

    def avoided_usage(self) -> float:
        """Characters served from the store instead of the provider (see `AvoidedUsage`)."""
        return self._avoided_characters if self._phrase_store is not None else 0

    def served_from_cache(self, context_id: str | None) -> bool:
        """True for a context the provider never heard of: its phrase came from the store."""
        return self._phrase_store is not None and context_id in self._served

    async def append_to_audio_context(self, context_id: str | None, frame) -> None:
        if self._phrase_store is not None and context_id:
            if self.served_from_cache(context_id) and frame is not None:
                return  # the base's own text and stop for a phrase already played in full
            if recording := self._recording.get(context_id):
                if isinstance(frame, TTSAudioRawFrame):
                    recording.chunks.append(frame.audio)
                elif frame is None:
                    recording.ended = True
        await super().append_to_audio_context(context_id, frame)

    async def flush_audio(self, context_id: str | None = None) -> None:
        if not self.served_from_cache(context_id):
            await super().flush_audio(context_id)

    async def on_audio_context_completed(self, context_id: str) -> None:
        recording = self._recording.pop(context_id, None) if self._phrase_store is not None else None
        if recording and recording.ended and self._phrase_store is not None:
            self._phrase_store.put(recording.key, tuple(recording.chunks))
        await super().on_audio_context_completed(context_id)

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        if self._phrase_store is not None:
            self._recording.pop(context_id, None)  # the caller cut it short: not whole
        await super().on_audio_context_interrupted(context_id)
