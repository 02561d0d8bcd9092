"""The command line as a user runs it: real processes, real ports."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import wave
from decimal import Decimal
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest

from tests.cli.warm_cli import run_cli
from tests.conftest import FIXTURES
from tollbridge.transports.twilio.signature import SignatureChecker

ROOT = Path(__file__).resolve().parents[2]
TOLLBRIDGE = [sys.executable, "-m", "tollbridge.cli"]


def run(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT,
        fresh: bool = False) -> subprocess.CompletedProcess:
    """The command's exit status, stdout and stderr. It runs in a process of its own forked
    from a warm one (see warm_cli); `fresh` starts a new interpreter for it instead."""
    env = {**os.environ, **(env or {})}
    if fresh:
        return subprocess.run([*TOLLBRIDGE, *args], capture_output=True, text=True, cwd=cwd,
                              env=env, timeout=120)
    return run_cli(list(args), env=env, cwd=cwd)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_validate_prints_each_chain_and_exits_zero():
    done = run("validate", "examples/", env={"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert "4 vertical(s) valid" in done.stdout
    assert "salon: agents (the first answers)" in done.stdout
    [colour] = [line for line in done.stdout.splitlines() if line.startswith("│ colour ")]
    assert "booking" in colour and "gpt-4o " in colour and "aura-2-athena-en" in colour
    assert "fallback" in done.stdout and "deepgram.tts" in done.stdout
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == len(set(warnings))  # each printed once
    assert any(w.startswith("warning: sales: chain[2].fallback (openai.llm): prompt caching "
                            "cannot take effect") for w in warnings)
    [disputed] = [w for w in warnings if "readings disagree" in w]  # shared by all four
    assert "deepgram stt nova-3 charged at 0.0048/minute" in disputed


def test_validate_and_serve_refuse_a_model_without_a_price(tmp_path):
    text = (FIXTURES / "frontdesk" / "vertical.toml").read_text().replace(
        'use = "deepgram.stt"', 'use = "deepgram.stt"\nmodel = "nova-2-phonecall"')
    for name in ("prompt.md", "tools.py"):
        (tmp_path / name).write_text((FIXTURES / "frontdesk" / name).read_text())
    (tmp_path / "vertical.toml").write_text(text)
    done = run("validate", str(tmp_path))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert 'chain[1].model: "nova-2-phonecall" has no deepgram stt price' in done.stderr
    assert "priced: nova-3" in done.stderr
    served = run("serve", str(tmp_path), "--port", str(free_port()),
                 env={"TWILIO_AUTH_TOKEN": "t", "DEEPGRAM_API_KEY": "dg", "OPENAI_API_KEY": "sk"})
    assert served.returncode == 1 and "Traceback" not in served.stderr
    assert 'chain[1].model: "nova-2-phonecall" has no deepgram stt price' in served.stderr


def test_a_bad_config_exits_non_zero_with_the_message_and_no_traceback(tmp_path):
    (tmp_path / "vertical.toml").write_text('name = "x"\ntenant = "t"\n[[chain]]\nuse = "twilo"\n')
    done = run("validate", str(tmp_path))
    assert done.returncode == 1
    assert 'chain[0].use: unknown stage kind "twilo"; did you mean "twilio"?' in done.stderr
    assert "Traceback" not in done.stderr


def test_validate_keys_names_the_missing_variable():
    env = {k: "" for k in ("DEEPGRAM_API_KEY", "OPENAI_API_KEY")}
    done = run("validate", "--keys", "examples/salon", env=env)
    assert done.returncode == 1
    assert "environment variable DEEPGRAM_API_KEY is not set" in done.stderr


def test_a_bad_setting_is_one_line_naming_the_variable():
    done = run("validate", "examples/salon", env={"TOLLBRIDGE_LOG_LEVEL": "LOUD"})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: environment variable TOLLBRIDGE_LOG_LEVEL='LOUD': input should be "
        "'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'"
    ]


def test_serve_without_the_auth_token_says_so_and_exits(tmp_path):
    env = {"TWILIO_AUTH_TOKEN": "", "DEEPGRAM_API_KEY": "dg", "OPENAI_API_KEY": "sk",
           "TOLLBRIDGE_SPOOL": str(tmp_path / "spool")}
    done = run("serve", str(FIXTURES / "frontdesk"), "--ledger",
               f"sqlite:///{tmp_path / 'ledger.db'}", env=env)
    assert done.returncode == 1
    assert "error: TWILIO_AUTH_TOKEN is not set" in done.stderr
    assert "Traceback" not in done.stderr


def test_schema_enumerates_every_kind():
    done = run("schema")
    assert done.returncode == 0
    for kind in ("twilio", "deepgram.stt", "openai.llm", "openai.realtime", "cost.meter"):
        assert f'"const": "{kind}"' in done.stdout


def test_serve_answers_a_signed_webhook_and_stops_cleanly(tmp_path):
    port, token = free_port(), "serve-test-token"
    env = {**os.environ, "TWILIO_AUTH_TOKEN": token, "DEEPGRAM_API_KEY": "dg",
           "OPENAI_API_KEY": "sk", "TOLLBRIDGE_SPOOL": str(tmp_path / "spool")}
    server = subprocess.Popen(
        [*TOLLBRIDGE, "serve", str(FIXTURES / "frontdesk"), "--port", str(port),
         "--ledger", f"sqlite:///{tmp_path / 'ledger.db'}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(f"{base}/healthz", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        form = {"CallSid": "CA" + "7" * 32, "From": "+15550107777", "To": "+15550100900"}
        signature = SignatureChecker(token).sign(f"{base}/voice", form)
        response = httpx.post(f"{base}/voice", data=form, headers={"X-Twilio-Signature": signature})
        assert response.status_code == 200
        stream = ElementTree.fromstring(response.text).find("./Connect/Stream")
        assert stream.get("url") == f"ws://127.0.0.1:{port}/media"
    finally:
        server.terminate()
        out, logged = server.communicate(timeout=20)
    assert "voice webhook (paste into Twilio)" in out
    assert server.returncode is not None
    # start-up logs the prices the verticals use that are in dispute (a JSON line)
    [disputed] = [line for line in logged.splitlines() if "prices_disagree" in line]
    assert "deepgram stt nova-3" in disputed and disputed.startswith("{")


def test_call_json_prints_the_record_alone(tmp_path):
    """A caller who says nothing: the listings agent greets them, and the record is all."""
    silence = tmp_path / "silence.wav"
    with wave.open(str(silence), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(b"\x00\x00" * 8000)
    cassette = tmp_path / "nothing.cassette.json"
    cassette.write_text('{"version": 1}')
    done = run("call", "examples/real_estate", "--audio", str(silence), "--cassette",
               str(cassette), "--out", str(tmp_path / "agent.wav"), "--json",
               env={"ONEROOF_DB_URL": f"sqlite:///{tmp_path / 'oneroof.db'}"})
    record = json.loads(done.stdout)  # nothing else on stdout: it pipes
    assert record["vertical"] == "real_estate" and record["ended_by"] == "caller_hung_up"
    assert Decimal(record["total_usd"]) == sum(Decimal(i["usd"]) for i in record["items"])
    # no handoff: the greeting is the listings agent's, and its only line
    assert record["handoffs"] == [] and list(record["agent_usd"]) == ["listings"]
    spoken = [i for i in record["items"] if i.get("agent")]
    assert {(i["item"].partition(":")[0], i["agent"]) for i in spoken} <= {
        ("tts", "listings"), ("tts.unheard", "listings")}
    assert Decimal(record["agent_usd"]["listings"]) == sum(Decimal(i["usd"]) for i in spoken) > 0
    assert "agent audio written to" in done.stderr
    clash = run("call", "examples/real_estate", "--audio", str(silence), "--json",
                "--bridge", "http://127.0.0.1:9")
    assert clash.returncode != 0 and "--json prints a record this process keeps" in clash.stderr


@pytest.mark.long(35)
def test_call_runs_the_readme_call_and_prints_its_cost(tmp_path):
    env = {"GLAMBOOK_DB_URL": f"sqlite:///{tmp_path / 'glambook.db'}", "COLUMNS": "120"}
    out = tmp_path / "agent.wav"
    done = run(
        "call", "examples/salon", "--audio", "tests/fixtures/calls/salon_barge_in_dtmf.wav",
        "--cassette", "tests/fixtures/calls/salon_barge_in_dtmf.cassette.json",
        "--press", "16:1", "--press", "16.1:#", "--out", str(out), env=env, fresh=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "caller  Sorry, what are your opening hours?" in done.stdout
    assert "front_desk  A beard trim is twenty dollars." in done.stdout
    assert "voice.inbound_local" in done.stdout and "/min" in done.stdout
    assert "replay mismatch" not in done.stdout
    # under the cost table, before the totals: the call's prices in dispute
    table, _, rest = done.stdout.partition("warning: ")
    warnings = [line for line in rest.split("\ncall ")[0].splitlines() if "readings disagree" in line]
    assert "voice.inbound_local" in table and len(warnings) == 1
    assert "ended by" in rest
    assert out.stat().st_size > 8000 * 2 * 5  # seconds of agent speech, as 16-bit PCM
