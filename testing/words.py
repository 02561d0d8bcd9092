"""How much of what a caller said a recogniser heard: content-word recall and word error rate.

For tests that listen to a call (`replay_call(…, offline=True)`): assert that
`recall(what the caller said, " ".join(call.said("caller")))` is high enough.

Both compare words, not text: case, punctuation and the way a number is
written ("20,000" or "twenty thousand") do not count against a recogniser.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from num2words import num2words

STOPWORDS = frozenset(
    "a an the i i'd i'm i'll it it's is are am be was to of and or on at in for with my me "
    "we we're our you your this that do does have has any what how so oh um uh".split()
)
"""Words too common to say whether the caller was understood."""
_NUMBER = re.compile(r"\d[\d,]*")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def words(text: str) -> list[str]:
    """The words of `text`, lower case, numbers spelt out."""
    text = _NUMBER.sub(lambda m: f" {num2words(int(m.group().replace(',', '')))} ", text)
    return _WORD.findall(text.lower().replace("’", "'"))


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in STOPWORDS]


def recall(said: str, heard: str) -> float:
    """The share of the caller's content words the recogniser heard (each as often as said)."""
    wanted = Counter(content_words(said))
    found = Counter(content_words(heard))
    return sum((wanted & found).values()) / max(1, wanted.total())


def word_error_rate(said: str, heard: str) -> float:
    """Words substituted, dropped and added, per word said (edit distance over words)."""
    ref, hyp = words(said), words(heard)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


def said(cassette: Path) -> list[dict]:
    """The caller's utterances a cassette holds: each final STT result, with its `start`."""
    return [r for r in json.loads(cassette.read_text(encoding="utf-8"))["stt"] if r["is_final"]]
