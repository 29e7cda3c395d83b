"""A user's record type built on the shared envelope has no drift against its generated schema."""

from __future__ import annotations

import json

import fastavro

from schemas.contract import drift
from schemas.envelope import ENVELOPE_FIELDS, ResultRecord, result_schema
from schemas.records import TicketTriaged


class Scored(ResultRecord):
    item_id: str
    score: float


FIELDS = [
    {"name": "item_id", "type": "string", "doc": "The item."},
    {"name": "score", "type": "double", "doc": "Its score."},
]


def test_generated_schema_matches_a_result_record_subclass() -> None:
    schema = result_schema("Scored", "com.example", FIELDS, doc="A scored item.")
    fastavro.parse_schema(schema)
    assert drift(Scored, schema) == []
    assert [f["name"] for f in schema["fields"]] == [*ENVELOPE_FIELDS, "item_id", "score"]


def test_the_envelope_is_what_sluice_records_carry() -> None:
    assert set(ENVELOPE_FIELDS) <= set(TicketTriaged.model_fields)
    assert set(ResultRecord.model_fields) == set(ENVELOPE_FIELDS)


def test_the_custom_flow_test_schema_has_no_drift() -> None:
    from tests.integration.test_custom_flow import NOTES, NoteScored

    assert NOTES.record_avsc is not None
    assert drift(NoteScored, json.loads(NOTES.record_avsc.read_text())) == []
