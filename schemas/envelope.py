"""The envelope every result record shares, for users' own record types.

Every record a flow writes to a lane carries the same fields — event id, confidence, agent,
route, usage, source, timestamps, confidence detail — and the pipeline fills them once for every
flow. A new record type subclasses :class:`ResultRecord` and adds its own fields; its Avro schema
is :func:`result_schema` of those fields, written once to an ``.avsc`` file next to the model::

    class NoteScored(ResultRecord):
        note_id: str
        mood: str

    # once, then commit the file (sluice schemas check then guards it against drift):
    fields = [{"name": "note_id", "type": "string", "doc": "The note's id."},
              {"name": "mood", "type": "string", "doc": "happy, neutral or angry."}]
    schema = result_schema("NoteScored", "com.example", fields, doc="A note's mood.")
    Path("note_scored.avsc").write_text(json.dumps(schema, indent=2))
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from schemas.catalogue import load_schema
from schemas.records import AgentInfo, Confidence, Route, Source, Usage, _Record

#: The envelope's field names, in the order they are written.
ENVELOPE_FIELDS = (
    "event_id",
    "confidence",
    "agent",
    "route",
    "usage",
    "source",
    "received_at",
    "processed_at",
    "confidence_detail",
)


class ResultRecord(_Record):
    """Base of a result record: the shared envelope; subclasses add the agent's fields."""

    event_id: str
    confidence: float
    agent: AgentInfo
    route: Route
    usage: Usage
    source: Source
    received_at: datetime
    processed_at: datetime
    confidence_detail: Confidence | None = None


def result_schema(
    name: str, namespace: str, fields: list[dict[str, Any]], doc: str
) -> dict[str, Any]:
    """The Avro record schema of a :class:`ResultRecord` subclass with ``fields`` of its own
    (each with a ``doc``), in the subclass's field order: the envelope first, then ``fields``.

    The envelope's fields (and their nested record types, in Sluice's namespace) are copied
    from the ticket schema, so every result record reads the same way.
    """
    base = load_schema("ticket_triaged.avsc")
    by_name = {f["name"]: f for f in base["fields"]}
    envelope = []
    for field in ENVELOPE_FIELDS:
        copied = dict(by_name[field])
        copied["type"] = _qualified(copied["type"], base["namespace"])
        envelope.append(copied)
    return {
        "type": "record",
        "name": name,
        "namespace": namespace,
        "doc": doc,
        "fields": [*envelope, *fields],
    }


def _qualified(node: Any, namespace: str) -> Any:
    """A type ``node`` with every named type and reference spelled with its full name, so it
    reads the same under the user's namespace."""
    if isinstance(node, list):  # a union
        return [_qualified(n, namespace) for n in node]
    if isinstance(node, str):
        primitive = node in _PRIMITIVES or "." in node
        return node if primitive else f"{namespace}.{node}"  # a named type defined earlier
    out = dict(node)
    if node.get("type") in ("record", "enum", "fixed"):
        out.setdefault("namespace", namespace)
    if node.get("type") == "record":
        out["fields"] = [{**f, "type": _qualified(f["type"], namespace)} for f in node["fields"]]
    elif node.get("type") == "array":
        out["items"] = _qualified(node["items"], namespace)
    elif node.get("type") == "map":
        out["values"] = _qualified(node["values"], namespace)
    return out


_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
