"""Stage kinds come from the tollbridge.stages entry points, tollbridge's own included."""

from __future__ import annotations

from importlib.metadata import EntryPoint, distribution

import pytest

from tollbridge.providers.deepgram import DeepgramSTT
from tollbridge.registry import ENTRY_POINT_GROUP, Registry, RegistryError, _load, default_registry


def test_every_built_in_kind_is_registered_through_an_entry_point():
    ours = {ep.name for ep in distribution("tollbridge").entry_points if ep.group == ENTRY_POINT_GROUP}
    assert ours == {"twilio", "deepgram.stt", "deepgram.tts", "whisper.stt", "openai.llm",
                    "openai.realtime", "anthropic.llm", "elevenlabs.tts", "cost.meter"}
    assert ours <= set(default_registry().names())


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("tollbridge_no_such_module:Kind", "failed to load: ModuleNotFoundError"),
        ("tollbridge.stage:Role", "must name a StageKind subclass"),
        ("tollbridge.providers.deepgram:DeepgramTTS", "names kind 'deepgram.tts'"),
    ],
)
def test_a_broken_entry_point_is_named_in_the_error(value, message):
    with pytest.raises(RegistryError) as raised:
        _load(EntryPoint("acme.stt", value, ENTRY_POINT_GROUP))
    assert f"entry point 'acme.stt' = '{value}'" in str(raised.value)
    assert message in str(raised.value)


def test_two_kinds_may_not_share_a_name():
    class Impostor(DeepgramSTT):
        """Another package's kind claiming the same name."""

    registry = Registry()
    registry.register(DeepgramSTT)
    registry.register(DeepgramSTT)  # the same kind twice is harmless
    with pytest.raises(RegistryError, match="registered twice") as raised:
        registry.register(Impostor)
    assert "tollbridge.providers.deepgram:DeepgramSTT" in str(raised.value)
