"""Logging, configured in one place.

structlog renders JSON lines when stderr is not a terminal and readable
console lines when it is. pipecat logs through loguru, and libraries (asyncpg,
uvicorn) through the standard `logging`; both are routed into the same
structlog stream so one call reads as one story, and a JSON log stays one
object per line: a traceback is a field, never lines of its own. Every value
passes through `redact`, so an API key or auth token never reaches a log line.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from structlog.tracebacks import ExceptionDictTransformer

_SECRET_KEYS = re.compile(r"(api[_-]?key|auth[_-]?token|secret|password|authorization|token)$", re.I)
# Shapes of secrets that may hide inside free text (URLs, headers, messages).
_SECRET_PATTERNS = [
    re.compile(r"(?i)(authorization:\s*(?:token|bearer|basic)\s+)\S+"),
    re.compile(r"(?i)((?:api[_-]?key|auth[_-]?token|xi-api-key|x-api-key|token)[\"']?\s*[=:]\s*[\"']?)[^\s\"'&,}]+"),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://[^:/@\s]+:)[^@\s/]+(?=@)"),  # URL passwords
]
REDACTED = "[redacted]"


def redact_text(text: str) -> str:
    """Mask anything in free text that looks like a credential."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + REDACTED, text)
    return text


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secret-named keys and secret-shaped text, also inside
    nested values such as a traceback's frames."""
    for key, value in event.items():
        event[key] = _scrubbed(key, value)
    return event


def _scrubbed(key: str, value: Any) -> Any:
    if _SECRET_KEYS.search(key) and value not in (None, ""):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list | tuple):
        return [_scrubbed("", item) for item in value]
    if isinstance(value, dict):
        return {k: _scrubbed(str(k), v) for k, v in value.items()}
    return value


def configure(level: str = "INFO", *, json: bool | None = None) -> None:
    """Configure structlog and route stdlib logging and pipecat's loguru into it."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    # JSON keeps a traceback as frames in one field (without locals: they may hold keys);
    # a terminal shows it as text. Either way it is rendered before `redact` reads it.
    tracebacks = (
        structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
        if json
        else structlog.processors.format_exc_info
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            tracebacks,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _route_stdlib(level, tracebacks, renderer)
    _route_loguru(level)


def _route_stdlib(level: str, tracebacks: Any, renderer: Any) -> None:
    """Render the standard library's records (asyncpg, uvicorn, asyncio, and Python's
    warnings) like our own.

    Their INFO chatter (a line per HTTP request) is left out unless the level is DEBUG.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                tracebacks,
                redact,
                renderer,
            ],
        )
    )
    logging.captureWarnings(True)
    root = logging.getLogger()
    root.handlers = [handler]
    wanted = logging.getLevelName(level.upper())
    root.setLevel(wanted if wanted == logging.DEBUG else max(wanted, logging.WARNING))


def _route_loguru(level: str) -> None:
    """Send pipecat's loguru records to structlog (pipecat logs a lot at DEBUG)."""
    from loguru import logger as loguru_logger

    log = structlog.get_logger("pipecat")

    def sink(message: Any) -> None:
        record = message.record
        method = getattr(log, record["level"].name.lower(), log.info)
        method(record["message"], module=record["name"])

    loguru_logger.remove()
    loguru_logger.add(sink, level=level.upper(), format="{message}")


def get_logger(**bound: Any) -> structlog.stdlib.BoundLogger:
    """A logger with context (call_sid, tenant, vertical, …) bound to every line.

    It binds lazily, at each line, so a module-level logger created at import
    still follows what `configure` set later: its level and its redaction.
    """
    return structlog.get_logger("tollbridge", **bound)
