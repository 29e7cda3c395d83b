"""Round-trip property tests: any valid record survives encode → decode unchanged."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from schemas import codec
from schemas.catalogue import models
from schemas.errors import CodecError
from tests.records import SAMPLES, records


@pytest.mark.parametrize("model", models(), ids=lambda m: m.__name__)
def test_round_trip_single_object(model: type[BaseModel]) -> None:
    @settings(max_examples=150, deadline=None)
    @given(records(model))
    def check(record: BaseModel) -> None:
        data = codec.encode(record)
        assert data[2:10] == codec.fingerprint_of(model)
        assert codec.decode(data) == record

    check()


@given(st.sampled_from(SAMPLES), st.binary(min_size=1, max_size=8), st.integers(0, 64))
@settings(max_examples=300, deadline=None)
def test_damaged_records_raise_our_errors_only(record: BaseModel, junk: bytes, cut: int) -> None:
    """Truncation or trailing junk never escapes as a bare fastavro/struct error."""
    data = codec.encode(record)
    for damaged in (data[: max(0, len(data) - cut)], data + junk):
        if damaged == data:
            continue
        try:
            decoded = codec.decode(damaged)
        except CodecError:
            continue
        pytest.fail(f"damaged bytes decoded as {decoded!r}")
