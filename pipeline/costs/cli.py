"""`tollbridge costs …`: look at prices, estimate a call, report what calls cost.

`costs_app` is a typer sub-app; the main CLI mounts it. Output is a rich table
for people, or `--json` / `--csv` for scripts, with money as exact decimal
strings.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import enum
import json
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

import genai_prices
import typer
from rich.console import Console
from rich.table import Table

from tollbridge.costs.catalog import LLM_BILLING_RULE, Catalog, disagreement_warning, stale_warning
from tollbridge.costs.database import DEFAULT_LEDGER_URL, TRANSIENT_ERRORS, LedgerError, safe_url
from tollbridge.costs.estimate import load_profile
from tollbridge.costs.ledger import AgentRow, Ledger, Report, ReportRow
from tollbridge.costs.lineitem import CallCost, round_usd
from tollbridge.costs.pricing import price_call

costs_app = typer.Typer(help="Prices, cost estimates and the cost ledger.", no_args_is_help=True)


class _PrintTimeConsole:
    """A rich console made afresh for each print, so its width is the terminal's (or
    COLUMNS') when the command prints, not whatever it was when this module was imported."""

    def __init__(self, **options: Any) -> None:
        self._options = options

    def print(self, *objects: Any, **kwargs: Any) -> None:
        Console(**self._options).print(*objects, **kwargs)


_console = _PrintTimeConsole()
_warn = _PrintTimeConsole(stderr=True, style="yellow")

CatalogOption = Annotated[
    Path | None,
    typer.Option(
        "--catalog",
        help="Catalog TOML to use instead of the packaged one.",
        exists=True,
        dir_okay=False,
    ),
]


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise typer.BadParameter(f"{text!r} is not a decimal number") from None


def _since(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an ISO date or datetime") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _money(value: Decimal | None) -> str:
    return "—" if value is None else f"{value:f}"


def _load_catalog(path: Path | None) -> Catalog:
    catalog = Catalog.load(path)
    _warn_about_prices(catalog)
    return catalog


def _warn_about_prices(catalog: Catalog) -> None:
    """Name the catalog's rows due for a re-quote and those whose readings disagree."""
    for warning in (stale_warning(catalog.rows, dt.date.today()), disagreement_warning(catalog.rows)):
        if warning:
            _warn.print(f"warning: price catalog {catalog.version}: {warning}", highlight=False)


@costs_app.command("catalog")
def catalog_command(catalog_file: CatalogOption = None) -> None:
    """Print the price catalog with each price's date and source."""
    catalog = _load_catalog(catalog_file)
    table = Table(title=f"Price catalog {catalog.version} (as of {catalog.as_of})", show_lines=True)
    table.add_column("item", no_wrap=True)
    table.add_column("usd", justify="right", no_wrap=True)
    table.add_column("billed", ratio=1, overflow="fold")
    table.add_column("date", no_wrap=True)
    table.add_column("source, note", ratio=1, overflow="fold")
    today = dt.date.today()
    for row in catalog.rows:
        flags = [
            *(["RE-QUOTE: older than six months"] if row.is_stale(today) else []),
            *(["READINGS DISAGREE: " + ", ".join(f"{r.usd:f} ({r.date}, {r.source})"
                                               for r in row.readings)]
              if row.readings_disagree else []),
        ]
        table.add_row(
            row.label,
            f"{row.usd:f} / {row.unit}",
            f"{row.granularity}\n{row.billing_rule}".strip(),
            row.date.isoformat(),
            "\n".join([row.source, row.note, *flags]).strip(),
        )
    _console.print(table)
    _console.print(
        f"LLM token prices: genai-prices {genai_prices.__version__} (bundled snapshot, offline)."
        f" Billed: {LLM_BILLING_RULE}"
    )


@costs_app.command("estimate")
def estimate_command(
    profile: Annotated[
        Path,
        typer.Argument(help="Profile TOML describing a typical call.", exists=True, dir_okay=False),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    catalog_file: CatalogOption = None,
) -> None:
    """Price one imagined call: its line items, total and $/min."""
    cost = price_call(load_profile(profile), _load_catalog(catalog_file))
    if as_json:
        typer.echo(json.dumps(cost.to_dict(), indent=2))
        return
    _print_cost(cost, title=f"Estimate: {profile.name}")


def _print_cost(cost: CallCost, title: str) -> None:
    table = Table(title=title, caption=f"prices: {cost.catalog_version}")
    agents = cost.agent_usd()
    columns = ("item", "provider", *(("agent",) if agents else ()), "quantity", "unit",
               "unit price", "usd")
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("item", "provider", "agent", "unit") else "right"
        )
    blank = ("",) if agents else ()
    for line in cost.items:
        table.add_row(
            line.item,
            line.provider,
            *((line.agent,) if agents else ()),
            f"{line.quantity:f}",
            line.unit,
            "UNPRICED" if line.unpriced else f"{line.unit_price_usd:f}",
            "—" if line.unpriced else f"{line.usd:f}",
        )
    table.add_section()
    for agent, usd in agents.items():
        table.add_row("agent total", "", agent, "", "", "", _money(usd))
    total = _money(cost.total_usd) + ("" if cost.complete else " [bold yellow]INCOMPLETE[/]")
    table.add_row("total", "", *blank, f"{cost.minutes:.2f}", "minute", "", total)
    table.add_row("per minute", "", *blank, "", "", "", _money(cost.usd_per_minute))
    _console.print(table)


class Grouping(enum.StrEnum):
    """What `costs report` totals: tenants then verticals, or each vertical's agents."""

    vertical = "vertical"
    agent = "agent"


@costs_app.command("report")
def report_command(
    db: Annotated[
        str,
        typer.Option(
            "--db",
            envvar="TOLLBRIDGE_LEDGER_URL",
            help="Ledger URL: sqlite:///file.db or postgresql://…",
        ),
    ] = DEFAULT_LEDGER_URL,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    vertical: Annotated[str | None, typer.Option(help="Only this vertical.")] = None,
    since: Annotated[
        dt.datetime | None,
        typer.Option(
            parser=_since, help="Only calls started at or after this ISO date/time (UTC if naive)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="Print CSV, one row per tenant/vertical.")
    ] = False,
    floor: Annotated[
        Decimal,
        typer.Option(
            parser=_decimal,
            help="Margin floor in $/min: tenants, verticals and calls costing "
            "more than this are flagged.",
        ),
    ] = Decimal("0.10"),
    by: Annotated[
        Grouping,
        typer.Option(help="Totals per tenant and vertical, or per agent of each vertical."),
    ] = Grouping.vertical,
) -> None:
    """What calls cost per tenant and vertical (or agent), flagging those above the $/min floor."""
    if as_json and as_csv:
        raise typer.BadParameter("choose one of --json and --csv")
    report = asyncio.run(_report(db, tenant, vertical, since, floor))
    _warn_about_prices(Catalog.load())
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    elif as_csv and by is Grouping.agent:
        _write_agents_csv(report)
    elif as_csv:
        _write_csv(report)
    elif by is Grouping.agent:
        _print_agents(report)
    else:
        _print_report(report)



async def _report(
    url: str, tenant: str | None, vertical: str | None, since: dt.datetime | None, floor: Decimal
) -> Report:
    try:
        ledger = await Ledger.open(url, create=False)  # a report never creates a ledger
    except TRANSIENT_ERRORS as error:
        raise LedgerError(f"ledger {safe_url(url)} is unreachable: {error}") from None
    async with ledger:
        return await ledger.report(tenant=tenant, vertical=vertical, since=since, floor=floor)


def _total(total: Decimal, incomplete_calls: int) -> str:
    """A total, marked when some of its calls had usage without a price (so it is a floor)."""
    if not incomplete_calls:
        return f"{total:f}"
    return f"{total:f} [bold yellow]INCOMPLETE ({incomplete_calls} call(s))[/]"


def _above(row: ReportRow, floor: Decimal | None) -> bool:
    return floor is not None and row.usd_per_minute is not None and row.usd_per_minute > floor


def _write_csv(report: Report) -> None:
    kinds = sorted({kind for row in report.tenants + report.verticals for kind in row.shares})
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(
        [
            "group",
            "key",
            "calls",
            "minutes",
            "total_usd",
            "usd_per_minute",
            "above_floor",
            "incomplete_calls",
            "unheard_characters",
            "unheard_speech_usd",
            *(f"share:{kind}" for kind in kinds),
        ]
    )
    for row in report.tenants + report.verticals:
        out.writerow(
            [
                row.group,
                row.key,
                row.calls,
                f"{row.minutes:f}",
                f"{row.total_usd:f}",
                "" if row.usd_per_minute is None else f"{row.usd_per_minute:f}",
                _above(row, report.floor),
                row.incomplete_calls,
                f"{row.unheard_characters:f}",
                f"{row.unheard_speech_usd:f}",
                *(f"{row.shares[kind]:f}" if kind in row.shares else "" for kind in kinds),
            ]
        )


_AGENT_COLUMNS = ("vertical", "agent", "calls", "llm $", "tts $", "total $", "$ per call")


def _agent_cells(row: AgentRow) -> list[str]:
    per_call = round_usd(row.total_usd / row.calls) if row.calls else Decimal(0)
    return [row.vertical, row.agent, str(row.calls), f"{row.llm_usd:f}", f"{row.tts_usd:f}",
            f"{row.total_usd:f}", f"{per_call:f}"]


def _print_agents(report: Report) -> None:
    """Each agent's LLM and TTS spend: the lines a vertical with several agents splits."""
    table = Table(title="Agents (their LLM and TTS lines)")
    for column in _AGENT_COLUMNS:
        table.add_column(column, justify="left" if column in ("vertical", "agent") else "right")
    for row in report.agents:
        table.add_row(*_agent_cells(row))
    _console.print(table)
    if not report.agents:
        _warn.print("no calls of a vertical with several agents in this range", highlight=False)


def _write_agents_csv(report: Report) -> None:
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["vertical", "agent", "calls", "llm_usd", "tts_usd", "total_usd", "usd_per_call"])
    for row in report.agents:
        out.writerow(_agent_cells(row))


def _print_report(report: Report) -> None:
    for title, rows in (("Tenants", report.tenants), ("Verticals", report.verticals)):
        table = Table(title=f"{title} (floor ${report.floor}/min)")
        for column in ("key", "calls", "minutes", "total $", "$/min", "paid, not heard $",
                       "largest shares"):
            table.add_column(
                column, justify="left" if column in ("key", "largest shares") else "right"
            )
        for row in rows:
            top = sorted(row.shares.items(), key=lambda kv: kv[1], reverse=True)[:4]
            flag = " [bold red]ABOVE FLOOR[/]" if _above(row, report.floor) else ""
            table.add_row(
                row.key,
                str(row.calls),
                f"{row.minutes:f}",
                _total(row.total_usd, row.incomplete_calls),
                _money(row.usd_per_minute) + flag,
                f"{row.unheard_speech_usd:f} ({row.unheard_characters:f} chars)",
                ", ".join(f"{kind} {share:.0%}" for kind, share in top),
            )
        _console.print(table)
    if report.above_floor:
        table = Table(title=f"Calls above ${report.floor}/min", style="red")
        for column in ("call", "tenant", "vertical", "started", "minutes", "total $", "$/min"):
            table.add_column(column)
        for call in report.above_floor:
            table.add_row(
                call.call_sid,
                call.tenant,
                call.vertical,
                call.started_at.isoformat(timespec="seconds"),
                f"{call.minutes:f}",
                _total(call.total_usd, 0 if call.complete else 1),
                _money(call.usd_per_minute),
            )
        _console.print(table)
    incomplete = sum(row.incomplete_calls for row in report.tenants)
    if incomplete:
        _warn.print(
            f"warning: {incomplete} call(s) have usage no price was known for; their totals "
            "(marked INCOMPLETE) count only the priced lines",
            highlight=False,
        )
