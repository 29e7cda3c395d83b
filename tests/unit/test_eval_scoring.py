"""The scoring core of ``sluice eval`` on synthetic rows and labels with hand-worked answers."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from evals.gates import check_gate, parse_gate
from evals.labels import golden_labels, label_row, merge, read_labels, reviewed_labels
from evals.metrics import threshold_for_precision, wilson
from evals.scoring import (
    FieldSpec,
    correct_fields,
    invoice_issues,
    is_correct,
    match_line_items,
    parse_decimal,
    register_fields,
    same,
    specs_for,
)
from evals.summary import evaluate

# --- builders ---

TICKET = {
    "category": "billing",
    "priority": "high",
    "sentiment": "neutral",
    "team": "billing",
    "requires_human": False,
}


def ticket_row(
    event_id: str,
    *,
    confidence: float = 0.9,
    lane: str = "review",
    threshold: float = 0.8,
    usage: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    record = {
        "event_id": event_id,
        "ticket_id": event_id.upper(),
        **TICKET,
        **fields,
        "summary": "a summary",
        "confidence": confidence,
        "agent": {"name": "triage", "version": "1", "model": "m1", "prompt_version": "v1"},
        "route": {"lane": lane, "reason": "", "threshold": threshold},
    }
    return {
        "format": "sluice.replay/1",
        "event_id": event_id,
        "flow": "tickets",
        "candidate": {"model": "m1", "prompt_version": "v1", "base_url": None},
        "lane": lane,
        "record": record,
        "deadletter": None,
        "confidence": confidence,
        "confidence_detail": {"score": confidence},
        "usage": usage,
    }


def dead_row(event_id: str, reason: str = "provider_unavailable") -> dict[str, Any]:
    return {
        "event_id": event_id,
        "flow": "tickets",
        "candidate": {"model": "m1", "prompt_version": "v1"},
        "lane": "deadletter",
        "record": None,
        "deadletter": {"reason": reason, "message": "x"},
        "confidence": None,
        "confidence_detail": None,
        "usage": None,
    }


def ticket_label(event_id: str, **fields: Any) -> dict[str, Any]:
    return label_row(event_id, "tickets", {**TICKET, **fields})


def rejected_label(event_id: str, decided_at: str = "2026-01-01T00:00:00+00:00") -> dict[str, Any]:
    return label_row(
        event_id, "tickets", None, origin="reviewed", verdict="rejected", decided_at=decided_at
    )


def money(tolerance: str | None = None) -> FieldSpec:
    return FieldSpec("x", "money", tolerance=None if tolerance is None else Decimal(tolerance))


# --- field comparison ---


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("853.94", "853.94"),
        ("853,94", "853.94"),  # decimal comma
        ("1.234,50", "1234.50"),  # German grouping
        ("1,234.50", "1234.50"),  # English grouping
        ("EUR 853,94", "853.94"),
        ("CHF 1'234.50", "1234.50"),
        ("1,234", "1234"),  # a lone comma with three digits is grouping...
        ("0,125", "0.125"),  # ...unless the integer part is zero
        ("1.234.567", "1234567"),
        ("-12,5", "-12.5"),
        (12.5, "12.5"),
        (3, "3"),
    ],
)
def test_parse_decimal_reads_printed_numbers(text: Any, expected: str) -> None:
    assert parse_decimal(text) == Decimal(expected)


@pytest.mark.parametrize("text", ["abc", "", "1.2.3,4,5", True, None, [1], "NaN", "1-2"])
def test_parse_decimal_refuses_what_is_not_a_number(text: Any) -> None:
    assert parse_decimal(text) is None


def test_money_compares_comma_and_dot_and_the_tolerance_boundary_is_inclusive() -> None:
    spec = money()
    assert same(spec, "853.94", "853,94")
    assert same(spec, "1234.50", "1.234,50")
    assert same(spec, "10.00", "10")
    assert same(spec, "10.00", "10.01")  # exactly one cent off: within the default 0.01
    assert not same(spec, "10.00", "10.02")
    assert not same(spec, "10.00", "9.989")
    assert same(spec, "0.30", 0.1 + 0.2)  # a float's noise is inside a cent
    strict = money(tolerance="0")
    assert not same(strict, "10.00", "10.01")
    assert same(strict, "10.00", "10.000")
    assert not same(spec, "10.00", "ten")
    assert not same(spec, "10.00", None)


def test_money_tolerance_is_configurable_per_eval() -> None:
    specs = {s.name: s for s in specs_for("invoices", money_tolerance="0.05")}
    assert specs["total"].same("100.00", "100.05")
    assert not specs["total"].same("100.00", "100.06")
    default = {s.name: s for s in specs_for("invoices")}
    assert not default["total"].same("100.00", "100.05")


@pytest.mark.parametrize(
    ("got", "right"),
    [
        ("Lumen Cloud Hosting, Inc.", True),
        ("lumen cloud hosting inc", True),  # case and punctuation
        ("LUMEN   CLOUD HOSTING,INC.", True),  # spacing
        ("Lumen Cloud\u00a0Hosting, Inc.", True),  # a no-break space
        ("Lumen Cloud Hosting", False),  # the legal form is part of the name
        ("Lumen Cloud Hosting, Incorporated", False),  # compared as written
        ("Lumen Cloud Hosting LLC", False),
        ("Lumen Cloud Host, Inc.", False),
    ],
)
def test_vendor_names(got: str, right: bool) -> None:
    assert same(FieldSpec("vendor_name", "key"), "Lumen Cloud Hosting, Inc.", got) is right


def test_vendor_name_legal_forms_and_unicode() -> None:
    spec = FieldSpec("vendor_name", "key")
    gmbh = "Brandt & Kessler Haustechnik GmbH"
    assert same(spec, gmbh, "BRANDT & KESSLER HAUSTECHNIK GMBH")
    assert same(spec, gmbh, "Brandt & Kessler Haustechnik G.m.b.H.")
    assert same(spec, gmbh, "Brandt & Kessler Haustechnik \uff27\uff4d\uff42\uff28")  # fullwidth
    assert not same(spec, gmbh, "Brandt & Kessler Haustechnik AG")
    assert not same(spec, gmbh, "Brandt Kessler Haustechnik GmbH")  # "&" is kept
    assert same(spec, "Van Dijk Koffie Service B.V.", "van dijk koffie service BV")


def test_invoice_numbers_ignore_punctuation_but_not_characters() -> None:
    spec = FieldSpec("invoice_number", "key")
    assert same(spec, "RE-2024-0417", "RE 2024 0417")
    assert same(spec, "HD/2024/0193", "hd-2024-0193")
    assert not same(spec, "RE-2024-0417", "RE-2024-0418")
    assert same(spec, None, None)  # none printed, none read: right
    assert not same(spec, None, "RE-1")
    assert not same(spec, "RE-1", None)


def test_dates_compare_as_dates() -> None:
    spec = FieldSpec("issue_date", "date")
    assert same(spec, "2024-03-12", "2024-03-12")
    assert same(spec, "2024-03-12", "2024-03-12T00:00:00+00:00")
    assert same(spec, "2024-03-12", date(2024, 3, 12))
    assert not same(spec, "2024-03-12", "2024-03-13")
    assert not same(spec, "2024-03-12", "12.03.2024")  # only ISO dates are dates
    assert same(FieldSpec("due_date", "date"), None, None)
    assert not same(FieldSpec("due_date", "date"), None, "2024-03-12")


def test_booleans_and_enums_are_exact() -> None:
    flag, enum, exact = FieldSpec("f", "bool"), FieldSpec("c", "enum"), FieldSpec("e")
    assert same(flag, True, True)
    assert not same(flag, True, 1)
    assert not same(flag, False, "false")
    assert same(enum, "billing", "billing")
    assert not same(enum, "billing", "Billing")
    assert not same(exact, 1, True)
    assert same(exact, {"a": [1]}, {"a": [1]})
    assert same(FieldSpec("t", "text"), "Hello  World", " hello world")


ITEMS = [
    {"description": "Spring cleanup", "quantity": "1", "unit_price": "420.00", "amount": "420.00"},
    {
        "description": "Mulch (cubic yard)",
        "quantity": "6.5",
        "unit_price": "48.00",
        "amount": "312.00",
    },  # fmt: skip
    {"description": "Labor (hours)", "quantity": "7.75", "unit_price": "55.00", "amount": "426.25"},
]


def test_line_items_match_whatever_their_order() -> None:
    m = match_line_items(ITEMS, list(reversed(ITEMS)))
    assert m.pairs == ((0, 2), (1, 1), (2, 0))
    assert (m.precision, m.recall) == (1.0, 1.0)
    assert m.all_right
    assert same(FieldSpec("line_items", "line_items"), ITEMS, list(reversed(ITEMS)))


def test_line_items_missing_extra_and_misread() -> None:
    missing = match_line_items(ITEMS, ITEMS[:2])
    assert (missing.matched, missing.precision, missing.recall) == (2, 1.0, 2 / 3)
    assert not missing.all_right
    extra_item = {"description": "Delivery", "quantity": "1", "unit_price": "9", "amount": "9.00"}
    extra = match_line_items(ITEMS, [*ITEMS, extra_item])
    assert (extra.matched, extra.precision, extra.recall) == (3, 3 / 4, 1.0)
    misread = [dict(ITEMS[0]), {**ITEMS[1], "amount": "321.00", "quantity": "6,5"}, ITEMS[2]]
    m = match_line_items(ITEMS, misread)
    assert m.matched == 3  # same description: the same line, read wrongly
    assert m.field_right == {"description": 3, "quantity": 3, "unit_price": 3, "amount": 2}
    assert not m.all_right
    # similar wording with the same amount is the same line; an unrelated line is not
    reworded = [{**ITEMS[2], "description": "Labour hours", "unit_price": "55"}]
    assert match_line_items(ITEMS[2:], reworded).matched == 1
    loosely = {**ITEMS[0], "description": "Cleanup, spring"}  # similarity 0.48: needs the amount
    assert match_line_items(ITEMS[:1], [loosely]).matched == 1
    assert match_line_items(ITEMS[:1], [{**loosely, "amount": "42.00"}]).matched == 0
    unrelated = [{"description": "Rush fee", "quantity": "1", "unit_price": "420", "amount": "420"}]
    assert match_line_items(ITEMS[:1], unrelated).matched == 0


def test_invoice_issues_come_from_the_records_numbers() -> None:
    printed = {"line_items": ITEMS, "subtotal": "1158.25", "tax": "72.39", "total": "1240.64"}
    assert invoice_issues(printed) == ["total_mismatch"]
    fixed = {**printed, "total": "1230.64"}
    assert invoice_issues(fixed) == []
    assert invoice_issues({**fixed, "subtotal": "1000.00", "total": "1072.39"}) == [
        "subtotal_mismatch"
    ]
    assert invoice_issues({**fixed, "invoice_number": None}) == ["no_invoice_number"]
    assert invoice_issues({**fixed, "invoice_number": "A-1"}) == []


# --- correctness and specs ---


def test_is_correct_uses_only_the_correct_fields() -> None:
    label = ticket_label("e1")
    assert correct_fields("tickets") == ["category", "priority", "team", "requires_human"]
    assert is_correct(ticket_row("e1"), label)
    assert is_correct(ticket_row("e1", sentiment="negative"), label)  # reported, not deciding
    assert not is_correct(ticket_row("e1", category="technical"), label)
    assert not is_correct(ticket_row("e1", requires_human=True), label)
    assert not is_correct(dead_row("e1"), label)
    assert not is_correct(ticket_row("e1"), rejected_label("e1"))
    only_category = label_row("e1", "tickets", {"category": "billing"})
    assert is_correct(ticket_row("e1", priority="low"), only_category)  # unlabelled: not scored


def test_a_users_flow_registers_its_fields_and_an_unknown_flow_compares_exactly() -> None:
    register_fields(
        "test_refunds",
        [FieldSpec("amount", "money"), FieldSpec("reason", "text")],
        correct_fields=["amount"],
    )
    row = {"flow": "test_refunds", "record": {"amount": "10,00", "reason": "Late  delivery"}}
    label = label_row("r1", "test_refunds", {"amount": "10.00", "reason": "late delivery"})
    assert is_correct(row, label)
    assert [s.name for s in specs_for("test_refunds", ["note"])] == ["amount", "reason", "note"]
    with pytest.raises(ValueError, match="not among the specs"):
        register_fields("test_refunds", [FieldSpec("amount")], correct_fields=["reason"])
    unknown = label_row("u1", "test_unknown_flow", {"amount": "10.00", "kind": "a"})
    assert correct_fields("test_unknown_flow", unknown["fields"]) == ["amount", "kind"]
    assert is_correct({"record": {"amount": "10.00", "kind": "a"}}, unknown)
    assert not is_correct({"record": {"amount": "10,00", "kind": "a"}}, unknown)  # exact


# --- labels ---


def test_golden_labels_cover_both_sets_with_every_field() -> None:
    tickets, invoices = golden_labels("tickets"), golden_labels("invoices")
    assert len(tickets) >= 24
    assert len(invoices) >= 12
    for label in tickets:
        assert label["origin"] == "golden"
        assert label["verdict"] is None
        assert set(label["fields"]) >= set(TICKET)
    invoice_fields = {"vendor_name", "invoice_number", "issue_date", "due_date", "currency"}
    invoice_fields |= {"line_items", "subtotal", "tax", "total"}
    for label in invoices:
        assert label["event_id"].startswith("ev-INV-")
        assert set(label["fields"]) >= invoice_fields
    by_id = {label["event_id"]: label["fields"] for label in invoices}
    assert by_id["ev-INV-DOC-07"]["issue"] == "total_mismatch"
    assert by_id["ev-INV-DOC-07"]["total"] == "1240.64"  # as printed, not subtotal + tax
    assert by_id["ev-INV-DOC-01"]["issue"] is None
    for fields in by_id.values():  # every expected issue is one a record can show
        assert "issue" in fields
    assert len({label["event_id"] for label in tickets + invoices}) == len(tickets + invoices)
    with pytest.raises(ValueError, match="no golden set"):
        golden_labels("refunds")


def decision(event_id: str, verdict: str, record: dict[str, Any] | None, at: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "flow": "tickets",
        "reviewer": "ann",
        "verdict": verdict,
        "corrections": {},
        "decided_at": at,
        "record": record,
    }


def test_reviewed_labels_from_decisions() -> None:
    approved = ticket_row("e1", sentiment=None)["record"]
    corrected = ticket_row("e2", category="shipping", team="logistics")["record"]
    rows = reviewed_labels(
        [
            decision("e1", "approve", approved, "2026-01-01T10:00:00+00:00"),
            decision("e2", "correct", corrected, "2026-01-01T11:00:00+00:00"),
            decision("e3", "reject", None, "2026-01-01T12:00:00+00:00"),
            decision("e4", "approve", None, "2026-01-01T12:00:00+00:00"),  # no record: no label
        ]
    )
    assert [(r["event_id"], r["verdict"], r["origin"]) for r in rows] == [
        ("e1", "approved", "reviewed"),
        ("e2", "edited", "reviewed"),
        ("e3", "rejected", "reviewed"),
    ]
    # the record's labelled fields only; a sentiment never produced is not labelled "None"
    assert rows[0]["fields"] == {k: v for k, v in TICKET.items() if k != "sentiment"}
    assert rows[1]["fields"]["category"] == "shipping"
    assert rows[1]["fields"]["team"] == "logistics"
    assert rows[2]["fields"] is None
    invoice: dict[str, Any] = {
        "vendor_name": "V",
        "due_date": None,
        "total": Decimal("1.50"),
        "route": {},
    }
    (inv,) = reviewed_labels([{**decision("d1", "approve", invoice, "t"), "flow": "invoices"}])
    assert inv["fields"] == {"vendor_name": "V", "due_date": None, "total": "1.50"}
    with pytest.raises(ValueError, match="unknown review verdict"):
        reviewed_labels([decision("e5", "maybe", None, "t")])


def test_merge_reviewed_beats_golden_and_the_latest_decision_wins() -> None:
    golden = [ticket_label("e1"), ticket_label("e2"), ticket_label("e3")]
    late = label_row("e1", "tickets", {"category": "shipping"}, origin="reviewed",
                     verdict="edited", decided_at="2026-01-02T00:00:00+00:00")  # fmt: skip
    early = rejected_label("e1", decided_at="2026-01-01T00:00:00+00:00")
    merged = merge(golden, [late, early], [ticket_label("e2", category="other")])
    by_id = {r["event_id"]: r for r in merged}
    assert [r["event_id"] for r in merged] == ["e1", "e2", "e3"]
    assert by_id["e1"]["verdict"] == "edited"  # later decided, though given earlier
    assert by_id["e2"]["fields"]["category"] == "other"  # among golden ones, the later
    assert merge([late], golden)[0]["verdict"] == "edited"  # golden never beats reviewed
    assert merge([early], [late])[0]["verdict"] == "edited"


def test_read_labels_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    rows = [ticket_label("e1"), rejected_label("e2")]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert read_labels(path) == rows
    path.write_text(json.dumps(ticket_label("e1")) + '\n{"event_id": "e2", "flow": "tickets"}\n')
    with pytest.raises(ValueError, match=r"labels.jsonl:2: only a rejected label"):
        read_labels(path)


# --- the summary ---


def test_confusion_matrix_and_per_class_figures() -> None:
    expected = ["billing", "billing", "billing", "technical", "technical", "account"]
    predicted = ["billing", "billing", "technical", "technical", "billing", "account"]
    rows = [ticket_row(f"e{i}", category=p) for i, p in enumerate(predicted)]
    rows[0]["record"]["team"] = None  # a team not produced is a class of its own
    labels = [ticket_label(f"e{i}", category=e) for i, e in enumerate(expected)]
    s = evaluate(rows, labels, flow="tickets")
    category = s["classes"]["category"]
    assert category["labels"] == ["account", "billing", "other", "shipping", "technical"]
    assert category["confusion"] == [
        [1, 0, 0, 0, 0],
        [0, 2, 0, 0, 1],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 1, 0, 0, 1],
    ]
    per_class = category["per_class"]
    assert per_class["billing"] == {"precision": 2 / 3, "recall": 2 / 3, "support": 3}
    assert per_class["technical"] == {"precision": 0.5, "recall": 0.5, "support": 2}
    assert per_class["account"] == {"precision": 1.0, "recall": 1.0, "support": 1}
    assert per_class["other"] == {"precision": None, "recall": None, "support": 0}
    assert s["fields"]["category"]["correct"] == 4
    assert s["fields"]["category"]["interval"] == list(wilson(4, 6))
    team = s["classes"]["team"]
    assert team["labels"][-1] == "(none)"
    assert team["confusion"][team["labels"].index("billing")][-1] == 1
    assert set(s["classes"]) == {"category", "priority", "sentiment", "team"}


CONFIDENCES = [0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.3]
RIGHT = [True, True, False, True, True, False, True, False]


def lane_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows = [
        ticket_row(f"e{i}", confidence=c, category="billing" if ok else "technical")
        for i, (c, ok) in enumerate(zip(CONFIDENCES, RIGHT, strict=True))
    ]
    rows.append(dead_row("dl"))  # labelled but no answer: not in the lanes
    labels = [ticket_label(f"e{i}") for i in range(len(CONFIDENCES))] + [ticket_label("dl")]
    return rows, labels


def test_lanes_at_the_route_threshold() -> None:
    rows, labels = lane_rows()
    lanes = evaluate(rows, labels, flow="tickets", target_precision=0.5)["lanes"]
    # threshold 0.8 from record.route: 0.95, 0.9, 0.85, 0.8 go to auto, 3 of them right
    assert lanes["threshold"] == 0.8
    assert (lanes["n"], lanes["auto"], lanes["auto_correct"]) == (8, 4, 3)
    assert lanes["auto_rate"] == 0.5
    assert lanes["auto_precision"] == 0.75
    assert lanes["auto_precision_interval"] == list(wilson(3, 4))
    assert lanes["target_precision"] == 0.5
    assert lanes["for_target"] is None  # no lower bound reaches 0.5 on eight items
    curve = {p["threshold"]: p for p in lanes["curve"]}
    assert sorted(curve) == sorted(CONFIDENCES)
    assert curve[0.9] == {
        "threshold": 0.9,
        "auto": 2,
        "auto_rate": 0.25,
        "auto_precision": 1.0,
        "lower": wilson(2, 2)[0],
    }
    given = evaluate(rows, labels, flow="tickets", threshold=0.6)["lanes"]
    assert (given["threshold"], given["auto"], given["auto_correct"]) == (0.6, 6, 4)


def test_threshold_for_target_precision_and_curve_cap() -> None:
    rows = [ticket_row(f"r{i}", confidence=0.99) for i in range(30)]
    rows += [ticket_row(f"w{i}", confidence=0.5, category="other") for i in range(10)]
    labels = [ticket_label(r["event_id"]) for r in rows]
    lanes = evaluate(rows, labels, flow="tickets", target_precision=0.85)["lanes"]
    assert lanes["for_target"] == {
        "threshold": 0.99,
        "auto": 30,
        "auto_rate": 0.75,
        "auto_precision": 1.0,
        "auto_precision_interval": list(wilson(30, 30)),
    }
    confidences = [0.99] * 30 + [0.5] * 10
    best = threshold_for_precision(confidences, [True] * 30 + [False] * 10, 0.85)
    assert best is not None
    assert best.threshold == lanes["for_target"]["threshold"]
    # 30 of 30 right proves only >= 88.6 %: 0.95 is out of reach
    assert evaluate(rows, labels, flow="tickets")["lanes"]["for_target"] is None
    many = [ticket_row(f"m{i}", confidence=i / 119) for i in range(120)]
    curve = evaluate(many, [ticket_label(r["event_id"]) for r in many], flow="tickets")["lanes"][
        "curve"
    ]
    assert len(curve) == 50
    assert (curve[0]["threshold"], curve[-1]["threshold"]) == (0.0, 1.0)


def test_rejected_reviews_are_scorable_as_incorrect() -> None:
    rows = [ticket_row("a", confidence=0.9), ticket_row("b", confidence=0.95)]
    labels = [ticket_label("a"), ticket_label("b"), rejected_label("b")]
    s = evaluate(rows, labels, flow="tickets")
    assert s["lanes"]["n"] == 2
    assert (s["lanes"]["auto"], s["lanes"]["auto_correct"]) == (2, 1)
    assert s["calibration"]["n"] == 2
    assert s["calibration"]["positives"] == 1
    assert s["fields"]["category"]["n"] == 1  # a rejection says nothing about one field


def test_duplicates_missing_labels_and_unlabelled_rows_are_counted() -> None:
    rows = [
        ticket_row("e1", category="technical"),
        ticket_row("e2"),
        ticket_row("e1"),  # replayed again: the last row counts
        ticket_row("unlabelled"),
        dead_row("e3", reason="model_output_invalid"),
    ]
    labels = [ticket_label("e1"), ticket_label("e2"), ticket_label("e3"), ticket_label("gone")]
    s = evaluate(rows, labels, flow="tickets", file="run.jsonl")
    assert s["format"] == "sluice.eval/1"
    assert s["run"] == {
        "file": "run.jsonl",
        "events": 4,
        "labelled": 3,
        "models": ["m1"],
        "prompt_versions": ["v1"],
        "duplicates": 1,
        "missing": 1,
    }
    assert s["fields"]["category"] == {
        "accuracy": 1.0,
        "correct": 2,
        "n": 2,
        "interval": list(wilson(2, 2)),
    }
    assert s["schema_valid"] == {"rate": 0.75, "valid": 3, "n": 4}
    assert s["lanes_seen"] == {"auto": 0, "review": 3, "deadletter": 1}
    with pytest.raises(ValueError, match="invoices"):
        evaluate([{**ticket_row("x"), "flow": "invoices"}], [], flow="tickets")


def test_every_dead_letter_is_schema_invalid() -> None:
    rows = [dead_row("a", "provider_unavailable"), dead_row("b", "poison_input"), ticket_row("c")]
    assert evaluate(rows, [], flow="tickets")["schema_valid"] == {"rate": 1 / 3, "valid": 1, "n": 3}


def test_cost_per_event() -> None:
    def usage(latency: int, cost: float | None) -> dict[str, Any]:
        return {"attempts": 2, "prompt_tokens": 100, "completion_tokens": 20,
                "latency_ms": latency, "cost_usd": cost}  # fmt: skip

    rows = [ticket_row(f"e{i}", usage=usage(100 * (i + 1), 0.002)) for i in range(4)]
    rows.append(dead_row("e9"))  # no model call: no tokens, no cost
    cost = evaluate(rows, [], flow="tickets")["cost"]
    assert cost == {
        "events": 5,
        "tokens_per_event": 4 * 120 / 5,
        "cost_usd_per_event": pytest.approx(4 * 0.002 / 5),
        "latency_ms_p50": 200,  # nearest rank over 100, 200, 300, 400
        "latency_ms_p95": 400,
        "attempts_per_event": 8 / 5,
    }
    rows[0]["usage"]["cost_usd"] = None  # one call without a price: the figure is unknown
    assert evaluate(rows, [], flow="tickets")["cost"]["cost_usd_per_event"] is None
    assert evaluate([dead_row("x")], [], flow="tickets")["cost"]["tokens_per_event"] is None


def test_calibration_raw_and_calibrated() -> None:
    rows, labels = lane_rows()
    seen: list[Any] = []

    def calibrate(pairs: list[tuple[dict[str, Any], bool]], folds: int) -> Any:
        seen.append((pairs, folds))
        info = {"method": "isotonic", "folds": folds, "calibration": "v1.calibration.json"}
        return [0.9 if ok else 0.1 for _, ok in pairs], info

    cal = evaluate(rows, labels, flow="tickets", calibration=calibrate, folds=3)["calibration"]
    assert (cal["n"], cal["positives"]) == (8, 5)
    # right 0.95, 0.9, 0.8, 0.7, 0.5 outrank wrong 0.85, 0.6, 0.3 in 3 + 3 + 2 + 2 + 1 of 15 pairs
    assert cal["raw"]["auroc"] == pytest.approx(11 / 15)
    assert len(cal["raw"]["bins"]) == 10
    assert seen[0][1] == 3
    assert seen[0][0][0] == ({"score": 0.95}, True)
    calibrated = cal["calibrated"]
    assert calibrated["auroc"] == 1.0
    assert calibrated["ece"] == pytest.approx(0.1)
    assert calibrated["method"] == "isotonic"
    assert calibrated["folds"] == 3
    assert calibrated["calibration"] == "v1.calibration.json"
    assert evaluate(rows, labels, flow="tickets")["calibration"]["calibrated"] is None

    def cannot_fit(pairs: Any, folds: int) -> Any:
        raise ValueError("one class")

    assert (
        evaluate(rows, labels, flow="tickets", calibration=cannot_fit)["calibration"]["calibrated"]
        is None
    )


def baseline_case() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    labels = [ticket_label(f"e{i}") for i in range(4)]
    baseline = [
        ticket_row("e0", lane="auto", confidence=0.9),
        ticket_row("e1", lane="review", confidence=0.7),
        ticket_row("e2", lane="review", priority="low", confidence=0.9),
        ticket_row("e3", lane="auto", confidence=0.9),
        ticket_row("only-baseline"),
    ]
    candidate = [
        ticket_row("e0", lane="auto", confidence=0.9),
        ticket_row("e1", lane="auto", confidence=0.85),  # now auto, and right
        ticket_row("e2", lane="review", confidence=0.7),  # priority fixed
        ticket_row("e3", lane="review", category="technical", confidence=0.6),  # flipped
    ]
    return labels, baseline, candidate


def test_baseline_deltas_regressions_flips_and_lane_changes() -> None:
    labels, baseline, candidate = baseline_case()
    b = evaluate(candidate, labels, flow="tickets", baseline=baseline, baseline_file="b.jsonl")[
        "baseline"
    ]
    assert (b["file"], b["matched"]) == ("b.jsonl", 4)
    assert b["fields"]["category"] == {"baseline": 1.0, "candidate": 0.75, "delta": -0.25}
    assert b["fields"]["priority"] == {"baseline": 0.75, "candidate": 1.0, "delta": 0.25}
    assert b["fields"]["team"]["delta"] == 0.0
    assert b["regressions"] == [
        {"field": "category", "baseline": 1.0, "candidate": 0.75, "delta": -0.25}
    ]
    assert b["flipped"] == [
        {"event_id": "e3", "field": "category", "baseline": "billing",
         "candidate": "technical", "expected": "billing"},
    ]  # fmt: skip
    assert b["lane_changes"] == [
        {"event_id": "e1", "baseline": "review", "candidate": "auto", "correct": True},
        {"event_id": "e3", "baseline": "auto", "candidate": "review", "correct": False},
    ]
    assert b["schema_valid"] == {"baseline": 1.0, "candidate": 1.0, "delta": 0.0}
    # at the route threshold 0.8: baseline auto = e0, e2 (wrong priority), e3; candidate e0, e1
    assert b["auto_precision"] == {
        "baseline": 2 / 3,
        "candidate": 1.0,
        "delta": pytest.approx(1 / 3),
    }
    tolerant = evaluate(candidate, labels, flow="tickets", baseline=baseline,
                        regression_tolerance=0.25)["baseline"]  # fmt: skip
    assert tolerant["regressions"] == []  # a drop of exactly the tolerance is not a regression
    dead = evaluate([*candidate[:3], dead_row("e3")], labels, flow="tickets", baseline=baseline)
    flips = {(f["event_id"], f["field"]) for f in dead["baseline"]["flipped"]}
    assert ("e3", "category") in flips
    assert ("e3", "priority") in flips
    assert all(f["candidate"] is None for f in dead["baseline"]["flipped"])
    assert evaluate(candidate, labels, flow="tickets")["baseline"] is None


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("auto_precision>=0.95", "auto_precision >= 0.95"),
        ("  schema_valid >= 0.9 ", "schema_valid >= 0.9"),
        ("field:category>=0.8", "field:category >= 0.8"),
        ("ece<=0.1", "ece <= 0.1"),
        ("auroc>0.6", "auroc > 0.6"),
        ("regressions==0", "regressions == 0"),
        ("no_regression:category", "no_regression:category"),
    ],
)
def test_parse_gate(text: str, name: str) -> None:
    assert parse_gate(text).name == name


@pytest.mark.parametrize(
    "text",
    ["auto_precison>=0.95", "field>=0.8", "ece", "ece=<0.1", "no_regression", "ece<=high", ""],
)
def test_malformed_gates_are_errors(text: str) -> None:
    with pytest.raises(ValueError, match="gate"):
        parse_gate(text)


def test_gates_pass_fail_and_an_unmeasured_metric_fails() -> None:
    labels, baseline, candidate = baseline_case()
    gates = [
        "auto_precision>=0.95",
        "schema_valid>=0.9",
        "field:category>=0.8",
        "field:priority>=0.8",
        "regressions==0",
        "no_regression:priority",
        "no_regression:category",
        "auroc>=0.5",
        "calibrated_ece<=0.1",  # no calibration given: not measured
        "field:nonexistent>=0.5",
    ]
    s = evaluate(candidate, labels, flow="tickets", baseline=baseline, gates=gates)
    results = {g["name"]: (g["passed"], g["detail"]) for g in s["gates"]}
    assert results == {
        "auto_precision >= 0.95": (True, "1.00 (2 of 2)"),
        "schema_valid >= 0.9": (True, "1.00 (4 of 4)"),
        "field:category >= 0.8": (False, "0.75 (3 of 4)"),
        "field:priority >= 0.8": (True, "1.00 (4 of 4)"),
        "regressions == 0": (False, "1 (category)"),
        "no_regression:priority": (True, "0.75 -> 1.00 (+0.25)"),
        "no_regression:category": (False, "1.00 -> 0.75 (-0.25)"),
        "auroc >= 0.5": (True, "1.00"),
        "calibrated_ece <= 0.1": (False, "not measured"),
        "field:nonexistent >= 0.5": (False, "not measured"),
    }
    assert s["passed"] is False
    alone = evaluate(
        candidate, labels, flow="tickets", gates=["regressions==0", "schema_valid>=0.9"]
    )
    assert [g["passed"] for g in alone["gates"]] == [False, True]  # no baseline: not measured
    assert alone["gates"][0]["detail"] == "not measured"
    everything_right = evaluate(
        [ticket_row("e0")], [ticket_label("e0")], flow="tickets", gates=["auroc>=0.5"]
    )
    assert everything_right["gates"][0]["detail"] == "not measured"  # AUROC needs both classes
    nothing = evaluate([], [], flow="tickets", gates=["auto_precision>=0.9"])
    assert nothing["passed"] is False
    assert evaluate(candidate, labels, flow="tickets")["gates"] == []
    assert evaluate(candidate, labels, flow="tickets")["passed"] is True


def test_a_gate_never_rounds_its_way_to_a_contradiction() -> None:
    summary = {"lanes": {"auto_precision": 0.949, "auto_correct": 949, "auto": 1000}}
    result = check_gate(summary, parse_gate("auto_precision>=0.95"))
    assert result == {"name": "auto_precision >= 0.95", "passed": False,
                      "detail": "0.9490 (949 of 1000)"}  # fmt: skip


def test_invoices_end_to_end_on_the_golden_set() -> None:
    labels = golden_labels("invoices")
    rows = []
    for label in labels:
        record = {k: v for k, v in label["fields"].items() if k != "issue"}
        record["route"] = {"lane": "review", "reason": "", "threshold": 0.8}
        rows.append({"event_id": label["event_id"], "flow": "invoices", "lane": "review",
                     "record": record, "confidence": 0.5})  # fmt: skip
    first = rows[0]["record"]
    first["vendor_name"] = first["vendor_name"].upper()
    first["total"] = first["total"].replace(".", ",")
    first["line_items"] = list(reversed(first["line_items"]))
    s = evaluate(rows, labels, flow="invoices")
    assert s["correct_fields"] == [
        "vendor_name",
        "invoice_number",
        "issue_date",
        "currency",
        "total",
    ]
    assert all(f["accuracy"] == 1.0 for f in s["fields"].values())
    assert s["fields"]["line_items"]["items"]["f1"] == 1.0
    assert list(s["classes"]) == ["currency"]
    fixed = next(r for r in rows if r["event_id"] == "ev-INV-DOC-07")["record"]
    fixed["total"] = "1230.64"  # "corrected" the printed total: a misreading
    s = evaluate(rows, labels, flow="invoices")
    assert s["fields"]["total"]["correct"] == len(labels) - 1
    assert s["fields"]["issue"]["correct"] == len(labels) - 1  # it no longer shows the mismatch
    assert s["calibration"]["positives"] == len(labels) - 1
