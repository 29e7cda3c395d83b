"""One realistic instance of every output record, and hypothesis strategies for all of them.

Strategies are derived from the pydantic models' own annotations, so a new field is covered the
moment it is added. Values are kept to what Avro stores exactly: millisecond timestamps, decimals
within their precision and scale.
"""

from __future__ import annotations

import io
import types
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, Union, get_args, get_origin

import fastavro
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from schemas.catalogue import load_schema
from schemas.codec import SINGLE_OBJECT_MAGIC, fingerprint_bytes
from schemas.contract import _decimal_bounds
from schemas.records import (
    AgentInfo,
    DeadLetter,
    InvoiceExtracted,
    LineItem,
    ProposedAction,
    ReviewDecision,
    Route,
    Source,
    Team,
    TicketTriaged,
    ToolEffect,
    Usage,
)

NOW = datetime(2026, 11, 23, 12, 0, 0, 123000, tzinfo=UTC)
AGENT = AgentInfo(name="agent", version="0.1.0", model="local", prompt_version="p.v1")
SOURCE = Source(topic="tickets.received", partition=2, offset=17)
USAGE = Usage(attempts=1, prompt_tokens=120, completion_tokens=40, latency_ms=350)

#: A triage answer that passes every business rule, as a model would send it (JSON types).
GOOD_TRIAGE: dict[str, Any] = {
    "category": "billing",
    "priority": "high",
    "sentiment": "negative",
    "team": "billing",
    "requires_human": False,
    "summary": "Refund a double charge.",
    "reasoning": "Charged twice.",
    "actions": [{"action": "route_to_team", "confidence": 0.9}],
    "confidence": 0.8,
}

SAMPLES: list[BaseModel] = [
    TicketTriaged(
        event_id="e-1",
        ticket_id="T-1",
        category="shipping",
        priority="high",
        summary="Parcel late",
        confidence=0.91,
        agent=AGENT,
        route=Route(lane="auto", reason="confidence 0.910 >= threshold 0.800", threshold=0.8),
        usage=USAGE,
        source=SOURCE,
        received_at=NOW,
        processed_at=NOW,
    ),
    InvoiceExtracted(
        event_id="e-2",
        document_id="D-9",
        vendor_name="ACME GmbH",
        invoice_number="INV-001",
        issue_date=date(2026, 11, 1),
        due_date=date(2026, 12, 1),
        currency="EUR",
        line_items=[
            LineItem(
                description="Widget",
                quantity=Decimal("3"),
                unit_price=Decimal("19.99"),
                amount=Decimal("59.97"),
            ),
            LineItem(
                description="Hours",
                quantity=Decimal("1.5"),
                unit_price=Decimal("80.00"),
                amount=Decimal("120.00"),
            ),
        ],
        subtotal=Decimal("179.97"),
        tax=Decimal("34.19"),
        total=Decimal("214.16"),
        field_confidence={"total": 0.97, "vendor_name": 0.6},
        confidence=0.6,
        agent=AGENT,
        route=Route(lane="review", reason="low", threshold=0.8),
        usage=USAGE,
        source=SOURCE,
        received_at=NOW,
        processed_at=NOW,
    ),
    # An invoice that prints no number: null, in review with the flag that says why.
    InvoiceExtracted(
        event_id="e-4",
        document_id="D-10",
        vendor_name="Kiosk am Markt",
        invoice_number=None,
        issue_date=date(2026, 11, 2),
        due_date=None,
        currency="EUR",
        line_items=[
            LineItem(
                description="Coffee",
                quantity=Decimal("2"),
                unit_price=Decimal("2.50"),
                amount=Decimal("5.00"),
            )
        ],
        subtotal=Decimal("5.00"),
        tax=Decimal("0.95"),
        total=Decimal("5.95"),
        field_confidence={"invoice_number": 0.93, "total": 0.98},
        confidence=0.9,
        agent=AGENT,
        route=Route(
            lane="review",
            reason="validation issues: invoice_number: none printed on the document; "
            "a person must assign one",
            threshold=0.8,
        ),
        usage=USAGE,
        source=SOURCE,
        received_at=NOW,
        processed_at=NOW,
        validation_issues=[
            "invoice_number: none printed on the document; a person must assign one"
        ],
        content_type="text/plain",
    ),
    ReviewDecision(
        event_id="e-1",
        flow="tickets",
        reviewer="ana",
        verdict="correct",
        corrections={"category": '"billing"'},
        comment=None,
        model_confidence=0.5,
        decided_at=NOW,
    ),
    ToolEffect(
        event_id="e-1",
        tool="send_ack",
        idempotency_key="ab12",
        status="applied",
        input_json='{"to":"c@x"}',
        result_json='{"id":1}',
        error=None,
        attempts=1,
        applied_at=NOW,
    ),
    DeadLetter(
        event_id="e-3",
        flow="tickets",
        reason="poison_input",
        error_class="schemas.errors.UndecodableInput",
        error_message="value is not JSON",
        stacktrace="Traceback ...",
        attempts=0,
        retriable=False,
        source=SOURCE,
        original_key=None,
        original_value=b"\x00\xffnot json",
        original_timestamp=None,
        failed_at=NOW,
    ),
]


def dead_letter_v1_bytes(event_id: str = "old") -> bytes:
    """A DeadLetter written with released schema v1 (no ``retriable``), single-object encoded."""
    v1 = fastavro.parse_schema(load_schema("dead_letter.v1.avsc", "avro/released"))
    values = {
        "event_id": event_id,
        "flow": "tickets",
        "reason": "poison_input",
        "error_class": "E",
        "error_message": "m",
        "stacktrace": "",
        "attempts": 0,
        "source": SOURCE.model_dump(),
        "original_key": None,
        "original_value": b"x",
        "original_timestamp": None,
        "failed_at": NOW,
    }
    body = io.BytesIO()
    fastavro.schemaless_writer(body, v1, values)
    return SINGLE_OBJECT_MAGIC + fingerprint_bytes(v1) + body.getvalue()


_text = st.text(max_size=40)
_millis = st.integers(min_value=0, max_value=4_102_444_800_000).map(
    lambda ms: datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
)


def _decimal(info: FieldInfo | None) -> st.SearchStrategy[Decimal]:
    digits, places = _decimal_bounds(info)
    assert digits is not None
    assert places is not None
    bound = 10 ** (digits - places) - 1
    return st.decimals(
        min_value=-bound, max_value=bound, places=places, allow_nan=False, allow_infinity=False
    )


def strategy_for(py: Any, info: FieldInfo | None = None) -> st.SearchStrategy[Any]:
    origin, args = get_origin(py), get_args(py)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)][0]
        return st.none() | strategy_for(inner, info)
    if origin is Literal:
        return st.sampled_from(args)
    if origin is list:
        return st.lists(strategy_for(args[0]), max_size=4)
    if origin is dict:
        return st.dictionaries(_text, strategy_for(args[1]), max_size=4)
    if hasattr(py, "__metadata__"):
        return strategy_for(args[0], FieldInfo.from_annotation(py))
    if isinstance(py, type) and issubclass(py, BaseModel):
        return records(py)
    if py is Decimal:
        return _decimal(info)
    return {
        str: st.text(max_size=200),
        bool: st.booleans(),
        int: st.integers(min_value=-(2**31), max_value=2**31 - 1),
        float: st.floats(allow_nan=False),
        bytes: st.binary(max_size=200),
        datetime: _millis,
        date: st.dates(min_value=date(1970, 1, 1), max_value=date(2100, 1, 1)),
    }[py]


def records(model: type[BaseModel]) -> st.SearchStrategy[BaseModel]:
    fields = {
        name: strategy_for(info.rebuild_annotation(), info)
        for name, info in model.model_fields.items()
    }
    if model is ProposedAction:  # typed per kind: a route_to_team target is a Team or None
        fields["target"] = st.one_of(st.none(), st.sampled_from(get_args(Team)))
    return st.fixed_dictionaries(fields).map(lambda values: model(**values))
