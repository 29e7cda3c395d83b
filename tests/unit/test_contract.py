"""Contracts can't drift; a breaking schema change fails here and in `sluice schemas check`."""

import copy
from typing import Any

import pytest

from schemas import catalogue, codec
from schemas.catalogue import load_schema
from schemas.contract import drift, incompatibilities, incompatible_record
from schemas.records import DeadLetter, InvoiceExtracted, TicketTriaged
from tests.records import dead_letter_v1_bytes


def test_repository_contracts_are_clean() -> None:
    assert incompatibilities() == []


@pytest.mark.parametrize("model", catalogue.models())
def test_every_model_matches_its_avsc(model: type) -> None:
    assert drift(model, catalogue.entry(model).schema()) == []


def field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def _retype(name: str, new: Any):  # type: ignore[no-untyped-def]
    def mutate(s: dict[str, Any]) -> None:
        field(s, name)["type"] = new

    return mutate


DRIFTS = [
    ("summary", _retype("summary", "bytes"), "summary: str vs Avro 'bytes'"),
    ("confidence", _retype("confidence", "float"), "confidence: float vs Avro 'float'"),
    ("optional", _retype("summary", ["null", "string"]), "not optional"),
    ("enum", lambda s: field(s, "category")["type"]["symbols"].pop(), "category: Literal"),
    ("rename", lambda s: field(s, "summary").update(name="summary2"), "fields ["),
    ("drop", lambda s: s["fields"].pop(), "fields ["),
    ("nested", lambda s: field(s, "usage")["type"]["fields"].pop(), "usage.Usage: fields"),
    ("timestamp", _retype("received_at", "long"), "received_at: datetime"),
    ("doc", lambda s: field(s, "summary").pop("doc"), "summary: Avro field has no doc"),
]


@pytest.mark.parametrize(("case", "mutate", "expected"), DRIFTS, ids=[d[0] for d in DRIFTS])
def test_drift_is_reported(case: str, mutate, expected: str) -> None:  # type: ignore[no-untyped-def]
    schema = copy.deepcopy(load_schema("ticket_triaged.avsc"))
    mutate(schema)
    problems = drift(TicketTriaged, schema)
    assert any(expected in p for p in problems), problems


def test_decimal_scale_drift_is_reported() -> None:
    schema = copy.deepcopy(load_schema("invoice_extracted.avsc"))
    field(schema, "total")["type"]["scale"] = 4
    assert drift(InvoiceExtracted, schema) == ["total: decimal(18,2) vs Avro decimal(18,4)"]


def _add(f: dict[str, Any]):  # type: ignore[no-untyped-def]
    return lambda s: s["fields"].append(f)


EVOLUTIONS = [
    ("add with default", _add({"name": "x", "type": "int", "default": 0}), []),
    ("add without default", _add({"name": "x", "type": "int"}), ["x: new field without a default"]),
    ("promote int to long", _retype("attempts", "long"), []),
    ("change type", _retype("attempts", "string"), ["attempts: type changed int -> string"]),
    ("remove with default", lambda s: s["fields"].remove(field(s, "original_key")), []),
    ("rename record", lambda s: s.update(name="DeadLetter2"), ["record renamed"]),
    (
        "drop enum symbol",
        lambda s: field(s, "reason")["type"].update(symbols=["poison_input", "other"]),
        [],
    ),  # the enum has a default: old symbols map to it
]


@pytest.mark.parametrize(("case", "mutate", "expected"), EVOLUTIONS, ids=[e[0] for e in EVOLUTIONS])
def test_backward_compatibility_rule(case: str, mutate, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    old = load_schema("dead_letter.avsc")
    new = copy.deepcopy(old)
    mutate(new)
    problems = incompatible_record(new, old)
    assert [p for p in problems if any(e in p for e in expected)] == problems
    assert len(problems) == len(expected)


def test_removing_an_enum_symbol_without_default_breaks() -> None:
    old = load_schema("ticket_triaged.avsc")
    new = copy.deepcopy(old)
    route = field(new, "route")["type"]
    field(route, "lane")["type"]["symbols"] = ["auto", "review"]
    assert incompatible_record(new, old) == [
        "route.lane: enum lost symbols ['deadletter'] and has no default"
    ]


def test_record_written_with_released_v1_reads_as_current() -> None:
    """Old writer → new reader: DeadLetter v1 had no `retriable`; it decodes with the default."""
    data = dead_letter_v1_bytes()
    assert data[2:10] != codec.fingerprint_of(DeadLetter)  # really an older version
    record = codec.decode_as(data, DeadLetter)
    assert record.retriable is False
    assert record.event_id == "old"
    assert record.original_value == b"x"
