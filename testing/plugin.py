"""pytest plugin: whole phone calls as test fixtures, with their cost.

Registered with tollbridge (entry point `pytest11`), so a project's own tests
can replay a recorded call through the real bridge and assert on behaviour
and money alike:

    async def test_booking_stays_under_margin(replay_call):
        call = await replay_call("examples/salon", audio="calls/booking.wav",
                                 cassette="calls/booking.cassette.json")
        assert call.tools[0].name == "find_slots"
        assert call.cost.usd_per_minute <= Decimal("0.035")

A cassette the call does not follow (a prompt or tool change that alters the
conversation) fails the test with the fakes' diff.

Every pytest run in an environment with tollbridge installed loads this
module, so it imports nothing beyond pytest until a fixture is used; the
testing extra is needed only then.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tollbridge.testing.local_call import LocalCall

ReplayCall = Callable[..., Awaitable["LocalCall"]]


def replayer(folder: Path) -> ReplayCall:
    """`await replay(vertical, audio=…, cassette=…, **options)` → a finished LocalCall, its
    spool in `folder`; a call that strays from its cassette fails the test (unless
    `strict=False`)."""
    from tollbridge.config import Vertical, load_vertical
    from tollbridge.testing.local_call import run_local_call

    async def replay(
        vertical: str | Path | Vertical, *, audio: Any, cassette: Any, strict: bool = True,
        **options: Any,
    ) -> LocalCall:
        if not isinstance(vertical, Vertical):
            vertical = load_vertical(vertical)
        options.setdefault("spool_path", folder / "ledger.spool")
        call = await run_local_call(vertical, audio=audio, cassette=cassette, **options)
        if strict and call.replay_failures:
            pytest.fail("the call did not follow its cassette:\n" + "\n".join(call.replay_failures))
        return call

    return replay


@pytest.fixture
def replay_call(tmp_path: Path) -> Iterator[ReplayCall]:
    """`await replay_call(vertical, audio=…, cassette=…, **options)` → a finished LocalCall.

    Each test's calls start as a fresh process's would: the phrase cache (the
    recorded greeting) is emptied before and after, so what a call is billed
    does not depend on which tests ran before it.
    """
    from tollbridge.phrase_cache import PHRASES

    PHRASES.clear()
    yield replayer(tmp_path)
    PHRASES.clear()
