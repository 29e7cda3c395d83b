"""Both agents in the stream on the real local model: a few labeled tickets and invoices (PDFs this
test generates, text, and one by path), plus bad documents. Every event must end in exactly one
lane, every result must decode against its Avro contract, every review or dead letter must say
why, and every valid event must show that the model answered (with the model down, this fails).

Marked ``model``: ``pytest -m model`` selects the tests that need the local model. The full labeled
set runs in ``make eval``.
"""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from pathlib import Path

import pytest

from evals.documents import document_event, load_invoices, load_tickets, render_pdf
from schemas.records import DeadLetter, InvoiceExtracted, TicketTriaged
from streams.lanes import collect, end_offsets, lane_topics
from tests.integration.conftest import Isolated, send_values, start_worker

BAD_DOCUMENTS: list[tuple[dict[str, str], str]] = [
    ({"document_id": "BAD-URL", "path": "https://example.invalid/x.pdf"}, "poison_input"),
    ({"document_id": "BAD-ESCAPE", "path": "../outside.txt"}, "poison_input"),
    (
        {"document_id": "BAD-PDF", "content_base64": base64.b64encode(b"%PDF-1.7 junk").decode()},
        "poison_input",
    ),
]


#: Kept small for `make test`'s budget: each event costs 1-3 local calls of 5-40 s on 2 cores
#: (`make eval` runs the whole golden sets). Two tickets, one PDF (by path), one text invoice;
#: PDF bytes inline go through the stream in the fault-server tests.
TICKETS = 2
INVOICES = 1
#: Dead-letter reasons that mean the model was never reached or refused the request.
NOT_ANSWERED = {"provider_unavailable", "config_error", "context_exceeded"}


@pytest.mark.model
@pytest.mark.timeout(900)
async def test_both_agents_on_the_local_model(isolated: Isolated, tmp_path: Path) -> None:
    s = isolated.settings
    t = s.topics
    docs = tmp_path / "documents"
    docs.mkdir()
    (tmp_path / "outside.txt").write_text("not an invoice you may read")
    invoices = [i for i in load_invoices() if i["format"] == "pdf"][:INVOICES] + [
        i for i in load_invoices() if i["format"] == "text"
    ][:1]
    # One invoice travels by path, from the allowlisted directory, as a PDF file.
    by_path = invoices[0]
    (docs / f"{by_path['document_id']}.pdf").write_bytes(render_pdf(by_path))
    doc_events = [document_event(inv) for inv in invoices[1:]]
    doc_events.append(
        {
            "event_id": f"ev-{by_path['document_id']}",
            "document_id": by_path["document_id"],
            "path": f"{by_path['document_id']}.pdf",
        }
    )
    doc_events += [{"event_id": f"ev-{e['document_id']}", **e} for e, _ in BAD_DOCUMENTS]
    tickets = load_tickets()[:TICKETS]

    start = {tp: 0 for tp in await end_offsets(s, list(lane_topics(s)))}
    worker = start_worker({**isolated.env, "SLUICE_DOCUMENT_DIR": str(docs)}, tmp_path / "w.log")
    try:
        sent = await send_values(
            s.bootstrap_servers, t.tickets_received, [json.dumps(x).encode() for x in tickets]
        )
        sent += await send_values(
            s.bootstrap_servers, t.invoices_received, [json.dumps(d).encode() for d in doc_events]
        )
        tally = await collect(s, start, set(sent), timeout_s=840)
        assert worker.alive(), worker.log_tail()
    finally:
        worker.proc.terminate()
        worker.proc.wait(timeout=60)

    # Conservation: every event in exactly one lane, none twice, nothing missing.
    lanes = tally.lanes
    assert tally.seen() == set(sent), f"missing: {set(sent) - tally.seen()}\n{worker.log_tail()}"
    assert sum(len(v) for v in lanes.values()) == len(sent)
    assert not tally.duplicates

    expected_dl = {f"ev-{d['document_id']}": reason for d, reason in BAD_DOCUMENTS}
    for lane, records in lanes.items():
        for record in records.values():
            if lane == "deadletter":
                assert isinstance(record, DeadLetter)
                assert record.reason != "other", record.error_message
                assert record.error_message
                if record.event_id in expected_dl:
                    assert record.reason == expected_dl[record.event_id]
                    assert record.usage is None  # refused before any model call
                else:  # the model answered, unusably: what that cost is recorded
                    assert record.reason not in NOT_ANSWERED, record.error_message
                    assert record.usage is not None
                    assert any(a.completion_tokens > 0 for a in record.usage.per_attempt)
                    assert record.usage.per_attempt[-1].outcome != "ok"
                continue
            assert isinstance(record, TicketTriaged | InvoiceExtracted)
            assert record.route.lane == lane
            assert record.route.reason
            u = record.usage
            assert 1 <= u.attempts <= s.llm_max_attempts + s.llm_max_validation_attempts
            assert u.per_attempt[-1].outcome in ("ok", "business_invalid")  # the model answered
            assert u.completion_tokens > 0
            assert u.prompt_tokens == sum(a.prompt_tokens for a in u.per_attempt)
            assert u.token_budget == s.llm_token_budget
            assert u.prompt_tokens + u.completion_tokens <= (s.llm_token_budget or 10**9)
            assert u.cost_usd == Decimal("0.000000")  # the local model is free
            detail = record.confidence_detail
            assert detail is not None
            assert detail.score == record.confidence
            if lane == "auto":
                assert record.confidence >= s.auto_threshold
            if isinstance(record, InvoiceExtracted):
                assert record.content_type in ("application/pdf", "text/plain")
                assert set(record.field_confidence) >= {"vendor_name", "total"}
                if record.validation_issues:
                    assert lane == "review"
                    assert "validation issues" in record.route.reason
            else:
                assert record.agent.prompt_version == "ticket_triage.v3"
                assert record.sentiment is not None
                assert record.team is not None
                if record.requires_human:
                    assert lane == "review"
    for event_id in expected_dl:
        assert any(r.event_id == event_id for r in lanes["deadletter"].values()), event_id
    # Triage is schema-valid on this model (golden replay: 21 of 22): every ticket reaches a lane.
    triaged = [r for lane in ("auto", "review") for r in lanes[lane].values()]
    assert sum(isinstance(r, TicketTriaged) for r in triaged) == len(tickets)
