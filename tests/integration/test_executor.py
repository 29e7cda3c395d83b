"""Worker → auto lane → executor → effects, on real Kafka and Redis, counted at the sink.

Invoices the fault server answers consistently reach ``invoices.auto``; the executor posts each one
to the SQLite ledger once. Tickets propose actions: routing at 0.9 goes to the webhook receiver,
an acknowledgement to the SMTP server, routing at 0.5 is refused (low confidence) and
``escalate`` (not on the triage agent's allowlist) is refused whatever its confidence. Then every
auto record is produced to its lane a second time (what an at-least-once worker does after a
crash): the executor must answer ``duplicate`` with the same key and stored result, and each sink
must still hold exactly one of each effect. The sinks are the test's own processes.
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
    Sinks,
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
    # earliest: seek_to_beginning alone can lose a race with the default "latest" reset
    consumer = AIOKafkaConsumer(
        bootstrap_servers=s.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
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


async def test_effects_run_once_per_action_and_redelivered_records_are_duplicates(
    isolated: Isolated, fault_server: str, sinks: Sinks, tmp_path: Path
) -> None:
    s = isolated.settings
    t = s.topics
    await ensure_topics(s)
    ledger = sinks.state / "ledger.db"
    env = fake_model_env({**isolated.env, **sinks.env}, fault_server)
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
        acts = [
            {"action": "route_to_team", "confidence": 0.9},
            {"action": "send_acknowledgement", "confidence": 0.95},
            {"action": "escalate", "confidence": 0.99},
        ]
        sure = answer_marker({**TRIAGE_ANSWER, "actions": acts, "confidence": 0.95})
        unsure = answer_marker(
            {**TRIAGE_ANSWER, "actions": [{"action": "route_to_team", "confidence": 0.5}]}
        )
        tickets = [
            {"event_id": f"ev-t-1{run}", "ticket_id": "T-1", "body": f"Charged twice. {sure}"},
            {"event_id": f"ev-t-2{run}", "ticket_id": "T-2", "body": f"Login? {unsure}"},
        ]
        await send_values(
            s.bootstrap_servers, t.invoices_received, [json.dumps(d).encode() for d in docs]
        )
        await send_values(
            s.bootstrap_servers, t.tickets_received, [json.dumps(x).encode() for x in tickets]
        )

        raw = await read_all(s, t.effects, INVOICES + 4, timeout_s=120)
        alive(worker, executor)
        first = [codec.decode_as(v, ToolEffect) for v in raw]
        posts = [e for e in first if e.tool == "post_invoice"]
        assert sorted(e.event_id for e in posts) == [f"ev-inv-{i}{run}" for i in range(INVOICES)]
        assert {e.status for e in posts} == {"applied"}, [e.error for e in posts]
        assert all(e.attempts == 1 and e.agent == "invoice-extraction" for e in posts)
        ticket_effects = sorted(
            (e.event_id.removesuffix(run), e.tool, e.status, e.reason)
            for e in first
            if e.tool != "post_invoice"
        )
        assert ticket_effects == [
            ("ev-t-1", "escalate", "refused", "not_allowlisted"),
            ("ev-t-1", "route_to_team", "applied", None),
            ("ev-t-1", "send_acknowledgement", "applied", None),
            ("ev-t-2", "route_to_team", "refused", "low_confidence"),
        ]
        assert [d for d, _ in ledger_rows(ledger)] == [f"DOC-{i}" for i in range(INVOICES)]
        assert (sinks.webhook_requests(), sinks.mails()) == (1, 1)

        # At-least-once upstream: the same auto records arrive a second time.
        autos = await read_all(s, t.invoices_auto, INVOICES, timeout_s=30)
        ticket_autos = await read_all(s, t.tickets_auto, 2, timeout_s=30)
        assert (len(autos), len(ticket_autos)) == (INVOICES, 2)
        await send_values(s.bootstrap_servers, t.invoices_auto, autos)
        await send_values(s.bootstrap_servers, t.tickets_auto, ticket_autos)
        raw = await read_all(s, t.effects, 2 * (INVOICES + 4), timeout_s=60)
        alive(worker, executor)
    finally:
        stop(executor)
        stop(worker)
    every = [codec.decode_as(v, ToolEffect) for v in raw]
    applied = [e for e in every if e.status == "applied"]
    again = [e for e in every if e.status == "duplicate"]
    assert len(applied) == INVOICES + 2  # none applied a second time
    assert len(again) == INVOICES + 2
    by_key = {e.idempotency_key: e for e in applied}
    for e in again:
        assert e.idempotency_key in by_key
        assert e.result_json == by_key[e.idempotency_key].result_json  # the stored result
    # Counted at the sinks: once each.
    assert len(ledger_rows(ledger)) == INVOICES
    assert (sinks.webhook_requests(), sinks.mails()) == (1, 1)
