"""Tools an agent can call, declared by a vertical in plain Python.

A vertical's config names them as ``tools = "tools:TOOLS"``: the module file
``tools.py`` beside the config, attribute ``TOOLS``, a list of `Tool`. A
handler gets the model's arguments and the `ToolCall` (who is calling, and a
way to end the call) and returns anything JSON-serializable; an exception is
reported to the model as an error result, so a broken tool never ends a call.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ToolCall:
    """What a tool handler knows about the call it serves."""

    call_sid: str
    tenant: str
    vertical: str
    folder: Path
    caller: str = ""
    callee: str = ""
    end_call: Callable[[], Awaitable[None]] | None = None
    state: dict[str, Any] = field(default_factory=dict)
    """Per-call scratch space shared by the call's tools."""


@dataclass(frozen=True)
class Tool:
    """One function the model may call."""

    name: str
    description: str
    handler: Callable[[dict[str, Any], ToolCall], Awaitable[Any]]
    properties: dict[str, Any] = field(default_factory=dict)
    required: list[str] = field(default_factory=list)


def load_tools(spec: str, folder: Path) -> list[Tool]:
    """Import ``module:ATTR`` from `folder` and check it is a list of Tool."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f'"{spec}" is not of the form "module:ATTRIBUTE" (e.g. "tools:TOOLS")')
    path = folder / (module_name.replace(".", "/") + ".py")
    if not path.is_file():
        raise ValueError(f'module "{module_name}" not found (looked for {path.name} in {folder.name}/)')
    unique = f"tollbridge_tools_{abs(hash(path.resolve()))}"
    module = sys.modules.get(unique)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(unique, path)
        assert loader_spec and loader_spec.loader
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[unique] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[unique]
            raise ValueError(f"importing {path.name} failed: {error!r}") from error
    tools = getattr(module, attr, None)
    if not isinstance(tools, list | tuple) or not all(isinstance(t, Tool) for t in tools):
        raise ValueError(f"{module_name}.{attr} must be a list of tollbridge Tool objects")
    return list(tools)
