"""A chain entry naming a plain pipecat processor: ``use = "package.module:ClassName"``.

Any `FrameProcessor` subclass can sit in a chain without being written for
tollbridge: the entry's other keys are its constructor's keyword arguments,
validated against its signature before a call starts (an unknown key or a
wrong type is an error naming the key), and one instance is built per call.
The module is looked up beside the vertical file first (like its tools),
then in the current directory and on the import path. Such a stage bills nothing and needs no replay
fake: it changes frames, not providers.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import typing
from pathlib import Path
from types import ModuleType
from typing import Any

from pipecat.processors.frame_processor import FrameProcessor
from pydantic import ConfigDict, create_model

from tollbridge.stage import CallContext, Role, StageKind, StageOptions
from tollbridge.tools import import_beside


class PlainProcessorOptions(StageOptions):
    model_config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)


class PlainProcessorKind(StageKind):
    """The kind made for one ``module:ClassName`` (made when a vertical names it)."""

    role = Role.PROCESSOR

    def __init__(self, use: str, processor: type[FrameProcessor]):
        self.name = use
        self.processor = processor
        self.options = _options_model(processor)
        self.description = (inspect.getdoc(processor) or "").split("\n", 1)[0]

    def build(self, options: StageOptions, call: CallContext) -> FrameProcessor:
        return self.processor(**options.model_dump(exclude_unset=True))


def processor_kind(use: str, folder: Path) -> PlainProcessorKind:
    """The kind for ``module:ClassName``; ValueError says what is wrong with the reference."""
    module_name, _, attr = use.partition(":")
    if not module_name or not attr.isidentifier():
        raise ValueError(f'"{use}" is not of the form "package.module:ClassName"')
    module = import_beside(folder, module_name) or _import(module_name)
    processor = getattr(module, attr, None)
    if not (isinstance(processor, type) and issubclass(processor, FrameProcessor)):
        raise ValueError(f'"{use}" must name a pipecat FrameProcessor subclass, not {processor!r}')
    return PlainProcessorKind(use, processor)


def _import(module_name: str) -> ModuleType:
    """Import from the current directory or the Python path (as uvicorn finds `app:app`)."""
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ValueError(
            f'cannot import "{module_name}" ({error}); it is looked for beside the vertical '
            "file, in the current directory, then on the Python path"
        ) from None
    except Exception as error:
        raise ValueError(f'importing "{module_name}" failed: {error!r}') from error


def _options_model(processor: type[FrameProcessor]) -> type[StageOptions]:
    """Keyword arguments of the class's constructors down to FrameProcessor (which adds
    only `name`), each typed by its annotation."""
    fields: dict[str, Any] = {}
    for cls in processor.__mro__:
        if not (isinstance(cls, type) and issubclass(cls, FrameProcessor)):
            break
        if "__init__" not in vars(cls):
            continue
        if cls is FrameProcessor:
            fields.setdefault("name", (str | None, None))
            break
        init = vars(cls)["__init__"]
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # an annotation that cannot be resolved: take any value
            hints = {}
        passes_on = False
        for param in list(inspect.signature(init).parameters.values())[1:]:
            if param.kind is param.VAR_KEYWORD:
                passes_on = True
            elif param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                default = ... if param.default is param.empty else param.default
                fields.setdefault(param.name, (hints.get(param.name, Any), default))
        if not passes_on:
            break
    return create_model(
        f"{processor.__name__}Options", __base__=PlainProcessorOptions, **fields
    )
