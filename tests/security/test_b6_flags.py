"""B6: unresolved flags were approved. An invoice routed to review because the document prints
no invoice number (``NO_INVOICE_NUMBER``), or because its totals disagree after every re-ask,
could be approved as it was, and posted to the ledger without a number or with the wrong sum.

Now an approval runs the flow's business rules on the record as it is: such an item cannot be
approved until an edit resolves it (a number assigned, the totals corrected). On the desk, with
real Redis and Kafka."""

from __future__ import annotations

from decimal import Decimal

import pytest

from agents.invoice import NO_INVOICE_NUMBER
from schemas import codec
from schemas.errors import InvalidEdit
from schemas.records import InvoiceExtracted
from tests.integration.conftest import Isolated
from tests.records import SAMPLES
from tests.security.desk_helpers import add, decisions, desk_on

UNNUMBERED = next(
    r
    for r in SAMPLES
    if isinstance(r, InvoiceExtracted) and NO_INVOICE_NUMBER in r.validation_issues
)
NUMBERED = next(r for r in SAMPLES if isinstance(r, InvoiceExtracted) and r.invoice_number)
#: The model read a total the lines do not add up to, and a re-ask did not fix it.
MISMATCH = NUMBERED.model_copy(
    update={
        "event_id": "e-mismatch",
        "total": Decimal("241.16"),
        "validation_issues": ["subtotal 179.97 + tax 34.19 = 214.16, but total is 241.16"],
    }
)


async def test_b6_a_flagged_result_is_approved_only_once_an_edit_resolves_it(
    isolated: Isolated,
) -> None:
    s = isolated.settings
    async with desk_on(s, Decimal("10000")) as desk:
        unnumbered = add(desk, "invoices", UNNUMBERED, 0)
        mismatch = add(desk, "invoices", MISMATCH, 1)
        with pytest.raises(InvalidEdit, match="invoice_number: none printed"):
            await desk.approve(unnumbered.id, "alice")
        with pytest.raises(InvalidEdit, match="but total is 241.16"):
            await desk.approve(mismatch.id, "alice")
        # An edit that leaves the flag unresolved is refused too.
        with pytest.raises(InvalidEdit, match="invoice_number: none printed"):
            await desk.edit(unnumbered.id, "alice", {"vendor_name": "Kiosk am Markt GmbH"})
        assert decisions(s, "invoices") == []

        numbered = await desk.edit(unnumbered.id, "alice", {"invoice_number": "KM-2026-0017"})
        fixed = await desk.edit(mismatch.id, "alice", {"total": "214.16"}, "typo in the PDF")
        assert (numbered.verdict, fixed.verdict) == ("correct", "correct")

    written = {d.event_id: d for d in decisions(s, "invoices")}
    assert set(written) == {UNNUMBERED.event_id, MISMATCH.event_id}
    record = codec.decode_as(written[UNNUMBERED.event_id].record or b"", InvoiceExtracted)
    assert record.invoice_number == "KM-2026-0017"
    assert codec.decode_as(written[MISMATCH.event_id].record or b"", InvoiceExtracted).total == (
        Decimal("214.16")
    )
