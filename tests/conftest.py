"""Shared test harness: the real bridge under uvicorn with providers replayed by local fakes."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tollbridge.bookkeeper import Bookkeeper
from tollbridge.config import Vertical, load_vertical
from tollbridge.costs.catalog import Catalog
from tollbridge.costs.usage import CallUsage
from tollbridge.phrase_cache import PHRASES
from tollbridge.providers.cassette import Cassette, Replay, replay
from tollbridge.session import CallSession
from tollbridge.transports.twilio.server import (
    Bridge,
    BridgeSettings,
    StatusUpdate,
    create_app,
    running,
)
from tollbridge.transports.twilio.softphone import Softphone

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


@dataclass
class RunningBridge:
    bridge: Bridge
    url: str
    fakes: Replay
    usages: list[CallUsage] = field(default_factory=list)
    sessions: list[CallSession] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)

    def softphone(self, *, signed: bool = True) -> Softphone:
        return Softphone(self.bridge.media_url, auth_token=AUTH_TOKEN if signed else None)

    async def finished(self, count: int = 1, timeout: float = 10.0) -> list[CallUsage]:
        """Wait until `count` calls have left their usage record."""
        async with asyncio.timeout(timeout):
            while len(self.usages) < count:
                await asyncio.sleep(0.02)
        return self.usages


@contextlib.asynccontextmanager
async def running_bridge(
    vertical: Vertical, cassette: Cassette, *, speech_timeout: float = 0.3
) -> AsyncIterator[RunningBridge]:
    async with replay(cassette, vertical) as fakes:
        state: dict[str, RunningBridge] = {}

        async def on_finished(usage: CallUsage) -> None:
            state["it"].usages.append(usage)

        async def on_session(session: CallSession) -> None:
            state["it"].sessions.append(session)

        async def on_status(update: StatusUpdate) -> None:
            state["it"].statuses.append(update)

        settings = BridgeSettings(
            auth_token=AUTH_TOKEN,
            base_urls=fakes.base_urls,
            env={**os.environ, **fakes.env},
            user_speech_timeout=speech_timeout,
        )
        bridge = Bridge(
            [vertical], settings, on_finished=on_finished, on_session=on_session,
            on_status=on_status, pricer=Bookkeeper(Catalog.load(), [vertical], None).price,
        )
        async with running(create_app(bridge)) as url:
            bridge.settings.public_url = url
            state["it"] = RunningBridge(bridge=bridge, url=url, fakes=fakes)
            yield state["it"]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep `--dist loadgroup` grouping on pytest 9.2.

    pytest-xdist names a test's `xdist_group` by appending `@group` to its node id, which
    the scheduler reads; it still writes the old `_nodeid` field, which pytest 9.2 no
    longer reads (pytest-dev/pytest-xdist#1386), so the groups are silently ignored. This
    writes the suffix where pytest 9.2 keeps the id; it does nothing once xdist does it.
    """
    _longest_first(config, items)
    if not getattr(config.option, "loadgroup", False):
        return
    from _pytest.nodeid import NodeId

    for item in items:
        names = {str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                 for mark in item.iter_markers("xdist_group")}
        if names and "@" not in item.nodeid and hasattr(item, "_id"):
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(sorted(names))}")


DURATIONS_KEY = "tollbridge/durations"
"""Each test's seconds in the last run, in pytest's cache: the next run starts the longest first."""
_durations: dict[str, float] = {}


def _longest_first(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the tests longest first, by their time in the last run, so the workers are not
    left waiting on a long real-time call handed out last. Tests of one xdist group keep
    together, at their group's total. With nothing cached, the order is left as collected."""
    cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
    last: dict[str, float] = cache.get(DURATIONS_KEY, {}) if cache else {}
    if not last:
        return

    def group(item: pytest.Item) -> str:
        names = sorted(str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                       for mark in item.iter_markers("xdist_group"))
        return "@" + "_".join(names) if names else item.nodeid

    totals: dict[str, float] = {}
    for item in items:
        key = group(item)
        totals[key] = totals.get(key, 0.0) + last.get(item.nodeid, 0.0)
    position = {id(item): n for n, item in enumerate(items)}
    items.sort(key=lambda item: (-totals[group(item)], group(item), position[id(item)]))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    nodeid = report.nodeid.split("@")[0] if "@" in report.nodeid.rpartition("::")[2] else report.nodeid
    _durations[nodeid] = _durations.get(nodeid, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Where the tests ran (the xdist controller, or a serial run), remember their times."""
    config = session.config
    cache = getattr(config, "cache", None)
    if hasattr(config, "workerinput") or cache is None or not _durations:
        return
    known = cache.get(DURATIONS_KEY, {})  # a run of some tests keeps the others' times
    known.update({nodeid: round(seconds, 2) for nodeid, seconds in _durations.items()})
    cache.set(DURATIONS_KEY, dict(sorted(known.items())))


@pytest.fixture(autouse=True)
def empty_phrase_cache() -> None:
    """Each test starts as a fresh process does: no greeting recorded yet."""
    PHRASES.clear()


@pytest.fixture
def frontdesk() -> Vertical:
    return load_vertical(FIXTURES / "frontdesk")
