"""structlog, configured once; faust, aiokafka and mode logs are rendered through it too.

JSON lines when stderr is not a terminal (collectors parse them), a readable console otherwise.

Third-party loggers never log below INFO, even with ``SLUICE_LOG_LEVEL=debug``: at DEBUG faust
prints every sent value (``send: ... v=b'...'``) and openai every request body, so a dead letter's
original bytes or a ticket's text would be copied into the logs. Their messages are also cut at
:data:`MAX_FOREIGN_MESSAGE_CHARS`.
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
    """Cuts a third-party log record's message: no library line may carry a whole payload."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in FOREIGN_LOGGERS:
            message = record.getMessage()
            if len(message) > MAX_FOREIGN_MESSAGE_CHARS:
                record.msg = message[:MAX_FOREIGN_MESSAGE_CHARS] + f"... [{len(message)} chars]"
                record.args = None
        return True


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


def configure(level: str = "info", fmt: str = "auto") -> dict[str, Any]:
    config = logging_config(level, fmt)
    logging.config.dictConfig(config)
    structlog.configure(
        # filter_by_level first: a call below the level costs one check, not the whole chain
        # (a worker at hundreds of events/s makes several INFO calls per event).
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return config
