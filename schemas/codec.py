"""Avro codec: pydantic record ⇄ bytes, in one of two wire formats.

- **Single-object encoding** (default): ``C3 01`` + the schema's 8-byte CRC-64-AVRO fingerprint +
  the Avro body. Self-describing with no registry: any Avro library decodes it with our ``.avsc``.
- **Confluent framing** (with a schema registry): ``00`` + 4-byte big-endian schema id + body, the
  format of Confluent's serializers, so Java/Go/… consumers with a registry read it directly.

Decoding accepts both, whatever the codec writes. Records written with an older released schema
version are resolved to the current schema (Avro schema resolution), so consumers can upgrade
before or after producers. Schemas are parsed and fingerprinted once per process.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, TypeVar

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form
from pydantic import BaseModel

from schemas.errors import CorruptRecord, UnknownSchema
from schemas.records import (
    DeadLetter,
    InvoiceExtracted,
    ReviewDecision,
    TicketTriaged,
    ToolEffect,
)
from schemas.registry import RegistryClient

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
SINGLE_OBJECT_HEADER = 10
CONFLUENT_MAGIC = b"\x00"
CONFLUENT_HEADER = 5

#: Which ``.avsc`` file is the contract of which model.
SCHEMA_FILES: dict[type[BaseModel], str] = {
    TicketTriaged: "ticket_triaged.avsc",
    InvoiceExtracted: "invoice_extracted.avsc",
    ReviewDecision: "review_decision.avsc",
    ToolEffect: "tool_effect.avsc",
    DeadLetter: "dead_letter.avsc",
}

RecordT = TypeVar("RecordT", bound=BaseModel)


def load_schema(filename: str, folder: str = "avro") -> dict[str, Any]:
    """The raw JSON of one schema file shipped in ``schemas/avro``."""
    text = resources.files("schemas").joinpath(*folder.split("/"), filename).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def full_name(schema: dict[str, Any]) -> str:
    return f"{schema['namespace']}.{schema['name']}" if "namespace" in schema else schema["name"]


def fingerprint_bytes(parsed: Any) -> bytes:
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


@dataclass(frozen=True)
class Contract:
    """One model, its current schema, and a writer schema it can read (current or released)."""

    model: type[BaseModel]
    reader: Any  # parsed current schema
    writer: Any  # parsed schema the bytes were written with
    raw: dict[str, Any]  # unparsed current schema, for the registry
    header: bytes  # single-object header of the current schema, computed once


@cache
def contracts() -> tuple[dict[type[BaseModel], Contract], dict[bytes, Contract]]:
    """Current contract per model, and every known writer fingerprint (current and released)."""
    from schemas.contract import released_versions

    released = released_versions()
    by_model, by_fp = {}, {}
    for model, filename in SCHEMA_FILES.items():
        raw = load_schema(filename)
        reader = fastavro.parse_schema(raw)
        current = Contract(
            model, reader, reader, raw, SINGLE_OBJECT_MAGIC + fingerprint_bytes(reader)
        )
        by_model[model] = current
        for _, old in released.get(filename[: -len(".avsc")], []):
            writer = fastavro.parse_schema(old)
            by_fp[fingerprint_bytes(writer)] = Contract(model, reader, writer, raw, current.header)
        by_fp[fingerprint_bytes(reader)] = current
    return by_model, by_fp


def fingerprint_of(model: type[BaseModel]) -> bytes:
    """The 8-byte CRC-64-AVRO fingerprint that heads every single-object record of ``model``."""
    return contracts()[0][model].header[2:]


def _body(record: BaseModel, contract: Contract) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, contract.reader, record.model_dump(mode="python"))
    return buf.getvalue()


def _read(data: bytes, start: int, contract: Contract) -> BaseModel:
    body = io.BytesIO(data[start:])
    name = contract.model.__name__
    try:
        values = fastavro.schemaless_reader(body, contract.writer, contract.reader)
    except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, ...
        raise CorruptRecord(f"{name} body does not parse: {exc!r}") from exc
    if body.tell() != len(data) - start:
        raise CorruptRecord(f"{name} body has {len(data) - start - body.tell()} trailing bytes")
    return contract.model.model_validate(values)


class Codec:
    """Encodes in one wire format (Confluent framing when given a registry) and decodes both."""

    def __init__(self, registry: RegistryClient | None = None) -> None:
        self.registry = registry
        self._ids: dict[type[BaseModel], int] = {}
        self._by_id: dict[int, Contract] = {}  # registry ids are immutable: cache forever
        self._by_name = {full_name(c.raw): c for c in contracts()[0].values()}

    @property
    def wire_format(self) -> str:
        return "confluent" if self.registry else "single-object"

    def register_all(self) -> dict[str, int]:
        """Register every current schema now, so encoding never waits on the registry."""
        return {m.__name__: self._schema_id(m) for m in SCHEMA_FILES}

    def _schema_id(self, model: type[BaseModel]) -> int:
        if model not in self._ids:
            assert self.registry is not None
            raw = contracts()[0][model].raw
            self._ids[model] = self.registry.register(full_name(raw), raw)
        return self._ids[model]

    def encode(self, record: BaseModel) -> bytes:
        contract = contracts()[0][type(record)]
        if self.registry is None:
            header = contract.header
        else:
            header = CONFLUENT_MAGIC + struct.pack(">I", self._schema_id(type(record)))
        return header + _body(record, contract)

    def decode(self, data: bytes) -> BaseModel:
        """Decode a record in either wire format, picking the schema from its header."""
        if data[:2] == SINGLE_OBJECT_MAGIC and len(data) >= SINGLE_OBJECT_HEADER:
            fp = data[2:SINGLE_OBJECT_HEADER]
            contract = contracts()[1].get(fp)
            if contract is None:
                raise UnknownSchema(f"no schema with fingerprint {fp.hex()}")
            return _read(data, SINGLE_OBJECT_HEADER, contract)
        if data[:1] == CONFLUENT_MAGIC and len(data) >= CONFLUENT_HEADER:
            (schema_id,) = struct.unpack(">I", data[1:CONFLUENT_HEADER])
            if self.registry is None:
                raise UnknownSchema(
                    f"record uses registry schema id {schema_id}; "
                    "set SCHEMA_REGISTRY_URL to read it"
                )
            return _read(data, CONFLUENT_HEADER, self._contract_for_id(schema_id))
        raise CorruptRecord(
            f"neither single-object nor Confluent framing (starts {data[:2].hex()})"
        )

    def _contract_for_id(self, schema_id: int) -> Contract:
        if schema_id in self._by_id:
            return self._by_id[schema_id]
        assert self.registry is not None
        writer_raw = self.registry.schema(schema_id)
        current = self._by_name.get(full_name(writer_raw))
        if current is None:
            raise UnknownSchema(f"registry schema {schema_id} is {full_name(writer_raw)}, not ours")
        writer = fastavro.parse_schema(writer_raw)
        contract = Contract(current.model, current.reader, writer, current.raw, current.header)
        self._by_id[schema_id] = contract
        return contract

    def decode_as(self, data: bytes, model: type[RecordT]) -> RecordT:
        """Decode a record that must be of ``model``."""
        record = self.decode(data)
        if not isinstance(record, model):
            raise UnknownSchema(f"expected {model.__name__}, got {type(record).__name__}")
        return record


_default = Codec()
encode = _default.encode
decode = _default.decode
decode_as = _default.decode_as
