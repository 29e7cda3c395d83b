"""B5: a reviewer could post anything. An edit was checked by the record's schema alone, so a
reviewer could set an invoice's total to 999,999,999,999.99 in any currency, or break its
arithmetic, and the executor posted it; one reviewer alone could post any amount.

Now edits and approvals run the flow's business rules (``FlowSpec.rules``), refused with the
problems (422 at the API), and a decision moving more than the flow's four-eyes amount is held
until a second, different reviewer confirms it; then one decision names both. On the desk, with
real Redis and Kafka."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from schemas.errors import InvalidEdit, ReviewConflict
from schemas.records import InvoiceExtracted, TicketTriaged
from streams.review.desk import Pending
from tests.integration.conftest import Isolated
from tests.records import SAMPLES
from tests.security.desk_helpers import add, decisions, desk_on

INVOICE = next(r for r in SAMPLES if isinstance(r, InvoiceExtracted))  # 214.16 EUR, consistent
TICKET = next(r for r in SAMPLES if isinstance(r, TicketTriaged))
LIMIT = Decimal("1000")


def lines(amount: str) -> list[dict[str, Any]]:
    return [{"description": "Work", "quantity": "1", "unit_price": amount, "amount": amount}]


#: Edits the record's schema accepts and the business rules refuse, and what the refusal says.
BAD_EDITS: list[tuple[dict[str, Any], str]] = [
    ({"currency": "XYZ"}, "ISO 4217"),
    ({"currency": "eur"}, "ISO 4217"),
    ({"total": "999999999999.99"}, "but total is 999999999999.99"),
    ({"total": "-250000.00"}, "but total is -250000.00"),
    ({"line_items": lines("50.00")}, "sum to 50.00, but subtotal is 179.97"),
    ({"subtotal": "100.00", "tax": "0", "total": "100.00"}, "subtotal is 100.00"),
    ({"due_date": "2026-10-01"}, "before issue_date"),
    ({"invoice_number": "   "}, "invoice_number is blank"),
]


@pytest.mark.parametrize(("changes", "says"), BAD_EDITS)
def test_the_invoice_rules_refuse_what_a_clerk_would(changes: dict[str, Any], says: str) -> None:
    from streams.builtin import invoice_rules

    edited = InvoiceExtracted.model_validate({**INVOICE.model_dump(), **changes})
    assert any(says in p for p in invoice_rules(edited)), invoice_rules(edited)


async def test_b5_edits_run_the_rules_and_large_amounts_need_two_reviewers(
    isolated: Isolated,
) -> None:
    s = isolated.settings
    async with desk_on(s, LIMIT) as desk:
        item = add(desk, "invoices", INVOICE, 0)
        for changes, says in BAD_EDITS:
            with pytest.raises(InvalidEdit, match=says.replace(".", r"\.")):
                await desk.edit(item.id, "alice", changes)
        # A ticket's actions are typed: a route goes to a team, other actions take no target.
        ticket = add(desk, "tickets", TICKET, 0)
        for actions, says in [
            ([{"action": "escalate", "target": "ceo@example.com", "confidence": 1}], "no target"),
            (
                [{"action": "route_to_team", "target": "finance", "confidence": 1}],
                "one of|not a team",
            ),
        ]:
            with pytest.raises(InvalidEdit, match=says):
                await desk.edit(ticket.id, "alice", {"actions": actions})
        assert await desk.claimed_by(item.id) is None  # a refused edit holds nothing

        # A consistent edit above the four-eyes amount is held, not written.
        big = {"line_items": lines("4000.00"), "subtotal": "4000.00", "tax": "760.00",
               "total": "4760.00"}  # fmt: skip
        held = await desk.edit(item.id, "alice", big, "vendor sent the real invoice")
        assert isinstance(held, Pending)
        assert (held.reviewer, held.verdict, held.amount, held.limit) == (
            "alice", "correct", "4760.00", "1000",
        )  # fmt: skip
        assert await desk.pending(item.id) == held
        assert decisions(s, "invoices") == []
        # Not by the same reviewer, and nobody else decides it in between.
        with pytest.raises(ReviewConflict, match="someone other than alice"):
            await desk.confirm(item.id, "alice")
        with pytest.raises(ReviewConflict, match="waits for a second reviewer"):
            await desk.approve(item.id, "bob")
        with pytest.raises(ReviewConflict, match="claimed by alice"):
            await desk.reject(item.id, "bob", "no")
        decision = await desk.confirm(item.id, "bob")
        assert (decision.reviewer, decision.second_reviewer) == ("alice", "bob")
        assert decision.verdict == "correct"
        assert decision.comment == "vendor sent the real invoice"
        assert await desk.pending(item.id) is None
        with pytest.raises(ReviewConflict):
            await desk.confirm(item.id, "bob")

        # An approval above the amount too; below it, one reviewer is enough.
        large = add(desk, "invoices", INVOICE.model_copy(update={
            "line_items": [], "subtotal": Decimal("5000.00"), "tax": Decimal(0),
            "total": Decimal("5000.00"), "event_id": "e-large"}), 1)  # fmt: skip
        with pytest.raises(InvalidEdit, match="line_items is empty"):
            await desk.approve(large.id, "bob")
        large = add(desk, "invoices", INVOICE.model_copy(update={
            "line_items": [INVOICE.line_items[0].model_copy(update={
                "quantity": Decimal(1), "unit_price": Decimal("5000.00"),
                "amount": Decimal("5000.00")})],
            "subtotal": Decimal("5000.00"), "tax": Decimal(0), "total": Decimal("5000.00"),
            "event_id": "e-large", "issue_date": date(2026, 11, 1)}), 2)  # fmt: skip
        assert isinstance(await desk.approve(large.id, "bob"), Pending)
        approved = await desk.confirm(large.id, "alice")
        assert (approved.reviewer, approved.second_reviewer) == ("bob", "alice")
        small = add(desk, "invoices", INVOICE.model_copy(update={"event_id": "e-small"}), 3)
        alone = await desk.approve(small.id, "carol")
        assert not isinstance(alone, Pending)
        assert (alone.reviewer, alone.second_reviewer) == ("carol", None)

    written = decisions(s, "invoices")
    assert len(written) == 3
    edited = next(d for d in written if d.event_id == INVOICE.event_id)
    assert (edited.reviewer, edited.second_reviewer) == ("alice", "bob")
    assert {c.field: json.loads(c.after) for c in edited.changes}["total"] == "4760.00"
