"""The catalogue of record types: which pydantic model is written with which ``.avsc``.

The codec (:mod:`schemas.codec`) and the contract checks (:mod:`schemas.contract`) both read the
record types from here and never import each other. One :class:`Entry` per model: its current
schema file and the folder of its released versions (``<stem>.v<N>.avsc``, see
:mod:`schemas.contract` for the evolution rule).

**Adding a record type** (a new agent's result) takes one :func:`register` call, after which the
codec encodes and decodes it, ``Codec.register_all`` registers it with a schema registry and
``sluice schemas check`` checks it for drift and compatibility:

- in Sluice, one line at the end of this module (the ``.avsc`` in ``schemas/avro``, its released
  versions in ``schemas/avro/released``);
- in your own code, before the first record is encoded or decoded, e.g. in your package's
  ``__init__``::

      from pathlib import Path
      from schemas import catalogue

      catalogue.register(RefundDecided, Path(__file__).parent / "avro" / "refund_decided.avsc")

  with released versions in ``avro/released/refund_decided.v1.avsc`` beside it (``released=``
  names another folder).

Registering is idempotent for the same model and file; a model may not change its file, and no two
models may share an Avro full name (the registry subject and what Confluent-framed records are
decoded by).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.records import DeadLetter, InvoiceExtracted, ReviewDecision, TicketTriaged, ToolEffect


def load_schema(filename: str, folder: str = "avro") -> dict[str, Any]:
    """The raw JSON of one schema file shipped with Sluice in ``schemas/<folder>``."""
    return _read(resources.files("schemas").joinpath(*folder.split("/"), filename))


def full_name(schema: dict[str, Any]) -> str:
    """``namespace.name`` of a named Avro schema: its identity, and its registry subject."""
    return f"{schema['namespace']}.{schema['name']}" if "namespace" in schema else schema["name"]


def _read(file: Traversable) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(file.read_text("utf-8"))
    return schema


@dataclass(frozen=True)
class Entry:
    """One record type: its model, its current ``.avsc``, and where its released versions are."""

    model: type[BaseModel]
    avsc: Traversable
    released_dir: Traversable | None

    @property
    def filename(self) -> str:
        return self.avsc.name

    @property
    def stem(self) -> str:
        """The file name without ``.avsc``: released versions are ``<stem>.v<N>.avsc``."""
        return self.filename.removesuffix(".avsc")

    def schema(self) -> dict[str, Any]:
        """The current schema's raw JSON (read afresh: callers may change their copy)."""
        return _read(self.avsc)

    def released(self) -> list[tuple[int, dict[str, Any]]]:
        """Every released version, oldest first: ``[(1, schema), (2, schema), ...]``."""
        if self.released_dir is None or not self.released_dir.is_dir():
            return []
        found = []
        prefix = f"{self.stem}.v"
        for file in self.released_dir.iterdir():
            version = file.name.removeprefix(prefix).removesuffix(".avsc")
            if file.name.startswith(prefix) and file.name.endswith(".avsc") and version.isdigit():
                found.append((int(version), _read(file)))
        return sorted(found, key=lambda pair: pair[0])


_entries: dict[type[BaseModel], Entry] = {}
_generation = 0


def register(
    model: type[BaseModel],
    avsc: str | os.PathLike[str] | Traversable,
    *,
    released: str | os.PathLike[str] | Traversable | None = None,
) -> Entry:
    """Make ``model`` a record type, written with the Avro record schema in ``avsc``.

    ``released``: the folder of its released versions; default ``released/`` beside ``avsc``.
    Raises :class:`ValueError` if ``model`` is registered with another file, if ``avsc`` is not an
    Avro record schema, or if another model already uses its full name.
    """
    file = Path(avsc) if isinstance(avsc, str | os.PathLike) else avsc
    if released is None:
        parent = getattr(file, "parent", None)  # pathlib.Path and zipfile.Path have one
        folder = parent.joinpath("released") if parent is not None else None
    else:
        folder = Path(released) if isinstance(released, str | os.PathLike) else released
    entry = Entry(model, file, folder)
    known = _entries.get(model)
    if known is not None:
        if str(known.avsc) != str(file):
            raise ValueError(f"{model.__name__} is already registered with {known.avsc}")
        return known
    schema = entry.schema()
    if schema.get("type") != "record":
        raise ValueError(f"{file} is not an Avro record schema")
    name = full_name(schema)
    for other in _entries.values():
        if full_name(other.schema()) == name:
            raise ValueError(f"{other.model.__name__} already uses the Avro name {name}")
    global _generation
    _entries[model] = entry
    _generation += 1
    return entry


def unregister(model: type[BaseModel]) -> None:
    """Forget ``model`` (for tests that register a record type of their own)."""
    global _generation
    if _entries.pop(model, None) is not None:
        _generation += 1


def entries() -> tuple[Entry, ...]:
    """Every record type, in registration order."""
    return tuple(_entries.values())


def models() -> list[type[BaseModel]]:
    """Every registered model, in registration order."""
    return list(_entries)


def entry(model: type[BaseModel]) -> Entry:
    """The entry of ``model``; :class:`KeyError` if it is not registered."""
    try:
        return _entries[model]
    except KeyError:
        raise KeyError(f"{model.__name__} is not a registered record type") from None


def generation() -> int:
    """Bumped by every change, so caches built from the catalogue (the codec's) know to rebuild."""
    return _generation


# Sluice's own record types. A new one: its .avsc in schemas/avro, a copy in released/ as v1, and
# one line here.
_AVRO = resources.files("schemas").joinpath("avro")
_RELEASED = _AVRO.joinpath("released")
register(TicketTriaged, _AVRO.joinpath("ticket_triaged.avsc"), released=_RELEASED)
register(InvoiceExtracted, _AVRO.joinpath("invoice_extracted.avsc"), released=_RELEASED)
register(ReviewDecision, _AVRO.joinpath("review_decision.avsc"), released=_RELEASED)
register(ToolEffect, _AVRO.joinpath("tool_effect.avsc"), released=_RELEASED)
register(DeadLetter, _AVRO.joinpath("dead_letter.avsc"), released=_RELEASED)
