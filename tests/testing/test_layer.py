"""The testing layer stays out of production and out of unrelated test runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES
from tollbridge.testing.offline import OfflineScript, brain_script

EXAMPLES = Path(__file__).parents[2] / "examples"


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_the_pytest_plugin_imports_nothing_heavy_until_a_fixture_is_used() -> None:
    run = _python(
        "import sys, pytest\n"
        "before = set(sys.modules)\n"
        "import tollbridge.testing.plugin\n"
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    assert run.returncode == 0, run.stderr
    loaded = run.stdout.split()
    assert set(loaded) <= {"tollbridge", "tollbridge.errors", "tollbridge.testing",
                           "tollbridge.testing.plugin"}, loaded


def test_the_framework_never_imports_the_testing_layer() -> None:
    run = _python(
        "import sys\n"
        "from tollbridge import load_vertical\n"
        "from tollbridge.transports.twilio.server import create_app\n"
        "load_vertical('examples/salon')\n"
        "print(' '.join(m for m in sys.modules if m.startswith('tollbridge.testing')))"
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == []


def test_without_the_extra_the_testing_layer_names_the_install_command() -> None:
    run = _python(
        "import sys\n"
        "sys.modules['aiohttp'] = None  # as if the testing extra were not installed\n"
        "import tollbridge.testing.fakes.deepgram_listen"
    )
    assert run.returncode != 0
    assert "pip install 'tollbridge[testing]'" in run.stderr
    assert "aiohttp" in run.stderr


def test_tollbridge_call_without_the_extra_is_one_error_line(tmp_path: Path) -> None:
    run = _python(
        "import sys\n"
        "sys.modules['aiohttp'] = None\n"
        "from tollbridge.cli import app\n"
        f"sys.argv = ['tollbridge', 'call', 'examples/salon', '--audio', "
        f"'{FIXTURES / 'calls' / 'salon_booking.wav'}', '--offline']\n"
        "app()"
    )
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert errors and "pip install 'tollbridge[testing]'" in errors[0], run.stderr
    assert "Traceback" not in run.stderr


@pytest.fixture
def salon_script() -> OfflineScript:
    from tollbridge.config import load_vertical

    script = brain_script(load_vertical(EXAMPLES / "salon"), None)
    assert isinstance(script, OfflineScript)
    return script


def _reply(script: OfflineScript, heard: str) -> dict:
    turn = dict(script.check(heard))
    script.advance()
    return turn


def test_the_offline_brain_calls_the_tool_the_caller_named_then_says_so(salon_script) -> None:
    assert _reply(salon_script, "What are your opening hours?") == {
        "tool_calls": [{"name": "opening_hours", "arguments": {}}]}
    assert _reply(salon_script, '{"days": []}') == {"text": "I looked that up for you."}


def test_the_offline_brain_ends_the_call_on_goodbye(salon_script) -> None:
    assert _reply(salon_script, "Okay thanks, goodbye.") == {
        "tool_calls": [{"name": "end_call", "arguments": {}}]}
    assert _reply(salon_script, '{"ending_call": true}') == {"text": "Thanks for calling. Goodbye!"}


def test_the_offline_brain_s_replies_depend_on_the_request_alone(salon_script) -> None:
    """Two calls at once: one's tool call does not change the other's next reply."""
    assert "tool_calls" in _reply(salon_script, "What are your opening hours?")
    assert _reply(salon_script, "Hello there") == {"text": "You said: Hello there"}
    assert _reply(salon_script, '{"days": []}') == {"text": "I looked that up for you."}


def test_the_offline_brain_repeats_what_it_heard_otherwise(salon_script) -> None:
    assert _reply(salon_script, "I'd like a haircut on Friday") == {
        "text": "You said: I'd like a haircut on Friday"}


def test_the_offline_brain_never_invents_arguments() -> None:
    from tollbridge.config import load_vertical

    script = brain_script(load_vertical(EXAMPLES / "salon"), None)
    # find_slots needs a day: naming it does not call it with made-up arguments
    assert "tool_calls" not in _reply(script, "can you find slots")


def test_a_cassette_s_replies_come_in_order_whatever_was_recognised() -> None:
    from tollbridge.config import load_vertical

    replies = [{"match": "haircut", "text": "Sure."}, {"match": "Friday", "text": "Friday works."}]
    script = brain_script(load_vertical(EXAMPLES / "salon"), replies)
    assert _reply(script, "something else entirely") == replies[0]
    assert _reply(script, "") == replies[1]
    assert _reply(script, "bye") == {"tool_calls": [{"name": "end_call", "arguments": {}}]}



def test_offline_without_the_recogniser_s_extra_names_the_install_command(monkeypatch) -> None:
    import importlib.util

    from tollbridge.config import load_vertical
    from tollbridge.testing.offline import OfflineError, offline

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "faster_whisper" else real(name, *args))
    with pytest.raises(OfflineError, match=r"pip install 'tollbridge\[offline\]'"):
        offline(load_vertical(EXAMPLES / "salon"))


def test_a_vertical_that_hears_the_caller_itself_cannot_run_offline() -> None:
    from tollbridge.config import load_vertical
    from tollbridge.testing.offline import OfflineError, offline

    with pytest.raises(OfflineError, match=r"openai\.realtime hears the caller itself"):
        offline(load_vertical(EXAMPLES / "real_estate" / "realtime.vertical.toml"))
