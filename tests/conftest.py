"""Shared test harness: the real bridge under uvicorn with providers replayed by local fakes."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tollbridge.config import Vertical, load_vertical
from tollbridge.phrase_cache import PHRASES
from tollbridge.testing.bridge import RunningBridge
from tollbridge.testing.bridge import running_bridge as testing_bridge
from tollbridge.testing.cassette import Cassette

FIXTURES = Path(__file__).parent / "fixtures"
AUTH_TOKEN = "test-auth-token-0123456789abcdef"

PG_URL = os.environ.get("TOLLBRIDGE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
"""The PostgreSQL server the ledger and example tests use, each in a schema of its own."""
REQUIRE_POSTGRES = os.environ.get("TOLLBRIDGE_REQUIRE_POSTGRES", "") not in ("", "0")
"""Set (CI does): an unreachable server fails those tests instead of skipping them."""
_pg_unreachable: list[str] = []
"""Why the server could not be reached, once per process: later tests skip at once."""


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _no_postgres(reason: str) -> NoReturn:
    if REQUIRE_POSTGRES:
        pytest.fail(f"{reason} (TOLLBRIDGE_REQUIRE_POSTGRES is set, so this fails)", pytrace=False)
    pytest.skip(reason)


async def connect_postgres() -> asyncpg.Connection:
    """A connection to the test server; the test skips (or, with TOLLBRIDGE_REQUIRE_POSTGRES,
    fails) when nothing answers there. A server that answers but refuses us is an error."""
    if not _pg_unreachable:
        try:
            return await asyncpg.connect(PG_URL, timeout=10)
        except (OSError, TimeoutError, asyncpg.CannotConnectNowError) as exc:
            _pg_unreachable.append(
                f"PostgreSQL not reachable at {_without_password(PG_URL)}"
                f" ({exc or type(exc).__name__}):"
                " start one there or set TOLLBRIDGE_TEST_PG_URL to one"
            )
    _no_postgres(_pg_unreachable[0])


def running_bridge(
    vertical: Vertical, cassette: Cassette, *, speech_timeout: float = 0.3
) -> contextlib.AbstractAsyncContextManager[RunningBridge]:
    """The testing layer's running bridge, with this suite's auth token and a short turn end."""
    return testing_bridge(vertical, cassette, auth_token=AUTH_TOKEN,
                          user_speech_timeout=speech_timeout)


def pytest_assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    """Audio is compared as bytes: say where two streams part, instead of letting pytest
    diff a call's worth of them byte by byte (which takes minutes)."""
    if op != "==" or not isinstance(left, bytes | bytearray) or not isinstance(
            right, bytes | bytearray):
        return None
    at = next((i for i, (a, b) in enumerate(zip(left, right, strict=False)) if a != b),
              min(len(left), len(right)))
    return [f"{len(left)} bytes == {len(right)} bytes", f"they first differ at byte {at}"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first: the workers take tests in this order, so the suite's wall time is not
    a long call that happened to be collected last."""

    def seconds(item: pytest.Item) -> float:
        marker = item.get_closest_marker("long")
        return marker.args[0] if marker else 0.0

    items.sort(key=seconds, reverse=True)


@pytest.fixture(autouse=True)
def empty_phrase_cache() -> None:
    """Each test starts as a fresh process does: no greeting recorded yet."""
    PHRASES.clear()


@pytest.fixture
def frontdesk() -> Vertical:
    return load_vertical(FIXTURES / "frontdesk")
