"""Avro codec: pydantic record ⇄ Avro single-object encoding.

Single-object encoding (``C3 01`` + 8-byte CRC-64-AVRO fingerprint + body) names its schema in the
header, so a consumer in any language can decode a record without a registry. Schemas are parsed and
fingerprinted once per process.
"""

from __future__ import annotations

import io
import json
from functools import cache
from importlib import resources
from typing import Any, TypeVar

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form
from pydantic import BaseModel

from schemas.errors import CorruptRecord, UnknownSchema
from schemas.records import DeadLetter, TicketTriaged

MAGIC = b"\xc3\x01"
HEADER_LEN = len(MAGIC) + 8

#: Which ``.avsc`` file is the contract of which model.
SCHEMA_FILES: dict[type[BaseModel], str] = {
    TicketTriaged: "ticket_triaged.avsc",
    DeadLetter: "dead_letter.avsc",
}

RecordT = TypeVar("RecordT", bound=BaseModel)


def load_schema(filename: str) -> dict[str, Any]:
    """The raw JSON of one schema file shipped in ``schemas/avro``."""
    text = resources.files("schemas").joinpath("avro", filename).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


class _Parsed:
    def __init__(self, model: type[BaseModel], filename: str) -> None:
        self.model = model
        self.schema = fastavro.parse_schema(load_schema(filename))
        self.fingerprint = bytes.fromhex(
            fingerprint(to_parsing_canonical_form(self.schema), "CRC-64-AVRO")
        )


@cache
def _registry() -> tuple[dict[type[BaseModel], _Parsed], dict[bytes, _Parsed]]:
    by_model = {model: _Parsed(model, name) for model, name in SCHEMA_FILES.items()}
    by_fp = {p.fingerprint: p for p in by_model.values()}
    return by_model, by_fp


def fingerprint_of(model: type[BaseModel]) -> bytes:
    """The 8-byte CRC-64-AVRO fingerprint that heads every record of ``model``."""
    return _registry()[0][model].fingerprint


def encode(record: BaseModel) -> bytes:
    """Encode a record in Avro single-object encoding."""
    parsed = _registry()[0][type(record)]
    buf = io.BytesIO()
    buf.write(MAGIC)
    buf.write(parsed.fingerprint)
    fastavro.schemaless_writer(buf, parsed.schema, record.model_dump(mode="python"))
    return buf.getvalue()


def decode(data: bytes) -> BaseModel:
    """Decode any known record, picking the schema by the fingerprint in its header."""
    if len(data) < HEADER_LEN or data[:2] != MAGIC:
        raise CorruptRecord(f"not Avro single-object encoding (first bytes {data[:2].hex()!r})")
    parsed = _registry()[1].get(data[2:HEADER_LEN])
    if parsed is None:
        raise UnknownSchema(f"no schema with fingerprint {data[2:HEADER_LEN].hex()}")
    body = io.BytesIO(data[HEADER_LEN:])
    try:
        values = fastavro.schemaless_reader(body, parsed.schema, None)
    except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, ...
        raise CorruptRecord(f"{parsed.model.__name__} body does not parse: {exc!r}") from exc
    if body.tell() != len(data) - HEADER_LEN:
        raise CorruptRecord(f"{parsed.model.__name__} body has trailing bytes")
    return parsed.model.model_validate(values)


def decode_as(data: bytes, model: type[RecordT]) -> RecordT:
    """Decode a record that must be of ``model``."""
    record = decode(data)
    if not isinstance(record, model):
        raise UnknownSchema(f"expected {model.__name__}, got {type(record).__name__}")
    return record
