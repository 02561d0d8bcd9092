"""Cost records that survive a database outage.

`SpoolingLedger` fronts a `Ledger`: a write that cannot reach the database is
appended to a JSON-lines spool file (fsynced) and replayed, in order, by a
background task with exponential backoff (tenacity) once the database answers again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_result,
    wait_exponential,
)

from tollbridge.costs.database import TRANSIENT_ERRORS, LedgerError, safe_url
from tollbridge.costs.ledger import Ledger, Report
from tollbridge.costs.lineitem import CallCost

log = structlog.get_logger(__name__)


class SpoolingLedger:
    """A ledger whose writes survive a database outage.

    A write that fails because the database is unreachable is appended to a
    JSON-lines spool file (fsynced) and replayed in order by a background task
    with exponential backoff. While the spool holds anything, new writes queue
    behind it, so an older write never lands after a newer one. A spooled write
    the database rejects for another reason (a bug, bad data) is moved to
    `<spool>.rejected` and logged, so it cannot block the queue. One process
    per spool file.
    """

    def __init__(
        self,
        url: str,
        spool_path: Path | str,
        *,
        retry_initial: float = 0.5,
        retry_max: float = 60.0,
    ) -> None:
        self._url = url
        self._spool = Path(spool_path)
        self._rejected = self._spool.with_name(self._spool.name + ".rejected")
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._ledger: Ledger | None = None
        self._lock = asyncio.Lock()
        self._retry: asyncio.Task[None] | None = None
        self._backlog = len(self._read_spool())  # a previous run may have left some

    @classmethod
    async def open(cls, url: str, spool_path: Path | str, **options: float) -> SpoolingLedger:
        """Start: replay anything a previous run left in the spool. Never fails for an
        unreachable database; it just keeps retrying in the background. A ledger that can
        never work (`LedgerError`) or a spool that cannot be written fails here, at once."""
        _check_writable(Path(spool_path))
        spooling = cls(url, spool_path, **options)
        if not await spooling.flush():
            spooling._schedule_retry()
        return spooling

    @property
    def pending(self) -> int:
        """How many writes are waiting in the spool."""
        return self._backlog

    async def record(self, cost: CallCost) -> None:
        await self._write({"op": "record", "cost": cost.to_dict()})

    async def reconcile(self, call_sid: str, billed_seconds: int, status: str) -> None:
        await self._write(
            {
                "op": "reconcile",
                "call_sid": call_sid,
                "billed_seconds": billed_seconds,
                "status": status,
            }
        )

    async def set_twilio_price(self, call_sid: str, price_usd: Decimal) -> None:
        await self._write(
            {"op": "twilio_price", "call_sid": call_sid, "price_usd": f"{Decimal(price_usd):f}"}
        )

    async def set_recording(self, call_sid: str, recorded_seconds: int) -> None:
        await self._write(
            {"op": "recording", "call_sid": call_sid, "recorded_seconds": recorded_seconds}
        )

    async def expire_pending(self, received_before: dt.datetime) -> list[dict[str, Any]]:
        """Expire callbacks for calls never recorded; nothing while writes wait in the
        spool (a spooled record may still claim its callback). Raises if unreachable."""
        async with self._lock:
            if self._backlog:
                return []
            return await (await self._connected()).expire_pending(received_before)

    async def get(self, call_sid: str) -> CallCost | None:
        """Read through to the database (raises if it is unreachable)."""
        return await (await self._connected()).get(call_sid)

    async def report(self, **filters: Any) -> Report:
        return await (await self._connected()).report(**filters)

    async def flush(self) -> bool:
        """Replay the spool now; True when it is empty and the database reachable."""
        async with self._lock:
            lines = await asyncio.to_thread(self._read_spool)
            self._backlog = len(lines)
            done = 0
            try:
                await self._connected()
                for line in lines:
                    await self._replay(line)
                    done += 1
            except TRANSIENT_ERRORS as exc:
                log.warning(
                    "ledger unreachable; keeping spool",
                    url=safe_url(self._url),
                    spooled=len(lines) - done,
                    error=repr(exc),
                )
                return False
            finally:
                if done:
                    await asyncio.to_thread(self._rewrite_spool, lines[done:])
                    self._backlog = len(lines) - done
            if done:
                log.info("ledger spool flushed", writes=done)
            return True

    async def close(self) -> None:
        """Stop retrying and close the database; the spool stays on disk for the next run."""
        if self._retry is not None:
            self._retry.cancel()
            await asyncio.gather(self._retry, return_exceptions=True)
        if self._ledger is not None:
            await self._ledger.close()
            self._ledger = None

    async def __aenter__(self) -> SpoolingLedger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _write(self, op: dict[str, Any]) -> None:
        async with self._lock:
            if not self._backlog:
                try:
                    await self._apply(op)
                    return
                except TRANSIENT_ERRORS as exc:
                    log.warning(
                        "ledger write failed; spooling it",
                        url=safe_url(self._url),
                        op=op["op"],
                        error=repr(exc),
                    )
                except Exception:  # spooled anyway; a replay that fails again lands in .rejected
                    log.exception("ledger write failed unexpectedly; spooling it", op=op["op"])
            op = {**op, "spooled_at": dt.datetime.now(dt.UTC).isoformat()}
            await asyncio.to_thread(self._append, json.dumps(op))
            self._backlog += 1
        self._schedule_retry()

    async def _connected(self) -> Ledger:
        if self._ledger is None:
            self._ledger = await Ledger.open(self._url)
        return self._ledger

    async def _apply(self, op: Mapping[str, Any]) -> None:
        ledger = await self._connected()
        if op["op"] == "record":
            await ledger.record(CallCost.from_dict(op["cost"]))
        elif op["op"] == "reconcile":
            await ledger.reconcile(op["call_sid"], op["billed_seconds"], op["status"])
        elif op["op"] == "twilio_price":
            await ledger.set_twilio_price(op["call_sid"], Decimal(op["price_usd"]))
        elif op["op"] == "recording":
            await ledger.set_recording(op["call_sid"], op["recorded_seconds"])
        else:
            raise ValueError(f"unknown spooled operation {op['op']!r}")

    async def _replay(self, line: str) -> None:
        try:
            await self._apply(json.loads(line))
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:  # a write that can never succeed must not block the rest
            log.error("spooled ledger write rejected", error=repr(exc), file=str(self._rejected))
            await asyncio.to_thread(self._append, line, self._rejected)

    def _schedule_retry(self) -> None:
        if self._retry is None or self._retry.done():
            self._retry = asyncio.create_task(self._retry_loop())

    async def _retry_loop(self) -> None:
        """Flush after `retry_initial`, then at doubling intervals up to `retry_max`, until
        the spool is empty (a failure is logged and retried, never the end of the loop)."""
        await asyncio.sleep(self._retry_initial)
        retrying = AsyncRetrying(
            retry=retry_if_result(lambda flushed: not flushed) | retry_if_exception_type(),
            wait=wait_exponential(multiplier=2 * self._retry_initial, max=self._retry_max),
            before_sleep=self._flush_failed,
        )
        await retrying(self.flush)

    def _flush_failed(self, state: RetryCallState) -> None:
        if state.outcome is not None and state.outcome.failed:  # e.g. a broken URL
            log.error("ledger spool flush failed", url=safe_url(self._url),
                      exc_info=state.outcome.exception())

    def _read_spool(self) -> list[str]:
        try:
            text = self._spool.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if line.strip()]

    def _append(self, line: str, path: Path | None = None) -> None:
        path = path or self._spool
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as spool:
            spool.write(line + "\n")
            spool.flush()
            os.fsync(spool.fileno())

    def _rewrite_spool(self, lines: list[str]) -> None:
        """Replace the spool atomically, so a crash leaves the old or the new one, never half."""
        tmp = self._spool.with_name(self._spool.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, self._spool)


def _check_writable(spool: Path) -> None:
    """Fail at start-up, not at the first outage, if writes could not be spooled."""
    existed = spool.exists()
    try:
        spool.parent.mkdir(parents=True, exist_ok=True)
        with spool.open("a", encoding="utf-8"):
            pass
        if not existed:  # an empty spool is no spool: leave nothing behind
            spool.unlink()
    except OSError as error:
        raise LedgerError(
            f"ledger spool {spool} cannot be written: {error.strerror or error}"
        ) from None
