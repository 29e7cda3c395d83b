"""One process's observability, set up in one place: observers, tracing, ``/metrics`` and
``/health``, and its consumer group's lag.

Every long-running command (``sluice worker``, ``sluice executor``, ``sluice review serve``)
calls :func:`install` at start-up and :func:`start` once its event loop runs.
"""

from __future__ import annotations

import atexit
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from agents.observe import LOGS, add_observer
from streams import metrics, serve, tracing
from streams.settings import Settings

log = structlog.get_logger(__name__)


def install(settings: Settings, service: str) -> None:
    """Configure the observers of this process: log content per ``SLUICE_LOG_PROMPTS`` (and
    PII redaction), Prometheus counters, and OpenTelemetry spans per ``SLUICE_OTEL``."""
    LOGS.content = settings.log_prompts
    LOGS.level = settings.log_level
    LOGS.pii = bool(getattr(settings, "redact_pii", False))
    add_observer(metrics.OBSERVER)
    if tracing.setup(settings.otel, service):
        add_observer(tracing.TraceObserver())
        atexit.register(tracing.shutdown)
        log.info("tracing.on", exporter=settings.otel, service=service)


@dataclass
class Endpoint:
    """A running telemetry endpoint and lag probe; :meth:`stop` closes both."""

    runner: web.AppRunner | None
    probe: serve.LagProbe | None
    health: serve.Health

    async def stop(self) -> None:
        """Stop serving and probing."""
        if self.probe is not None:
            await self.probe.stop()
        if self.runner is not None:
            await self.runner.cleanup()
        else:
            await self.health.close()


def health_of(settings: Settings, llm: Any = None) -> serve.Health:
    """The health checks of a process: Kafka and Redis, and the LLM provider when it has one."""
    checks: dict[str, serve.Check] = {
        "kafka": serve.kafka_check(settings.bootstrap_servers),
        "redis": serve.redis_check(settings.redis_url),
    }
    target = llm.health_target() if llm is not None else None
    if target is not None:
        url, headers = target
        checks["llm"] = serve.http_check(url, headers=headers)
    return serve.Health(checks)


async def start(
    settings: Settings, port: int, group: str, topics: Iterable[str], llm: Any = None
) -> Endpoint:
    """Serve ``/metrics`` and ``/health`` on ``port`` (0: not at all) and probe ``group``'s lag
    on ``topics`` every ``SLUICE_LAG_INTERVAL_S``."""
    health = health_of(settings, llm)
    runner = await serve.serve(port, health, host=settings.metrics_host)
    probe = serve.LagProbe(
        settings.bootstrap_servers, group, list(topics), interval_s=settings.lag_interval_s
    )
    probe.start()
    return Endpoint(runner, probe, health)


def attach(
    app: Any, settings: Settings, port: int, group: str, topics: Iterable[str], llm: Any = None
) -> None:
    """Run :func:`start` when faust app ``app`` starts, and stop it before the app shuts down
    (so its clients close cleanly)."""
    running: list[Endpoint] = []

    @app.task  # type: ignore[untyped-decorator]
    async def _telemetry() -> None:
        running.append(await start(settings, port, group, topics, llm))

    @app.on_before_shutdown.connect  # type: ignore[untyped-decorator]
    async def _stop(sender: Any, **_: Any) -> None:
        while running:
            await running.pop().stop()
