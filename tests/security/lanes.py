"""Records put straight onto a flow's auto lane, as a lax policy or an insider would put them there,
and a fast stop for the processes a security test starts (nothing of theirs needs a clean exit)."""

from __future__ import annotations

from decimal import Decimal

from schemas import codec
from schemas.records import (
    AgentInfo,
    InvoiceExtracted,
    LineItem,
    ProposedAction,
    Route,
    TicketTriaged,
)
from tests.integration.conftest import Worker
from tests.records import SAMPLES

TRIAGE = AgentInfo(name="ticket-triage", version="0", model="m", prompt_version="p")
EXTRACTION = AgentInfo(name="invoice-extraction", version="0", model="m", prompt_version="p")
AUTO = Route(lane="auto", reason="put on the lane by the test", threshold=0.8)


def ticket(event_id: str, ticket_id: str, *actions: ProposedAction) -> bytes:
    """A triaged ticket on the auto lane asking for ``actions``. Built with ``model_construct``
    by callers that need what validation would refuse: Avro carries any string."""
    sample = next(s for s in SAMPLES if isinstance(s, TicketTriaged))
    record = sample.model_copy(
        update={"event_id": event_id, "ticket_id": ticket_id, "team": "logistics",
                "agent": TRIAGE, "route": AUTO, "actions": list(actions)}
    )  # fmt: skip
    return codec.encode(record)


def invoice(event_id: str, total: str, kind: str = "invoice") -> bytes:
    """An extracted invoice on the auto lane whose one line, subtotal and total are ``total``."""
    sample = next(s for s in SAMPLES if isinstance(s, InvoiceExtracted))
    amount = Decimal(total)
    line = LineItem(description="x", quantity=Decimal(1), unit_price=amount, amount=amount)
    record = sample.model_copy(
        update={"event_id": event_id, "document_id": f"DOC-{event_id}"[:64],
                "agent": EXTRACTION, "route": AUTO, "line_items": [line], "subtotal": amount,
                "tax": Decimal(0), "total": amount, "document_kind": kind, "confidence": 0.99}
    )  # fmt: skip
    return codec.encode(record)


def kill(*workers: Worker | None) -> None:
    """SIGKILL and reap: the test has read what it needs, and a graceful faust stop costs
    seconds of ``make test``'s budget."""
    for w in workers:
        if w is not None and w.alive():
            w.proc.kill()
        if w is not None:
            w.proc.wait()
