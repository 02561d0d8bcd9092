"""The `tollbridge` command line.

Errors print their message and exit non-zero without a traceback; `--debug`
shows the traceback and verbose logs.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from tollbridge import logs
from tollbridge.config import Stage, Vertical, load_vertical, load_verticals
from tollbridge.costs.database import DEFAULT_LEDGER_URL
from tollbridge.errors import TollbridgeError
from tollbridge.logs import redact_text
from tollbridge.settings import Settings, load_settings
from tollbridge.stage import Role


class _Guarded(TyperGroup):
    """The one place an error becomes an exit code: one `error:` line and exit 1.

    Whatever a command (or the `costs` sub-commands) raises is caught here;
    with `--debug` it propagates with its traceback instead.
    """

    def invoke(self, ctx: Any) -> Any:  # click's Context, as typer vendors it
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # typer's own exit and usage
            raise
        except Exception as error:
            if state["debug"]:
                raise
            raise fail(describe(error)) from None


app = typer.Typer(
    name="tollbridge",
    help="AI phone agents on Twilio that know what every call costs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=_Guarded,
)
console = Console()
err = Console(stderr=True)
state: dict[str, Any] = {"debug": False}


def _version(value: bool) -> None:
    if value:
        console.print(f"tollbridge {version('tollbridge')}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and verbose logs.")
    ] = False,
    _version_flag: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    state["debug"] = debug
    state["settings"] = load_settings()
    logs.configure("DEBUG" if debug else _settings().tollbridge_log_level)


def _settings() -> Settings:
    """The settings read from the environment when the command started."""
    return state["settings"]


def fail(message: str) -> typer.Exit:
    err.print(Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


def describe(error: Exception) -> str:
    """What went wrong, in one message with any secret masked.

    A `TollbridgeError` (or a `ValueError`) already names what and where; a file
    the system refused is named with the reason; anything else is a bug, so it
    is named by its type.
    """
    if isinstance(error, TollbridgeError | ValueError):
        message = str(error)
    elif isinstance(error, OSError) and error.filename is not None:
        message = f"{error.filename}: {error.strerror or error}"
    else:
        message = (f"unexpected {type(error).__name__}: {error} "
                   "(run with --debug for the traceback)")
    return redact_text(message or type(error).__name__)


def _chain_table(vertical: Vertical) -> Table:
    table = Table(title=f"{vertical.name} (tenant {vertical.tenant}) — {vertical.path}")
    for column in ("#", "kind", "role", "audio in", "audio out", "options"):
        table.add_column(column)
    for stage in vertical.chain:
        index = str(stage.index)
        current: Stage | None = stage
        while current is not None:
            options = current.options.model_dump(exclude_defaults=True, exclude_none=True)
            if "prompt" in options:
                options["prompt"] = Path(options["prompt"]).relative_to(vertical.folder.resolve())
            table.add_row(
                index,
                current.name,
                str(current.kind.role),
                str(current.kind.audio_in(current.options) or "—"),
                str(current.kind.audio_out(current.options) or "—"),
                ", ".join(f"{k}={v}" for k, v in options.items()),
            )
            index, current = "  ↳ fallback", current.fallback
    return table


def _agents_table(vertical: Vertical) -> Table:
    """Who shares the line: the first answers; what each uses and whom it hands to."""
    table = Table(title=f"{vertical.name}: agents (the first answers)")
    for column in ("agent", "tools", "hands to", "model", "voice", "carries"):
        table.add_column(column)
    for agent in vertical.agents:
        table.add_row(agent.name, ", ".join(agent.tools), ", ".join(agent.hands_to),
                      str(getattr(agent.llm_options, "model", "—")),
                      str(getattr(agent.tts_options, "voice", "—")), agent.carry)
    return table


def _warnings(verticals: list[Vertical]) -> list[str]:
    """What is valid but costs more than it should: stale or disputed prices, prompt caching
    that cannot take effect. Each once, however many verticals share it."""
    import datetime as dt

    from tollbridge.costs.catalog import Catalog
    from tollbridge.prompt_caching import caching_warnings
    from tollbridge.vertical_prices import price_warnings

    found = [f"{v.name}: {w}" for v in verticals for w in caching_warnings(v)]
    found += price_warnings(verticals, Catalog.load(), dt.date.today()).values()
    return list(dict.fromkeys(found))


@app.command()
def validate(
    path: Annotated[Path, typer.Argument(help="A vertical file or a folder of verticals.")],
    keys: Annotated[bool, typer.Option("--keys", help="Also check the API keys are set.")] = False,
) -> None:
    """Validate verticals and print each resolved chain."""
    verticals = load_verticals(path, check_keys=keys)
    for vertical in verticals:
        console.print(_chain_table(vertical))
        if vertical.agents:
            console.print(_agents_table(vertical))
    console.print(f"[green]{len(verticals)} vertical(s) valid[/green]")
    for warning in _warnings(verticals):
        err.print(Text.assemble(("warning: ", "yellow"), warning), soft_wrap=True)


@app.command()
def schema() -> None:
    """Print the JSON Schema of a vertical file (every registered kind and option)."""
    from tollbridge.schema import vertical_schema

    typer.echo(json.dumps(vertical_schema(), indent=2))


@app.command()
def serve(
    verticals: Annotated[list[Path], typer.Argument(help="Vertical files or folders.")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8084,
    public_url: Annotated[
        str | None,
        typer.Option(help="URL Twilio reaches this server at (https://…); signatures use it."),
    ] = None,
    ledger: Annotated[
        str,
        typer.Option(
            envvar="TOLLBRIDGE_LEDGER_URL",
            help="Ledger URL: sqlite:///file.db or postgresql://…",
        ),
    ] = DEFAULT_LEDGER_URL,
    insecure_no_signature_check: Annotated[
        bool,
        typer.Option(help="Accept unsigned requests. Local development only, never in production."),
    ] = False,
    drain_grace: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Seconds calls in flight may go on after SIGTERM/SIGINT before a farewell "
            "ends them [default: TOLLBRIDGE_DRAIN_GRACE_S, else 30].",
        ),
    ] = None,
    offline: Annotated[
        bool,
        typer.Option(help="No accounts: the caller recognised locally, the LLM and TTS served "
                          "by local fakes; call it with `tollbridge call --bridge`."),
    ] = False,
) -> None:
    """Run the bridge: the voice webhook, the Media Streams socket and status callbacks.

    SIGTERM or SIGINT drains it (no new calls; calls in flight finish, up to the
    grace); a second signal ends the calls at once. Every record is written first."""
    from tollbridge.serve import run_service, serve_forever

    loaded = [v for path in verticals for v in load_verticals(path, check_keys=not offline)]
    settings = _settings()
    if offline:
        from tollbridge.testing import require_extra

        require_extra()
        from tollbridge.testing.offline import offline as offline_vertical

        if len(loaded) != 1:
            raise typer.BadParameter(f"--offline serves one vertical; {len(loaded)} were given")
        loaded = [offline_vertical(loaded[0])]
        if not settings.twilio_auth_token.get_secret_value():  # signed as Twilio would sign
            token = secrets.token_hex(16)
            settings = settings.model_copy(update={"twilio_auth_token": SecretStr(token)})
            console.print(f"offline: requests must be signed with the throwaway auth token "
                          f"{token}: export TWILIO_AUTH_TOKEN={token} where you run "
                          "`tollbridge call --bridge`", soft_wrap=True, highlight=False)
    run_service(
        serve_forever(
            loaded,
            host=host,
            port=port,
            public_url=public_url or f"http://{host}:{port}",
            settings=settings,
            ledger_url=ledger,
            validate_signatures=not insecure_no_signature_check,
            announce=lambda line: console.print(line, soft_wrap=True, highlight=False),
            grace_s=drain_grace,
            offline=offline,
        )
    )


@app.command()
def call(
    vertical: Annotated[Path, typer.Argument(help="The vertical's folder or file.")],
    audio: Annotated[
        Path,
        typer.Option(help="Caller audio: WAV, FLAC, MP3 or OGG (any rate, converted), or .ulaw."),
    ],
    cassette: Annotated[
        Path | None, typer.Option(help="Serve providers from this cassette (no accounts needed).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where to write the agent's audio.")] = Path(
        "agent.wav"
    ),
    ledger: Annotated[str | None, typer.Option(help="Also record the call in this ledger.")] = None,
    record: Annotated[
        Path | None, typer.Option(help="Write what the providers answered to this cassette.")
    ] = None,
    press: Annotated[
        list[str] | None,
        typer.Option(help="A keypad press as SECONDS:DIGIT, e.g. 16:1 (repeatable)."),
    ] = None,
    offline: Annotated[
        bool,
        typer.Option(help="No accounts: recognise the caller locally; the LLM and TTS are "
                          "local fakes (replying from --cassette in order, else improvising)."),
    ] = False,
    bridge: Annotated[
        str | None,
        typer.Option(help="Call this running bridge (e.g. `tollbridge serve --offline`) through "
                          "its voice webhook, as Twilio would, instead of starting one."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print only the call's record, as JSON (as the ledger "
                                          "keeps it: line items, agents, handoffs).")
    ] = False,
) -> None:
    """Run one complete phone call on this machine and print what it cost.

    Exits non-zero when the call failed, strayed from its cassette or the agent said nothing."""
    from tollbridge.testing import require_extra

    require_extra()
    from tollbridge.testing.local_call import CallFailed, print_call, print_line, run_local_call

    presses = [_press(spec) for spec in press or []]
    if bridge is not None and as_json:
        raise typer.BadParameter("--json prints a record this process keeps; with --bridge the "
                                 "bridge keeps it (in its ledger)")
    if bridge is not None:
        _call_bridge(vertical, bridge, audio, out, presses,
                     clashing={"--cassette": cassette, "--offline": offline,
                               "--ledger": ledger, "--record": record})
        return
    loaded = load_vertical(vertical, check_keys=cassette is None and not offline)
    # live lines come from the STT and TTS; a speech-to-speech brain's come with the record
    live = loaded.stage(Role.STT) is not None and not as_json
    if live:
        console.rule(f"{loaded.name} — {'offline ' if offline else ''}call from {audio.name}")
    result = asyncio.run(
        run_local_call(
            loaded, audio=audio, cassette=cassette, ledger_url=ledger, record_to=record,
            dtmf=presses, offline=offline,
            on_line=(lambda who, text: print_line(console, who, text)) if live else None,
        )
    )
    result.write_agent_audio(out)
    if as_json:  # stdout is the record alone, for a pipe
        typer.echo(json.dumps(result.cost.to_dict(), indent=2))
    else:
        print_call(result, console, conversation=not live)
    told = err if as_json else console
    told.print(f"agent audio written to {out}")
    if record:
        told.print(f"cassette written to {record}")
    if result.problems:
        raise CallFailed("; ".join(result.problems))


def _call_bridge(vertical: Path, bridge: str, audio: Path, out: Path,
                 presses: list[tuple[float, str]], clashing: dict[str, object]) -> None:
    """`call --bridge`: the running bridge chooses its providers and keeps the record."""
    from tollbridge.testing.local_call import CallFailed, call_bridge
    from tollbridge.testing.softphone import write_wav

    given = [flag for flag, value in clashing.items() if value]
    if given:
        raise typer.BadParameter(f"--bridge calls a running bridge, which chooses its providers "
                                 f"and keeps the record; drop {', '.join(given)}")
    loaded = load_vertical(vertical, check_keys=False)
    token = _settings().twilio_auth_token.get_secret_value() or None
    phone = asyncio.run(call_bridge(loaded, bridge, audio=audio, dtmf=presses, auth_token=token))
    write_wav(out, phone.agent_audio)
    console.print(f"call {phone.call_sid}: {phone.agent_audio_seconds:.1f}s of agent speech "
                  f"heard, ended by {phone.ended_by}; its record is in the bridge's ledger "
                  "(tollbridge costs report)", highlight=False)
    console.print(f"agent audio written to {out}")
    if not phone.agent_audio:
        raise CallFailed("the agent played no audio")


@app.command()
def dial(
    vertical: Annotated[Path, typer.Argument(help="The outbound vertical's folder or file.")],
    to: Annotated[str, typer.Option(help="The number to call, E.164 (+15551234567).")],
    public_url: Annotated[
        str, typer.Option(help="URL Twilio reaches the running bridge at (https://…).")
    ],
) -> None:
    """Place an outbound call whose audio streams to the bridge at --public-url."""
    from tollbridge.config import e164
    from tollbridge.transports.twilio.rest import TwilioRest
    from tollbridge.transports.twilio.server import Bridge, BridgeSettings

    async def place(loaded: Vertical) -> str:
        dialer = TwilioRest.from_settings(_settings())
        bridge = Bridge([loaded], BridgeSettings(public_url=public_url, validate_signatures=False))
        try:
            return await dialer.dial(bridge, loaded, to)
        finally:
            await dialer.close()

    try:
        to = e164(to)
    except ValueError as error:
        raise ValueError(f"--to: {error}") from None
    loaded = load_vertical(vertical)
    console.print(f"call placed: {asyncio.run(place(loaded))}")


@app.command()
def dashboard(
    ledger: Annotated[
        str,
        typer.Option(envvar="TOLLBRIDGE_LEDGER_URL",
                     help="Ledger URL: sqlite:///file.db or postgresql://…"),
    ] = DEFAULT_LEDGER_URL,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8085,
    floor: Annotated[
        str | None,
        typer.Option(help="Margin floor in USD per minute; calls above it are flagged "
                          "[default: TOLLBRIDGE_MARGIN_FLOOR]."),
    ] = None,
    catalog: Annotated[
        Path | None, typer.Option(help="Price catalog to show [default: the bundled one].")
    ] = None,
) -> None:
    """Serve the cost dashboard on a ledger, behind TOLLBRIDGE_API_TOKEN (SIGINT stops it)."""
    from decimal import Decimal, InvalidOperation

    from tollbridge.costs.catalog import Catalog
    from tollbridge.serve import run_service, serve_dashboard

    settings = _settings()
    token = settings.tollbridge_api_token.get_secret_value()
    if not token:
        raise fail("the dashboard is never open: set TOLLBRIDGE_API_TOKEN to the token "
                   "a browser signs in with")
    margin = settings.tollbridge_margin_floor
    if floor is not None:
        try:
            margin = Decimal(floor)
        except InvalidOperation:
            raise ValueError(f"--floor: {floor!r} is not a number of dollars") from None
        if not margin.is_finite() or margin < 0:
            raise ValueError(f"--floor: {floor!r} must be 0 or more")
    run_service(serve_dashboard(
        ledger, host=host, port=port, token=token, floor=margin, catalog=Catalog.load(catalog),
        announce=lambda line: console.print(line, soft_wrap=True, highlight=False),
    ))


def _press(spec: str) -> tuple[float, str]:
    seconds, _, digit = spec.partition(":")
    try:
        at = float(seconds)
    except ValueError:
        raise ValueError(f"--press {spec!r}: expected SECONDS:DIGIT, e.g. 16:1") from None
    if len(digit) != 1 or digit not in "0123456789*#":
        raise ValueError(f"--press {spec!r}: {digit!r} is not a keypad digit")
    return at, digit


def _mount_costs() -> None:
    from tollbridge.costs.cli import costs_app

    app.add_typer(costs_app, name="costs", help="Price catalog, estimates and cost reports.")


_mount_costs()

if __name__ == "__main__":
    app()
