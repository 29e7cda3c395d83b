"""The worker keeps consuming after poison input, and refuses to start without its services."""

import json
import os
import subprocess
import sys

import pytest
import redis

from schemas import codec
from schemas.records import DeadLetter, TicketTriaged
from tests.integration.conftest import ROOT, Isolated, Worker
from tests.integration.kcat import produce, wait_for


def test_worker_survives_poison(isolated: Isolated, worker: Worker) -> None:
    s = isolated.settings
    t = s.topics
    ticket = json.dumps({"event_id": "ev-after-poison", "ticket_id": "T-1", "body": "Parcel lost."})
    produce(
        s.bootstrap_servers,
        t.tickets_received,
        [("p1", b"{{{{ not json"), ("p2", b'{"ticket_id": 1}'), ("T-1", ticket.encode())],
    )
    dead = wait_for(s.bootstrap_servers, [t.deadletter], 2, 180)
    results = wait_for(s.bootstrap_servers, [t.tickets_auto, t.tickets_review], 1, 180)

    assert worker.alive(), worker.log_tail()
    assert sorted(codec.decode_as(r.value or b"", DeadLetter).original_value for r in dead) == [
        b'{"ticket_id": 1}',
        b"{{{{ not json",
    ]
    assert [codec.decode_as(r.value or b"", TicketTriaged).event_id for r in results] == [
        "ev-after-poison"
    ]


def test_worker_refuses_to_start_without_redis(isolated: Isolated) -> None:
    env = {**isolated.env, "REDIS_URL": "redis://127.0.0.1:1/0"}
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli", "worker"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Redis at redis://127.0.0.1:1/0 does not answer" in proc.stderr


@pytest.mark.skipif("REDIS_URL" in os.environ, reason="checks the Redis that infra/redis.sh runs")
def test_local_redis_keeps_idempotency_keys(isolated: Isolated) -> None:
    client = redis.Redis.from_url(isolated.settings.redis_url)
    assert client.config_get("appendonly")["appendonly"] == "yes"
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"


def test_kafka_script_rejects_an_unreachable_cluster() -> None:
    proc = subprocess.run(
        ["bash", "infra/kafka.sh", "start"],
        env={"PATH": "/usr/bin:/bin", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1 does not answer" in proc.stderr
