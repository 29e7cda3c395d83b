"""The telemetry endpoint and the lag probe against the real broker and Redis.

The LLM check points at a port nobody listens on (a provider that is down) or at a small aiohttp
server of the test's own that answers with the status it is told to.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import prometheus_client
import pytest
import structlog
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete
from prometheus_client import CollectorRegistry, Counter
from structlog.testing import capture_logs

import streams.serve
from streams.serve import (
    Health,
    LagProbe,
    add_routes,
    http_check,
    kafka_check,
    redis_check,
    serve,
)
from streams.settings import Settings
from streams.topics import partitions
from tests.integration.conftest import delete_topics, free_port, send_values

REGISTRY = prometheus_client.REGISTRY


async def get(url: str) -> tuple[int, str, str]:
    """Status, Content-Type and body of ``GET url``."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers["Content-Type"], await response.text()


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def until(condition: Callable[[], Awaitable[bool] | bool], timeout_s: float = 10) -> None:
    """Wait for observable state, polling."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_health_names_the_dependency_that_is_down(services: Settings) -> None:
    port, closed = free_port(), free_port()
    health = Health(
        {
            "kafka": kafka_check(services.bootstrap_servers),
            "redis": redis_check(services.redis_url),
            "llm": http_check(f"http://127.0.0.1:{closed}/v1/models"),
        }
    )
    runner = await serve(port, health, host="127.0.0.1")
    assert runner is not None
    try:
        status, report = await get_json(f"http://127.0.0.1:{port}/health")
        assert status == 503
        assert report["status"] == "degraded"
        checks = report["checks"]
        assert set(checks) == {"kafka", "redis", "llm"}
        assert checks["kafka"]["ok"] is True, checks["kafka"]
        assert checks["kafka"]["error"] is None
        assert checks["redis"]["ok"] is True, checks["redis"]
        assert checks["llm"]["ok"] is False
        assert checks["llm"]["error"]
        assert len(checks["llm"]["error"]) <= 200
        assert all(isinstance(c["ms"], int) and c["ms"] >= 0 for c in checks.values())
        # Liveness does not depend on the dependencies.
        assert await get_json(f"http://127.0.0.1:{port}/health/live") == (200, {"status": "alive"})
    finally:
        await runner.cleanup()


async def test_health_is_200_when_all_checks_pass_and_metrics_use_the_default_registry(
    services: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    health = Health(
        {"kafka": kafka_check(services.bootstrap_servers), "redis": redis_check(services.redis_url)}
    )
    with capture_logs() as logs:
        # a fresh proxy binds to capture_logs even if structlog caches loggers on first use
        monkeypatch.setattr(streams.serve, "log", structlog.get_logger("streams.serve"))
        runner = await serve(port, health, host="127.0.0.1")
    assert runner is not None
    try:
        assert {"event": "telemetry.serving", "port": port}.items() <= logs[-1].items()
        status, report = await get_json(f"http://127.0.0.1:{port}/health")
        assert (status, report["status"]) == (200, "ok"), report
        assert {n: c["ok"] for n, c in report["checks"].items()} == {"kafka": True, "redis": True}
        status, ctype, text = await get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert ctype.startswith("text/plain")
        assert "# TYPE sluice_consumer_lag gauge" in text
    finally:
        await runner.cleanup()


async def test_metrics_expose_the_given_registry() -> None:
    registry = CollectorRegistry()
    counter = Counter("sluice_test_events", "events seen by the test", ["lane"], registry=registry)
    counter.labels("auto").inc(3)
    port = free_port()
    runner = await serve(port, Health(), host="127.0.0.1", registry=registry)
    assert runner is not None
    try:
        status, ctype, text = await get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert ctype == prometheus_client.CONTENT_TYPE_LATEST
        assert 'sluice_test_events_total{lane="auto"} 3.0' in text
        counter.labels("auto").inc()
        _, _, text = await get(f"http://127.0.0.1:{port}/metrics")
        assert 'sluice_test_events_total{lane="auto"} 4.0' in text
        # No checks at all: healthy.
        assert (await get_json(f"http://127.0.0.1:{port}/health"))[0] == 200
    finally:
        await runner.cleanup()


async def test_a_busy_port_or_port_zero_disables_telemetry_without_raising(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert await serve(0, Health()) is None
    port = free_port()
    first = await serve(port, Health(), host="127.0.0.1")
    assert first is not None
    try:
        with capture_logs() as logs:
            monkeypatch.setattr(streams.serve, "log", structlog.get_logger("streams.serve"))
            assert await serve(port, Health(), host="127.0.0.1") is None
        [event] = [e for e in logs if e["event"] == "telemetry.unavailable"]
        assert event["port"] == port
        assert event["log_level"] == "warning"
        assert event["error"]
        # The first server is unharmed.
        assert (await get_json(f"http://127.0.0.1:{port}/health/live"))[0] == 200
    finally:
        await first.cleanup()


@pytest.fixture
async def llm_server() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A real HTTP server answering ``/status/<code>``; records the last request's headers."""
    seen: dict[str, Any] = {}

    async def status(request: web.Request) -> web.Response:
        seen["headers"] = dict(request.headers)
        return web.Response(status=int(request.match_info["code"]))

    app = web.Application()
    app.router.add_get("/status/{code}", status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_http_check_statuses_and_headers(llm_server: tuple[str, dict[str, Any]]) -> None:
    base, seen = llm_server
    checks = {str(code): http_check(f"{base}/status/{code}") for code in (200, 302, 404, 401, 500)}
    health = Health(checks)
    try:
        report = await health.report()
        ok = {name: c["ok"] for name, c in report["checks"].items()}
        assert ok == {"200": True, "302": True, "404": True, "401": False, "500": False}
        assert report["checks"]["500"]["error"] == "RuntimeError: HTTP 500"
        assert "Authorization" not in seen["headers"]
    finally:
        await health.close()
    secret = "Bearer sk-test-secret"
    authed = Health({"llm": http_check(f"{base}/status/401", headers={"Authorization": secret})})
    try:
        report = await authed.report()
        assert seen["headers"]["Authorization"] == secret
        assert secret not in repr(report)
    finally:
        await authed.close()


async def test_health_runs_checks_concurrently_with_a_timeout_and_caches() -> None:
    calls = {"slow": 0, "fast": 0}

    async def slow() -> None:
        calls["slow"] += 1
        await asyncio.sleep(5)

    async def fast() -> None:
        calls["fast"] += 1
        raise ValueError("x" * 500)

    health = Health({"slow": slow, "fast": fast}, timeout_s=0.3, cache_s=1.0)
    started = time.monotonic()
    first, second = await asyncio.gather(health.report(), health.report())
    assert time.monotonic() - started < 2
    assert first is second  # the waiting request got the run in progress
    assert first["checks"]["slow"] == {"ok": False, "ms": first["checks"]["slow"]["ms"],
                                       "error": "timed out after 0.3s"}  # fmt: skip
    assert len(first["checks"]["fast"]["error"] or "") == 200
    assert calls == {"slow": 1, "fast": 1}
    done = time.monotonic()
    assert await health.report() is first  # within cache_s: no new round of checks
    assert calls == {"slow": 1, "fast": 1}
    await until(lambda: time.monotonic() - done > 1.05)
    assert await health.report() is not first
    assert calls == {"slow": 2, "fast": 2}


async def test_add_routes_to_an_existing_app(services: Settings) -> None:
    app = web.Application()

    async def home(request: web.Request) -> web.Response:
        return web.Response(text="review")

    app.router.add_get("/", home)
    health = Health({"redis": redis_check(services.redis_url)})
    add_routes(app, health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        assert (await get(f"http://127.0.0.1:{port}/"))[2] == "review"
        status, report = await get_json(f"http://127.0.0.1:{port}/health")
        assert (status, report["checks"]["redis"]["ok"]) == (200, True)
        assert (await get(f"http://127.0.0.1:{port}/metrics"))[0] == 200
    finally:
        await runner.cleanup()
        await health.close()


@pytest.fixture
def lag_topic(services: Settings) -> Iterator[str]:
    """A topic of the test's own with two partitions, deleted afterwards."""
    name = f"sluice.lagprobe.it-{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=services.bootstrap_servers)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, 2, 1)])
        finally:
            await admin.close()
        await partitions(services, [name])  # every partition has a leader

    asyncio.run(create())
    yield name
    asyncio.run(delete_topics(services.bootstrap_servers, [name]))


def lag(group: str, topic: str, partition: int) -> float | None:
    return REGISTRY.get_sample_value(
        "sluice_consumer_lag", {"group": group, "topic": topic, "partition": str(partition)}
    )


async def test_lag_probe_computes_lag_like_kafka_consumer_groups(
    services: Settings, lag_topic: str
) -> None:
    bootstrap = services.bootstrap_servers
    p0, p1 = TopicPartition(lag_topic, 0), TopicPartition(lag_topic, 1)
    await send_values(bootstrap, lag_topic, [b"a"] * 5, partition=0)
    await send_values(bootstrap, lag_topic, [b"b"] * 3, partition=1)
    group = f"sluice-lag-it-{uuid.uuid4().hex[:8]}"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([p0])
        await consumer.commit({p0: 2})
    finally:
        await consumer.stop()

    probe = LagProbe(bootstrap, group, [lag_topic])
    try:
        assert await probe.refresh() == {p0: 3, p1: 3}
        assert lag(group, lag_topic, 0) == 3
        assert lag(group, lag_topic, 1) == 3  # nothing committed: end - beginning
        updated = REGISTRY.get_sample_value(
            "sluice_consumer_lag_updated_timestamp_seconds", {"group": group}
        )
        assert updated is not None
        assert abs(updated - time.time()) < 60

        # Records gone from the start of p1 are not lag for a group that never read there.
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_records({p1: RecordsToDelete(before_offset=1)})
        finally:
            await admin.close()
        await probe.refresh()
        assert lag(group, lag_topic, 1) == 2
        assert lag(group, lag_topic, 0) == 3

        # The topic goes away: so do its series.
        await delete_topics(bootstrap, [lag_topic])

        async def vanished() -> bool:
            await probe.refresh()
            return lag(group, lag_topic, 0) is None and lag(group, lag_topic, 1) is None

        await until(vanished)
    finally:
        await probe.stop()
    assert REGISTRY.get_sample_value(
        "sluice_consumer_lag_updated_timestamp_seconds", {"group": group}
    ) is None  # fmt: skip


async def test_lag_probe_runs_in_the_background_and_drops_its_series_on_stop(
    services: Settings, lag_topic: str
) -> None:
    await send_values(services.bootstrap_servers, lag_topic, [b"a"] * 4, partition=1)
    group = f"sluice-lag-it-{uuid.uuid4().hex[:8]}"
    probe = LagProbe(services.bootstrap_servers, group, [lag_topic], interval_s=0.2)
    probe.start()
    try:
        await until(lambda: lag(group, lag_topic, 1) == 4)
        assert lag(group, lag_topic, 0) == 0
        await send_values(services.bootstrap_servers, lag_topic, [b"a"] * 2, partition=0)
        await until(lambda: lag(group, lag_topic, 0) == 2)  # refreshed again
    finally:
        await probe.stop()
    assert lag(group, lag_topic, 0) is None
    assert lag(group, lag_topic, 1) is None


class CountingProbe(LagProbe):
    attempts = 0

    async def refresh(self) -> dict[TopicPartition, int]:
        self.attempts += 1
        return await super().refresh()


async def test_lag_probe_logs_a_failing_streak_once_and_keeps_going(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    probe = CountingProbe(f"127.0.0.1:{free_port()}", "g", ["t"], interval_s=0.05)
    with capture_logs() as logs:
        monkeypatch.setattr(streams.serve, "log", structlog.get_logger("streams.serve"))
        probe.start()
        try:
            await until(lambda: probe.attempts >= 4)
            task = probe._task
            assert task is not None
            assert not task.done()
        finally:
            await probe.stop()
    failed = [e for e in logs if e["event"] == "telemetry.lag_failed"]
    assert len(failed) == 1, logs
    assert failed[0]["group"] == "g"
    assert failed[0]["error"]
