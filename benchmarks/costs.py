"""Cost per minute of every fixture call and reference profile, with and without cost features.

    python -m benchmarks.costs                  # fixture calls, then profiles
    python -m benchmarks.costs --calls-only --speed 2.0
    python -m benchmarks.costs --profiles-only
    python -m benchmarks.costs --calls-only --only salon_barge_in_dtmf

Every recorded fixture call in tests/fixtures/calls (each `*.cassette.json`
with its caller audio) is replayed through `run_local_call`: the real bridge,
pipeline and cost meter against the local provider fakes, with the ledger in a
temporary SQLite file and each vertical's databases in a temporary folder (as
tests/examples/test_calls.py sets them up). Each reference profile in
examples/profiles is loaded as usage the same way `tollbridge costs estimate`
does.

Each call is replayed twice in a row and the second is priced: a process that
has served the vertical before, so its greeting comes from the TTS phrase
cache, as on every call but the first after a restart. The STT silence gate
(off in the examples, whose cassettes are timed on ungated audio) is run over
the audio the caller sent, which gives exactly what it would have held back.

Each call's usage is priced twice with the catalog its vertical bills with:
as recorded ("with": prompt caching, the TTS phrase cache and the STT silence
gate) and through `without_savings` ("without": every cached or cache-written
token billed as plain input, every avoided TTS character synthesised, every
avoided second of silence streamed).

$/min is a call's total dollars divided by its minutes on the same basis the
pricing uses (`CallCost.seconds`): Twilio's billed seconds when known, else
the measured seconds. Replayed calls and profiles never get a Twilio status
callback, so here it is always the measured (or profile) seconds, exact, not
rounded up. Telephony lines still bill whole minutes rounded up, so on short
calls their $/min is above the list rate.

A call replayed faster than real time (`--speed`, default 2, as the tests
run them) has its seconds restated on the caller's clock by `run_local_call`
(how long it would have lasted on a real line).

A fixture call the caller barges in on (Twilio got at least one `clear`) is
replayed twice more with `speech_lead_s = 0`: every reply sent to the TTS at
once, as before speech pacing. Its "barge-ins" table sets that ("before")
against the vertical's own lead ("after"): TTS characters billed, heard and
never heard, the "speech paid but not heard" dollars
(`CallCost.unheard_speech_usd`) and the call's total and $/min.

Prints markdown tables and writes results/costs.json (money as strings).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.examples.test_calls import CALLS, EXAMPLES, TODAY
from tollbridge.bookkeeper import Bookkeeper
from tollbridge.config import Vertical, load_vertical
from tollbridge.costs.catalog import Catalog
from tollbridge.costs.estimate import load_profile
from tollbridge.costs.ledger import Ledger
from tollbridge.costs.lineitem import CallCost, round_usd
from tollbridge.costs.pricing import price_call, without_savings
from tollbridge.costs.usage import CallUsage
from tollbridge.providers.silence_gate import SilenceGate
from tollbridge.stage import Role

PROFILES = EXAMPLES / "profiles"
RESULTS = Path(__file__).resolve().parent / "results"
CASSETTE = ".cassette.json"

# What a fixture call needs beyond its audio and cassette, as its test in
# tests/examples/test_calls.py places it. A call not named here runs plainly.
CALL_OPTIONS: dict[str, dict[str, Any]] = {
    "salon_barge_in_dtmf": {"dtmf": [(16.0, "1"), (16.1, "#")], "speed": 1.0},
    "real_estate_hangup": {"hang_up_at": 10.0, "strict": False},
}


def example_env(folder: Path) -> dict[str, str]:
    """The example verticals' own settings, pointed into `folder` (test_calls' fixture)."""
    return {
        "GLAMBOOK_DB_URL": f"sqlite:///{folder / 'glambook.db'}",
        "GLAMBOOK_TODAY": TODAY,
        "ONEROOF_DB_URL": f"sqlite:///{folder / 'oneroof.db'}",
        "ONEROOF_TODAY": TODAY,
        "BRIGHTPATH_RESULTS": str(folder / "leads.jsonl"),
    }


_ENV_READ = re.compile(r"""environ(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]*)["']""")


def shown(path: Path) -> str:
    """A path relative to the repository when it is inside it."""
    root = EXAMPLES.parent
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


class Missing(Exception):
    """Something a fixture call needs is not there; the message names it."""


@dataclass
class FixtureCall:
    name: str
    vertical_file: Path
    audio: Path
    cassette: Path
    options: dict[str, Any] = field(default_factory=dict)


def fixture_calls() -> list[FixtureCall]:
    """Every `<name>.cassette.json` in the fixture folder, with its vertical and audio.

    `<vertical folder>_<what>` names the example vertical; `<base>.realtime`
    is the same caller (`<base>.wav`) on that folder's realtime.vertical.toml.
    """
    folders = sorted(
        (p.name for p in EXAMPLES.iterdir() if (p / "vertical.toml").is_file()),
        key=len, reverse=True,
    )
    calls = []
    for cassette in sorted(CALLS.glob(f"*{CASSETTE}")):
        name = cassette.name.removesuffix(CASSETTE)
        base, _, variant = name.partition(".")
        folder = next((f for f in folders if base.startswith(f + "_")), None)
        if folder is None:
            raise Missing(f"fixture call {name}: no example vertical folder named by its prefix "
                          f"(have {', '.join(sorted(folders))})")
        vertical_file = EXAMPLES / folder / (f"{variant}.vertical.toml" if variant else
                                             "vertical.toml")
        audio = CALLS / f"{base}.wav"
        for needed in (vertical_file, audio):
            if not needed.is_file():
                raise Missing(f"fixture call {name}: {shown(needed)} "
                              f"is missing")
        calls.append(FixtureCall(name, vertical_file, audio, cassette,
                                 dict(CALL_OPTIONS.get(name, {}))))
    if not calls:
        raise Missing(f"no fixture calls (*{CASSETTE}) in {shown(CALLS)}")
    return calls


def check_env(call: FixtureCall, env: dict[str, str]) -> None:
    """Fail, naming it, on a setting the vertical's code reads that nobody provides."""
    read = {m for py in call.vertical_file.parent.glob("*.py")
            for m in _ENV_READ.findall(py.read_text(encoding="utf-8"))}
    missing = sorted(name for name in read if name not in env and name not in os.environ)
    if missing:
        raise Missing(f"fixture call {call.name}: {call.vertical_file.parent.name}/ reads "
                      f"{', '.join(missing)}, which neither example_env() nor the environment sets")


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def catalog_for(vertical: Vertical | None) -> Catalog:
    """The catalog a vertical is billed with (its negotiated rates laid over the list)."""
    if vertical is None:
        return Catalog.load()
    return Bookkeeper(Catalog.load(), [vertical], None).catalog_for(vertical.name)


@dataclass
class Replayed:
    usage: CallUsage
    catalog: Catalog
    speed: float
    clears: int = 0
    """`clear`s Twilio got: barge-ins that cut the agent off."""
    speech_lead_s: float = 0.0
    """The vertical's, as the call ran."""


async def replay(call: FixtureCall, speed: float, speech_lead_s: float | None = None) -> Replayed:
    """A fixture call as a warm process serves it: the second of two identical replays.

    The first leaves the vertical's greeting in the TTS phrase cache, as every
    call after the first does in a long-running bridge. `speech_lead_s`
    overrides the vertical's (0: the whole reply to the TTS at once).
    """
    await replay_once(call, speed, speech_lead_s)
    return await replay_once(call, speed, speech_lead_s)


def gate_silence(usage: CallUsage, vertical: Vertical, caller_audio: bytes) -> CallUsage:
    """The call as billed with `skip_silence` on: the gate run over what the caller sent.

    The examples leave the gate off because their cassettes are timed on
    ungated audio; the gate's decisions depend only on the audio, so running
    it over the caller's recording gives exactly what it would have held back.
    """
    stage = vertical.stage(Role.STT)
    if stage is None or stage.name != "deepgram.stt" or stage.options.skip_silence:
        return usage
    gate = SilenceGate(encoding=stage.options.encoding, sample_rate=stage.options.sample_rate,
                       threshold_dbfs=stage.options.silence_threshold_dbfs)
    for start in range(0, len(caller_audio), 160):
        gate.admit(caller_audio[start : start + 160])
    withheld = Decimal(str(round(gate.withheld_seconds, 6)))
    stt = [replace(s, audio_seconds=s.audio_seconds - withheld, avoided_seconds=withheld)
           if s.provider == "deepgram" else s for s in usage.stt]
    return replace(usage, stt=stt)


async def replay_once(call: FixtureCall, speed: float,
                      speech_lead_s: float | None = None) -> Replayed:
    """One fixture call through the real bridge, checked against its ledger record."""
    from tollbridge.testing.local_call import run_local_call

    options = dict(call.options)
    strict = options.pop("strict", True)
    options.setdefault("speed", speed)
    with tempfile.TemporaryDirectory(prefix="tollbridge-costs-") as tmp:
        folder = Path(tmp)
        env = example_env(folder)
        check_env(call, env)
        with environment(env):
            vertical = load_vertical(call.vertical_file)
            if speech_lead_s is not None:
                vertical = replace(vertical, speech_lead_s=speech_lead_s)
            ledger = f"sqlite:///{folder / 'ledger.db'}"
            result = await run_local_call(  # closes the tools' databases when done
                vertical, audio=call.audio, cassette=call.cassette, ledger_url=ledger,
                spool_path=folder / "ledger.spool", settle_s=2.0, **options,
            )
            if strict and result.replay_failures:
                raise RuntimeError(f"fixture call {call.name} did not follow its cassette:\n"
                                   + "\n".join(result.replay_failures))
            async with await Ledger.open(ledger) as opened:
                stored = await opened.get(result.cost.call_sid)
    if stored != result.cost:
        raise RuntimeError(f"fixture call {call.name}: the ledger holds a different record")
    catalog = catalog_for(vertical)
    if price_call(result.usage, catalog).items != stored.items:
        raise RuntimeError(f"fixture call {call.name}: re-pricing its usage does not give "
                           "the ledger's record")
    usage = gate_silence(result.usage, vertical, result.phone.caller_audio)
    return Replayed(usage, catalog, options["speed"], result.phone.clears, vertical.speech_lead_s)


def per_minute(usd: Decimal, seconds: Decimal) -> Decimal | None:
    return round_usd(usd * 60 / seconds) if seconds else None


def grouped(cost: CallCost) -> dict[str, dict[str, Any]]:
    """Line items summed by item name (a tiered model can bill one item at two prices)."""
    items: dict[str, dict[str, Any]] = {}
    for line in cost.items:
        entry = items.setdefault(line.item, {"quantity": Decimal(0), "unit": line.unit,
                                             "usd": Decimal(0)})
        entry["quantity"] += line.quantity
        entry["usd"] += line.usd
    for entry in items.values():
        entry["usd_per_minute"] = per_minute(entry["usd"], cost.seconds)
    return items


def compare(name: str, kind: str, usage: CallUsage, catalog: Catalog,
            basis: str = "") -> dict[str, Any]:
    """Price `usage` as recorded and without its savings; per item and total $/min."""
    with_features = price_call(usage, catalog)
    without = price_call(without_savings(usage), catalog)
    with_pm, without_pm = with_features.usd_per_minute, without.usd_per_minute
    saved = None if with_pm is None or without_pm is None else without_pm - with_pm
    return {
        "name": name,
        "kind": kind,
        "vertical": usage.vertical,
        "direction": usage.direction,
        "seconds": with_features.seconds,
        "minutes_basis": basis or (
            "billed" if with_features.billed_seconds is not None else "measured"),
        "catalog_version": with_features.catalog_version,
        "with": {"total_usd": with_features.total_usd, "usd_per_minute": with_pm,
                 "items": grouped(with_features)},
        "without": {"total_usd": without.total_usd, "usd_per_minute": without_pm,
                    "items": grouped(without)},
        "saved_usd": without.total_usd - with_features.total_usd,
        "saved_usd_per_minute": saved,
        "saved_percent": (saved * 100 / without_pm).quantize(Decimal("0.1"))
        if saved is not None and without_pm else None,
    }


def money(value: Decimal | None, places: int = 6) -> str:
    return "–" if value is None else f"{value:.{places}f}"


def quantity(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "–"
    return f"{entry['quantity'].normalize():f} {entry['unit']}"


def call_table(row: dict[str, Any]) -> str:
    with_items, without_items = row["with"]["items"], row["without"]["items"]
    names = list(with_items) + [n for n in without_items if n not in with_items]
    lines = [
        f"### {row['kind']} {row['name']} ({row['vertical']}, {row['direction']}, "
        f"{row['seconds'].normalize():f} s {row['minutes_basis']})",
        "",
        "| item | quantity with | quantity without | $/min with | $/min without | saved $/min |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        got, plain = with_items.get(name), without_items.get(name)
        with_pm = got["usd_per_minute"] if got else Decimal(0)
        without_pm = plain["usd_per_minute"] if plain else Decimal(0)
        saved = None if with_pm is None or without_pm is None else without_pm - with_pm
        lines.append(f"| {name} | {quantity(got)} | {quantity(plain)} | {money(with_pm)} "
                     f"| {money(without_pm)} | {money(saved)} |")
    lines.append(
        f"| **total** | | | **{money(row['with']['usd_per_minute'])}** "
        f"| **{money(row['without']['usd_per_minute'])}** "
        f"| **{money(row['saved_usd_per_minute'])}** ({percent(row)}) |"
    )
    return "\n".join(lines)


def percent(row: dict[str, Any]) -> str:
    return "–" if row["saved_percent"] is None else f"{row['saved_percent']}%"


def summary_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| call / profile | vertical | seconds (basis) | $ with | $ without | $/min with "
        "| $/min without | saved $/min | saved % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['kind']} {row['name']} | {row['vertical']} "
            f"| {row['seconds'].normalize():f} ({row['minutes_basis']}) "
            f"| {money(row['with']['total_usd'])} "
            f"| {money(row['without']['total_usd'])} | {money(row['with']['usd_per_minute'], 4)} "
            f"| {money(row['without']['usd_per_minute'], 4)} "
            f"| {money(row['saved_usd_per_minute'], 4)} | {percent(row)} |"
        )
    return "\n".join(lines)


def as_json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, dict):
        return {key: as_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_json(item) for item in value]
    return value


def heard(done: Replayed) -> dict[str, Any]:
    """TTS characters billed, heard and never heard, their price, and the call's $/min."""
    cost = price_call(done.usage, done.catalog)
    return {
        "speech_lead_s": done.speech_lead_s,
        "billed_characters": sum((line.quantity for line in cost.items
                                 if line.item.startswith("tts:")), Decimal(0)),
        "cached_characters": sum((line.quantity for line in cost.items
                                 if line.item.startswith("tts.avoided:")), Decimal(0)),
        "heard_characters": done.usage.heard_characters,
        "unheard_characters": sum((line.quantity for line in cost.items
                                  if line.item.startswith("tts.unheard:")), Decimal(0)),
        "unheard_speech_usd": cost.unheard_speech_usd,
        "tts_usd": sum((line.usd for line in cost.items if line.item.startswith("tts:")),
                       Decimal(0)),
        "total_usd": cost.total_usd,
        "usd_per_minute": cost.usd_per_minute,
    }


async def run_calls(speed: float, only: set[str] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every fixture call priced with and without its savings; and, for each the caller
    barged in on (Twilio got a `clear`), what the caller heard paced (the vertical's
    `speech_lead_s`) against unpaced (`speech_lead_s = 0`, the whole reply synthesized at
    once): "before" and "after" speech pacing."""
    rows, barge_ins = [], []
    for call in fixture_calls():
        if only and call.name not in only:
            continue
        print(f"replaying {call.name} …", file=sys.stderr, flush=True)
        done = await replay(call, speed)
        basis = "measured" if done.speed == 1 else f"caller's clock, {done.speed:g}x replay"
        row = compare(call.name, "call", done.usage, done.catalog, basis)
        rows.append({**row, "speed": done.speed, "clears": done.clears})
        if done.clears:
            print(f"replaying {call.name} unpaced …", file=sys.stderr, flush=True)
            unpaced = await replay(call, speed, speech_lead_s=0)
            barge_ins.append({"name": call.name, "vertical": done.usage.vertical,
                              "clears": done.clears, "before": heard(unpaced),
                              "after": heard(done)})
    return rows, barge_ins


def barge_in_table(barge_ins: list[dict[str, Any]]) -> str:
    lines = [
        "| call | speech_lead_s | TTS chars billed | cached | heard | unheard "
        "| speech paid but not heard $ | TTS $ | total $ | $/min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in barge_ins:
        for when in ("before", "after"):
            row = entry[when]
            lead = "0 (before: unpaced)" if when == "before" else f"{row['speech_lead_s']:g} (after)"
            lines.append(
                f"| {entry['name']} | {lead} | {row['billed_characters']:f} "
                f"| {row['cached_characters']:f} | {row['heard_characters']} "
                f"| {row['unheard_characters']:f} | {money(row['unheard_speech_usd'])} "
                f"| {money(row['tts_usd'])} | {money(row['total_usd'])} "
                f"| {money(row['usd_per_minute'], 4)} |"
            )
    return "\n".join(lines)


def run_profiles() -> list[dict[str, Any]]:
    profiles = sorted(PROFILES.glob("profile_*.toml"))
    if not profiles:
        raise Missing(f"no profiles (profile_*.toml) in {shown(PROFILES)}")
    return [compare(path.stem, "profile", load_profile(path), catalog_for(None))
            for path in profiles]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.costs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--calls-only", action="store_true", help="fixture calls, no profiles")
    only.add_argument("--profiles-only", action="store_true", help="profiles, no fixture calls")
    parser.add_argument("--speed", type=float, default=2.0,
                        help="caller audio speed for calls whose test does not pin one")
    parser.add_argument("--only", help="just these fixture calls (comma-separated names)")
    parser.add_argument("--out", type=Path, default=RESULTS / "costs.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from loguru import logger

    from tollbridge import logs

    args = parse_args(argv)
    logger.remove()  # pipecat logs every pipeline it links
    logs.configure("ERROR")
    try:
        rows, barge_ins = ([], []) if args.profiles_only else asyncio.run(
            run_calls(args.speed, set(args.only.split(",")) if args.only else None))
        rows += [] if args.calls_only else run_profiles()
    except Missing as missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    print("# Cost per minute, with and without the cost features\n")
    print("With: as recorded (prompt caching, TTS phrase cache, STT silence gate as they "
          "acted). Without: `without_savings` (cached and cache-written tokens billed as "
          "input, avoided characters and seconds billed). $/min over each call's seconds: "
          "Twilio's billed seconds when known, else measured (on the caller's clock for a "
          "call replayed faster than real time).\n")
    for row in rows:
        print(call_table(row) + "\n")
    print("## Summary\n")
    print(summary_table(rows))
    if barge_ins:
        print("\n## Barge-ins: speech paid but not heard, before and after speech pacing\n")
        print("Before: `speech_lead_s = 0`, the whole reply sent to the TTS at once. After: the "
              "vertical's speech lead. Priced as recorded (\"with\"); unheard characters "
              "include any served from the phrase cache, their $ only the synthesized share.\n")
        print(barge_in_table(barge_ins))
    report = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "speed": args.speed,
        "rows": rows,
        "barge_ins": barge_ins,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(as_json(report), indent=1) + "\n")
    print(f"\nwrote {args.out.name} in {args.out.parent.name}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
