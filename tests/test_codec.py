"""The μ-law codec against G.711, and the rule that a chain converts at most once."""

from __future__ import annotations

import numpy as np
import pytest

from tollbridge.codec import AudioConverter, codec_between, mulaw_to_pcm16, pcm16_to_mulaw
from tollbridge.config import load_vertical
from tollbridge.stage import MULAW_8K, AudioFormat


def g711_decode(code: int) -> int:
    """G.711 μ-law expansion, written out from the standard (independent of audioop)."""
    code = ~code & 0xFF
    sign, exponent, mantissa = code & 0x80, (code >> 4) & 0x07, code & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -magnitude if sign else magnitude


def test_decoding_is_bit_exact_against_the_g711_table():
    codes = bytes(range(256))
    decoded = np.frombuffer(mulaw_to_pcm16(codes), dtype="<i2")
    assert decoded.tolist() == [g711_decode(c) for c in range(256)]


def test_every_code_survives_decode_then_encode():
    codes = bytes(range(256))
    again = pcm16_to_mulaw(mulaw_to_pcm16(codes))
    # 0x7F and 0xFF both mean zero; G.711 encoders emit 0xFF for it
    assert [a for a, b in zip(again, codes, strict=True) if a != b] == [0xFF]


def test_round_trip_error_stays_within_half_a_quantization_step():
    samples = np.arange(-32768, 32768, dtype=np.int32)
    pcm = samples.astype("<i2").tobytes()
    codes = np.frombuffer(pcm16_to_mulaw(pcm), dtype=np.uint8)
    back = np.frombuffer(mulaw_to_pcm16(codes.tobytes()), dtype="<i2").astype(np.int32)
    exponent = ((~codes.astype(np.int32) & 0xFF) >> 4) & 0x07
    step = 8 << exponent  # a segment's step on the 16-bit scale
    clipped = np.abs(samples) > 32124  # beyond μ-law's range: clips to the largest code
    error = np.abs(back - samples)
    assert np.all(error[~clipped] <= step[~clipped] // 2 + 4)
    assert np.all(np.abs(back[clipped]) == 32124)


def test_no_converter_between_equal_formats_and_exactly_one_otherwise():
    assert codec_between(MULAW_8K, MULAW_8K, inbound=True) == []
    assert codec_between(None, MULAW_8K, inbound=False) == []
    [converter] = codec_between(MULAW_8K, AudioFormat("pcm16", 16000), inbound=True)
    assert isinstance(converter, AudioConverter)


def test_resampling_keeps_duration_and_state_across_chunks():
    converter = AudioConverter(MULAW_8K, AudioFormat("pcm16", 16000), inbound=True)
    tone = (np.sin(2 * np.pi * 440 * np.arange(8000) / 8000) * 8000).astype("<i2").tobytes()
    codes = pcm16_to_mulaw(tone)
    out = b"".join(converter.convert(codes[i : i + 160]) for i in range(0, len(codes), 160))
    assert abs(len(out) // 2 - 16000) <= 2  # one second at 16 kHz
    assert converter.conversions == 50 and converter.resamples == 50


@pytest.mark.parametrize(
    ("stt_options", "tts_options", "converters"),
    [
        ("", "", 0),  # Deepgram μ-law in, Aura-2 μ-law out: nothing converted
        ('encoding = "linear16"\nsample_rate = 16000', "", 1),
        ("", 'encoding = "linear16"\nsample_rate = 24000', 1),
    ],
)
def test_the_builder_inserts_a_converter_only_where_formats_differ(
    tmp_path, stt_options, tts_options, converters
):
    from tollbridge.builder import CallContext, build_call
    from tollbridge.transports.twilio.transport import MediaStreamConnection

    (tmp_path / "vertical.toml").write_text(
        f'name = "v"\ntenant = "t"\n[[chain]]\nuse = "twilio"\n'
        f'[[chain]]\nuse = "deepgram.stt"\n{stt_options}\n'
        f'[[chain]]\nuse = "openai.llm"\n'
        f'[[chain]]\nuse = "deepgram.tts"\n{tts_options}\n'
    )
    vertical = load_vertical(tmp_path)

    async def nothing(*_args) -> None:
        return None

    call = CallContext(
        vertical=vertical, call_sid="CA1", connection=MediaStreamConnection(nothing, nothing, "MZ1"),
        env={"DEEPGRAM_API_KEY": "k", "OPENAI_API_KEY": "k"},
    )
    built = build_call(call)
    found = [p for p in built.processors if isinstance(p, AudioConverter)]
    assert len(found) == converters
