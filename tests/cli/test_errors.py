"""Every way a command can be given something wrong: one `error:` line, exit 1, no traceback."""

from __future__ import annotations

import socket
import subprocess
import wave
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.cli.test_commands import ROOT, free_port, run
from tests.conftest import PG_URL, connect_postgres

# The commands run forked from a warm parent in each worker (see warm_cli).

SERVE_ENV = {"TWILIO_AUTH_TOKEN": "t", "DEEPGRAM_API_KEY": "dg", "OPENAI_API_KEY": "sk"}
VERTICAL = str(ROOT / "tests" / "fixtures" / "frontdesk")


def error_line(done: subprocess.CompletedProcess, *facts: str) -> str:
    """The one `error:` line of a command that failed as it should; it names each fact."""
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-2000:]
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    for fact in facts:
        assert fact in line
    return line


def test_estimate_names_the_toml_error(tmp_path):
    (tmp_path / "bad.toml").write_text("this is [not toml\n")
    error_line(run("costs", "estimate", str(tmp_path / "bad.toml")),
               "bad.toml: not valid TOML", "line 1")


def test_estimate_given_a_vertical_file_says_what_it_wants():
    line = error_line(run("costs", "estimate", "examples/salon/vertical.toml"),
                      "vertical.toml: a vertical file, not a usage profile")
    assert "examples/profiles/" in line


def test_report_refuses_a_url_it_cannot_read():
    error_line(run("costs", "report", "--db", "nonsense"), "unsupported ledger URL 'nonsense'")
    mysql = run("costs", "report", "--db", "mysql://app:hunter2@db/ledger")
    error_line(mysql, "unsupported ledger URL 'mysql://app:")
    assert "hunter2" not in mysql.stderr


def test_report_on_a_file_that_is_no_database_says_so_and_exits(tmp_path):
    (tmp_path / "notes.txt").write_text("not a database, " * 100)
    error_line(run("costs", "report", "--db", f"sqlite:///{tmp_path / 'notes.txt'}"),
               "notes.txt: file is not a database")  # exits: its connection is closed


def test_report_on_a_missing_ledger_says_so_and_creates_nothing(tmp_path):
    error_line(run("costs", "report", cwd=tmp_path), "no ledger at sqlite:///tollbridge-ledger.db")
    assert list(tmp_path.iterdir()) == []
    missing = tmp_path / "elsewhere.db"
    error_line(run("costs", "report", "--db", f"sqlite:///{missing}"), str(missing))
    assert not missing.exists()


def test_debug_shows_the_traceback():
    done = run("--debug", "costs", "report", "--db", "nonsense")
    assert done.returncode == 1 and "Traceback" in done.stderr
    assert "LedgerError: unsupported ledger URL" in done.stderr


def test_serve_refuses_a_sqlite_ledger_in_a_missing_folder(tmp_path):
    url = f"sqlite:///{tmp_path}/nonexistent/dir/x.db"
    done = run("serve", VERTICAL, "--port", str(free_port()), "--ledger", url,
               env={**SERVE_ENV, "TOLLBRIDGE_SPOOL": str(tmp_path / "spool")})
    error_line(done, url, f"folder {tmp_path}/nonexistent/dir does not exist")
    assert "listening" not in done.stdout


def test_serve_refuses_a_spool_it_cannot_write(tmp_path):
    (tmp_path / "a-file").write_text("")
    spool = tmp_path / "a-file" / "x.spool"  # its "folder" is a file
    done = run("serve", VERTICAL, "--port", str(free_port()),
               "--ledger", f"sqlite:///{tmp_path / 'ledger.db'}",
               env={**SERVE_ENV, "TOLLBRIDGE_SPOOL": str(spool)})
    error_line(done, f"ledger spool {spool} cannot be written")
    assert "listening" not in done.stdout


async def test_serve_refuses_a_postgres_database_that_does_not_exist(tmp_path):
    await (await connect_postgres()).close()  # skipped where no server answers
    parts = urlsplit(PG_URL)
    url = urlunsplit(parts._replace(
        netloc=f"{parts.username}:s3cret@{parts.hostname}:{parts.port or 5432}",
        path="/doesnotexist"))
    done = run("serve", VERTICAL, "--port", str(free_port()), "--ledger", url,
               env={**SERVE_ENV, "TOLLBRIDGE_SPOOL": str(tmp_path / "spool")})
    error_line(done, 'database "doesnotexist" does not exist')
    assert "s3cret" not in done.stderr + done.stdout


@pytest.fixture(autouse=True)
def _no_ledger_url_from_outside(monkeypatch):
    """A ledger URL in the environment would answer for the defaults under test."""
    monkeypatch.delenv("TOLLBRIDGE_LEDGER_URL", raising=False)


CALLS = ROOT / "tests" / "fixtures" / "calls"


def call(tmp_path, audio, cassette=CALLS / "salon_booking.cassette.json",
         vertical="examples/salon") -> subprocess.CompletedProcess:
    return run("call", vertical, "--audio", str(audio), "--cassette", str(cassette),
               "--out", str(tmp_path / "agent.wav"), env={"COLUMNS": "200"})


def tone_wav(path, rate: int, channels: int, seconds: float) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\x10\x00" * channels * int(rate * seconds))


def test_call_names_audio_it_cannot_use(tmp_path):
    (tmp_path / "garbage.mp3").write_bytes(b"not an mp3 at all" * 10)
    error_line(call(tmp_path, tmp_path / "garbage.mp3"),
               "garbage.mp3: not audio that can be read", "WAV, FLAC, MP3 or OGG")
    (tmp_path / "empty.wav").write_bytes(b"")
    error_line(call(tmp_path, tmp_path / "empty.wav"), "empty.wav: the file is empty")
    tone_wav(tmp_path / "silent.wav", 8000, 1, 0)
    error_line(call(tmp_path, tmp_path / "silent.wav"), "silent.wav: holds no audio")


def test_call_names_a_cassette_that_is_not_one(tmp_path):
    tone_wav(tmp_path / "caller.wav", 8000, 1, 1)
    (tmp_path / "list.json").write_text("[1, 2, 3]")
    error_line(call(tmp_path, tmp_path / "caller.wav", tmp_path / "list.json"),
               "list.json: expected a JSON object", "got an array")


def test_call_fails_when_the_replay_strays_and_the_agent_says_nothing(tmp_path):
    """Another vertical's cassette: every request is refused and nothing is said."""
    tone_wav(tmp_path / "caller.wav", 16000, 2, 1)  # converted, not refused
    done = call(tmp_path, tmp_path / "caller.wav",
                vertical="examples/real_estate/realtime.vertical.toml")
    line = error_line(done, "the call did not follow its cassette",
                      "the agent played no audio")
    assert "replay mismatch: openai.realtime" in done.stdout and "ended by" in done.stdout
    assert line.count("error:") == 1


def test_dial_names_the_number_it_cannot_dial():
    error_line(run("dial", "examples/sales", "--to", "+1555", "--public-url", "https://x.test"),
               '--to: "+1555" is not an E.164 phone number', "too short")


def test_an_error_is_described_by_what_the_user_can_act_on():
    from tollbridge.cli import describe

    assert describe(FileNotFoundError(2, "No such file or directory", "a.toml")) == (
        "a.toml: No such file or directory")
    assert describe(ValueError("bad postgresql://app:hunter2@db/x")) == (
        "bad postgresql://app:[redacted]@db/x")
    assert describe(KeyError("chain")) == (
        "unexpected KeyError: 'chain' (run with --debug for the traceback)")


def test_serve_on_a_port_in_use_says_so(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run("serve", VERTICAL, "--port", str(port),
                   "--ledger", f"sqlite:///{tmp_path / 'ledger.db'}",
                   env={**SERVE_ENV, "TOLLBRIDGE_SPOOL": str(tmp_path / "spool")})
    error_line(done, f"cannot listen on 127.0.0.1:{port}", "address already in use")
