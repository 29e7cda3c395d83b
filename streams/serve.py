"""Telemetry over HTTP (``/metrics``, ``/health``, ``/health/live``) for long-running processes.

A worker, the executor and the review service each answer the same three routes, so one scrape
config and one pair of probes cover them all:

- ``/metrics``: Prometheus text from a ``CollectorRegistry`` (the default one unless told).
- ``/health``: can this process reach what it needs (Kafka, Redis, the LLM)? 200 when every check
  passes, 503 otherwise, with a JSON body naming the failing check and why. Checks run
  concurrently with a timeout each, and the answer is cached for about a second, so a scrape storm
  or a dozen probes cost one round of checks, not one per request.
- ``/health/live``: always 200 while the event loop answers. A liveness probe must not restart a
  worker because Redis is down: restarting cannot fix Redis, and every restart rebalances the group.

Telemetry is never a reason to stop working: ``serve`` logs ``telemetry.unavailable`` and returns
``None`` when its port is taken, and ``LagProbe`` logs a failing streak once and keeps trying.

``LagProbe`` reports consumer lag as operators compute it with ``kafka-consumer-groups`` (log-end
offset minus committed offset), from outside the consumer: a stuck worker's own metrics stop
moving, and lag is exactly the number that must keep being reported then.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal, TypedDict

import aiohttp
import prometheus_client
import redis.asyncio as aioredis
import structlog
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from agents.redact import scrub

log = structlog.get_logger(__name__)

#: A health check: returns when the dependency answers, raises (anything) when it does not.
Check = Callable[[], Awaitable[None]]

#: Longest error text kept per check: enough to name the cause, short enough for a probe's log.
ERROR_CHARS = 200


class CheckResult(TypedDict):
    ok: bool
    ms: int
    error: str | None


class Report(TypedDict):
    status: Literal["ok", "degraded"]
    checks: dict[str, CheckResult]


def _error_text(exc: BaseException) -> str:
    name, text = type(exc).__name__, str(exc)
    if not text.startswith(name):  # aiokafka's errors already start with their class name
        text = f"{name}: {text}" if text else name
    return scrub(text)[:ERROR_CHARS]  # served on every interface: a provider may echo a key


async def _close_quietly(close: Awaitable[Any]) -> None:
    """Close a client we are giving up on; its own failure to close changes nothing."""
    with contextlib.suppress(Exception):
        await close


class Health:
    """Named dependency checks behind one cached report.

    ``checks`` may be extended after construction (``health.checks["llm"] = http_check(...)``).
    Checks that hold clients (those made by the factories below) are closed by ``close()``.
    """

    def __init__(
        self,
        checks: Mapping[str, Check] | None = None,
        *,
        timeout_s: float = 2.0,
        cache_s: float = 1.0,
    ) -> None:
        self.checks: dict[str, Check] = dict(checks or {})
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self._cached: tuple[float, Report] | None = None
        # Requests that arrive while checks run wait for that run instead of starting their own.
        self._lock = asyncio.Lock()

    async def report(self) -> Report:
        """Every check's outcome, at most ``cache_s`` old. Never raises for a failing check."""
        async with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < self.cache_s:
                return self._cached[1]
            names = list(self.checks)
            results = await asyncio.gather(*(self._run(self.checks[n]) for n in names))
            checks = dict(zip(names, results, strict=True))
            status: Literal["ok", "degraded"] = (
                "ok" if all(r["ok"] for r in checks.values()) else "degraded"
            )
            report: Report = {"status": status, "checks": checks}
            self._cached = (time.monotonic(), report)
            return report

    async def _run(self, check: Check) -> CheckResult:
        start = time.monotonic()
        error: str | None = None
        try:
            await asyncio.wait_for(check(), self.timeout_s)
        except TimeoutError:
            error = f"timed out after {self.timeout_s:g}s"
        except Exception as exc:  # a check fails by raising anything; the report says what
            error = _error_text(exc)
        ms = int((time.monotonic() - start) * 1000)
        return {"ok": error is None, "ms": ms, "error": error}

    async def close(self) -> None:
        """Close the clients the checks hold (a check without ``aclose`` holds none)."""
        for check in self.checks.values():
            aclose = getattr(check, "aclose", None)
            if aclose is not None:
                await _close_quietly(aclose())


class _KafkaCheck:
    """One admin client for the life of the process, not one per probe: a connection per request
    would cost a bootstrap round trip each time and churn the broker's connection count."""

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self._admin: AIOKafkaAdminClient | None = None

    async def __call__(self) -> None:
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers,
                client_id="sluice-health",
                request_timeout_ms=5_000,
            )
        admin = self._admin
        try:
            await admin.start()  # a no-op once started
            # Metadata for no topics: the broker answers with brokers and controller only, the
            # cheapest request that proves it serves. (None would mean every topic's metadata.)
            await admin.describe_topics([])
        except BaseException:  # includes the timeout's cancellation
            # A client that failed may hold half-open connections or a stale bootstrap; the next
            # check starts from scratch.
            self._admin = None
            await _close_quietly(admin.close())
            raise

    async def aclose(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            await _close_quietly(admin.close())


def kafka_check(bootstrap_servers: str) -> Check:
    """Kafka answers a metadata request."""
    return _KafkaCheck(bootstrap_servers)


class _RedisCheck:
    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self._client: aioredis.Redis | None = None

    async def __call__(self) -> None:
        if self._client is None:
            # The pool reconnects by itself after Redis restarts; no need to recreate it.
            self._client = aioredis.Redis.from_url(
                self.redis_url, socket_connect_timeout=2, socket_timeout=2
            )
        await self._client.ping()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await _close_quietly(client.aclose())


def redis_check(redis_url: str) -> Check:
    """Redis answers PING."""
    return _RedisCheck(redis_url)


class _HttpCheck:
    def __init__(self, url: str, headers: Mapping[str, str] | None) -> None:
        self.url = url
        self._headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        async with self._session.get(
            self.url, headers=self._headers, allow_redirects=False
        ) as response:
            # 404 still proves a server answers: some OpenAI-compatible servers have no /models.
            if response.status >= 400 and response.status != 404:
                # Neither the URL (it may carry credentials) nor the headers go into the error.
                raise RuntimeError(f"HTTP {response.status}")

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await _close_quietly(session.close())


def http_check(url: str, *, headers: Mapping[str, str] | None = None) -> Check:
    """An HTTP server answers ``GET url`` (2xx, 3xx or 404).

    For an OpenAI-compatible provider pass ``<base_url>/models``; the local llama.cpp server has
    ``/health``. ``headers`` (an Authorization header, say) are sent as given and never logged or
    reported.
    """
    return _HttpCheck(url, headers)


def add_routes(
    app: web.Application,
    health: Health,
    *,
    registry: CollectorRegistry = prometheus_client.REGISTRY,
) -> None:
    """Add ``/metrics``, ``/health`` and ``/health/live`` to an existing aiohttp application, for a
    process that already serves HTTP (the review service) and needs no second port."""

    async def metrics(request: web.Request) -> web.Response:
        # generate_latest is synchronous but takes well under a millisecond for our few families.
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def ready(request: web.Request) -> web.Response:
        report = await health.report()
        status = 200 if report["status"] == "ok" else 503
        return web.json_response(report, status=status, headers={"Cache-Control": "no-store"})

    async def live(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"}, headers={"Cache-Control": "no-store"})

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", ready)
    app.router.add_get("/health/live", live)


async def serve(
    port: int,
    health: Health,
    *,
    host: str = "127.0.0.1",
    registry: CollectorRegistry = prometheus_client.REGISTRY,
) -> web.AppRunner | None:
    """Serve the telemetry routes on ``port``; ``None`` when disabled (port 0) or unavailable.

    Loopback unless told otherwise (``SLUICE_METRICS_HOST``): the routes are unauthenticated.

    The caller stops it with ``await runner.cleanup()``, which also closes the health checks'
    clients. A busy port is logged and tolerated: losing metrics must not cost the process.
    """
    if port == 0:
        return None
    app = web.Application()
    add_routes(app, health, registry=registry)

    async def close_checks(app: web.Application) -> None:
        await health.close()

    app.on_cleanup.append(close_checks)
    # No access log: a scrape every few seconds would drown the worker's own events.
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        log.warning("telemetry.unavailable", port=port, host=host, error=str(exc))
        return None
    log.info("telemetry.serving", port=port, host=host)
    return runner


LAG = Gauge(
    "sluice_consumer_lag",
    "Records in a partition not yet committed by the group: log-end offset minus committed "
    "offset (minus the earliest offset when the group has committed nothing there).",
    ["group", "topic", "partition"],
)
LAG_UPDATED = Gauge(
    "sluice_consumer_lag_updated_timestamp_seconds",
    "When sluice_consumer_lag was last refreshed for the group; a stale value means the probe "
    "cannot reach Kafka, not that lag is steady.",
    ["group"],
)


class LagProbe:
    """Refresh ``sluice_consumer_lag`` for one consumer group every ``interval_s``.

    Uses its own admin client (committed offsets, partitions) and a consumer without a group
    (earliest and log-end offsets), so it never joins or disturbs the group it measures.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        group_id: str,
        topics: Iterable[str],
        interval_s: float = 5.0,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.group_id = group_id
        self.topics = frozenset(topics)
        self.interval_s = interval_s
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._labels: set[tuple[str, str]] = set()  # (topic, partition) label values we set
        self._failing = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"lag-probe-{self.group_id}")

    async def stop(self) -> None:
        """Stop refreshing, close the clients and drop this group's series: a value no longer
        refreshed would read as a steady lag."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self._lock:
            await self._close_clients()
            for topic, partition in self._labels:
                LAG.remove(self.group_id, topic, partition)
            self._labels.clear()
            with contextlib.suppress(KeyError):
                LAG_UPDATED.remove(self.group_id)

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.refresh(), max(30.0, self.interval_s))
            except Exception as exc:  # telemetry never takes the process down
                if not self._failing:
                    log.warning("telemetry.lag_failed", group=self.group_id, error=_error_text(exc))
                self._failing = True
            else:
                if self._failing:
                    log.info("telemetry.lag_recovered", group=self.group_id)
                self._failing = False
            await asyncio.sleep(self.interval_s)

    async def refresh(self) -> dict[TopicPartition, int]:
        """Compute lag once, update the gauges and return it; raises what Kafka raised."""
        async with self._lock:
            try:
                lag = await self._measure()
            except BaseException:
                await self._close_clients()  # the next refresh starts from scratch
                raise
            current = {(tp.topic, str(tp.partition)) for tp in lag}
            for topic, partition in self._labels - current:
                LAG.remove(self.group_id, topic, partition)
            if {t for t, _ in self._labels} - {t for t, _ in current}:
                # A topic vanished. The consumer keeps asking for the metadata of every topic it
                # has seen, and on a cluster that auto-creates topics that would bring it back.
                await self._close_clients()
            for tp, value in lag.items():
                LAG.labels(self.group_id, tp.topic, str(tp.partition)).set(value)
            self._labels = current
            LAG_UPDATED.labels(self.group_id).set_to_current_time()
            return lag

    async def _measure(self) -> dict[TopicPartition, int]:
        admin, consumer = await self._clients()
        # Every topic's metadata, filtered here: naming topics in a metadata request lets a
        # broker with auto.create.topics.enable create a missing one.
        described: list[dict[str, Any]] = await admin.describe_topics()
        partitions = [
            TopicPartition(t["topic"], p["partition"])
            for t in described
            if t["topic"] in self.topics and not t["error_code"]
            for p in t["partitions"]
        ]
        if not partitions:
            return {}
        committed = await admin.list_consumer_group_offsets(self.group_id)
        end: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        # No commit yet: the group will start from the earliest record (auto_offset_reset
        # "earliest", as Sluice's workers use), so everything still retained is lag.
        uncommitted = [tp for tp in partitions if tp not in committed or committed[tp].offset < 0]
        start: dict[TopicPartition, int] = (
            await consumer.beginning_offsets(uncommitted) if uncommitted else {}
        )
        lag = {}
        for tp in partitions:
            base = start[tp] if tp in start else committed[tp].offset
            # Committed past the end only after a topic was recreated or truncated; a negative
            # number would cancel real lag elsewhere out of a sum().
            lag[tp] = max(0, end[tp] - base)
        return lag

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            await self._close_clients()
            client_id = f"sluice-lag-{self.group_id}"
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers,
                client_id=client_id,
                request_timeout_ms=10_000,
            )
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                client_id=client_id,
                group_id=None,
                enable_auto_commit=False,
                request_timeout_ms=10_000,
            )
            self._admin, self._consumer = admin, consumer
            await admin.start()
            await consumer.start()
        return self._admin, self._consumer

    async def _close_clients(self) -> None:
        admin, self._admin = self._admin, None
        consumer, self._consumer = self._consumer, None
        if admin is not None:
            await _close_quietly(admin.close())
        if consumer is not None:
            await _close_quietly(consumer.stop())
