"""The dashboard's pages: overview, calls (and their CSV), one call, the price catalog.

Every figure comes from the ledger's SQL queries (`tollbridge.costs.queries`),
the same ones `costs report` prints, so a page of a 100,000-call ledger costs
a few grouped queries, never a pass over every row in Python. Pages are
rendered on the server; the one script is the vendored chart library drawing
figures the page also shows as a table.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import jinja2
from fastapi import Depends, FastAPI, Form, Request
from fastapi.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles

from tollbridge.costs.catalog import LLM_BILLING_RULE, Catalog
from tollbridge.costs.database import TRANSIENT_ERRORS, LedgerError, safe_url
from tollbridge.costs.ledger import Ledger
from tollbridge.costs.queries import LEGS, CallFilter, leg_of, minutes_of, per_minute
from tollbridge.dashboard.auth import (
    COOKIE,
    SESSION_S,
    Guard,
    NotSignedIn,
    session_cookie,
    token_matches,
)
from tollbridge.logs import get_logger

log = get_logger(component="dashboard")
HERE = Path(__file__).resolve().parent  # the real folder, not an editable install's links
PAGE_SIZE = 50
CSV_BATCH = 2000
_FILTERS = ("tenant", "vertical", "direction", "ended_by")


class BadRequest(Exception):
    """A query parameter that cannot be used; the message names it."""


@dataclass(frozen=True)
class Query:
    """The filters a page was asked for, parsed, and how to ask for them again."""

    where: CallFilter
    floor: Decimal | None
    params: dict[str, str]

    def link(self, path: str, **changes: Any) -> str:
        params = {**self.params, **{k: str(v) for k, v in changes.items() if v is not None}}
        return path + ("?" + urlencode(params) if params else "")


def _day(name: str, text: str) -> dt.datetime:
    try:
        return dt.datetime.combine(dt.date.fromisoformat(text), dt.time(), dt.UTC)
    except ValueError:
        raise BadRequest(f"{name}: {text!r} is not a date (YYYY-MM-DD)") from None


def parse_query(request: Request, default_floor: Decimal | None, *, listing: bool) -> Query:
    """Filters from the query string; a malformed one is a `BadRequest` naming it. Totals
    are kept per tenant, vertical and day, so only a list of calls filters on the rest."""
    given = {k: v for k, v in request.query_params.items() if v != ""}
    if not listing:
        for name in ("direction", "ended_by", "above_floor"):
            if name in given:
                raise BadRequest(f"{name}: totals are per tenant, vertical and time; "
                                 f"filter the list of calls by {name} instead")
    fields: dict[str, Any] = {name: given[name] for name in _FILTERS if name in given}
    if "since" in given:
        fields["since"] = _day("since", given["since"])
    if "until" in given:  # the whole of that day
        fields["until"] = _day("until", given["until"]) + dt.timedelta(days=1)
    floor = default_floor
    if "floor" in given:
        try:
            floor = Decimal(given["floor"])
        except InvalidOperation:
            raise BadRequest(f"floor: {given['floor']!r} is not a number of dollars") from None
        if not floor.is_finite() or floor < 0:
            raise BadRequest(f"floor: {given['floor']!r} must be a dollar amount of 0 or more")
    if given.get("above_floor") == "1":
        if floor is None:
            raise BadRequest("above_floor: no margin floor is set (give floor=…)")
        fields["above"] = floor
    kept = {k: v for k, v in given.items()
            if k in (*_FILTERS, "since", "until", "floor", "above_floor")}
    return Query(CallFilter(**fields), floor, kept)


def _usd(value: Decimal | None) -> str:
    return "—" if value is None else f"${value:f}"


def _unit_price(value: Decimal) -> str:
    """A unit price to read: eight significant digits (the exact one is the cell's title)."""
    return f"${value:f}" if len(value.as_tuple().digits) <= 8 else f"≈${float(value):.8g}"


def _ts(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


class Dashboard:
    """The dashboard on one ledger, as an app to mount under `/dashboard` or serve alone.

    The ledger is opened on the first page asked for (and again after an outage),
    so a bridge starts whether or not its ledger answers yet."""

    def __init__(
        self,
        ledger_url: str,
        *,
        token: Callable[[], str],
        floor: Decimal | None = None,
        catalogs: Mapping[str, Catalog] | None = None,
        budgets: Mapping[str, Decimal] | None = None,
    ) -> None:
        self.ledger_url = ledger_url
        self.floor = floor
        self.catalogs = dict(catalogs) if catalogs else {"default": Catalog.load()}
        self.budgets = dict(budgets or {})
        self.guard = Guard(token)
        self._ledger: Ledger | None = None
        self._opening = asyncio.Lock()
        self._templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined,
        )
        self._templates.filters.update(usd=_usd, ts=_ts, plain=lambda d: f"{d:f}",
                                       unit_price=_unit_price)
        self.app = self._build()

    async def ledger(self) -> Ledger:
        async with self._opening:
            if self._ledger is None:
                self._ledger = await Ledger.open(self.ledger_url, create=False)
            return self._ledger

    async def close(self) -> None:
        if self._ledger is not None:
            await self._ledger.close()
            self._ledger = None

    def render(self, request: Request, name: str, status: int = 200, **context: Any
               ) -> HTMLResponse:
        base = request.scope.get("root_path", "")
        html = self._templates.get_template(name).render(
            base=base, view=name.removesuffix(".html"), **context)
        return HTMLResponse(html, status_code=status)

    def _build(self) -> FastAPI:
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
        signed_in = [Depends(self.guard)]

        @app.exception_handler(NotSignedIn)
        async def not_signed_in(request: Request, _: NotSignedIn) -> Response:
            """A browser is sent to sign in; anything else learns only that it may not."""
            if "text/html" in request.headers.get("accept", "") and \
                    "authorization" not in request.headers:
                base = request.scope.get("root_path", "")
                wanted = (request.url.path.removeprefix(base) or "/") + (
                    f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"{base}/login?{urlencode({'next': wanted})}", 303)
            return PlainTextResponse("sign in with the API token (Authorization: Bearer …)",
                                     401, headers={"WWW-Authenticate": "Bearer"})

        @app.exception_handler(BadRequest)
        async def bad_request(request: Request, error: BadRequest) -> Response:
            return self.render(request, "error.html", 400, title="Bad request",
                               message=str(error))

        @app.exception_handler(LedgerError)
        async def ledger_unusable(request: Request, error: LedgerError) -> Response:
            return self.render(request, "error.html", 503, title="Ledger unusable",
                               message=str(error))

        for transient in TRANSIENT_ERRORS:
            app.add_exception_handler(transient, self._unreachable)

        @app.get("/login")
        async def login_page(request: Request, next: str = "/") -> Response:
            return self.render(request, "login.html", next=_safe_next(next), failed=False,
                               configured=bool(self.guard.token))

        @app.post("/login")
        async def login(request: Request, token: Annotated[str, Form()] = "",
                        next: Annotated[str, Form()] = "/") -> Response:
            if not token_matches(self.guard.token, token):
                log.warning("dashboard_sign_in_refused",
                            client=request.client.host if request.client else "")
                return self.render(request, "login.html", 401, next=_safe_next(next),
                                   failed=True, configured=bool(self.guard.token))
            base = request.scope.get("root_path", "")
            response = RedirectResponse(base + _safe_next(next), 303)
            response.set_cookie(COOKIE, session_cookie(self.guard.token), max_age=SESSION_S,
                                httponly=True, samesite="strict", path=base or "/",
                                secure=request.url.scheme == "https")
            return response

        @app.post("/logout")
        async def logout(request: Request) -> Response:
            base = request.scope.get("root_path", "")
            response = RedirectResponse(f"{base}/login", 303)
            response.delete_cookie(COOKIE, path=base or "/")
            return response

        @app.get("/", dependencies=signed_in)
        async def overview(request: Request) -> Response:
            return await self._overview(request)

        @app.get("/calls", dependencies=signed_in)
        async def calls(request: Request, page: int = 1) -> Response:
            return await self._calls(request, max(page, 1))

        @app.get("/calls.csv", dependencies=signed_in)
        async def calls_csv(request: Request) -> Response:
            return await self._calls_csv(request)

        @app.get("/calls/{call_sid}", dependencies=signed_in)
        async def call(request: Request, call_sid: str) -> Response:
            return await self._call(request, call_sid)

        @app.get("/prices", dependencies=signed_in)
        async def prices(request: Request) -> Response:
            today = dt.date.today()
            catalogs = [
                (name, catalog, [(row, row.is_stale(today), row.readings_disagree)
                                 for row in catalog.rows])
                for name, catalog in self.catalogs.items()
            ]
            return self.render(request, "prices.html", catalogs=catalogs,
                               llm_rule=LLM_BILLING_RULE, today=today)

        return app

    async def _unreachable(self, request: Request, error: Exception) -> Response:
        log.warning("dashboard_ledger_unreachable", error=str(error))
        await self.close()  # opened again on the next page
        return self.render(request, "error.html", 503, title="Ledger unreachable",
                           message=f"{safe_url(self.ledger_url)} did not answer; try again.")

    async def _overview(self, request: Request) -> Response:
        query = parse_query(request, self.floor, listing=False)
        queries = (await self.ledger()).queries
        where = query.where
        spend = await queries.spend(where)
        tenants, verticals = spend.totals("tenant"), spend.totals("vertical")
        days, top, outcomes = spend.days(), spend.top_items(limit=10), spend.outcomes()
        calls = sum(row.calls for row in tenants)
        total = sum((row.total_usd for row in tenants), Decimal(0))
        seconds = sum((row.seconds for row in tenants), Decimal(0))
        above = None if query.floor is None else await queries.count(
            replace(where, above=query.floor))
        burn = []
        for row in verticals:
            stopped = sum(o.calls for o in outcomes if o.vertical == row.key
                          and o.ended_by == "budget")  # as `CallSession` ends them
            budget = self.budgets.get(row.key)
            per_call = row.total_usd / row.calls if row.calls else Decimal(0)
            burn.append({
                "vertical": row.key, "calls": row.calls, "stopped": stopped, "budget": budget,
                "per_call": per_call.quantize(Decimal("0.000001")),
                "burn": None if not budget else (100 * per_call / budget).quantize(Decimal("0.1")),
            })
        chart = {
            "days": [day.day.isoformat() for day in days],
            "legs": {leg: [f"{day.legs[leg]:f}" for day in days] for leg in LEGS
                     if any(day.legs[leg] for day in days)},
            "per_minute": [None if day.usd_per_minute is None else f"{day.usd_per_minute:f}"
                           for day in days],
            "floor": None if query.floor is None else f"{query.floor:f}",
        }
        return self.render(
            request, "overview.html", query=query, menus=await queries.choices(),
            calls=calls, total=total, minutes=minutes_of(seconds),
            per_minute=per_minute(total, seconds),
            above=above, tenants=tenants, verticals=verticals, days=days,
            legs=[leg for leg in LEGS if any(row.legs[leg] for row in tenants)],
            top=top, burn=burn, chart=json.dumps(chart),
        )

    async def _calls(self, request: Request, page: int) -> Response:
        query = parse_query(request, self.floor, listing=True)
        queries = (await self.ledger()).queries
        count = await queries.count(query.where)
        pages = max(1, -(-count // PAGE_SIZE))
        rows = await queries.calls(query.where, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
        return self.render(request, "calls.html", query=query, menus=await queries.choices(),
                           rows=rows, count=count, page=page, pages=pages)

    async def _calls_csv(self, request: Request) -> Response:
        query = parse_query(request, self.floor, listing=True)
        queries = (await self.ledger()).queries

        async def lines() -> AsyncIterator[str]:
            out = io.StringIO()
            writer = csv.writer(out)
            writer.writerow(CSV_COLUMNS)
            last = None
            while True:
                rows = await queries.calls(query.where, limit=CSV_BATCH, after=last)
                for row in rows:
                    writer.writerow(_csv_cells(row))
                yield out.getvalue()
                out.seek(0)
                out.truncate()
                if len(rows) < CSV_BATCH:
                    return
                last = rows[-1]

        name = "-".join(["calls", *query.where.to_dict().values()]).replace(":", "")
        return StreamingResponse(lines(), media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="{_filename(name)}.csv"'})

    async def _call(self, request: Request, call_sid: str) -> Response:
        cost = await (await self.ledger()).get(call_sid)
        if cost is None:
            return self.render(request, "error.html", 404, title="No such call",
                               message=f"The ledger holds no call {call_sid}.")
        ours = sum((line.usd for line in cost.items if line.kind.startswith("voice.")),
                   Decimal(0))
        legs = {leg: Decimal(0) for leg in LEGS}
        for line in cost.items:
            legs[leg_of(line.kind)] += line.usd
        return self.render(request, "call.html", cost=cost, voice_usd=ours,
                           legs={k: v for k, v in legs.items() if v})


CSV_COLUMNS = ("call_sid", "started_at", "tenant", "vertical", "direction", "seconds",
               "billed_minutes", "total_usd", "twilio_price_usd", "drift_usd",
               "usd_per_minute", "ended_by", "complete")


def _csv_cells(row: Any) -> list[str]:
    def text(value: Decimal | None) -> str:
        return "" if value is None else f"{value:f}"

    return [row.call_sid, row.started_at.isoformat(), row.tenant, row.vertical, row.direction,
            text(row.seconds), "" if row.billed_minutes is None else str(row.billed_minutes),
            text(row.total_usd), text(row.twilio_price_usd), text(row.drift_usd),
            text(row.usd_per_minute), row.ended_by, "yes" if row.complete else "no"]


def _filename(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:120]


def _safe_next(target: str) -> str:
    """Only a path inside the dashboard: never a redirect to another site."""
    return target if target.startswith("/") and not target.startswith("//") \
        and "\\" not in target else "/"
