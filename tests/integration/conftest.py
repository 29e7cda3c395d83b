"""Real Kafka, real Redis, a real worker process on the real local model.

``make test`` starts the broker and Redis first; these fixtures fail loudly if they are not there.
Each test gets its own topics (a unique suffix) and its own consumer group.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaProducer

from streams.settings import Settings
from streams.topics import ensure_topics

ROOT = Path(__file__).parents[2]


@dataclass
class Isolated:
    settings: Settings
    env: dict[str, str]


@pytest.fixture(scope="session")
def services() -> Settings:
    settings = Settings()
    try:
        asyncio.run(ensure_topics(settings.model_copy(update={"topic_suffix": ".probe"})))
    except Exception as exc:
        pytest.fail(f"Kafka at {settings.bootstrap_servers} is not usable (run `make up`): {exc}")
    try:
        redis.Redis.from_url(settings.redis_url, socket_timeout=3).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {settings.redis_url} does not answer (run `make up`): {exc}")
    return settings


@pytest.fixture
def isolated(services: Settings) -> Isolated:
    tag = uuid.uuid4().hex[:8]
    overrides = {"SLUICE_TOPIC_SUFFIX": f".it-{tag}", "SLUICE_APP_ID": f"sluice-it-{tag}"}
    env = {**os.environ, **overrides, "SLUICE_LOG_FORMAT": "json", "SLUICE_LOG_LEVEL": "info"}
    settings = services.model_copy(
        update={"topic_suffix": f".it-{tag}", "app_id": f"sluice-it-{tag}"}
    )
    asyncio.run(ensure_topics(settings))
    return Isolated(settings, env)


async def send_values(
    bootstrap: str, topic: str, values: list[bytes | None]
) -> list[tuple[str, int, int]]:
    """Produce each value (keys k0, k1, ...) and wait for its ack; return (topic, partition,
    offset) per value, the coordinates outputs are matched back to."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        coords = []
        for i, value in enumerate(values):
            meta = await producer.send_and_wait(topic, value, key=f"k{i}".encode())
            coords.append((topic, meta.partition, meta.offset))
        return coords
    finally:
        await producer.stop()


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def start_worker(env: dict[str, str], log: Path) -> Worker:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Worker(proc, log)


@pytest.fixture
def worker(isolated: Isolated, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Worker]:
    w = start_worker(isolated.env, tmp_path / "worker.log")
    yield w
    w.proc.terminate()
    try:
        w.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        w.proc.kill()
        w.proc.wait()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"--- worker log tail ({w.log}) ---\n{w.log_tail()}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
