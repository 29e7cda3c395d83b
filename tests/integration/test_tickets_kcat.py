"""kcat produces tickets and reads the lanes; Avro values are decoded and checked field by field.

The model is the fault server, so each ticket's lane is known: with the model down, this fails.
"""

import json
from pathlib import Path

from agents.testing.fault_server import answer_marker
from schemas import codec
from schemas.records import TicketTriaged
from tests.integration.conftest import Isolated, fake_model_env, start_worker, stop
from tests.integration.kcat import produce, wait_for
from tests.poison.corpus import TRIAGE_ANSWER

AUTO = answer_marker(TRIAGE_ANSWER)
HUMAN = answer_marker({**TRIAGE_ANSWER, "priority": "urgent", "requires_human": True})
#: ticket id, body, and the lane the fault server's answer must send it to
TICKETS = [
    ("T-1", f"I was charged twice for my subscription, please refund one payment. {AUTO}", "auto"),
    ("T-2", f"The app crashes when I open the settings page on Android. {AUTO}", "auto"),
    ("T-3", f"My parcel has not arrived and tracking has not moved for a week. {HUMAN}", "review"),
    ("T-4", f"I cannot log in: the password reset email never arrives. {AUTO}", "auto"),
    ("T-5", "Thanks, the new checkout is great.", "auto"),  # the server's default answer
    ("T-6", f"Someone placed an order from my account that I did not make. {HUMAN}", "review"),
]


def test_kcat_in_avro_out(isolated: Isolated, fault_server: str, tmp_path: Path) -> None:
    s = isolated.settings
    t = s.topics
    pairs = [
        (tid, json.dumps({"event_id": f"ev-{tid}", "ticket_id": tid, "body": body}).encode())
        for tid, body, _ in TICKETS
    ]
    worker = start_worker(fake_model_env(isolated.env, fault_server), tmp_path / "worker.log")
    try:
        produce(s.bootstrap_servers, t.tickets_received, pairs)
        lanes = [t.tickets_auto, t.tickets_review, t.deadletter]
        records = wait_for(s.bootstrap_servers, lanes, len(TICKETS), 120)
        assert worker.alive(), worker.log_tail()
    finally:
        stop(worker)
    assert len(records) == len(TICKETS)
    assert [r for r in records if r.topic == t.deadletter] == []  # valid tickets, model up
    want = {tid: lane for tid, _, lane in TICKETS}
    seen: dict[str, object] = {}
    for r in records:
        out = codec.decode_as(r.value or b"", TicketTriaged)
        seen[out.ticket_id] = out
        assert out.route.lane == want[out.ticket_id]
        assert r.key == out.ticket_id.encode()  # the input key is kept: per-ticket ordering
        assert out.event_id == f"ev-{out.ticket_id}"
        assert out.route.lane == ("auto" if r.topic == t.tickets_auto else "review")
        assert out.route.threshold == s.auto_threshold
        if out.route.lane == "auto":
            assert out.confidence >= s.auto_threshold
        else:  # confident, but the agent says a person must handle it
            assert out.requires_human
            assert out.route.reason == "agent says a person must handle it"
        assert out.agent.name == "ticket-triage"
        assert out.agent.model == s.model  # the configured provider model, not the local one
        assert out.agent.prompt_version == "ticket_triage.v3"
        assert out.usage.attempts == 1
        assert out.usage.prompt_tokens > 50  # the system prompt alone is longer than this
        assert out.usage.completion_tokens > 0
        assert out.summary.strip()
        assert out.source.topic == t.tickets_received
        assert out.processed_at >= out.received_at
        assert out.team is not None
        assert out.sentiment is not None
        assert out.confidence_detail is not None
        assert out.confidence_detail.score == out.confidence
        assert out.usage.per_attempt[-1].outcome in ("ok", "business_invalid")
    assert set(seen) == set(want)
