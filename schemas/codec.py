"""Avro codec: pydantic record ⇄ bytes, in one of two wire formats.

- **Single-object encoding** (default): ``C3 01`` + the schema's 8-byte CRC-64-AVRO fingerprint +
  the Avro body. Self-describing with no registry: any Avro library decodes it with our ``.avsc``.
- **Confluent framing** (with a schema registry): ``00`` + 4-byte big-endian schema id + body, the
  format of Confluent's serializers, so Java/Go/… consumers with a registry read it directly.

Decoding accepts both, whatever the codec writes. Records written with an older released schema
version are resolved to the current schema (Avro schema resolution), so consumers can upgrade
before or after producers. Which record types exist, and their schema files, is
:mod:`schemas.catalogue`'s; schemas are parsed and fingerprinted once per change of it.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple, TypeVar

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form
from pydantic import BaseModel

from schemas import catalogue
from schemas.catalogue import full_name
from schemas.errors import CorruptRecord, UnknownSchema
from schemas.registry import RegistryClient

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
SINGLE_OBJECT_HEADER = 10
CONFLUENT_MAGIC = b"\x00"
CONFLUENT_HEADER = 5

RecordT = TypeVar("RecordT", bound=BaseModel)


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


class Contracts(NamedTuple):
    by_model: dict[type[BaseModel], Contract]
    """The current contract of every record type in the catalogue."""
    by_fingerprint: dict[bytes, Contract]
    """Every known writer fingerprint, current and released, with the contract that reads it."""
    by_name: dict[str, Contract]
    """The current contract per Avro full name (how a registry's schema is matched to a model)."""


def contracts() -> Contracts:
    """The contracts of every record type now in :mod:`schemas.catalogue`, parsed once."""
    return _contracts(catalogue.generation())


@lru_cache(maxsize=1)
def _contracts(generation: int) -> Contracts:
    found = Contracts({}, {}, {})
    for entry in catalogue.entries():
        raw = entry.schema()
        reader = fastavro.parse_schema(raw)
        header = SINGLE_OBJECT_MAGIC + fingerprint_bytes(reader)
        current = Contract(entry.model, reader, reader, raw, header)
        found.by_model[entry.model] = current
        found.by_name[full_name(raw)] = current
        for _, old in entry.released():
            writer = fastavro.parse_schema(old)
            found.by_fingerprint[fingerprint_bytes(writer)] = Contract(
                entry.model, reader, writer, raw, header
            )
        found.by_fingerprint[fingerprint_bytes(reader)] = current
    return found


def _contract_of(model: type[BaseModel]) -> Contract:
    found = contracts().by_model.get(model)
    if found is None:
        raise KeyError(f"{model.__name__} is not a record type: see schemas.catalogue.register")
    return found


def fingerprint_of(model: type[BaseModel]) -> bytes:
    """The 8-byte CRC-64-AVRO fingerprint that heads every single-object record of ``model``."""
    return _contract_of(model).header[2:]


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

    @property
    def wire_format(self) -> str:
        return "confluent" if self.registry else "single-object"

    def register_all(self) -> dict[str, int]:
        """Register every current schema now, so encoding never waits on the registry."""
        return {m.__name__: self._schema_id(m) for m in contracts().by_model}

    def _schema_id(self, model: type[BaseModel]) -> int:
        if model not in self._ids:
            assert self.registry is not None
            raw = _contract_of(model).raw
            self._ids[model] = self.registry.register(full_name(raw), raw)
        return self._ids[model]

    def encode(self, record: BaseModel) -> bytes:
        contract = _contract_of(type(record))
        if self.registry is None:
            header = contract.header
        else:
            header = CONFLUENT_MAGIC + struct.pack(">I", self._schema_id(type(record)))
        return header + _body(record, contract)

    def decode(self, data: bytes) -> BaseModel:
        """Decode a record in either wire format, picking the schema from its header."""
        if data[:2] == SINGLE_OBJECT_MAGIC and len(data) >= SINGLE_OBJECT_HEADER:
            fp = data[2:SINGLE_OBJECT_HEADER]
            contract = contracts().by_fingerprint.get(fp)
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
        current = contracts().by_name.get(full_name(writer_raw))
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
