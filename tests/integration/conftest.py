"""Real Kafka, real Redis, a real worker process on the real local model.

``make test`` starts the broker and Redis first; these fixtures fail loudly if they are not there.
Each test gets its own topics (a unique suffix) and its own consumer group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

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


@pytest.fixture(scope="session")
def redis_settings() -> Settings:
    """Settings whose Redis answers, Kafka unchecked: for the fast tests that need Redis only
    (``make test-unit`` runs them with a local Redis and no broker)."""
    settings = Settings()
    try:
        redis.Redis.from_url(settings.redis_url, socket_timeout=3).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {settings.redis_url} does not answer (run `make up`): {exc}")
    return settings


POSTGRES_URL = os.environ.get(
    "SLUICE_TEST_POSTGRES_URL", "postgresql://sluice@127.0.0.1:5433/sluice"
)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL whose connections see only this test's own schema (``search_path``).

    ``make test`` starts the server (infra/postgres.sh); SLUICE_TEST_POSTGRES_URL names another.
    """
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} does not answer (run `make postgres`): {exc}")
    sep = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def isolated(services: Settings) -> Iterator[Isolated]:
    """Topics and group ids of the test's own (a suffix and an app id), deleted afterwards: a
    broker keeps one open file or more per partition, and a whole run would otherwise pile up
    thousands of them (its file limit is often 20,000)."""
    tag = uuid.uuid4().hex[:8]
    overrides = {"SLUICE_TOPIC_SUFFIX": f".it-{tag}", "SLUICE_APP_ID": f"sluice-it-{tag}"}
    env = {**os.environ, **overrides, "SLUICE_LOG_FORMAT": "json", "SLUICE_LOG_LEVEL": "info"}
    settings = services.model_copy(
        update={"topic_suffix": f".it-{tag}", "app_id": f"sluice-it-{tag}"}
    )
    asyncio.run(ensure_topics(settings))
    yield Isolated(settings, env)
    asyncio.run(delete_topics(settings.bootstrap_servers, settings.topics.all()))


async def delete_topics(bootstrap: str, topics: list[str]) -> None:
    """Delete ``topics`` (those that exist); a failure only leaves them behind."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        doomed = [t for t in topics if t in existing]
        if doomed:
            await admin.delete_topics(doomed, timeout_ms=30_000)
    except Exception as exc:  # cleanup is best effort: never fail a test that passed
        print(f"could not delete topics {topics}: {exc}", file=sys.stderr)
    finally:
        await admin.close()


async def send_values(
    bootstrap: str, topic: str, values: list[bytes | None], *, partition: int | None = None
) -> list[tuple[str, int, int]]:
    """Produce each value (keys k0, k1, ...) and wait for its ack; return (topic, partition,
    offset) per value, the coordinates outputs are matched back to. ``partition`` puts them all
    on one partition, in order."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        coords = []
        for i, value in enumerate(values):
            meta = await producer.send_and_wait(
                topic, value, key=f"k{i}".encode(), partition=partition
            )
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


def start_worker(env: dict[str, str], log: Path, *args: str, command: str = "worker") -> Worker:
    """``sluice worker`` (or ``command``, e.g. ``executor``) with ``args`` (e.g. ``--flow
    notes``) as a process, output in ``log``."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", command, *args],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Worker(proc, log)


@contextlib.contextmanager
def running_fault_server(log: Path, *args: str) -> Iterator[str]:
    """The fault-injecting OpenAI-compatible server as a process; yields its /v1 base URL."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agents.testing.fault_server", "--port", "0", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=out,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert line.startswith("listening on "), line + log.read_text()
    try:
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


@dataclass
class Sinks:
    """A test's own webhook receiver and SMTP server (agents.sinks) and where they store."""

    state: Path
    env: dict[str, str]

    def count(self, db: str, table: str) -> int:
        with contextlib.closing(sqlite3.connect(self.state / db)) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def webhook_requests(self) -> int:
        return self.count("webhook.db", "requests")

    def mails(self) -> int:
        return self.count("mail.db", "messages")

    def ledger_rows(self) -> int:
        return self.count("ledger.db", "ledger") if (self.state / "ledger.db").exists() else 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def sinks(tmp_path: Path) -> Iterator[Sinks]:
    """Start the sinks on free ports; ``env`` points an executor's tools (and ledger) at them."""
    state = tmp_path / "sinks"
    state.mkdir()
    http, smtp = free_port(), free_port()
    with open(tmp_path / "sinks.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agents.sinks", "--state", str(state),
             "--http-port", str(http), "--smtp-port", str(smtp)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 20
    log = tmp_path / "sinks.log"
    while "sinks: webhook" not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    env = {
        "SLUICE_WEBHOOK_URL": f"http://127.0.0.1:{http}/hooks",
        "SLUICE_SMTP_PORT": str(smtp),
        "SLUICE_MAIL_STORE": str(state / "mail.db"),
        "SLUICE_LEDGER_PATH": str(state / "ledger.db"),
    }
    try:
        yield Sinks(state, env)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def fault_server(tmp_path: Path) -> Iterator[str]:
    with running_fault_server(tmp_path / "fault.log", "--latency-ms", "20") as url:
        yield url


@dataclass
class Broker:
    """A broker of the test's own, for tests that must stop or freeze one."""

    bootstrap: str
    state: Path

    @property
    def pid(self) -> int:
        return int((self.state / "kafka" / "broker.pid").read_text())


def _free_port_pair() -> int:
    while True:
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", 0))
                port = a.getsockname()[1]
                b.bind(("127.0.0.1", port + 1))  # infra/kafka.sh puts the controller at port + 1
                return int(port)
            except OSError:
                continue


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A second single-node broker, started by infra/kafka.sh with the jars the first one uses."""
    libs = ROOT / ".local" / "kafka" / "libs"
    if not (libs / ".resolved-from").exists():
        pytest.skip("needs the jars of a broker started by infra/kafka.sh (make up)")
    state = tmp_path / "state"
    (state / "kafka").mkdir(parents=True)
    (state / "kafka" / "libs").symlink_to(libs)
    port = _free_port_pair()
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")}
    env.update({"SLUICE_STATE_DIR": str(state), "SLUICE_KAFKA_PORT": str(port)})
    subprocess.run(["bash", "infra/kafka.sh", "start"], env=env, cwd=ROOT, check=True, timeout=120)
    broker = Broker(f"127.0.0.1:{port}", state)
    try:
        yield broker
    finally:
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.kill(broker.pid, signal.SIGCONT)  # a frozen broker cannot stop
        subprocess.run(["bash", "infra/kafka.sh", "stop"], env=env, cwd=ROOT, timeout=60)


def fake_model_env(env: dict[str, str], base_url: str, **extra: str) -> dict[str, str]:
    """A worker environment that calls the fault server instead of the local model. The worker
    asks for logprobs and the fault server gives them, as sure as each answer's own confidence
    (see :mod:`agents.testing.fault_server`), so its answers can reach the auto lane; tests of the
    rule against a self-rating alone pass ``SLUICE_LLM_LOGPROBS="false"``."""
    return {**env, "OPENAI_BASE_URL": base_url, **extra}


def stop(worker: Worker, timeout_s: float = 30) -> int:
    """Stop a worker (TERM, then KILL) and return its exit code."""
    if worker.alive():
        worker.proc.terminate()
    try:
        return worker.proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        worker.proc.kill()
        return worker.proc.wait()


async def set_topic_config(bootstrap: str, topic: str, configs: dict[str, str]) -> None:
    """Set a topic's config on the broker, as an operator would. AlterConfigs replaces the whole
    set: every setting not in ``configs`` returns to the broker's default."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, configs)]
        )
    finally:
        await admin.close()
    for response in responses:
        for code, message, *_ in response.resources:
            assert code == 0, f"alter_configs {topic}: error {code} {message}"
