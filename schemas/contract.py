"""Keeping the contracts honest: pydantic ⇄ ``.avsc`` drift, and backward compatibility.

**Drift.** Each pydantic model in :mod:`schemas.catalogue` must say exactly what its
``.avsc`` says: the same fields in the same order, with matching types, nullability, enum symbols,
decimal precision/scale and logical types. :func:`drift` lists every difference.

**Evolution rule (backward compatible).** A consumer using the new schema must read every record
written with any released version: a field may be added only with a default; a field may be
removed only if it had a default; a field's type may not change (except the Avro promotions
int→long→float→double and string⇄bytes); enum symbols may be added only when the enum has a
default. Each released version is kept in ``schemas/avro/released/<name>.v<N>.avsc``;
:func:`incompatibilities` checks the current files against all of them (``sluice schemas check``).
"""

from __future__ import annotations

import types
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from schemas import catalogue

PROMOTIONS = {
    ("int", "long"),
    ("int", "float"),
    ("int", "double"),
    ("long", "float"),
    ("long", "double"),
    ("float", "double"),
    ("string", "bytes"),
    ("bytes", "string"),
}


def _decimal_bounds(info: FieldInfo | None) -> tuple[int | None, int | None]:
    digits = places = None
    for meta in info.metadata if info else []:
        digits = getattr(meta, "max_digits", digits)
        places = getattr(meta, "decimal_places", places)
    return digits, places


def _type_drift(path: str, py: Any, avro: Any, info: FieldInfo | None) -> list[str]:
    origin, args = get_origin(py), get_args(py)
    if origin in (Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        if not (isinstance(avro, list) and len(avro) == 2 and avro[0] == "null"):
            return [f"{path}: optional in pydantic, {avro!r} in Avro (want ['null', T])"]
        return _type_drift(path, inner[0], avro[1], info)
    if isinstance(avro, list):
        return [f"{path}: Avro union {avro!r} but pydantic type {py!r} is not optional"]
    if origin is not None and get_origin(origin) is None and hasattr(py, "__metadata__"):
        return _type_drift(path, args[0], avro, FieldInfo.from_annotation(py))
    kind = avro if isinstance(avro, str) else avro.get("type")
    logical = avro.get("logicalType") if isinstance(avro, dict) else None
    if origin is Literal:
        if kind != "enum" or list(avro["symbols"]) != list(args):
            return [f"{path}: Literal{list(args)} vs Avro {avro!r}"]
        return []
    if origin is list:
        if kind != "array":
            return [f"{path}: list vs Avro {kind}"]
        return _type_drift(f"{path}[]", args[0], avro["items"], None)
    if origin is dict:
        if kind != "map" or args[0] is not str:
            return [f"{path}: dict vs Avro {kind}"]
        return _type_drift(f"{path}{{}}", args[1], avro["values"], None)
    if isinstance(py, type) and issubclass(py, BaseModel):
        if kind != "record" or avro.get("name") != py.__name__:
            return [f"{path}: record {py.__name__} vs Avro {avro!r:.80}"]
        return drift(py, avro, prefix=f"{path}.")
    if py is Decimal:
        digits, places = _decimal_bounds(info)
        if (kind, logical) != ("bytes", "decimal"):
            return [f"{path}: Decimal vs Avro {avro!r}"]
        if (avro.get("precision"), avro.get("scale", 0)) != (digits, places):
            return [
                f"{path}: decimal({digits},{places}) vs Avro "
                f"decimal({avro.get('precision')},{avro.get('scale', 0)})"
            ]
        return []
    table: dict[object, set[tuple[str, str | None]]] = {
        str: {("string", None)},
        bool: {("boolean", None)},
        int: {("int", None), ("long", None)},
        float: {("double", None)},
        bytes: {("bytes", None)},
        datetime: {("long", "timestamp-millis")},
        date: {("int", "date")},
    }
    expected = table.get(py)
    if expected is None:
        return [f"{path}: no Avro mapping for pydantic type {py!r}"]
    if (kind, logical) not in expected:
        return [f"{path}: {getattr(py, '__name__', py)} vs Avro {avro!r}"]
    return []


def drift(model: type[BaseModel], schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Every difference between a pydantic model and its Avro record schema."""
    problems: list[str] = []
    py_fields = list(model.model_fields.items())
    avro_fields = schema.get("fields", [])
    py_names = [n for n, _ in py_fields]
    avro_names = [f["name"] for f in avro_fields]
    if py_names != avro_names:
        problems.append(f"{prefix}{model.__name__}: fields {py_names} vs Avro {avro_names}")
    for (name, info), field in zip(py_fields, avro_fields, strict=False):
        if name == field["name"]:
            problems += _type_drift(
                f"{prefix}{name}", info.rebuild_annotation(), field["type"], info
            )
    for field in avro_fields:
        if not field.get("doc"):
            problems.append(f"{prefix}{field['name']}: Avro field has no doc")
    if not schema.get("doc"):
        problems.append(f"{prefix}{model.__name__}: Avro record has no doc")
    return problems


def _named(schema: Any) -> str | None:
    return schema.get("name") if isinstance(schema, dict) else None


def _type_incompat(path: str, reader: Any, writer: Any) -> list[str]:
    """Can data written as ``writer`` be read as ``reader``? (Avro schema resolution rules.)"""
    if isinstance(reader, list) or isinstance(writer, list):
        r = reader if isinstance(reader, list) else [reader]
        w = writer if isinstance(writer, list) else [writer]
        return [
            p
            for wb in w
            if all(_type_incompat(path, rb, wb) for rb in r)
            for p in [f"{path}: writer branch {wb!r:.60} has no reader branch"]
        ]
    rk = reader if isinstance(reader, str) else reader["type"]
    wk = writer if isinstance(writer, str) else writer["type"]
    if rk != wk:
        if (wk, rk) in PROMOTIONS:
            return []
        return [f"{path}: type changed {wk} -> {rk}"]
    if rk == "record":
        return incompatible_record(reader, writer, prefix=f"{path}.")
    if rk == "enum":
        missing = set(writer["symbols"]) - set(reader["symbols"])
        if missing and "default" not in reader:
            return [f"{path}: enum lost symbols {sorted(missing)} and has no default"]
        return []
    if rk == "array":
        return _type_incompat(f"{path}[]", reader["items"], writer["items"])
    if rk == "map":
        return _type_incompat(f"{path}{{}}", reader["values"], writer["values"])
    if isinstance(reader, dict) and isinstance(writer, dict):
        keys = ("logicalType", "precision", "scale", "size")
        if any(reader.get(k) != writer.get(k) for k in keys):
            return [f"{path}: logical type changed {writer!r} -> {reader!r}"]
    return []


def incompatible_record(
    reader: dict[str, Any], writer: dict[str, Any], prefix: str = ""
) -> list[str]:
    problems = []
    if _named(reader) != _named(writer):
        problems.append(f"{prefix}record renamed {_named(writer)} -> {_named(reader)}")
    written = {f["name"]: f for f in writer["fields"]}
    for field in reader["fields"]:
        old = written.get(field["name"])
        if old is None:
            if "default" not in field:
                problems.append(f"{prefix}{field['name']}: new field without a default")
        else:
            problems += _type_incompat(f"{prefix}{field['name']}", field["type"], old["type"])
    return problems


def incompatibilities() -> list[str]:
    """Drift of every record type, and every way a current schema fails to read a released one."""
    problems = []
    for entry in catalogue.entries():
        filename, current, released = entry.filename, entry.schema(), entry.released()
        problems += [f"{filename}: {p}" for p in drift(entry.model, current)]
        if not released:
            problems.append(f"{filename}: no released version in {entry.released_dir}")
        for version, old in released:
            problems += [
                f"{filename} cannot read v{version}: {p}" for p in incompatible_record(current, old)
            ]
    return problems
