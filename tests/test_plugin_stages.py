"""A third-party plugin, installed with pip, found through its real entry points.

`tests/fixtures/plugin` is a distribution like one a user would publish: a
TTS provider kind and a processor kind in the ``tollbridge.stages`` group.
It is pip-installed into a folder of its own, and the `tollbridge` command
runs with that folder on its path, as it would in a user's environment: the
registry finds the kinds the way it finds the built-in ones.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import FIXTURES

pytestmark = pytest.mark.long(25)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CALL = FIXTURES / "calls" / "real_estate_hangup"
ACME_PRICE = '''
[[prices]]
provider = "acme"
item = "tts"
model = "aura-2"  # each agent's voice: aura-2-andromeda-en, aura-2-orion-en
usd = "0.020"
unit = "1k chars"
granularity = "unit"
source = "Acme contract"
'''


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", str(site), str(FIXTURES / "plugin")],
        check=True, capture_output=True, timeout=120,
    )
    return site


def tollbridge(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tollbridge.cli", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=120,
    )


def acme_vertical(tmp_path: Path) -> Path:
    """The real-estate line with Acme's voice and Acme's digit reader before it."""
    folder = tmp_path / "real_estate"
    shutil.copytree(EXAMPLES / "real_estate", folder)
    path = folder / "vertical.toml"
    text = path.read_text()
    text = text.replace('use = "deepgram.tts"', 'use = "acme.say_digits"\n\n[[chain]]\nuse = "acme.tts"')
    path.write_text(text + ACME_PRICE)
    return path


def test_validate_lists_the_plugin_kinds_in_the_chain(plugin_site, tmp_path):
    path = acme_vertical(tmp_path)
    result = tollbridge(plugin_site, "validate", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"acme\.say_digits\s*│\s*processor", result.stdout)
    assert re.search(r"acme\.tts\s*│\s*tts\s*│\s*—\s*│\s*mulaw/8000", result.stdout)


def test_a_plugin_option_error_names_the_key(plugin_site, tmp_path):
    path = acme_vertical(tmp_path)
    path.write_text(path.read_text().replace('use = "acme.say_digits"', 'use = "acme.say_digits"\njoiner = 1'))
    result = tollbridge(plugin_site, "validate", str(path), cwd=tmp_path)
    assert result.returncode != 0
    assert "chain[3].joiner: Input should be a valid string (got 1)" in result.stderr


def test_without_the_plugin_the_kind_is_unknown(tmp_path):
    result = tollbridge(tmp_path, "validate", str(acme_vertical(tmp_path)), cwd=tmp_path)
    assert result.returncode != 0
    assert 'chain[3].use: unknown stage kind "acme.say_digits"' in result.stderr


def test_a_replayed_call_runs_through_the_plugin_and_bills_its_provider(plugin_site, tmp_path):
    result = tollbridge(
        plugin_site, "call", str(acme_vertical(tmp_path)), "--audio", f"{CALL}.wav",
        "--cassette", f"{CALL}.cassette.json", "--out", str(tmp_path / "agent.wav"), cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "replay mismatch" not in result.stdout
    spoken = " ".join(result.stdout.split())
    assert "listings Yes, one seven Oak Avenue" in spoken  # the digit reader ran before the TTS
    [row] = [line for line in result.stdout.splitlines() if "tts:aura-2-andromeda-en" in line]
    _item, provider, agent, quantity, unit, unit_price, usd = (
        c.strip() for c in row.strip("│ ").split("│"))
    assert agent == "listings"
    assert (provider, unit, Decimal(unit_price)) == ("acme", "char", Decimal("0.00002"))
    assert Decimal(usd) == Decimal(quantity) * Decimal("0.00002")
    assert (tmp_path / "agent.wav").stat().st_size > 44
