import json

import pytest

from schemas.errors import InputError, InvalidInput, UndecodableInput
from schemas.events import TicketReceived, parse_event, peek_event_id

VALID = {"ticket_id": "T-1", "body": "My parcel is late", "channel": "email"}


@pytest.mark.parametrize(
    ("raw", "error", "message"),
    [
        (None, UndecodableInput, "tombstone"),
        (b"\xff\xfe\x00", UndecodableInput, "not UTF-8"),
        (b"not json", UndecodableInput, "not JSON"),
        (b"[1, 2]", UndecodableInput, "JSON list, expected an object"),
        (b'{"ticket_id": "T-1"}', InvalidInput, "body: Field required"),
        (b'{"ticket_id": "T-1", "body": 42}', InvalidInput, "body: Input should be a valid string"),
        (b'{"ticket_id": "T-1", "body": "x", "channel": "fax"}', InvalidInput, "channel:"),
        (b'{"ticket_id": "", "body": "x"}', InvalidInput, "ticket_id:"),
        (json.dumps({**VALID, "body": "x" * 20_001}).encode(), InvalidInput, "body:"),
    ],
)
def test_bad_input_raises_precise_error(raw: bytes | None, error: type, message: str) -> None:
    with pytest.raises(error, match=message) as info:
        parse_event(raw, TicketReceived)
    assert isinstance(info.value, InputError)
    assert info.value.retriable is False
    assert info.value.reason == "poison_input"


def test_valid_ticket_parses_and_ignores_unknown_fields() -> None:
    ticket = parse_event(json.dumps({**VALID, "future_field": 1}).encode(), TicketReceived)
    assert ticket.ticket_id == "T-1"
    assert ticket.channel == "email"
    assert ticket.event_id is None


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
