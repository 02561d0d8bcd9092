"""SQL on SQLite or PostgreSQL through one small interface.

The ledger writes its SQL once, with `?` placeholders and `{money}` /
`{timestamp}` column types; this module adapts it to aiosqlite or asyncpg.
SQLite gets Decimals as exact TEXT and datetimes as UTC ISO strings;
PostgreSQL gets NUMERIC and TIMESTAMPTZ. A ledger that can never work as
given (a bad URL, a missing database or folder) is a `LedgerError` at once,
rather than an outage to spool through for ever.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiosqlite
import asyncpg
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_incrementing

from tollbridge.errors import TollbridgeError

DEFAULT_LEDGER_URL = "sqlite:///tollbridge-ledger.db"
"""The ledger every command uses unless told otherwise (`--ledger`, `--db`, or
TOLLBRIDGE_LEDGER_URL)."""

# Errors that mean "the database is not reachable right now", as opposed to a bug.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    sqlite3.OperationalError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a replica during failover
)




class LedgerError(TollbridgeError):
    """A ledger that cannot be used as given; the message names its URL (password masked)."""


class Transaction(Protocol):
    """A transaction on either database; SQL uses `?` placeholders."""

    async def execute(self, sql: str, *args: Any) -> None: ...

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]: ...


class Database(Protocol):
    """A connection (or pool) to one ledger database and what differs between the two."""

    types: Mapping[str, str]  # `{money}` / `{timestamp}` column types for migrations
    migration_lock: str | None
    call_lock: str | None  # taken per call_sid, so a record and its callback never interleave

    def transaction(self, *, write: bool = True) -> AbstractAsyncContextManager[Transaction]: ...

    def day_of(self, column: str) -> str:
        """SQL for the UTC day of a stored timestamp, as `YYYY-MM-DD` text."""
        ...

    async def close(self) -> None: ...


def _utc(moment: dt.datetime) -> dt.datetime:
    """Naive datetimes are taken as UTC, so every stored instant is comparable."""
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


LOCKED_ATTEMPTS = 50


def _locked(error: BaseException) -> bool:
    return isinstance(error, sqlite3.OperationalError) and "locked" in str(error)


async def _while_locked(conn: aiosqlite.Connection, statement: str) -> None:
    """Run `statement` (closing its cursor), waiting out a momentary "database is locked".

    While another connection turns a new file to WAL, SQLite can answer a
    pragma or a BEGIN with "locked" without going through the busy handler;
    that passes in milliseconds.
    """
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(_locked),
        stop=stop_after_attempt(LOCKED_ATTEMPTS),
        wait=wait_incrementing(start=0.01, increment=0.01, max=0.1),
        reraise=True,
    ):
        with attempt:
            await (await conn.execute(statement)).close()


class _SQLite:
    """One aiosqlite connection; a lock keeps each transaction to itself."""

    types: Mapping[str, str] = {"money": "TEXT", "timestamp": "TEXT"}
    migration_lock: str | None = None  # BEGIN IMMEDIATE already serialises all writers
    call_lock: str | None = None

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()

    def day_of(self, column: str) -> str:
        return f"substr({column}, 1, 10)"  # stored as UTC ISO 8601 text

    @classmethod
    async def connect(cls, path: str) -> _SQLite:
        conn = await aiosqlite.connect(path, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        try:
            # busy_timeout first; each cursor is closed: `journal_mode` answers with a row,
            # and an unread row keeps the statement open, holding a lock other connections
            # wait on
            for pragma in ("busy_timeout = 5000", "foreign_keys = ON", "journal_mode = WAL"):
                await _while_locked(conn, f"PRAGMA {pragma}")
        except BaseException as error:
            await conn.close()  # its thread would keep the process alive
            if isinstance(error, sqlite3.DatabaseError) and not isinstance(error, TRANSIENT_ERRORS):
                raise LedgerError(f"ledger sqlite:///{path}: {error}") from None
            raise
        return cls(conn)

    @asynccontextmanager
    async def transaction(self, *, write: bool = True) -> AsyncIterator[_SQLite]:
        """Writers take the file's write lock up front; readers (a report) leave it to them."""
        async with self._lock:
            await _while_locked(self._conn, "BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            await self._conn.execute("COMMIT")

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(sql, [self._param(a) for a in args])

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        async with self._conn.execute(sql, [self._param(a) for a in args]) as cursor:
            return [dict(row) for row in await cursor.fetchall()]

    @staticmethod
    def _param(value: Any) -> Any:
        if isinstance(value, Decimal):
            return f"{value:f}"
        if isinstance(value, dt.datetime):
            return _utc(value).isoformat(timespec="microseconds")
        return value

    async def close(self) -> None:
        await self._conn.close()


class _PgTx:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(_numbered(sql), *map(self._param, args))

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return [
            dict(row) for row in await self._conn.fetch(_numbered(sql), *map(self._param, args))
        ]

    @staticmethod
    def _param(value: Any) -> Any:
        return _utc(value) if isinstance(value, dt.datetime) else value


class _Postgres:
    """An asyncpg pool; the pool replaces connections a restarted server dropped."""

    types: Mapping[str, str] = {"money": "NUMERIC", "timestamp": "TIMESTAMPTZ"}
    # Two processes opening the same database must not both run a migration, and a
    # call's record and its status callback must not interleave (each would miss the other).
    migration_lock: str | None = "SELECT pg_advisory_xact_lock(7242, 0)"
    call_lock: str | None = "SELECT pg_advisory_xact_lock(7243, hashtext(?))"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    def day_of(self, column: str) -> str:
        return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"

    @classmethod
    async def connect(cls, dsn: str) -> _Postgres:
        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=4, timeout=5, command_timeout=10
            )
        except asyncpg.PostgresError as error:
            if isinstance(error, TRANSIENT_ERRORS):
                raise
            # a missing database or role, a wrong password: waiting will not fix it
            raise LedgerError(f"ledger {safe_url(dsn)}: {error}") from None
        return cls(pool)

    @asynccontextmanager
    async def transaction(self, *, write: bool = True) -> AsyncIterator[_PgTx]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield _PgTx(conn)

    async def close(self) -> None:
        await self._pool.close()


def _numbered(sql: str) -> str:
    """`?` placeholders to PostgreSQL's `$1, $2, …`."""
    counter = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


def safe_url(url: str) -> str:
    """The URL with any password masked, for logs and error messages."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


async def connect(url: str, *, create: bool = True) -> Database:
    """Open what a ledger URL names: `sqlite:///path.db` (aiosqlite) or `postgresql://…`.

    With `create` false a SQLite file that does not exist is an error, not a new ledger.
    """
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        _check_sqlite_path(url, path, create=create)
        return await _SQLite.connect(str(path))
    if url.startswith(("postgresql://", "postgres://")):
        return await _Postgres.connect(url)
    raise LedgerError(
        f"unsupported ledger URL {safe_url(url)!r}: use sqlite:///relative.db, "
        f"sqlite:////absolute/path.db or postgresql://user@host:port/db"
    )


def _check_sqlite_path(url: str, path: Path, *, create: bool) -> None:
    """A SQLite ledger the process can open, or a `LedgerError` saying why not.

    SQLite reports a missing or read-only folder as "unable to open database
    file", which reads like an outage; named here, it stops the command instead.
    """
    if path.is_dir():
        raise LedgerError(f"ledger {url}: {path} is a folder, not a database file")
    if path.exists():
        return
    if not create:
        raise LedgerError(f"no ledger at {url}: {path} does not exist")
    folder = path.parent
    if not folder.is_dir():
        raise LedgerError(f"ledger {url}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LedgerError(f"ledger {url}: folder {folder} is not writable")
