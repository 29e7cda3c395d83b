import json

import pytest

from schemas.errors import InputError, InputTooLarge, InvalidInput, UndecodableInput
from schemas.events import TicketReceived, parse_event, peek_event_id

VALID = {"ticket_id": "T-1", "body": "My parcel is late", "channel": "email"}


@pytest.mark.parametrize(
    ("raw", "error", "message"),
    [
        (None, UndecodableInput, "tombstone"),
        (b"\xff\xfa\x00", UndecodableInput, "not UTF-8"),
        (b"\xff\xfe{\x00}\x00", UndecodableInput, "UTF-16"),
        (b"not json", UndecodableInput, "not JSON"),
        (b"[1, 2]", UndecodableInput, "JSON list, expected an object"),
        (b'{"ticket_id": "T-1"}', InvalidInput, "needs a non-empty subject or body"),
        (
            b'{"ticket_id": "T-1", "subject": " ", "body": "\\n\\t"}',
            InvalidInput,
            "needs a non-empty subject or body; both are empty",
        ),
        (b'{"ticket_id": "T-1", "subject": null, "body": null}', InvalidInput, "both are empty"),
        (b'{"ticket_id": "T-1", "body": "x", "customer_plan": 3}', InvalidInput, "customer_plan:"),
        (b'{"ticket_id": "T-1", "body": 42}', InvalidInput, "body: Input should be a valid string"),
        (b'{"ticket_id": "T-1", "body": "x", "channel": "fax"}', InvalidInput, "channel:"),
        (b'{"ticket_id": "", "body": "x"}', InvalidInput, "ticket_id:"),
        (json.dumps({**VALID, "body": "x" * 20_001}).encode(), InputTooLarge, "body:"),
    ],
)
def test_bad_input_raises_precise_error(raw: bytes | None, error: type, message: str) -> None:
    with pytest.raises(error, match=message) as info:
        parse_event(raw, TicketReceived)
    assert isinstance(info.value, InputError)
    assert info.value.retriable is False
    assert info.value.reason == ("input_too_large" if error is InputTooLarge else "poison_input")


def test_valid_ticket_parses_and_ignores_unknown_fields() -> None:
    ticket = parse_event(json.dumps({**VALID, "future_field": 1}).encode(), TicketReceived)
    assert ticket.ticket_id == "T-1"
    assert ticket.channel == "email"
    assert ticket.event_id is None


def test_subject_without_body_is_a_valid_ticket() -> None:
    for body in ({}, {"body": ""}, {"body": "   "}, {"body": None}):
        raw = json.dumps({"ticket_id": "T-1", "subject": "Refund please", **body}).encode()
        ticket = parse_event(raw, TicketReceived)
        assert ticket.subject == "Refund please"
        assert ticket.body == ""
    assert parse_event(b'{"ticket_id": "T-1", "body": "hi"}', TicketReceived).subject == ""


def test_customer_metadata_is_optional_and_normalised() -> None:
    ticket = parse_event(json.dumps(VALID).encode(), TicketReceived)
    assert (ticket.customer_id, ticket.customer_plan) == (None, None)
    raw = {**VALID, "customer_id": "C-77", "customer_plan": "  Enterprise\n Plus "}
    ticket = parse_event(json.dumps(raw).encode(), TicketReceived)
    assert (ticket.customer_id, ticket.customer_plan) == ("C-77", "enterprise plus")
    blank = parse_event(json.dumps({**VALID, "customer_plan": "  "}).encode(), TicketReceived)
    assert blank.customer_plan is None  # blank means unknown, like absent
    with pytest.raises(InputError, match="customer_plan:"):
        parse_event(json.dumps({**VALID, "customer_plan": "p" * 41}).encode(), TicketReceived)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"event_id": "e-1", "body": 3}', "e-1"),  # invalid event still yields its id
        (b'{"event_id": 7}', None),
        (b"garbage", None),
        (None, None),
        (b"[]", None),
    ],
)
def test_peek_event_id(raw: bytes | None, expected: str | None) -> None:
    assert peek_event_id(raw) == expected
