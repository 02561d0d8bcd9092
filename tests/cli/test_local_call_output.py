"""What `tollbridge call` prints and when it counts a call as failed, without placing one."""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal
from types import SimpleNamespace

from rich.console import Console

from tollbridge.costs.catalog import Catalog
from tollbridge.costs.pricing import price_call
from tollbridge.costs.usage import CallUsage, TTSUsage
from tollbridge.testing.local_call import LocalCall, print_call
from tollbridge.testing.softphone import SoftphoneResult
from tollbridge.transports.twilio.transport import ConnectionStats

STARTED = dt.datetime(2026, 11, 20, 15, 30, tzinfo=dt.UTC)


def local_call(*, agent_audio: bytes = b"\xff" * 8000, replay_failures=(),
               ended_by: str = "caller_hung_up", conversation=()) -> LocalCall:
    usage = CallUsage(
        call_sid="CA" + "1" * 32, tenant="glambook", vertical="salon", direction="inbound",
        number_type="local", from_number="+15550109999", to_number="+15550100200",
        started_at=STARTED, ended_at=STARTED + dt.timedelta(seconds=20),
        measured_seconds=Decimal(20), billed_seconds=None, recording=False,
        monthly_minutes_per_number=1000, ended_by=ended_by,
        tts=[TTSUsage("deepgram", "aura-2-thalia-en", 74)],
    )
    return LocalCall(
        vertical=SimpleNamespace(name="salon"),  # type: ignore[arg-type]
        phone=SoftphoneResult("CA" + "1" * 32, "MZ1", agent_audio=agent_audio),
        usage=usage, cost=price_call(usage, Catalog.load()), stats=ConnectionStats(),
        conversation=list(conversation), replay_failures=list(replay_failures),
    )


def printed(call: LocalCall) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    print_call(call, console)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_the_transcript_is_printed_as_said_not_as_markup():
    out = printed(local_call(
        conversation=[("caller", "[keypad] 1#"), ("agent", "Closing [/b] tags [red]stay[/red]")],
        replay_failures=["openai.llm: expected [bold]x[/bold]"]))
    assert "caller  [keypad] 1#" in out
    assert " agent  Closing [/b] tags [red]stay[/red]" in out
    assert "replay mismatch: openai.llm: expected [bold]x[/bold]" in out


def test_a_good_call_has_no_problems():
    assert local_call().problems == []


def test_silence_a_stray_replay_and_an_error_each_fail_the_call():
    [silent] = local_call(agent_audio=b"").problems
    assert silent == "the agent played no audio (74 TTS characters billed)"
    [strayed] = local_call(replay_failures=["openai.llm: 400", "openai.llm: 400"]).problems
    assert strayed.startswith("the call did not follow its cassette (2 request(s) refused")
    [failed] = local_call(ended_by="transport_error").problems
    assert failed == "the call ended by transport_error"
