"""Deterministic token counts and OpenAI-style automatic prompt caching for the LLM fakes.

Real tokenizers would tie tests to vocabulary files and model versions, so the fakes
count **one token per 4 characters, rounded up**: ``ceil(len(text) / 4)``. A structured
prompt piece (a tool definition, a message, a content block) is counted over its compact
JSON form (`serialize`: sorted keys, no spaces, UTF-8 kept as is). Audio is counted by
duration by the realtime fake and enters a prompt as an opaque `Segment`.

The counts only need to be stable and roughly proportional to prompt size: the cost
meter and its tests compare them with each other, never with a real tokenizer.
"""

import hashlib
import json
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

OPENAI_CACHE_MIN_TOKENS = 1024
"""OpenAI caches nothing for a prompt prefix shorter than this."""

OPENAI_CACHE_STEP_TOKENS = 128
"""Above the minimum, OpenAI's cached prefix grows in steps of this many tokens."""


def serialize(piece: Any) -> str:
    """The canonical text of a prompt piece: what its token count and cache key are made of."""
    return json.dumps(piece, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def count_tokens(text: str) -> int:
    """Tokens in ``text``: one per 4 characters, rounded up."""
    return math.ceil(len(text) / 4)


@dataclass(frozen=True)
class Segment:
    """One piece of a prompt, in prompt order.

    ``key`` is the piece's serialized text for text, or a stable identity for audio;
    two prompts share a cached prefix only as far as their segments' keys agree.
    """

    kind: Literal["text", "audio"]
    key: str
    tokens: int


def text_segment(piece: Any) -> Segment:
    """A text segment for a prompt piece (a string or anything JSON-serializable)."""
    text = piece if isinstance(piece, str) else serialize(piece)
    return Segment("text", text, count_tokens(text))


def audio_segment(key: str, tokens: int) -> Segment:
    """An audio segment: cached by identity, since audio has no text to compare."""
    return Segment("audio", key, tokens)


def prefix_hashes(segments: Sequence[Segment]) -> list[str]:
    """``result[i]`` identifies the prompt prefix ending with ``segments[i]``."""
    digest = hashlib.sha256()
    hashes = []
    for segment in segments:
        digest.update(f"{segment.kind}:{len(segment.key)}:{segment.key}".encode())
        hashes.append(digest.copy().hexdigest())
    return hashes


def _common_prefix_tokens(a: Sequence[Segment], b: Sequence[Segment]) -> int:
    """Tokens at the start of ``a`` that ``b`` repeats exactly.

    Whole segments count while they agree; inside the first text segment that differs,
    the shared leading characters count at 4 per token, since a real tokenizer would
    still match the tokens before the first change.
    """
    tokens = 0
    for left, right in zip(a, b, strict=False):
        if left == right:
            tokens += left.tokens
            continue
        if left.kind == right.kind == "text":
            shared = 0
            for x, y in zip(left.key, right.key, strict=False):
                if x != y:
                    break
                shared += 1
            tokens += shared // 4
        break
    return tokens


@dataclass(frozen=True)
class CachedTokens:
    """Cached prompt tokens, split by modality as OpenAI's usage details report them."""

    text: int = 0
    audio: int = 0

    @property
    def total(self) -> int:
        return self.text + self.audio


class AutomaticPrefixCache:
    """OpenAI's automatic prompt caching, simulated.

    Every prompt processed is remembered per partition (the caller picks it: model and
    ``prompt_cache_key``). A later prompt's cached tokens are its longest prefix shared
    with a remembered prompt of the same partition, counted only from 1024 tokens and
    rounded down to 1024 + 128·k. Nothing expires: a fake lives for one test.
    """

    def __init__(self) -> None:
        self._prompts: dict[Hashable, list[tuple[Segment, ...]]] = {}

    def lookup_and_store(self, partition: Hashable, segments: Sequence[Segment]) -> CachedTokens:
        """Cached tokens for this prompt; the prompt is then remembered for later ones."""
        prompt = tuple(segments)
        remembered = self._prompts.setdefault(partition, [])
        shared = max((_common_prefix_tokens(prompt, old) for old in remembered), default=0)
        if prompt not in remembered:
            remembered.append(prompt)
        if shared < OPENAI_CACHE_MIN_TOKENS:
            return CachedTokens()
        cached = shared - (shared - OPENAI_CACHE_MIN_TOKENS) % OPENAI_CACHE_STEP_TOKENS
        return _split_by_kind(prompt, cached)


def _split_by_kind(prompt: Sequence[Segment], cached: int) -> CachedTokens:
    """Attribute the first ``cached`` tokens of ``prompt`` to text or audio."""
    counts = {"text": 0, "audio": 0}
    left = cached
    for segment in prompt:
        if left <= 0:
            break
        taken = min(left, segment.tokens)
        counts[segment.kind] += taken
        left -= taken
    return CachedTokens(text=counts["text"], audio=counts["audio"])
