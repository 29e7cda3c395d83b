"""Business validation beyond the schema: each rule fires on its violation and only then."""

from datetime import date
from decimal import Decimal

import pytest
from pydantic import ValidationError

from agents.invoice import InvoiceAnswer, LineItemAnswer, business_problems
from agents.triage import TriageAnswer
from agents.triage import business_problems as triage_problems
from tests.records import GOOD_TRIAGE


def invoice(**changes: object) -> InvoiceAnswer:
    base: dict[str, object] = {
        "vendor_name": "ACME GmbH",
        "invoice_number": "R-17",
        "issue_date": date(2026, 3, 2),
        "due_date": date(2026, 3, 16),
        "currency": "EUR",
        "line_items": [
            LineItemAnswer(
                description="Screws",
                quantity=Decimal(2),
                unit_price=Decimal("12.50"),
                amount=Decimal("25.00"),
            ),
            LineItemAnswer(
                description="Fitting, hours",
                quantity=Decimal("1.5"),
                unit_price=Decimal("66.67"),
                amount=Decimal("100.00"),  # 100.005 printed rounded: within a cent
            ),
        ],
        "subtotal": Decimal("125.00"),
        "tax": Decimal("23.75"),
        "total": Decimal("148.75"),
        "confidence": 0.9,
    }
    return InvoiceAnswer.model_validate({**base, **changes})


def test_a_consistent_invoice_has_no_problems() -> None:
    assert business_problems(invoice()) == []
    assert business_problems(invoice(due_date=None)) == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"total": Decimal("158.75")}, "subtotal 125.00 + tax 23.75 = 148.75, but total is 158.75"),
        ({"subtotal": Decimal("120.00"), "total": Decimal("143.75")}, "sum to 125.00"),
        ({"due_date": date(2026, 3, 1)}, "due_date 2026-03-01 is before issue_date 2026-03-02"),
        ({"currency": "EU"}, "not an ISO 4217 code"),
        ({"currency": "XYZ"}, "not an ISO 4217 code"),
        ({"vendor_name": " "}, "vendor_name is empty"),
        ({"invoice_number": ""}, "invoice_number is empty"),
        (
            {"line_items": [], "subtotal": Decimal(0), "tax": Decimal(0), "total": Decimal(0)},
            "line_items is empty",
        ),
    ],
)
def test_each_invoice_rule(changes: dict[str, object], expected: str) -> None:
    problems = business_problems(invoice(**changes))
    assert any(expected in p for p in problems), problems


def test_line_arithmetic_names_the_line_and_the_numbers() -> None:
    bad = invoice().line_items[0].model_copy(update={"amount": Decimal("26.00")})
    problems = business_problems(invoice(line_items=[bad, invoice().line_items[1]]))
    assert "line 1: quantity 2 x unit_price 12.50 = 25.00, but amount is 26.00" in problems


def triage(**changes: object) -> TriageAnswer:
    base: dict[str, object] = dict(GOOD_TRIAGE)
    return TriageAnswer.model_validate({**base, **changes})


def test_triage_rules() -> None:
    assert triage_problems(triage()) == []
    assert triage_problems(triage(team="logistics")) == [
        "team 'logistics' does not match category 'billing': "
        "category 'billing' belongs to team 'billing'"
    ]
    assert triage_problems(triage(priority="urgent")) == [
        "priority is urgent, so requires_human must be true"
    ]
    assert triage_problems(triage(priority="urgent", requires_human=True)) == []
    assert "summary is empty" in triage_problems(triage(summary="  "))[0]


def test_absurd_amounts_fail_the_schema_not_the_arithmetic() -> None:
    with pytest.raises(ValidationError):
        invoice(total=Decimal("1e300"))
    huge_line = LineItemAnswer(
        description="x", quantity=Decimal("9e14"), unit_price=Decimal("9e14"), amount=Decimal(1)
    )
    problems = business_problems(invoice(line_items=[huge_line]))
    assert any(p.startswith("line 1:") for p in problems)
