"""Dead-letter selection and the redrive's hold-backs, without a broker: the filter, lineage
parsing, which dead letters are read back from their input topic, and the order of the reasons a
dead letter is not sent again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.records import DeadLetter, Source
from streams.cli import _when
from streams.dlq import Filter, Letter, Redriver, _needs_source
from streams.meta import Meta
from streams.settings import Settings

NOW = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)


def letter(
    *, flow: str = "tickets", reason: str = "breaker_open", attempt: str | None = None,
    truncated: bool = False, offset: int = 9, failed_at: datetime = NOW,
) -> Letter:  # fmt: skip
    record = DeadLetter(
        event_id="ev-1", flow=flow, reason=reason, error_class="x", error_message="m",  # type: ignore[arg-type]
        stacktrace="", attempts=0, source=Source(topic="tickets.received", partition=2, offset=40),
        original_key=b"k", original_value=b"{", original_truncated=truncated,
        original_timestamp=None, failed_at=failed_at,
    )  # fmt: skip
    headers = {} if attempt is None else {"sluice.redrive.attempt": attempt}
    return Letter("deadletter", 0, offset, headers, record)


def test_the_filter_matches_flow_reason_event_and_time() -> None:
    x = letter()
    assert Filter().matches(x)
    assert Filter(flows=frozenset({"tickets"}), reasons=frozenset({"breaker_open"})).matches(x)
    assert not Filter(reasons=frozenset({"poison_input"})).matches(x)
    assert not Filter(flows=frozenset({"invoices"})).matches(x)
    assert not Filter(event_ids=frozenset({"ev-2"})).matches(x)
    assert Filter(since=NOW - timedelta(minutes=1), until=NOW + timedelta(seconds=1)).matches(x)
    assert not Filter(since=NOW + timedelta(seconds=1)).matches(x)
    assert not Filter(until=NOW).matches(x)  # until is exclusive


def test_an_unreadable_record_matches_only_an_empty_filter() -> None:
    broken = Letter("deadletter", 0, 1, {}, None, "not Avro")
    assert Filter().matches(broken)
    assert not Filter(flows=frozenset({"tickets"})).matches(broken)


def test_lineage_comes_from_the_headers_with_safe_defaults() -> None:
    assert letter().attempt == 0
    assert letter(attempt="2").attempt == 2
    assert letter(attempt="two").attempt == 0
    assert letter(attempt="-5").attempt == 0
    assert letter().origin == "tickets.received/2/40"  # first failure: its own source
    x = letter(attempt="1")
    x.headers["sluice.origin"] = "tickets.received/7/3"
    assert x.origin == "tickets.received/7/3"


def test_only_truncated_originals_are_read_back_from_the_input_topic() -> None:
    assert not _needs_source(letter())
    assert _needs_source(letter(truncated=True))


def test_hold_backs_come_in_order_unreadable_done_exhausted_breaker() -> None:
    r = Redriver(Settings(), max_attempts=3)
    x = letter(attempt="3")
    assert r._held_back(Letter("d", 0, 1, {}, None, "bad"), set(), set()) == "unreadable"
    assert r._held_back(x, {x.coordinates}, {"tickets"}) == "already_redriven"
    assert r._held_back(x, set(), {"tickets"}) == "exhausted"
    assert r._held_back(letter(attempt="2"), set(), {"tickets"}) == "breaker_open"
    assert r._held_back(letter(attempt="2"), set(), set()) is None


def test_a_redriven_event_keeps_the_event_id_its_header_carries() -> None:
    plain = Meta("t", 1, 2, None, None, b"{}")
    carried = Meta("t", 1, 2, None, None, b"{}", (("sluice.event_id", b"ev-original"),))
    assert plain.derived_event_id() != "ev-original"
    assert carried.derived_event_id() == "ev-original"
    for bad in (b"x" * 129, b"line\nbreak", b"\xff\xfe"):
        odd = Meta("t", 1, 2, None, None, b"{}", (("sluice.event_id", bad),))
        assert odd.derived_event_id() == plain.derived_event_id()


def test_times_are_iso_or_ages() -> None:
    assert _when(None) is None
    assert _when("2026-11-25T01:00:00") == datetime(2026, 11, 25, 1, tzinfo=UTC)
    age = datetime.now(UTC) - _when("2h")
    assert timedelta(hours=2) - timedelta(seconds=5) < age < timedelta(hours=2, seconds=5)
