"""A plain pipecat processor dropped into an example's chain by one TOML entry.

The processor below knows nothing of tollbridge. Placed between the LLM and
the TTS it changes what is spoken, and nothing else: the TTS is still billed
to its own provider and voice for exactly what it was sent, the phrase cache
still serves the greeting on the next call, and the cassette still replays.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES
from tollbridge import ConfigError, load_vertical
from tollbridge.phrase_cache import PHRASES

pytestmark = pytest.mark.long(20)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CALL = FIXTURES / "calls" / "real_estate_hangup"
VOICE = "aura-2-andromeda-en"

SHOUT = '''
from pipecat.frames.frames import Frame, LLMTextFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor


class Shout(FrameProcessor):
    """Says the model's words in capitals, with an optional ending."""

    def __init__(self, ending: str = "", **kwargs):
        super().__init__(**kwargs)
        self.ending = ending

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMTextFrame):
            frame = LLMTextFrame(frame.text.upper())
        await self.push_frame(frame, direction)
'''


def with_processor(tmp_path: Path, entry: str) -> Path:
    """A copy of the real-estate vertical with `entry` between its LLM and TTS stages."""
    folder = tmp_path / "real_estate"
    shutil.copytree(EXAMPLES / "real_estate", folder)
    (folder / "shout.py").write_text(SHOUT)
    path = folder / "vertical.toml"
    text = path.read_text()
    assert '[[chain]]\nuse = "deepgram.tts"' in text
    path.write_text(text.replace('[[chain]]\nuse = "deepgram.tts"', f'{entry}\n\n[[chain]]\nuse = "deepgram.tts"'))
    return path


async def test_a_processor_between_llm_and_tts_changes_only_what_is_spoken(replay_call, tmp_path):
    PHRASES.clear()
    vertical = load_vertical(with_processor(tmp_path, '[[chain]]\nuse = "shout:Shout"'))
    assert [s.kind.role.value for s in vertical.chain] == [
        "transport", "stt", "llm", "processor", "tts", "meter"
    ]
    calls = []
    for _ in range(2):  # the second call is served the greeting from the phrase cache
        calls.append(await replay_call(
            vertical, audio=CALL.with_suffix(".wav"), cassette=f"{CALL}.cassette.json",
            speed=2.0, settle_s=4.0,
        ))
    first, second = calls
    greeting, reply = first.said("agent")
    assert greeting == vertical.greeting  # spoken on its own: not the model's words
    assert reply == "YES, 17 OAK AVENUE IS STILL AVAILABLE, FOUR BEDROOMS FOR SIX EIGHTY FIVE."
    for call in calls:
        sent = sum(r.characters for r in call.provider_fakes["deepgram.tts"].requests)
        [tts] = call.usage.tts
        assert (tts.provider, tts.model, tts.characters) == ("deepgram", VOICE, sent)
        line = next(i for i in call.cost.items if i.kind == "tts")
        assert (line.provider, line.item) == ("deepgram", f"tts:{VOICE}")
    [heard], [cached] = first.usage.tts, second.usage.tts
    assert heard.avoided_characters == 0
    assert cached.avoided_characters >= len(vertical.greeting)  # as the provider counts them
    assert cached.characters + cached.avoided_characters == heard.characters


def test_processor_options_are_checked_against_its_signature(tmp_path):
    path = with_processor(tmp_path, '[[chain]]\nuse = "shout:Shout"\nendin = "!"\nname = 3')
    with pytest.raises(ConfigError) as raised:
        load_vertical(path)
    assert sorted(raised.value.problems) == [
        f'{path}: chain[3].endin: unknown option; did you mean "ending"?',
        f"{path}: chain[3].name: Input should be a valid string (got 3)",
    ]


@pytest.mark.parametrize(
    ("use", "message"),
    [
        ("shout:Shouty", 'must name a pipecat FrameProcessor subclass, not None'),
        ("nowhere_at_all:Shout", 'cannot import "nowhere_at_all"'),
        ("shout:", 'is not of the form "package.module:ClassName"'),
        ("pathlib:Path", "must name a pipecat FrameProcessor subclass"),
    ],
)
def test_a_bad_processor_reference_names_the_stage(tmp_path, use, message):
    path = with_processor(tmp_path, f'[[chain]]\nuse = "{use}"')
    with pytest.raises(ConfigError) as raised:
        load_vertical(path)
    [problem] = raised.value.problems
    assert problem.startswith(f"{path}: chain[3].use: ") and message in problem


def test_a_processor_may_not_come_before_the_transport(tmp_path):
    path = with_processor(tmp_path, "")
    text = path.read_text()
    path.write_text(text.replace('[[chain]]\nuse = "twilio"', '[[chain]]\nuse = "shout:Shout"\n\n[[chain]]\nuse = "twilio"'))
    with pytest.raises(ConfigError, match=r"chain\[1\]\.use: the transport must be the first stage"):
        load_vertical(path)


def test_a_processor_module_in_the_current_directory_is_found(tmp_path, monkeypatch):
    path = with_processor(tmp_path, '[[chain]]\nuse = "shout_in_cwd:Shout"\nending = "!"')
    here = tmp_path / "project"
    here.mkdir()
    (here / "shout_in_cwd.py").write_text(SHOUT)
    monkeypatch.chdir(here)
    monkeypatch.setattr("sys.path", list(sys.path))
    stage = load_vertical(path).chain[3]
    assert stage.name == "shout_in_cwd:Shout" and stage.options.model_dump(exclude_unset=True) == {"ending": "!"}
