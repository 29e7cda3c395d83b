"""Provider faults in the stream: a worker on the fault-injecting server (OPENAI_BASE_URL).

Each ticket carries a marker choosing its fault. Each fault class must end in the right lane with
the right reason and bounded attempts, and a hung provider must not stall the events behind it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer

from agents.testing.fault_server import answer_marker, fault_marker
from schemas.records import DeadLetter, TicketTriaged
from streams.lanes import collect, end_offsets, lane_topics
from tests.integration.conftest import Isolated, start_worker
from tests.records import GOOD_TRIAGE

GOOD = {**GOOD_TRIAGE, "confidence": 0.95}
#: ticket id -> (marker, expected lane, expected dead-letter reason, exact calls booked).
#: The counts are exact: a retry or re-ask loop that gave up one attempt early, or went one too
#: far, fails this test.
CASES = {
    "F-ok": (answer_marker(GOOD), "auto", None, 1),
    "F-429": (fault_marker("429", "ok") + answer_marker(GOOD), "auto", None, 2),
    "F-500": (fault_marker("500"), "deadletter", "provider_unavailable", 3),
    "F-hang": (fault_marker("hang"), "deadletter", "provider_unavailable", 3),
    "F-json": (fault_marker("invalid_json"), "deadletter", "model_output_invalid", 3),
    "F-schema": (fault_marker("schema_violation"), "deadletter", "model_output_invalid", 3),
    "F-refusal": (fault_marker("refusal"), "deadletter", "model_refused", 1),
    "F-trunc": (fault_marker("truncated"), "deadletter", "output_truncated", 1),
    "F-filter": (fault_marker("content_filter"), "deadletter", "content_filtered", 1),
    "F-human": (
        answer_marker({**GOOD, "priority": "urgent", "requires_human": True}),
        "review",
        None,
        1,
    ),
    "F-401": (fault_marker("401"), "deadletter", "config_error", 1),
    "F-403": (fault_marker("403"), "deadletter", "config_error", 1),
    "F-context": (fault_marker("context_exceeded"), "deadletter", "context_exceeded", 1),
    "F-context-full": (fault_marker("context_full"), "deadletter", "context_exceeded", 1),
    "F-after": (answer_marker(GOOD), "auto", None, 1),  # queued behind the hang
}
TIMEOUT_S = 1.5
#: Room for all three 1.5 s timeouts of the hang plus backoff (at most 0.75 s): exactly 3 calls.
DEADLINE_S = 6.0


async def test_each_fault_class_ends_in_its_lane(
    isolated: Isolated, fault_server: str, tmp_path: Path
) -> None:
    s = isolated.settings
    env = {
        **isolated.env,
        "OPENAI_BASE_URL": fault_server,
        "SLUICE_LLM_TIMEOUT_S": str(TIMEOUT_S),
        "SLUICE_LLM_DEADLINE_S": str(DEADLINE_S),
    }
    start = {tp: 0 for tp in await end_offsets(s, list(lane_topics(s)))}
    worker = start_worker(env, tmp_path / "worker.log")
    producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, acks="all")
    await producer.start()
    coords = {}
    try:
        # One partition for all, so F-after really queues behind F-hang.
        for tid, (marker, *_rest) in CASES.items():
            value = json.dumps(
                {"event_id": f"ev-{tid}", "ticket_id": tid, "body": f"{tid} {marker}"}
            )
            meta = await producer.send_and_wait(
                s.topics.tickets_received, value.encode(), key=b"k", partition=0
            )
            coords[(s.topics.tickets_received, 0, meta.offset)] = tid
        began = time.monotonic()
        tally = await collect(s, start, set(coords), timeout_s=180)
        elapsed = time.monotonic() - began
        assert worker.alive(), worker.log_tail()
    finally:
        await producer.stop()
        worker.proc.terminate()
        worker.proc.wait(timeout=30)

    assert tally.seen() == set(coords), worker.log_tail()
    assert not tally.duplicates
    for lane, records in tally.lanes.items():
        for coord, record in records.items():
            tid = coords[coord]
            _, want_lane, want_reason, max_calls = CASES[tid]
            assert lane == want_lane, (tid, record)
            usage = record.usage
            assert usage is not None, tid
            assert usage.attempts == max_calls, (tid, usage)
            assert len(usage.per_attempt) == max_calls
            if isinstance(record, DeadLetter):
                assert record.reason == want_reason, (tid, record.error_message)
                assert record.attempts == max_calls, (tid, record)
                assert record.retriable == (want_reason == "provider_unavailable")
            else:
                assert isinstance(record, TicketTriaged)
            if tid == "F-hang":
                spent_ms = usage.latency_ms
                assert spent_ms <= (DEADLINE_S + 0.5) * 1000, usage
                assert {a.outcome for a in usage.per_attempt} == {"timeout"}
    # Eleven events, one of them hung for its whole deadline: the hang costs one deadline, not
    # the fault server's 60 s hang, and everything behind it was processed.
    assert elapsed < 60
