"""Logs: one configured stream, call context on every line, secrets never written."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import warnings
from pathlib import Path

import pytest
import structlog
from loguru import logger as loguru_logger

from tests.costs.conftest import pg_schema
from tests.costs.test_spool import dead_url, free_port, proxy
from tollbridge import logs
from tollbridge.costs.spool import SpoolingLedger


@pytest.fixture(autouse=True)
def restore_logging():
    """configure() binds the (captured) stderr of this test; put the defaults back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    structlog.reset_defaults()
    loguru_logger.remove()
    loguru_logger.add(sys.stderr)


def lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_secrets_are_redacted_by_key_and_by_shape(capsys):
    logs.configure("INFO", json=True)
    log = logs.get_logger(call_sid="CA1", tenant="glambook", vertical="salon")
    log.info("provider_connected", api_key="sk-live-abcdef123456", auth_token="tok_123",
             url="wss://api.example/v1?token=abc123&model=nova-3",
             header="Authorization: Token dg-secret-key", note="key sk-proj-ABCDEFGH12345678 used")
    [line] = lines(capsys)
    text = json.dumps(line)
    for secret in ("sk-live-abcdef123456", "tok_123", "abc123", "dg-secret-key", "ABCDEFGH12345678"):
        assert secret not in text
    assert line["api_key"] == logs.REDACTED and "model=nova-3" in line["url"]
    assert (line["call_sid"], line["tenant"], line["vertical"]) == ("CA1", "glambook", "salon")


def test_pipecat_loguru_records_join_the_same_stream(capsys):
    logs.configure("INFO", json=True)
    loguru_logger.info("DeepgramSTTService#0: connected with api_key=dg-123456789")
    [line] = [entry for entry in lines(capsys) if entry.get("module")]
    assert line["event"].startswith("DeepgramSTTService#0: connected")
    assert "dg-123456789" not in line["event"]


def test_a_logger_made_before_configure_follows_it(capsys):
    """Modules create their loggers at import, before the CLI configures logging."""
    early = logs.get_logger(component="bookkeeper")
    logs.configure("WARNING", json=True)
    early.info("call_priced", total_usd="0.01")
    early.warning("ledger_unreachable", url="postgresql://app:hunter2@db/ledger", api_key="sk-x")
    [line] = lines(capsys)
    assert (line["event"], line["component"], line["api_key"]) == (
        "ledger_unreachable", "bookkeeper", logs.REDACTED)
    assert line["url"] == f"postgresql://app:{logs.REDACTED}@db/ledger"



def test_library_records_and_their_tracebacks_are_json_lines_too(capsys):
    logs.configure("INFO", json=True)
    api_key = "sk-live-abcdef123456"  # a local of the failing frame
    try:
        raise ConnectionRefusedError(111, f"Connect call failed with {api_key}")
    except OSError:
        logging.getLogger("asyncpg.pool").warning("pool retrying %s", "postgresql://a:pw@db/x",
                                                   exc_info=True)
    logging.getLogger("httpx").info("HTTP Request: GET https://example.test")  # chatter
    [line] = lines(capsys)
    assert (line["logger"], line["level"]) == ("asyncpg.pool", "warning")
    assert line["event"] == f"pool retrying postgresql://a:{logs.REDACTED}@db/x"
    [error] = line["exception"]
    assert error["exc_type"] == "ConnectionRefusedError"
    assert api_key not in json.dumps(line) and "locals" not in error["frames"][0]


async def test_an_outage_logs_one_json_object_per_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """asyncpg logs a dropped pool connection through stdlib logging, with a traceback:
    it must arrive as one JSON line like ours, the traceback a field of it."""
    port = free_port()
    logs.configure("INFO", json=True)
    async with pg_schema() as pg_url:
        async with proxy(port):
            ledger = await SpoolingLedger.open(dead_url(port, pg_url), tmp_path / "spool",
                                               retry_initial=0.05, retry_max=0.1)
        await ledger.reconcile("CA" + "5" * 32, 61, "completed")  # the outage: spooled
        await asyncio.sleep(1.5)  # the pool tries to restore its connection; retries fail
        await ledger.close()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    by_library = [line for line in lines if line.get("logger", "").startswith("asyncpg")]
    assert by_library, [line["event"] for line in lines]
    assert any(line.get("exception") for line in by_library)  # the traceback, as a field
    assert any(line["event"] == "ledger write failed; spooling it" for line in lines)


def test_python_warnings_are_json_lines_too(capsys):
    logs.configure("WARNING", json=True)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("audioop is deprecated", DeprecationWarning, stacklevel=1)
    [line] = lines(capsys)
    assert line["logger"] == "py.warnings" and "audioop is deprecated" in line["event"]
