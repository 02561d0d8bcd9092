"""The testing layer: whole phone calls on one machine, with no accounts.

Local fakes of each provider's wire protocol, cassettes that replay what the
providers answered, a recorder that writes them, a softphone that plays a
caller's recording into the bridge as Twilio would, a local call that ties
them together, and a pytest plugin (`replay_call`). None of it is imported by
the framework itself; it is installed with the ``tollbridge[testing]`` extra:

    from tollbridge.testing import run_local_call
    call = await run_local_call(vertical, audio="caller.wav", cassette="caller.cassette.json")
    print(call.cost.total_usd, call.cost.usd_per_minute)

Names are imported on first use, so the pytest plugin costs an unrelated
test run nothing until one of its fixtures is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tollbridge.errors import TollbridgeError

if TYPE_CHECKING:
    from tollbridge.testing.cassette import Cassette, ReplayServer, replay
    from tollbridge.testing.local_call import LocalCall, run_local_call

EXTRA_PACKAGES = ("aiohttp", "num2words")
"""What the testing layer imports beyond tollbridge's own dependencies."""

_WHERE = {
    "Cassette": "cassette",
    "ReplayServer": "cassette",
    "replay": "cassette",
    "LocalCall": "local_call",
    "run_local_call": "local_call",
}
__all__ = ["Cassette", "LocalCall", "ReplayServer", "replay", "require_extra", "run_local_call"]


class MissingExtra(TollbridgeError, ImportError):
    """The testing layer was used without its extra installed."""


def require_extra() -> None:
    """Fail with the install command when the testing extra's packages are missing."""
    missing = []
    for name in EXTRA_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtra(
            f"tollbridge's testing layer needs {', '.join(missing)}, which is not installed: "
            "pip install 'tollbridge[testing]'"
        )


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'tollbridge.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tollbridge.testing.{module}"), name)
    globals()[name] = value
    return value
