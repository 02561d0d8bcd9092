"""Holding line silence back from a streaming STT, which bills every second it is sent.

A caller is silent for much of a phone call: listening to the agent, thinking.
Streaming STT bills that silence like speech. The gate streams the caller's
audio while they speak and for `hangover_s` after, so the provider still hears
the pause that ends an utterance and finalizes it; then it holds silence back.
When the caller speaks again, the last `preroll_s` of held audio goes first, so
the start of the first word is never clipped. Meanwhile the provider's
connection is kept open by its KeepAlive messages.
"""

from __future__ import annotations

import warnings
from collections import deque

with warnings.catch_warnings():  # stdlib audioop until 3.13, audioop-lts after
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

FULL_SCALE = 32768


class SilenceGate:
    """Decides, frame by frame, which caller audio the STT needs to hear."""

    def __init__(
        self,
        *,
        encoding: str,
        sample_rate: int,
        threshold_dbfs: float = -45.0,
        hangover_s: float = 1.5,
        preroll_s: float = 0.3,
    ):
        self._mulaw = encoding == "mulaw"
        self._bytes_per_second = sample_rate * (1 if self._mulaw else 2)
        self._threshold = FULL_SCALE * 10 ** (threshold_dbfs / 20)
        self._hangover = int(hangover_s * self._bytes_per_second)
        self._preroll_max = int(preroll_s * self._bytes_per_second)
        self._preroll: deque[bytes] = deque()
        self._preroll_bytes = 0
        self._quiet = self._hangover + 1  # closed until the caller first speaks
        self.bytes_in = 0
        self.bytes_streamed = 0

    def admit(self, audio: bytes) -> bytes:
        """The audio to stream now: the frame (after any held pre-roll), or b"" to hold it."""
        self.bytes_in += len(audio)
        pcm = audioop.ulaw2lin(audio, 2) if self._mulaw else audio
        if audioop.rms(pcm, 2) >= self._threshold:
            self._quiet = 0
        else:
            self._quiet += len(audio)
        if self._quiet <= self._hangover:
            held = b"".join(self._preroll)
            self._preroll.clear()
            self._preroll_bytes = 0
            self.bytes_streamed += len(held) + len(audio)
            return held + audio
        self._preroll.append(audio)
        self._preroll_bytes += len(audio)
        while len(self._preroll) > 1 and self._preroll_bytes - len(self._preroll[0]) >= self._preroll_max:
            self._preroll_bytes -= len(self._preroll.popleft())
        return b""

    @property
    def withheld_seconds(self) -> float:
        """Caller audio never streamed (so never billed), so far."""
        return (self.bytes_in - self.bytes_streamed) / self._bytes_per_second
