import pytest

from schemas import codec
from schemas.errors import CodecError, CorruptRecord, UnknownSchema
from schemas.records import DeadLetter, TicketTriaged
from tests.records import SAMPLES


def triaged() -> TicketTriaged:
    return next(r for r in SAMPLES if isinstance(r, TicketTriaged))


def dead() -> DeadLetter:
    return next(r for r in SAMPLES if isinstance(r, DeadLetter))


@pytest.mark.parametrize("record", [triaged(), dead()])
def test_round_trip(record: TicketTriaged | DeadLetter) -> None:
    data = codec.encode(record)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == codec.fingerprint_of(type(record))
    assert codec.decode(data) == record
    assert codec.decode_as(data, type(record)) == record


def test_fingerprints_differ_per_schema() -> None:
    assert codec.fingerprint_of(TicketTriaged) != codec.fingerprint_of(DeadLetter)


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda b: b"", CorruptRecord),
        (lambda b: b"\x7f\x01" + b[2:], CorruptRecord),  # neither wire format
        (lambda b: b[:2] + b"\x00" * 8 + b[10:], UnknownSchema),  # unknown fingerprint
        (lambda b: b[:12], CorruptRecord),  # truncated body
        (lambda b: b + b"\x00", CorruptRecord),  # trailing garbage
    ],
)
def test_corrupt_input_raises_our_errors(mutate, error: type) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error) as info:
        codec.decode(mutate(codec.encode(triaged())))
    assert isinstance(info.value, CodecError)


def test_registry_framed_record_without_registry_names_the_fix() -> None:
    framed = b"\x00\x00\x00\x00\x07" + codec.encode(triaged())[10:]
    with pytest.raises(UnknownSchema, match="schema id 7; set SCHEMA_REGISTRY_URL"):
        codec.decode(framed)


def test_decode_as_rejects_other_type() -> None:
    with pytest.raises(UnknownSchema, match="expected DeadLetter"):
        codec.decode_as(codec.encode(triaged()), DeadLetter)
