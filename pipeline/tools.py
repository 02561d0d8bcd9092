"""Tools an agent can call, declared by a vertical in plain Python.

A vertical's config names them as ``tools = "tools:TOOLS"``: the module file
``tools.py`` beside the config, attribute ``TOOLS``, a list of `Tool`. A
handler gets the model's arguments and the `ToolContext` (who is calling, and
ways to end the call or hand it to another agent) and returns anything
JSON-serializable; an exception is
reported to the model as an error result, so a broken tool never ends a call.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any


@dataclass
class ToolContext:
    """What a tool handler knows about the call it serves."""

    call_sid: str
    tenant: str
    vertical: str
    folder: Path
    caller: str = ""
    callee: str = ""
    end_call: Callable[[], Awaitable[None]] | None = None
    hand_to: Callable[[str, str], Awaitable[None]] | None = None
    """On a vertical with several agents: `await hand_to(agent, note)` hands the caller to
    one the agent on the line may hand to, as soon as this tool's result is in (ValueError
    for one it may not)."""
    state: dict[str, Any] = field(default_factory=dict)
    """Per-call scratch space shared by the call's tools."""


@dataclass(frozen=True)
class Tool:
    """One function the model may call."""

    name: str
    description: str
    handler: Callable[[dict[str, Any], ToolContext], Awaitable[Any]]
    properties: dict[str, Any] = field(default_factory=dict)
    required: list[str] = field(default_factory=list)


_closers: list[Callable[[], Awaitable[None]]] = []


def at_shutdown(close: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """Register what a vertical's tools must release when the process is done with calls
    (a shared database connection, say). `shutdown` runs every closer, each time, so a
    closer must do nothing when there is nothing open."""
    if close not in _closers:
        _closers.append(close)
    return close


async def shutdown() -> None:
    """Release what tools registered with `at_shutdown`."""
    for close in reversed(_closers):
        await close()


def load_tools(spec: str, folder: Path) -> list[Tool]:
    """Import ``module:ATTR`` from `folder` and check it is a list of Tool."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f'"{spec}" is not of the form "module:ATTRIBUTE" (e.g. "tools:TOOLS")')
    module = import_beside(folder, module_name)
    if module is None:
        path = module_name.replace(".", "/") + ".py"
        raise ValueError(f'module "{module_name}" not found (looked for {path} in {folder.name}/)')
    tools = getattr(module, attr, None)
    if not isinstance(tools, list | tuple) or not all(isinstance(t, Tool) for t in tools):
        raise ValueError(f"{module_name}.{attr} must be a list of tollbridge Tool objects")
    return list(tools)


def import_beside(folder: Path, module_name: str) -> ModuleType | None:
    """Import `module_name` from the vertical's `folder` (None if no such file there).

    The folder is imported as a package of its own, so a vertical's modules
    can import each other relatively (``from . import booking``).
    """
    path = folder / (module_name.replace(".", "/") + ".py")
    if not path.is_file():
        return None
    try:
        return importlib.import_module(f"{_vertical_package(folder)}.{module_name}")
    except Exception as error:
        raise ValueError(f"importing {path.name} failed: {error!r}") from error


def _vertical_package(folder: Path) -> str:
    """A package (named after the folder's path) whose modules are the folder's files."""
    resolved = folder.resolve()
    name = "tollbridge_vertical_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    if name not in sys.modules:
        package = importlib.util.module_from_spec(ModuleSpec(name, None, is_package=True))
        package.__path__ = [str(resolved)]
        sys.modules[name] = package
    return name
