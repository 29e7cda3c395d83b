"""Worker → auto lane → executor → effects, on real Kafka and Redis, counted at the sink.

Invoices the fault server answers consistently reach ``invoices.auto``; the executor posts each one
to the SQLite ledger once. Then every auto record is produced to the lane a second time (what an
at-least-once worker does after a crash): the executor must answer ``duplicate`` with the same
key and result, and the ledger must still hold one row per invoice. Ticket actions have no tool
on the built-in allowlist: each is recorded as ``refused`` and nothing runs.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.testing.fault_server import answer_marker
from schemas import codec
from schemas.records import ToolEffect
from streams.settings import Settings
from streams.topics import ensure_topics, partitions
from tests.integration.conftest import (
    Isolated,
    Worker,
    fake_model_env,
    send_values,
    start_worker,
    stop,
)
from tests.poison.corpus import INVOICE_ANSWER, TRIAGE_ANSWER

INVOICES = 4


async def read_all(s: Settings, topic: str, want: int, timeout_s: float) -> list[bytes]:
    """Every value on ``topic`` from the beginning, once at least ``want`` are there."""
    tps = await partitions(s, [topic])
    deadline = time.monotonic() + timeout_s
    values: list[bytes] = []
    consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for _, p in tps])
        await consumer.seek_to_beginning()
        while len(values) < want and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            values += [m.value for msgs in batch.values() for m in msgs if m.value is not None]
    finally:
        await consumer.stop()
    return values


def ledger_rows(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT document_id, total FROM ledger ORDER BY document_id").fetchall()


def alive(*procs: Worker) -> None:
    for p in procs:
        assert p.alive(), p.log_tail()


async def test_effects_run_once_per_invoice_and_redelivered_records_are_duplicates(
    isolated: Isolated, fault_server: str, tmp_path: Path
) -> None:
    s = isolated.settings
    t = s.topics
    await ensure_topics(s)
    ledger = tmp_path / "ledger.db"
    env = fake_model_env(isolated.env, fault_server, SLUICE_LEDGER_PATH=str(ledger))
    run = s.topic_suffix  # event ids are global to the idempotency store: unique per run
    worker = start_worker(env, tmp_path / "worker.log")
    executor = start_worker(env, tmp_path / "executor.log", command="executor")
    try:
        docs = [
            {
                "event_id": f"ev-inv-{i}{run}",
                "document_id": f"DOC-{i}",
                "text": f"Invoice {i} from Acme. {answer_marker(INVOICE_ANSWER)}",
            }
            for i in range(INVOICES)
        ]
        ticket = {
            "event_id": f"ev-t-1{run}",
            "ticket_id": "T-1",
            "body": f"Charged twice. {answer_marker({**TRIAGE_ANSWER, 'confidence': 0.95})}",
        }
        await send_values(
            s.bootstrap_servers, t.invoices_received, [json.dumps(d).encode() for d in docs]
        )
        await send_values(s.bootstrap_servers, t.tickets_received, [json.dumps(ticket).encode()])

        raw = await read_all(s, t.effects, INVOICES + 1, timeout_s=120)
        alive(worker, executor)
        first = [codec.decode_as(v, ToolEffect) for v in raw]
        posts = [e for e in first if e.tool == "post_invoice"]
        assert sorted(e.event_id for e in posts) == [f"ev-inv-{i}{run}" for i in range(INVOICES)]
        assert {e.status for e in posts} == {"applied"}, [e.error for e in posts]
        assert all(e.attempts == 1 and e.agent == "invoice-extraction" for e in posts)
        [refused] = [e for e in first if e.tool != "post_invoice"]
        assert (refused.tool, refused.status, refused.reason) == (
            "route_to_team",
            "refused",
            "not_allowlisted",
        )
        assert [d for d, _ in ledger_rows(ledger)] == [f"DOC-{i}" for i in range(INVOICES)]

        # At-least-once upstream: the same auto records arrive a second time.
        autos = await read_all(s, t.invoices_auto, INVOICES, timeout_s=30)
        assert len(autos) == INVOICES
        await send_values(s.bootstrap_servers, t.invoices_auto, autos)
        raw = await read_all(s, t.effects, 2 * INVOICES + 1, timeout_s=60)
        alive(worker, executor)
    finally:
        stop(executor)
        stop(worker)
    every = [codec.decode_as(v, ToolEffect) for v in raw]
    again = [e for e in every if e.tool == "post_invoice" and e.status != "applied"]
    assert [e.status for e in again] == ["duplicate"] * INVOICES
    assert sum(e.status == "applied" for e in every) == INVOICES  # none applied a second time
    by_key = {e.idempotency_key: e for e in posts}
    for e in again:
        assert e.idempotency_key in by_key
        assert e.result_json == by_key[e.idempotency_key].result_json  # the stored result
    assert len(ledger_rows(ledger)) == INVOICES  # counted at the sink: once each
