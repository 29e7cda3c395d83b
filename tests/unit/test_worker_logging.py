"""The worker keeps the configured log level: faust's start-up spinner must not lower it."""

from __future__ import annotations

import asyncio
import logging

import faust

from streams import logconfig
from streams.cli import build_worker
from streams.settings import Settings


def test_warning_level_is_not_lowered_to_debug_by_the_spinner() -> None:
    # faust's Worker, at WARNING and above, adds its spinner as a root handler and sets the root
    # logger to DEBUG (Worker.on_setup_root_logger): every debug call of every library then builds
    # a record. build_worker turns the spinner off, so the root level stays what was configured.
    root, saved = logging.getLogger(), logging.getLogger().level
    settings = Settings(log_level="warning", log_format="json")
    config = logconfig.configure("warning", "json")
    loop = asyncio.new_event_loop()
    try:
        worker = build_worker(faust.App("t-logging"), settings, config, loop)
        root.setLevel(logging.WARNING)
        worker.on_setup_root_logger(root, logging.WARNING)  # what faust calls while starting
        assert root.level == logging.WARNING
        assert not logging.getLogger("agents.llm").isEnabledFor(logging.INFO)
    finally:
        loop.close()
        root.setLevel(saved)
        logconfig.configure("info", "console")
