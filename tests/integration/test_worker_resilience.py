"""The worker keeps consuming after poison input, and refuses to start without its services."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from agents.testing.fault_server import answer_marker
from schemas import codec
from schemas.records import DeadLetter, TicketTriaged
from tests.integration.conftest import (
    ROOT,
    Isolated,
    fake_model_env,
    send_values,
    start_worker,
    stop,
)
from tests.integration.kcat import wait_for
from tests.poison.corpus import TRIAGE_ANSWER


async def test_worker_continues_past_poison_on_the_same_partition(
    isolated: Isolated, fault_server: str, tmp_path: Path
) -> None:
    """Poison first, the valid ticket after it, all on partition 0: the ticket can only be
    processed if the worker got past the poison (before, they sat on different partitions)."""
    s = isolated.settings
    t = s.topics
    body = f"Parcel lost. {answer_marker(TRIAGE_ANSWER)}"
    ticket = json.dumps({"event_id": "ev-after-poison", "ticket_id": "T-1", "body": body})
    poison = [b"{{{{ not json", b'{"ticket_id": 1}', b"[" * 2000 + b"]" * 2000]
    worker = start_worker(fake_model_env(isolated.env, fault_server), tmp_path / "worker.log")
    try:
        coords = await send_values(
            s.bootstrap_servers, t.tickets_received, [*poison, ticket.encode()], partition=0
        )
        assert {p for _, p, _ in coords} == {0}
        dead = wait_for(s.bootstrap_servers, [t.deadletter], len(poison), 120)
        results = wait_for(s.bootstrap_servers, [t.tickets_auto, t.tickets_review], 1, 120)
        assert worker.alive(), worker.log_tail()
    finally:
        stop(worker)
    assert sorted(
        codec.decode_as(r.value or b"", DeadLetter).original_value or b"" for r in dead
    ) == (sorted(poison))
    [result] = results
    assert result.topic == t.tickets_auto
    out = codec.decode_as(result.value or b"", TicketTriaged)
    assert (out.event_id, out.source.partition, out.source.offset) == (
        "ev-after-poison",
        0,
        coords[-1][2],
    )


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
