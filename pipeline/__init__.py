"""tollbridge: AI phone agents on Twilio and pipecat that know what every call costs.

The public API: load a vertical, build one call, write a stage kind.

    from tollbridge import load_vertical
    vertical = load_vertical("examples/salon")
    print([stage.name for stage in vertical.chain])

Running a whole call on this machine (recorded caller audio, local fakes of the
providers) is the testing layer's job: `tollbridge.testing`, installed with the
``tollbridge[testing]`` extra.

Names are imported on first use, so ``import tollbridge`` stays cheap
(pipecat and the provider SDKs load only when a call needs them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tollbridge.builder import BuiltCall, build_call
    from tollbridge.config import ConfigError, Stage, Vertical, load_vertical, load_verticals
    from tollbridge.costs.lineitem import CallCost, LineItem
    from tollbridge.costs.usage import CallUsage
    from tollbridge.errors import TollbridgeError
    from tollbridge.meter import CostMeter
    from tollbridge.registry import Registry, default_registry
    from tollbridge.session import CallSession
    from tollbridge.stage import (
        MULAW_8K,
        AudioFormat,
        AvoidedUsage,
        Billing,
        BrainOptions,
        CallContext,
        ConfigFile,
        ProviderOptions,
        Role,
        StageKind,
        StageOptions,
    )
    from tollbridge.tools import Tool, ToolContext, at_shutdown

_WHERE = {
    # a vertical and its chain
    "ConfigError": "config",
    "Stage": "config",
    "Vertical": "config",
    "load_vertical": "config",
    "load_verticals": "config",
    # one call
    "BuiltCall": "builder",
    "CallContext": "stage",
    "CallSession": "session",
    "build_call": "builder",
    # tools
    "Tool": "tools",
    "ToolContext": "tools",
    "at_shutdown": "tools",
    # the stage contract
    "MULAW_8K": "stage",
    "AudioFormat": "stage",
    "AvoidedUsage": "stage",
    "Billing": "stage",
    "BrainOptions": "stage",
    "ConfigFile": "stage",
    "ProviderOptions": "stage",
    "Registry": "registry",
    "Role": "stage",
    "StageKind": "stage",
    "StageOptions": "stage",
    "default_registry": "registry",
    # money
    "CallCost": "costs.lineitem",
    "CallUsage": "costs.usage",
    "CostMeter": "meter",
    "LineItem": "costs.lineitem",
    # errors a user can fix, each naming what is wrong and where
    "TollbridgeError": "errors",
}

__all__ = [
    "MULAW_8K",
    "AudioFormat",
    "AvoidedUsage",
    "Billing",
    "BrainOptions",
    "BuiltCall",
    "CallContext",
    "CallCost",
    "CallSession",
    "CallUsage",
    "ConfigError",
    "ConfigFile",
    "CostMeter",
    "LineItem",
    "ProviderOptions",
    "Registry",
    "Role",
    "Stage",
    "StageKind",
    "StageOptions",
    "TollbridgeError",
    "Tool",
    "ToolContext",
    "Vertical",
    "at_shutdown",
    "build_call",
    "default_registry",
    "load_vertical",
    "load_verticals",
]


assert set(__all__) == set(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'tollbridge' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tollbridge.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
