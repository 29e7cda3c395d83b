"""Writing outcomes against a real broker that refuses them, for good or for a while.

- **Unwritable record**: the dead-letter topic (the operator's) accepts 20 kB, a poison event's
  dead letter embeds 100 kB. The broker refuses it for good; the worker writes the minimal dead
  letter in its place and goes on to the next event on the same partition.
- **Broker outage**: the broker freezes mid-event. The worker exits 70 before acknowledging the
  input; once the broker is back, a new worker gets the same event and it lands in its lane.

The strike counter behind "an offset that keeps failing" is in test_strikes.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import time
from pathlib import Path

import redis

from agents.testing.fault_server import answer_marker, fault_marker
from schemas import codec
from schemas.records import DeadLetter, TicketTriaged
from streams.emit import EXIT_EMIT_FAILED
from streams.topics import ensure_topics
from tests.integration.conftest import (
    Broker,
    Isolated,
    Worker,
    fake_model_env,
    running_fault_server,
    send_values,
    set_topic_config,
    start_worker,
    stop,
)
from tests.integration.kcat import wait_for
from tests.poison.corpus import TRIAGE_ANSWER

JUNK = b"<not json> " + b"z" * 100_000


def ticket(tid: str) -> bytes:
    body = f"My parcel is late. {answer_marker(TRIAGE_ANSWER)}"
    return json.dumps({"event_id": f"ev-{tid}", "ticket_id": tid, "body": body}).encode()


async def test_an_unwritable_dead_letter_is_replaced_and_the_partition_moves_on(
    isolated: Isolated, fault_server: str, tmp_path: Path
) -> None:
    s = isolated.settings
    t = s.topics
    await set_topic_config(s.bootstrap_servers, t.deadletter, {"max.message.bytes": "20000"})
    worker = start_worker(fake_model_env(isolated.env, fault_server), tmp_path / "w.log")
    try:
        # One partition: the ticket queues behind the poison.
        coords = await send_values(
            s.bootstrap_servers, t.tickets_received, [JUNK, ticket("T-after")], partition=0
        )
        dead = wait_for(s.bootstrap_servers, [t.deadletter], 1, 120)
        done = wait_for(s.bootstrap_servers, [t.tickets_auto], 1, 120)
        assert worker.alive(), worker.log_tail()
    finally:
        stop(worker)
    assert len(dead) == 1
    dl = codec.decode_as(dead[0].value or b"", DeadLetter)
    assert dl.reason == "outcome_unwritable"
    assert dl.original_value is None  # minimal: no payload
    assert dl.original_truncated
    assert dl.original_size == len(JUNK)
    assert dl.original_sha256 == hashlib.sha256(JUNK).hexdigest()
    assert (dl.source.partition, dl.source.offset) == coords[0][1:]
    assert "MessageSizeTooLarge" in dl.error_message or "TooLarge" in dl.error_message
    assert [codec.decode_as(r.value or b"", TicketTriaged).event_id for r in done] == ["ev-T-after"]
    assert "emit.replaced_by_minimal_deadletter" in worker.log.read_text()


def strikes(isolated: Isolated, partition: int, offset: int) -> int:
    s = isolated.settings
    key = f"sluice:v1:strikes:{s.app_id}:{s.topics.tickets_received}:{partition}:{offset}"
    return int(redis.Redis.from_url(s.redis_url).get(key) or 0)


async def test_a_broker_outage_exits_before_the_ack_and_loses_nothing(
    isolated: Isolated, own_broker: Broker, tmp_path: Path
) -> None:
    """The worker's own broker freezes (SIGSTOP) while a 5 s model call is in flight: the write
    times out, the worker exits 70 unacknowledged, and after the broker is back a new worker
    writes the same event. Exactly the outage case, on a real broker of the test's own."""
    s = isolated.settings.model_copy(update={"bootstrap_servers": own_broker.bootstrap})
    t = s.topics
    await ensure_topics(s)
    env = {**isolated.env, "KAFKA_BOOTSTRAP_SERVERS": own_broker.bootstrap}
    with running_fault_server(tmp_path / "fault.log", "--slow-ms", "5000") as url:
        env = fake_model_env(env, url, SLUICE_PRODUCER_TIMEOUT_S="2")
        slow = json.dumps(
            {
                "event_id": "ev-outage",
                "ticket_id": "T-outage",
                "body": f"Late parcel. {fault_marker('slow')}{answer_marker(TRIAGE_ANSWER)}",
            }
        ).encode()
        [(_, partition, offset)] = await send_values(
            s.bootstrap_servers, t.tickets_received, [slow], partition=0
        )
        first = start_worker(env, tmp_path / "first.log")
        wait_for_line(first, "Worker]: Ready", 60)
        await asyncio.sleep(2.5)  # the event is fetched and its 5 s model call is in flight
        os.kill(own_broker.pid, signal.SIGSTOP)
        try:
            code = first.proc.wait(timeout=60)
        finally:
            os.kill(own_broker.pid, signal.SIGCONT)
        assert code == EXIT_EMIT_FAILED, first.log_tail()
        assert "emit.failed" in first.log.read_text()
        assert strikes(isolated, partition, offset) == 1
        # The frozen broker may still append the timed-out write once it thaws: unacknowledged is
        # not unwritten. So the redelivery below can duplicate it (same event_id), never lose it.
        before = len(wait_for(s.bootstrap_servers, [t.tickets_auto], 1, 2))

        second = start_worker(env, tmp_path / "second.log")
        try:
            done = wait_for(s.bootstrap_servers, [t.tickets_auto], before + 1, 120)
            assert second.alive(), second.log_tail()
        finally:
            stop(second)
    assert len(done) == before + 1  # the redelivered event was written by the second worker
    assert not wait_for(s.bootstrap_servers, [t.deadletter], 1, 1)
    for r in done:
        record = codec.decode_as(r.value or b"", TicketTriaged)
        assert (record.event_id, record.source.offset) == ("ev-outage", offset)
    print(f"\noutage: 1 event, {len(done)} records in its lane ({before} from the write in flight)")


def wait_for_line(worker: Worker, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in worker.log.read_text(errors="replace"):
        assert worker.alive(), worker.log_tail()
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.2)
