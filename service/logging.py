"""Logging: structlog and the standard library (uvicorn included) in one shape.

JSON lines when stderr is not a terminal, readable console output when it is.
``delivery_id``, ``tracker``, ``job_id`` and ``attempt`` are bound through
contextvars by the web edge and the worker. ``redact`` runs on every entry,
so that no token, secret, key or Authorization header can be logged: by key
name, and by the shapes of the tokens we handle wherever they appear in text.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import functools
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import orjson
import structlog

REDACTED = "[redacted]"
_SENSITIVE_KEY = re.compile(
    r"token|secret|password|passwd|authorization|api[_-]?key|private[_-]?key|cookie|"
    r"encryption[_-]?keys?|credential",
    re.IGNORECASE,
)
# Each secret shape with a cheap hint that must be present for it to match; this runs on
# every string of every log line, so the patterns only run where they could match.
_SECRET_SHAPES: tuple[tuple[Callable[[str], bool], re.Pattern[str]], ...] = (
    (lambda t: "-" in t, re.compile(r"\b[A-Za-z0-9]{10}-[A-Za-z0-9]{22}\b")),  # Coder token
    (lambda t: "gh" in t, re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}|\bgithub_pat_\w{20,}")),
    (lambda t: "lin_" in t, re.compile(r"\blin_(?:api|oauth)_[A-Za-z0-9]{20,}")),  # Linear
    (lambda t: "earer" in t or "EARER" in t or "oken" in t or "OKEN" in t,
     re.compile(r"(?i:bearer|token)\s+[A-Za-z0-9._~+/=-]{12,}")),  # Authorization values
    (lambda t: "PRIVATE KEY" in t,
     re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----")),
)
_SHORTEST_SECRET = 12


def redact_text(text: str) -> str:
    """``text`` with every token-shaped substring replaced by ``[redacted]``."""
    if len(text) < _SHORTEST_SECRET:
        return text
    for hint, pattern in _SECRET_SHAPES:
        if hint(text):
            text = pattern.sub(REDACTED, text)
    return text


@functools.lru_cache(maxsize=1024)
def _is_sensitive_key(key: str) -> bool:
    return _SENSITIVE_KEY.search(key) is not None


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


# Keys whose values the bridge itself produces as identifiers (bound per delivery and
# per job): never a secret, and on every line, so not worth scanning.
_IDENTIFIER_KEYS = frozenset({"logger_name", "tracker", "delivery_id", "issue", "job_id",
                              "attempt"})


# Event names are mostly constants ("webhook_accepted"): redacted once, then looked up.
_redact_event_name = functools.lru_cache(maxsize=512)(redact_text)
_EVENT_NAME_MAX = 80


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask sensitive keys and token-shaped text in every entry."""
    for key, value in list(event_dict.items()):
        if key == "event" and isinstance(value, str):
            event_dict[key] = (_redact_event_name(value) if len(value) <= _EVENT_NAME_MAX
                               else redact_text(value))
        elif key != "event" and key not in _IDENTIFIER_KEYS:
            event_dict[key] = _redact_value(key, value)
    return event_dict


def _redact_exception(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if isinstance(event_dict.get("exception"), str):
        event_dict["exception"] = redact_text(event_dict["exception"])
    return event_dict


def _name_logger(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``logger_name`` (bound by ``get_logger``) → ``logger``, the key stdlib lines use."""
    name = event_dict.pop("logger_name", None)
    if name is not None:
        event_dict["logger"] = name
    return event_dict


# (second, its ISO-8601 text): replaced as one tuple, so threads never see a mix.
_last_second: tuple[int, str] = (-1, "")


def _timestamp(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``timestamp``: UTC ISO-8601 with microseconds, as ``TimeStamper(fmt="iso", utc=True)``
    writes it, at a quarter of the cost (the date part is formatted once a second)."""
    global _last_second
    now = time.time()
    second = int(now)
    cached_second, text = _last_second
    if second != cached_second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = (second, text)
    event_dict["timestamp"] = f"{text}.{int((now - second) * 1e6):06d}Z"
    return event_dict


class LineBatcher:
    """A text stream that writes the lines of one event-loop iteration in one call.

    Inside a running event loop, ``write`` only buffers and ``flush`` schedules one
    write of everything buffered for the loop's next iteration: a burst of deliveries
    logs one line each, and one ``write(2)`` per iteration is much cheaper than one
    per line. Outside a loop (the CLI, other threads) every flush writes at once.
    Lines still buffered when the process exits normally are written by ``atexit``;
    a killed process can lose the lines of its last loop iteration.
    """

    def __init__(self, target: TextIO) -> None:
        self.target = target
        self._parts: list[str] = []
        self._lock = threading.Lock()
        self._scheduled = False
        atexit.register(self.drain)

    def write(self, text: str) -> int:
        with self._lock:
            self._parts.append(text)
        return len(text)

    def flush(self) -> None:
        # Read without the lock: True means a drain is pending, which will write every
        # line already buffered (``write`` appends under the lock that ``drain`` takes to
        # swap the buffer and clear this flag). Most lines end here, before the running
        # loop's lookup (a ``getpid`` system call on Python 3.11).
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.drain()
            return
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        loop.call_soon(self.drain)

    def drain(self) -> None:
        """Write and flush everything buffered (in order), now."""
        with self._lock:
            parts, self._parts = self._parts, []
            self._scheduled = False
            if parts:
                self.target.write("".join(parts))
                self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()


def _render_json(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> str:
    """The final processor: one JSON object (orjson, ~10x faster than ``json.dumps``)."""
    return orjson.dumps(event_dict, default=repr).decode()


# How structlog.contextvars names its variables, and marks a cleared one (Ellipsis).
_CONTEXT_PREFIX = structlog.contextvars.STRUCTLOG_KEY_PREFIX
_CONTEXT_PREFIX_LENGTH = len(_CONTEXT_PREFIX)

# Where ``hot_info`` writes: the JSON sink while INFO lines are on, else None (structlog);
# and the processor list it mirrors (structlog keeps this very list object).
_hot_sink: LineBatcher | None = None
_hot_processors: list[Any] = []


def hot_info(logger_name: str, event: str, **fields: Any) -> None:
    """Log the INFO line ``get_logger(logger_name).info(event, **fields)`` would write,
    for about half the cost: for lines written on every request.

    With JSON output and INFO enabled, the same processors run in one function and
    the line goes straight to the sink: the same keys, in the same order, redacted
    alike. structlog's bound logger, processor loop and ``WriteLogger`` took about
    as much again as the processors themselves, and the webhook outcome line was a
    seventh of the cost of a delivery (bench/ingest.py). Otherwise (console output,
    a level above INFO), and whenever structlog no longer runs the configuration
    ``configure_logging`` installed (reset, or its processors swapped in place, as
    ``structlog.testing.capture_logs`` does), this is that structlog call.
    ``fields`` must not carry ``exc_info``: exceptions go through structlog.
    """
    sink = _hot_sink
    processors = structlog.get_config()["processors"]
    if sink is None or processors is not _hot_processors or processors[-1] is not _render_json:
        structlog.get_logger(logger_name=logger_name).info(event, **fields)
        return
    event_dict: dict[str, Any] = {**fields, "event": event}
    # structlog.contextvars.merge_contextvars, in one pass over the context (a copy
    # through get_contextvars() and then a merge took twice as long).
    for var, value in contextvars.copy_context().items():
        name = var.name
        if value is not Ellipsis and name.startswith(_CONTEXT_PREFIX):
            event_dict.setdefault(name[_CONTEXT_PREFIX_LENGTH:], value)
    redact(None, "info", event_dict)
    event_dict["logger"] = logger_name
    event_dict["level"] = "info"
    _timestamp(None, "info", event_dict)
    sink.write(_render_json(None, "info", event_dict) + "\n")
    sink.flush()


def configure_logging(
    *, json_output: bool | None = None, level: str = "INFO", stream: TextIO | None = None
) -> None:
    """Set up structlog, and route the standard library's records through the same chain.

    Our own lines go through structlog's native logger straight to ``stream``
    (stderr by default), filtered by level before any work is done: a
    stdlib-backed structlog line cost a fifth of a webhook request. Records of
    the standard library (uvicorn, asyncio) go through a ``ProcessorFormatter``
    with the same processors, so both look alike.
    """
    target = sys.stderr if stream is None else stream
    if json_output is None:
        json_output = not target.isatty()
    out = LineBatcher(target)
    # redact runs before the processors that add our own values (logger name, level,
    # timestamp): those cannot hold a secret, and skipping them halves its cost.
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        redact,
        _name_logger,
        structlog.processors.add_log_level,
        _timestamp,
    ]
    renderer: Any
    finish: list[Any]
    sink: Any = out  # structlog and logging take any object with write() and flush()
    if json_output:
        renderer = _render_json
        finish = [structlog.processors.format_exc_info, _redact_exception]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=target.isatty())
        finish = []
    numeric_level = logging.getLevelName(level)
    global _hot_sink, _hot_processors
    _hot_sink = out if json_output and numeric_level <= logging.INFO else None
    _hot_processors = [*shared, *finish, renderer]
    structlog.configure(
        processors=_hot_processors,
        logger_factory=structlog.WriteLoggerFactory(sink),
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finish,
                    renderer],
    )
    handler = logging.StreamHandler(sink)
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
