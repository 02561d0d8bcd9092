"""The example verticals' tools, loaded the way the framework loads them, on real databases."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import PG_URL, connect_postgres
from tollbridge.tools import Tool, ToolContext, load_tools

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CALLER = "+15550100999"


class ExampleTools:
    """A vertical's tools by name, the module they came from, and a way to call them."""

    def __init__(self, name: str, tenant: str) -> None:
        self.name, self.tenant = name, tenant
        tools = load_tools("tools:TOOLS", EXAMPLES / name)
        self.tools: dict[str, Tool] = {tool.name: tool for tool in tools}
        self.module: ModuleType = sys.modules[tools[0].handler.__module__]
        self.hung_up: list[str] = []
        """call_sids whose tools asked to end the call."""

    def call(self, **fields: Any) -> ToolContext:
        sid = fields.pop("call_sid", f"CA{uuid.uuid4().hex}")

        async def end_call() -> None:
            self.hung_up.append(sid)

        return ToolContext(
            **{
                "call_sid": sid,
                "tenant": self.tenant,
                "vertical": self.name,
                "folder": EXAMPLES / self.name,
                "caller": CALLER,
                "end_call": end_call,
                **fields,
            }
        )

    async def run(self, tool: str, call: ToolContext | None = None, **args: Any) -> Any:
        return await self.tools[tool].handler(args, call or self.call())


@asynccontextmanager
async def pg_schema() -> AsyncIterator[str]:
    """The real PostgreSQL server, in a schema of our own that is dropped afterwards."""
    schema = f"tb_examples_{uuid.uuid4().hex[:12]}"
    conn = await connect_postgres()
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_URL}{'&' if '?' in PG_URL else '?'}search_path={schema}"
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each test using it runs on a SQLite file and on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'vertical.db'}"
        return
    async with pg_schema() as url:
        yield url


TODAY = "2026-11-24"  # a Tuesday: "Friday" and "Saturday" resolve the same way every run


def example_env(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    monkeypatch.setenv("GLAMBOOK_DB_URL", f"sqlite:///{folder / 'glambook.db'}")
    monkeypatch.setenv("GLAMBOOK_TODAY", TODAY)
    monkeypatch.setenv("ONEROOF_DB_URL", f"sqlite:///{folder / 'oneroof.db'}")
    monkeypatch.setenv("ONEROOF_TODAY", TODAY)
    monkeypatch.setenv("BRIGHTPATH_RESULTS", str(folder / "leads.jsonl"))


@pytest.fixture
def example_databases(tmp_path, monkeypatch):
    """The example verticals' tools on databases of this test's own, on a fixed day."""
    example_env(monkeypatch, tmp_path)
