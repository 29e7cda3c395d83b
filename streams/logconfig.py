"""structlog, configured once; faust, aiokafka and mode logs are rendered through it too.

JSON lines when stderr is not a terminal (collectors parse them), a readable console otherwise.

Third-party loggers never log below INFO, even with ``SLUICE_LOG_LEVEL=debug``: at DEBUG faust
prints every sent value (``send: ... v=b'...'``) and openai every request body, so a dead letter's
original bytes or a ticket's text would be copied into the logs. Their messages are also cut at
:data:`MAX_FOREIGN_MESSAGE_CHARS`.

Every line, ours or a library's, goes through :func:`redact` last before rendering: registered
secrets and credential shapes (:mod:`agents.redact`) are replaced in every field, in the message
and in the rendered stack trace, so a provider error that echoes a key or a driver that logs its
connection URL cannot put a credential in the logs.
"""

from __future__ import annotations

import logging
import logging.config
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from agents.redact import REDACTED, is_secret_key, scrub, scrub_value

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


#: Loggers that are not ours, capped at INFO and shortened (see the module docstring).
FOREIGN_LOGGERS = (
    "faust",
    "mode",
    "aiokafka",
    "kafka",
    "openai",
    "httpx",
    "httpcore",
    "httpx2",  # the openai SDK's own HTTP stack
    "httpcore2",
    "aiohttp",
    "asyncio",
)
MAX_FOREIGN_MESSAGE_CHARS = 1000


class ShortenForeign(logging.Filter):
    """Cuts a third-party log record's message: no library line may carry a whole payload.

    The message is scrubbed before the cut: a secret cut in two would no longer be recognised by
    :func:`redact`, and its first half would reach the log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in FOREIGN_LOGGERS:
            message = record.getMessage()
            if len(message) > MAX_FOREIGN_MESSAGE_CHARS:
                message = scrub(message)
                record.msg = message[:MAX_FOREIGN_MESSAGE_CHARS] + f"... [{len(message)} chars]"
                record.args = None
        return True


#: Fields our own processors fill (``add_log_level``, ``add_logger_name``, ``TimeStamper``):
#: they cannot hold a secret, so :func:`redact` does not search them.
_OWN_FIELDS = frozenset({"timestamp", "level", "logger"})
#: Values that print as themselves and cannot hold text.
_PLAIN = frozenset({int, float, bool, type(None)})


def redact(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replaces credentials in every field of a line before it is rendered.

    Runs in the formatter, which both our events and foreign records pass through, after
    ``format_exc_info`` has turned ``exc_info`` into the ``exception`` text; only lines that
    passed the level filter get here. A field named like a credential (``api_key=...``) is masked
    whole; other values are scrubbed, including the ``repr`` a renderer would print for an object
    (an exception passed as ``error=exc``).
    """
    changed: dict[str, Any] = {}
    for key, value in event_dict.items():
        kind = type(value)
        if kind in _PLAIN or key in _OWN_FIELDS:
            continue
        if kind is str:  # most fields: the checks of scrub_value, inlined for speed
            new: Any = REDACTED if value and is_secret_key(key) else scrub(value)
        elif isinstance(value, bytes) and value and is_secret_key(key):
            new = REDACTED
        else:
            new = scrub_value(value, repr_others=True)
        if new is not value:
            changed[key] = new
    if changed:
        event_dict.update(changed)
    return event_dict


def logging_config(level: str = "info", fmt: str = "auto") -> dict[str, Any]:
    """A ``dictConfig`` that sends every stdlib logger through structlog's formatter.

    Returned as a dict because faust's Worker applies its own logging set-up from one.
    """
    foreign = logging.getLevelName(max(logging.INFO, logging.getLevelName(level.upper())))
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structlog": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    redact,  # after format_exc_info: the stack trace's text is scrubbed too
                    renderer,
                ],
                "foreign_pre_chain": _SHARED,
            }
        },
        "filters": {"shorten_foreign": {"()": ShortenForeign}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "structlog",
                "stream": "ext://sys.stderr",
                "filters": ["shorten_foreign"],
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {name: {"level": foreign} for name in FOREIGN_LOGGERS},
    }


class _Stream:
    """Where our own lines go: the process's stderr as :func:`configure` found it (faust's Worker
    later replaces ``sys.stderr`` with a proxy that would log each write as a record)."""

    file: Any = sys.stderr


class StderrLogger:
    """structlog's output end for our own events: one rendered line, one write.

    Our events do not go through the stdlib ``logging`` machinery (a ``LogRecord``, a caller
    lookup, a formatter copying the record): that costs ~100 µs a line, and a busy worker writes
    several lines per event. Third-party records still do, through the same processors.
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = name

    def msg(self, message: str) -> None:
        """Write one rendered line."""
        stream = _Stream.file
        if stream.closed:  # whoever configured it closed it since: a log line must never raise
            stream = _Stream.file = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    debug = info = warning = error = critical = exception = fatal = log = msg


def _logger_factory(*args: Any) -> StderrLogger:
    return StderrLogger(str(args[0]) if args else None)


def _add_logger_name(
    logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    name = getattr(logger, "name", None)
    if name is not None:
        event_dict.setdefault("logger", name)
    return event_dict


def configure(level: str = "info", fmt: str = "auto") -> dict[str, Any]:
    """Configure structlog and the stdlib loggers for ``level`` and ``fmt``; returns the stdlib
    ``dictConfig`` (faust's Worker applies it again when it starts)."""
    config = logging_config(level, fmt)
    logging.config.dictConfig(config)
    _Stream.file = sys.stderr
    renderer = config["formatters"]["structlog"]["processors"][-1]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,  # after format_exc_info: the stack trace's text is scrubbed too
            renderer,
        ],
        # A call below the level is a no-op method: one attribute lookup, not the chain.
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_logger_factory,
        cache_logger_on_first_use=True,
    )
    return config
