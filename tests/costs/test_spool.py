"""Writes survive a database outage: spooled to a file, replayed once the database answers."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

from tollbridge.costs.catalog import Catalog
from tollbridge.costs.ledger import Ledger
from tollbridge.costs.lineitem import CallCost
from tollbridge.costs.pricing import price_call
from tollbridge.costs.spool import SpoolingLedger
from tollbridge.costs.usage import CallUsage

from .conftest import PG_URL

MakeUsage = Callable[..., CallUsage]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dead_url(port: int, live_url: str) -> str:
    """The live URL (same schema) but on a port where nothing listens."""
    return live_url.replace("127.0.0.1:5432", f"127.0.0.1:{port}")


@asynccontextmanager
async def proxy(port: int) -> AsyncIterator[None]:
    """PostgreSQL 'coming back' on `port`: a TCP relay to the real server."""
    host, _, real_port = PG_URL.split("@")[1].split("/")[0].partition(":")
    writers: list[asyncio.StreamWriter] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(host, int(real_port or 5432))
        writers.extend([client_w, server_w])
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    server = await asyncio.start_server(relay, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        for writer in writers:
            writer.close()


async def count_calls(url: str, call_sid: str) -> int:
    async with await Ledger.open(url) as ledger:
        report = await ledger.report()
        got = await ledger.get(call_sid)
    assert got is not None
    return sum(row.calls for row in report.tenants)


async def test_unreachable_database_spools_then_flushes_on_next_start(
    pg_url: str, tmp_path: Path, catalog: Catalog, make_usage: MakeUsage
) -> None:
    spool = tmp_path / "spool" / "ledger.jsonl"
    cost = price_call(make_usage(recording=True), catalog)
    down = await SpoolingLedger.open(dead_url(free_port(), pg_url), spool, retry_initial=30)
    await down.record(cost)
    await down.reconcile(cost.call_sid, 125, "completed")
    await down.set_recording(cost.call_sid, 118)
    assert down.pending == 3
    assert await down.expire_pending(dt.datetime.now(dt.UTC)) == []  # not while writes wait
    await down.close()
    ops = [json.loads(line) for line in spool.read_text().splitlines()]
    assert [op["op"] for op in ops] == ["record", "reconcile", "recording"]
    assert CallCost.from_dict(ops[0]["cost"]) == cost

    async with await SpoolingLedger.open(pg_url, spool) as up:
        assert up.pending == 0
        await up.record(cost)  # a duplicate delivery changes nothing
        got = await up.get(cost.call_sid)
    assert spool.read_text() == ""
    assert got is not None and got.billed_seconds == 125
    [recording] = [line for line in got.items if line.item == "recording"]
    assert (got.recorded_seconds, recording.quantity, recording.usd) == (118, 2, Decimal("0.005"))
    assert await count_calls(pg_url, cost.call_sid) == 1


async def test_background_retry_flushes_when_the_database_comes_back(
    pg_url: str, tmp_path: Path, catalog: Catalog, make_usage: MakeUsage
) -> None:
    port = free_port()
    spool = tmp_path / "ledger.jsonl"
    first, second = (price_call(make_usage(), catalog) for _ in range(2))
    ledger = await SpoolingLedger.open(
        dead_url(port, pg_url), spool, retry_initial=0.05, retry_max=0.2
    )
    try:
        await ledger.record(first)
        await ledger.record(second)  # queues behind the first, never overtakes it
        await ledger.set_twilio_price(first.call_sid, Decimal("-0.017"))
        assert ledger.pending == 3
        async with proxy(port):
            for _ in range(100):
                if ledger.pending == 0:
                    break
                await asyncio.sleep(0.05)
            assert ledger.pending == 0
            got = await ledger.get(first.call_sid)
            await ledger.record(second)  # the database is back: a direct write
            assert ledger.pending == 0
            await ledger.close()  # let go of the pool before the relay goes away
    finally:
        await ledger.close()
    assert got is not None and got.drift_usd == 0
    assert await count_calls(pg_url, second.call_sid) == 2


async def test_a_write_that_can_never_succeed_does_not_block_the_spool(
    tmp_path: Path, catalog: Catalog, make_usage: MakeUsage
) -> None:
    spool = tmp_path / "ledger.jsonl"
    cost = price_call(make_usage(), catalog)
    spool.write_text(
        '{"op": "record", "cost": {"half a line\n'
        + json.dumps({"op": "record", "cost": cost.to_dict()})
        + "\n"
    )
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    async with await SpoolingLedger.open(url, spool) as ledger:
        assert ledger.pending == 0
        assert await ledger.get(cost.call_sid) == cost
    assert spool.read_text() == ""
    assert "half a line" in (tmp_path / "ledger.jsonl.rejected").read_text()

