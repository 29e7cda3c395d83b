"""kcat produces tickets and reads the lanes; Avro values are decoded and checked field by field."""

import json

from schemas import codec
from schemas.records import DeadLetter, TicketTriaged
from tests.integration.conftest import Isolated, Worker
from tests.integration.kcat import produce, wait_for

MODEL_REASONS = {
    "model_output_invalid",
    "output_truncated",
    "model_refused",
    "token_budget_exceeded",
    "provider_unavailable",
}

TICKETS = [
    ("T-1", "I was charged twice for my subscription, please refund one payment."),
    ("T-2", "The app crashes when I open the settings page on Android."),
    ("T-3", "My parcel has not arrived and tracking has not moved for a week."),
    ("T-4", "I cannot log in: the password reset email never arrives."),
    ("T-5", "Thanks, the new checkout is great."),
    ("T-6", "Someone placed an order from my account that I did not make."),
]


def test_kcat_in_avro_out(isolated: Isolated, worker: Worker) -> None:
    s = isolated.settings
    t = s.topics
    pairs = [
        (tid, json.dumps({"event_id": f"ev-{tid}", "ticket_id": tid, "body": body}).encode())
        for tid, body in TICKETS
    ]
    produce(s.bootstrap_servers, t.tickets_received, pairs)

    lanes = [t.tickets_auto, t.tickets_review, t.deadletter]
    records = wait_for(s.bootstrap_servers, lanes, len(TICKETS), 300)
    assert worker.alive(), worker.log_tail()
    assert len(records) == len(TICKETS)
    seen: dict[str, object] = {}
    for r in records:
        if r.topic == t.deadletter:
            # A 135M model may loop or contradict itself: a valid ticket can only be
            # dead-lettered for a model reason, with what the calls cost.
            dl = codec.decode_as(r.value or b"", DeadLetter)
            assert dl.reason in MODEL_REASONS, dl
            assert dl.usage is not None
            assert dl.usage.attempts >= 1
            seen[dl.event_id.removeprefix("ev-")] = dl
            continue
        out = codec.decode_as(r.value or b"", TicketTriaged)
        seen[out.ticket_id] = out
        assert r.key == out.ticket_id.encode()  # the input key is kept: per-ticket ordering
        assert out.event_id == f"ev-{out.ticket_id}"
        assert out.route.lane == ("auto" if r.topic == t.tickets_auto else "review")
        assert out.route.threshold == s.auto_threshold
        assert (out.confidence >= s.auto_threshold) == (out.route.lane == "auto")
        assert out.agent.name == "ticket-triage"
        assert out.agent.model == "local"
        assert out.agent.prompt_version == "ticket_triage.v2"
        assert out.usage.attempts >= 1
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
    assert set(seen) == {tid for tid, _ in TICKETS}
