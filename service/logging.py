"""Logging: structlog and the standard library (uvicorn included) in one shape.

JSON lines when stderr is not a terminal, readable console output when it is.
``delivery_id``, ``tracker``, ``job_id`` and ``attempt`` are bound through
contextvars by the web edge and the worker. ``redact`` runs on every entry,
so that no token, secret, key or Authorization header can be logged: by key
name, and by the shapes of the tokens we handle wherever they appear in text.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"
_SENSITIVE_KEY = re.compile(
    r"token|secret|password|passwd|authorization|api[_-]?key|private[_-]?key|cookie|"
    r"encryption[_-]?keys?|credential",
    re.IGNORECASE,
)
_SECRET_SHAPES = re.compile(
    r"(?:\b[A-Za-z0-9]{10}-[A-Za-z0-9]{22}\b"  # Coder API token
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}"  # GitHub tokens
    r"|\bgithub_pat_[A-Za-z0-9_]{20,}"
    r"|\blin_(?:api|oauth)_[A-Za-z0-9]{20,}"  # Linear keys
    r"|(?i:bearer|token)\s+[A-Za-z0-9._~+/=-]{12,}"  # Authorization header values
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----)"
)


def redact_text(text: str) -> str:
    """``text`` with every token-shaped substring replaced by ``[redacted]``."""
    return _SECRET_SHAPES.sub(REDACTED, text)


def _redact_value(key: str, value: Any) -> Any:
    if _SENSITIVE_KEY.search(key) and value not in (None, "", [], {}):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(key, v) for v in value]
    return value


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask sensitive keys and token-shaped text in every entry."""
    for key in list(event_dict):
        if key == "event" and isinstance(event_dict[key], str):
            event_dict[key] = redact_text(event_dict[key])
        elif key != "event":
            event_dict[key] = _redact_value(key, event_dict[key])
    return event_dict


def _redact_exception(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if isinstance(event_dict.get("exception"), str):
        event_dict["exception"] = redact_text(event_dict["exception"])
    return event_dict


def configure_logging(*, json_output: bool | None = None, level: str = "INFO") -> None:
    """Set up structlog and route the standard library's records through the same chain."""
    if json_output is None:
        json_output = not sys.stderr.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    final: list[Any] = (
        [structlog.processors.format_exc_info, _redact_exception]
        if json_output else []
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *final,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def get_logger(name: str) -> Any:
    """A structlog logger; bind per-request/per-job values through ``structlog.contextvars``."""
    return structlog.get_logger(name)
