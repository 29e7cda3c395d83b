"""structlog, configured once; faust, aiokafka and mode logs are rendered through it too.

JSON lines when stderr is not a terminal (collectors parse them), a readable console otherwise.
"""

from __future__ import annotations

import logging
import logging.config
import sys
from typing import Any

import structlog

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def logging_config(level: str = "info", fmt: str = "auto") -> dict[str, Any]:
    """A ``dictConfig`` that sends every stdlib logger through structlog's formatter.

    Returned as a dict because faust's Worker applies its own logging set-up from one.
    """
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
                    renderer,
                ],
                "foreign_pre_chain": _SHARED,
            }
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "structlog",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        # aiokafka reports every retriable hiccup at WARNING/ERROR during start-up; keep it, but
        # don't let its DEBUG drown ours.
        "loggers": {"aiokafka": {"level": max(logging.INFO, logging.getLevelName(level.upper()))}},
    }


def configure(level: str = "info", fmt: str = "auto") -> dict[str, Any]:
    config = logging_config(level, fmt)
    logging.config.dictConfig(config)
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return config
