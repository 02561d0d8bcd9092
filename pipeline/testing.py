"""pytest plugin: whole phone calls as test fixtures, with their cost.

Installed with tollbridge (entry point `pytest11`), so a project's own tests
can replay a recorded call through the real bridge and assert on behaviour
and money alike:

    async def test_booking_stays_under_margin(replay_call):
        call = await replay_call("examples/salon", audio="calls/booking.wav",
                                 cassette="calls/booking.cassette.json")
        assert call.tools[0].name == "find_slots"
        assert call.cost.usd_per_minute <= Decimal("0.035")
        assert call.prompt_cache_hit_after_first_turn

A cassette the call does not follow (a prompt or tool change that alters the
conversation) fails the test with the fakes' diff.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tollbridge.config import Vertical, load_vertical
from tollbridge.local_call import LocalCall, run_local_call

ReplayCall = Callable[..., Awaitable[LocalCall]]


@pytest.fixture
def replay_call(tmp_path: Path) -> ReplayCall:
    """`await replay_call(vertical, audio=…, cassette=…, **options)` → a finished LocalCall."""

    async def replay(
        vertical: str | Path | Vertical, *, audio: Any, cassette: Any, strict: bool = True,
        **options: Any,
    ) -> LocalCall:
        if not isinstance(vertical, Vertical):
            vertical = load_vertical(vertical)
        options.setdefault("spool_path", tmp_path / "ledger.spool")
        call = await run_local_call(vertical, audio=audio, cassette=cassette, **options)
        if strict and call.replay_failures:
            pytest.fail("the call did not follow its cassette:\n" + "\n".join(call.replay_failures))
        return call

    return replay
