"""The catalogue: one place that names the record types; codec and contract checks follow it."""

from __future__ import annotations

import ast
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest
from pydantic import BaseModel

from schemas import catalogue, codec
from schemas.codec import SINGLE_OBJECT_MAGIC, fingerprint_bytes
from schemas.contract import incompatibilities
from schemas.records import DeadLetter, TicketTriaged

SCHEMAS = Path(catalogue.__file__).parent


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_codec_and_contract_do_not_import_each_other() -> None:
    codec_imports = imported_modules(SCHEMAS / "codec.py")
    contract_imports = imported_modules(SCHEMAS / "contract.py")
    assert not {"schemas.contract", "schemas.codec"} & codec_imports
    assert not {"schemas.codec", "schemas.contract"} & contract_imports
    assert "schemas.catalogue" in codec_imports
    assert "schemas.catalogue" in contract_imports
    catalogue_imports = imported_modules(SCHEMAS / "catalogue.py")
    assert not {"schemas.codec", "schemas.contract"} & catalogue_imports


def test_sluice_records_are_registered() -> None:
    names = [e.filename for e in catalogue.entries()]
    assert names == [
        "ticket_triaged.avsc",
        "invoice_extracted.avsc",
        "review_decision.avsc",
        "tool_effect.avsc",
        "dead_letter.avsc",
    ]
    assert catalogue.entry(DeadLetter).released()[0][0] == 1
    assert [v for v, _ in catalogue.entry(DeadLetter).released()] == sorted(
        v for v, _ in catalogue.entry(DeadLetter).released()
    )


# -- a record type of the user's own -----------------------------------------------------------


class RefundDecided(BaseModel):
    refund_id: str
    approved: bool
    note: str | None = None


V1: dict[str, Any] = {
    "type": "record",
    "name": "RefundDecided",
    "namespace": "com.example.v1",
    "doc": "A refund decision.",
    "fields": [
        {"name": "refund_id", "type": "string", "doc": "Which refund."},
        {"name": "approved", "type": "boolean", "doc": "Whether it was approved."},
    ],
}
V2: dict[str, Any] = {
    **V1,
    "fields": [
        *V1["fields"],
        {"name": "note", "type": ["null", "string"], "default": None, "doc": "Why, if said."},
    ],
}


@pytest.fixture
def refund_avsc(tmp_path: Path) -> Iterator[Path]:
    avsc = tmp_path / "avro" / "refund_decided.avsc"
    (tmp_path / "avro" / "released").mkdir(parents=True)
    avsc.write_text(json.dumps(V2))
    (tmp_path / "avro" / "released" / "refund_decided.v1.avsc").write_text(json.dumps(V1))
    (tmp_path / "avro" / "released" / "refund_decided.v2.avsc").write_text(json.dumps(V2))
    try:
        yield avsc
    finally:
        catalogue.unregister(RefundDecided)


def test_one_register_call_adds_a_record_type(refund_avsc: Path) -> None:
    before = catalogue.generation()
    entry = catalogue.register(RefundDecided, refund_avsc)
    assert catalogue.generation() > before
    assert catalogue.models()[-1] is RefundDecided
    assert [v for v, _ in entry.released()] == [1, 2]  # found in released/ beside the .avsc

    record = RefundDecided(refund_id="r1", approved=True, note="duplicate charge")
    data = codec.encode(record)
    assert data[2:10] == codec.fingerprint_of(RefundDecided)
    assert codec.decode_as(data, RefundDecided) == record
    assert incompatibilities() == []  # drift and evolution are checked for it too

    # records written with a released version resolve to the current model
    v1 = fastavro.parse_schema(V1)
    body = io.BytesIO()
    fastavro.schemaless_writer(body, v1, {"refund_id": "r0", "approved": False})
    old = SINGLE_OBJECT_MAGIC + fingerprint_bytes(v1) + body.getvalue()
    assert codec.decode(old) == RefundDecided(refund_id="r0", approved=False)

    catalogue.unregister(RefundDecided)
    with pytest.raises(KeyError, match="RefundDecided is not a record type"):
        codec.encode(record)


def test_register_is_idempotent_and_refuses_clashes(refund_avsc: Path, tmp_path: Path) -> None:
    first = catalogue.register(RefundDecided, refund_avsc)
    assert catalogue.register(RefundDecided, str(refund_avsc)) is first
    count = len(catalogue.models())

    elsewhere = tmp_path / "other.avsc"
    elsewhere.write_text(json.dumps(V2))
    with pytest.raises(ValueError, match="already registered"):
        catalogue.register(RefundDecided, elsewhere)

    class Impostor(BaseModel):
        refund_id: str

    with pytest.raises(ValueError, match="already uses the Avro name com.example.v1.RefundDecided"):
        catalogue.register(Impostor, elsewhere)
    enum = tmp_path / "enum.avsc"
    enum.write_text(json.dumps({"type": "enum", "name": "E", "symbols": ["A"]}))
    with pytest.raises(ValueError, match="not an Avro record schema"):
        catalogue.register(Impostor, enum)
    assert len(catalogue.models()) == count


def test_drift_of_a_registered_type_is_reported(refund_avsc: Path) -> None:
    class Drifted(BaseModel):
        refund_id: str

    bad = refund_avsc.with_name("drifted.avsc")
    bad.write_text(json.dumps({**V1, "name": "Drifted"}))
    catalogue.register(Drifted, bad)
    try:
        problems = incompatibilities()
    finally:
        catalogue.unregister(Drifted)
    assert any(p.startswith("drifted.avsc: Drifted: fields") for p in problems), problems
    assert any(p.startswith("drifted.avsc: no released version") for p in problems), problems
    assert TicketTriaged in catalogue.models()
