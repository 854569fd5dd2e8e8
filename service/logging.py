"""Logging: structlog and the standard library (uvicorn included) in one shape.

JSON lines when stderr is not a terminal, readable console output when it is.
``delivery_id``, ``tracker``, ``job_id`` and ``attempt`` are bound through
contextvars by the web edge and the worker. Every line is written (and flushed)
when it is logged, so a process killed by SIGKILL or the OOM killer loses no
line it logged. ``redact`` runs on every entry, last before rendering, so that
no token, secret, key or Authorization header can be logged: by key name, and
by the shapes of the tokens we handle wherever they appear in text.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import orjson
import structlog

REDACTED = "[redacted]"
_SENSITIVE_KEY = re.compile(
    r"token|secret|password|passwd|authorization|api[_-]?key|private[_-]?key|cookie|"
    r"encryption[_-]?keys?|credential|verifier|session",
    re.IGNORECASE,
)
# Each secret shape with a cheap test of something it cannot match without: the
# patterns run only where that is present (this runs on every string of every line,
# and a line is written for every delivery).
_SECRET_SHAPES: tuple[tuple[Callable[[str], bool], re.Pattern[str]], ...] = (
    (lambda t: "-" in t,  # Coder API token
     re.compile(r"\b[A-Za-z0-9]{10}-[A-Za-z0-9]{22}\b")),
    (lambda t: "gh" in t or "_pat_" in t,  # GitHub tokens
     re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}|\bgithub_pat_\w{20,}")),
    (lambda t: "lin_" in t,  # Linear keys and OAuth tokens
     re.compile(r"\blin_(?:api|oauth)_[A-Za-z0-9]{20,}")),
    (lambda t: "earer" in t or "EARER" in t or "oken" in t or "OKEN" in t,  # Authorization
     re.compile(r"(?i:bearer|token)\s+[A-Za-z0-9._~+/=-]{12,}")),
    (lambda t: "PRIVATE KEY" in t,
     re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----")),
)
_SHORTEST_SECRET = 12
_NEVER_SECRET = frozenset({"logger", "level", "timestamp"})


def redact_text(text: str) -> str:
    """``text`` with every token-shaped substring replaced by ``[redacted]``."""
    if len(text) < _SHORTEST_SECRET:
        return text
    for needed, pattern in _SECRET_SHAPES:
        if needed(text):
            text = pattern.sub(REDACTED, text)
    return text


@functools.lru_cache(maxsize=1024)
def _is_sensitive_key(key: str) -> bool:
    return _SENSITIVE_KEY.search(key) is not None


# Event names are mostly constants ("webhook_accepted"): each is redacted once.
_redact_event = functools.lru_cache(maxsize=1024)(redact_text)


def _redact_value(key: str, value: Any) -> Any:
    if _is_sensitive_key(key) and value not in (None, "", [], {}):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(key, v) for v in value]
    return value


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask sensitive keys and token-shaped text in every entry
    (the event text and a formatted exception included)."""
    for key, value in event_dict.items():
        if key == "event":
            if isinstance(value, str):
                event_dict[key] = _redact_event(value) if len(value) < 100 else redact_text(value)
        elif key not in _NEVER_SECRET:
            event_dict[key] = _redact_value(key, value)
    return event_dict


def _name_logger(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``logger_name`` (bound by ``get_logger``) → ``logger``, the key stdlib lines use."""
    name = event_dict.pop("logger_name", None)
    if name is not None:
        event_dict["logger"] = name
    return event_dict


def _orjson_text(value: Any, **options: Any) -> str:
    """The JSON of one line as text, for the standard library's (text) handler."""
    return orjson.dumps(value, **options).decode()


def configure_logging(
    *, json_output: bool | None = None, level: str = "INFO", stream: TextIO | None = None
) -> None:
    """Set up structlog, and route the standard library's records through the same chain.

    Our own lines go through structlog's filtering bound logger straight to
    ``stream`` (stderr by default; JSON lines are written as bytes to its binary
    buffer); records of the standard library (uvicorn, asyncio) go through a
    ``ProcessorFormatter`` with the same processors, so both look alike.
    """
    target = sys.stderr if stream is None else stream
    if json_output is None:
        json_output = not target.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    finish: list[Any] = [structlog.processors.format_exc_info, redact] if json_output else [redact]
    logger_factory: Any
    if json_output:
        renderer: Any = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        text_renderer: Any = structlog.processors.JSONRenderer(serializer=_orjson_text)
        logger_factory = structlog.BytesLoggerFactory(target.buffer)
    else:
        renderer = text_renderer = structlog.dev.ConsoleRenderer(colors=target.isatty())
        logger_factory = structlog.WriteLoggerFactory(target)
    structlog.configure(
        processors=[*shared, _name_logger, *finish, renderer],
        logger_factory=logger_factory,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finish,
                    text_renderer],
    )
    handler = logging.StreamHandler(target)
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
    """A structlog logger named ``name`` (the ``logger`` key of every line); bind
    per-request/per-job values through ``structlog.contextvars``."""
    # Lazy: resolved on first use, so a module-level logger created at import time
    # still goes through the configuration (and redaction) set up later.
    # (``logger`` itself is a parameter of get_logger; _name_logger renames the key.)
    return structlog.get_logger(logger_name=name)
