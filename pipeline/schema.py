"""JSON Schema of a vertical file, generated from the registry.

Each chain entry is one of the registered kinds (`use` is a constant naming
the kind and the other keys are that kind's options, so an editor can check
and complete a vertical file, plugins included) or a plain pipecat processor
named as ``module:Class``, whose options come from its constructor.
"""

from __future__ import annotations

from typing import Any

from tollbridge.config import VerticalFile
from tollbridge.registry import Registry, default_registry
from tollbridge.stage import StageKind

SCHEMA_ID = "https://tollbridge.dev/schema/vertical.json"


_PLAIN_PROCESSOR = {
    "title": "pipecat processor",
    "type": "object",
    "properties": {
        "use": {
            "type": "string",
            "pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
            "description": "A pipecat FrameProcessor subclass as package.module:ClassName; "
            "the other keys are its constructor's keyword arguments",
        }
    },
    "required": ["use"],
}


def _kind_schema(kind: StageKind, defs: dict[str, Any]) -> dict[str, Any]:
    schema = kind.options.model_json_schema(ref_template="#/$defs/{model}")
    defs.update(schema.pop("$defs", {}))
    properties = {"use": {"const": kind.name, "description": kind.description}}
    properties.update(schema.get("properties", {}))
    return {
        "title": kind.name,
        "type": "object",
        "properties": properties,
        "required": ["use", *schema.get("required", [])],
        "additionalProperties": False,
    }


def vertical_schema(registry: Registry | None = None) -> dict[str, Any]:
    registry = registry or default_registry()
    schema = VerticalFile.model_json_schema(ref_template="#/$defs/{model}")
    defs: dict[str, Any] = schema.pop("$defs", {})
    stages = [_kind_schema(kind, defs) for kind in registry.kinds()] + [_PLAIN_PROCESSOR]
    schema["properties"]["chain"] = {
        "type": "array",
        "minItems": 1,
        "description": "The call's stages in order: the transport first, then stt → llm → tts "
        "(or one speech-to-speech stage), a meter, and processors wherever they belong.",
        "items": {"oneOf": stages},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "tollbridge vertical",
        **schema,
        "$defs": defs,
    }
