"""Signed decisions (streams.decisions): what the signature covers, key rotation, the key file,
and what the executor checks of a decision against the review-lane record it names."""

from __future__ import annotations

import os
import secrets
import stat
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import Codec
from schemas.errors import ConfigError, UnverifiedDecision
from schemas.records import FieldChange, InvoiceExtracted, ReviewDecision, Source, TicketTriaged
from streams.decisions import (
    SIGNED,
    DecisionCheck,
    DecisionKeys,
    key_file,
    sha256,
    signed_bytes,
)
from streams.review.auth import ReviewerBook
from tests.records import SAMPLES

CODEC = Codec()
# Random: a registered secret is scrubbed from the test process's later output.
SECRET_NEW = secrets.token_hex(20)
SECRET_OLD = secrets.token_hex(20)
KEYS = DecisionKeys.parse(f"new:{SECRET_NEW},old:{SECRET_OLD}")
LANE = Source(topic="tickets.review.t", partition=3, offset=41)
TICKET = next(r for r in SAMPLES if isinstance(r, TicketTriaged))
LANE_BYTES = CODEC.encode(TICKET)


def decision(**over: Any) -> ReviewDecision:
    fields: dict[str, Any] = {
        "event_id": TICKET.event_id,
        "flow": "tickets",
        "reviewer": "alice",
        "verdict": "approve",
        "corrections": {},
        "comment": None,
        "model_confidence": 0.5,
        "decided_at": datetime(2026, 12, 8, 3, 0, 0, 123456, tzinfo=UTC),
        "decision_id": "d-1",
        "item": LANE,
        "changes": [],
        "seconds_to_decision": 12.5,
        "record": LANE_BYTES,
        "item_sha256": sha256(LANE_BYTES),
    }
    return ReviewDecision(**{**fields, **over})


def roundtrip(d: ReviewDecision) -> ReviewDecision:
    """As the executor reads it: through Avro."""
    back = CODEC.decode(CODEC.encode(d))
    assert isinstance(back, ReviewDecision)
    return back


def test_a_signed_decision_verifies_after_its_trip_through_avro() -> None:
    signed = KEYS.sign(decision())
    assert (signed.key_id, len(signed.signature or "")) == ("new", 64)
    KEYS.verify(signed)
    KEYS.verify(roundtrip(signed))  # microseconds are cut before signing: Avro keeps millis


def test_the_signature_covers_every_field_but_itself() -> None:
    assert set(ReviewDecision.model_fields) - {"signature"} == SIGNED


TAMPER: list[tuple[str, Any]] = [
    ("event_id", "e-other"),
    ("flow", "invoices"),
    ("reviewer", "mallory"),
    ("second_reviewer", "bob"),
    ("verdict", "correct"),
    ("corrections", {"team": '"billing"'}),
    ("comment", "fine"),
    ("model_confidence", 0.51),
    ("decided_at", datetime(2026, 12, 8, 3, 0, 1, tzinfo=UTC)),
    ("decision_id", "d-2"),
    ("item", Source(topic=LANE.topic, partition=3, offset=42)),
    ("item", Source(topic=LANE.topic, partition=4, offset=41)),
    ("item", Source(topic="tickets.review.u", partition=3, offset=41)),
    ("item", None),
    ("changes", [FieldChange(field="team", before='"a"', after='"b"')]),
    ("seconds_to_decision", 13.0),
    ("record", CODEC.encode(TICKET.model_copy(update={"team": "billing"}))),
    ("record", None),
    ("item_sha256", "0" * 64),
    ("key_id", "old"),
]


@pytest.mark.parametrize(
    ("name", "value"), TAMPER, ids=[f"{n}-{i}" for i, (n, _) in enumerate(TAMPER)]
)
def test_changing_any_signed_field_breaks_the_signature(name: str, value: Any) -> None:
    signed = roundtrip(KEYS.sign(decision()))
    forged = signed.model_copy(update={name: value})
    assert signed_bytes(forged) != signed_bytes(signed)
    with pytest.raises(UnverifiedDecision, match="signature does not match"):
        KEYS.verify(forged)


def test_unsigned_and_wrongly_signed_decisions_are_refused() -> None:
    with pytest.raises(UnverifiedDecision, match="not signed"):
        KEYS.verify(decision())
    with pytest.raises(UnverifiedDecision, match="not signed"):
        KEYS.verify(decision(key_id="new"))
    other = DecisionKeys.parse(f"new:{secrets.token_hex(20)}")  # same key id, another secret
    with pytest.raises(UnverifiedDecision, match="does not match"):
        KEYS.verify(other.sign(decision()))
    with pytest.raises(UnverifiedDecision, match="does not match"):
        KEYS.verify(KEYS.sign(decision()).model_copy(update={"signature": "ab" * 32}))


def test_rotation_the_first_key_signs_every_key_verifies_an_unknown_id_fails() -> None:
    before = DecisionKeys.parse(f"old:{SECRET_OLD}").sign(decision())
    assert before.key_id == "old"
    KEYS.verify(before)  # signed before the rotation, still verified
    assert KEYS.sign(decision()).key_id == "new"
    retired = DecisionKeys.parse(f"new:{SECRET_NEW}")
    with pytest.raises(UnverifiedDecision, match="unknown key id 'old'"):
        retired.verify(before)
    with pytest.raises(UnverifiedDecision, match="unknown key id"):
        KEYS.verify(before.model_copy(update={"key_id": "zz"}))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "new",
        f"new{SECRET_NEW}",
        "new:short",
        f"bad id:{SECRET_NEW}",
        f"a:{SECRET_NEW},a:{SECRET_OLD}",
    ],
)
def test_malformed_keys_are_a_configuration_error(text: str) -> None:
    with pytest.raises(ConfigError):
        DecisionKeys.parse(text)


def test_the_key_file_is_made_private_once_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "decision.key"
    first = key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key_file(path) == first
    keys = DecisionKeys.parse(first)
    keys.verify(keys.sign(decision()))
    assert list(path.parent.iterdir()) == [path]  # nothing left aside
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        key_file(path)


def reviewers(tmp_path: Path, *names: str) -> ReviewerBook:
    path = tmp_path / "reviewers.toml"
    path.write_text("".join(f'[reviewers.{n}]\ntoken_sha256 = "{"a" * 64}"\n' for n in names))
    return ReviewerBook(path)


def check(tmp_path: Path, *names: str) -> DecisionCheck:
    return DecisionCheck("tickets", LANE.topic, KEYS, reviewers(tmp_path, *names), CODEC)


def test_only_reviewers_in_the_file_decide_and_the_file_is_reread(tmp_path: Path) -> None:
    c = check(tmp_path, "alice", "bob")
    c.check(KEYS.sign(decision()))
    c.check(KEYS.sign(decision(second_reviewer="bob")))
    for bad, why in [
        (decision(reviewer="mallory"), "'mallory' is not in the reviewers file"),
        (decision(second_reviewer="mallory"), "second reviewer 'mallory'"),
        (decision(second_reviewer="alice"), "second reviewer 'alice'"),  # four eyes, not two
        (decision(flow="invoices"), "flow 'invoices'"),
        (decision(item=Source(topic="tickets.auto.t", partition=0, offset=1)), "names no record"),
        (decision(item=None), "names no record"),
        (decision(item_sha256=None), "names no record"),
    ]:
        with pytest.raises(UnverifiedDecision, match=why):
            c.check(KEYS.sign(bad))
    reviewers(tmp_path, "bob")  # alice leaves: her decisions stop running
    os.utime(tmp_path / "reviewers.toml", ns=(1, 1))
    with pytest.raises(UnverifiedDecision, match="'alice' is not in"):
        c.check(KEYS.sign(decision()))


def test_without_a_reviewers_file_no_decision_runs() -> None:
    c = DecisionCheck("tickets", LANE.topic, KEYS, None, CODEC)
    with pytest.raises(UnverifiedDecision, match="SLUICE_REVIEWERS_FILE is not set"):
        c.check(KEYS.sign(decision()))


def test_the_decided_record_must_be_the_lane_record_it_names(tmp_path: Path) -> None:
    c = check(tmp_path, "alice")
    assert c.decided(decision(), LANE_BYTES) == TICKET
    assert c.decided(decision(verdict="reject", record=None), LANE_BYTES) is None
    corrected = TICKET.model_copy(update={"team": "billing"})
    assert c.decided(decision(verdict="correct", record=CODEC.encode(corrected)), LANE_BYTES) == (
        corrected
    )
    other_event = TICKET.model_copy(update={"event_id": "e-other"})
    moved = TICKET.model_copy(update={"confidence": 0.99})
    invoice = next(r for r in SAMPLES if isinstance(r, InvoiceExtracted))
    for d, lane, why in [
        (decision(), None, "is gone"),
        (decision(), CODEC.encode(other_event), "not the one decided"),
        (decision(item_sha256=sha256(CODEC.encode(other_event))), CODEC.encode(other_event),
         "of another event"),
        (decision(record=CODEC.encode(corrected)), LANE_BYTES, "approved record differs"),
        (decision(record=CODEC.encode(other_event)), LANE_BYTES, "not of the review-lane"),
        (decision(record=CODEC.encode(invoice.model_copy(update={"event_id": TICKET.event_id}))),
         LANE_BYTES, "not of the review-lane"),
        (decision(verdict="correct", record=CODEC.encode(moved)), LANE_BYTES, "envelope"),
        (decision(record=None), LANE_BYTES, "carries no record"),
        (decision(verdict="reject"), LANE_BYTES, "a rejection carries a record"),
    ]:  # fmt: skip
        with pytest.raises(UnverifiedDecision, match=why):
            c.decided(d, lane)


def test_an_invoice_total_swapped_in_an_approval_is_refused(tmp_path: Path) -> None:
    invoice = next(r for r in SAMPLES if isinstance(r, InvoiceExtracted))
    lane = CODEC.encode(invoice)
    c = DecisionCheck("invoices", LANE.topic, KEYS, reviewers(tmp_path, "alice"), CODEC)
    swapped = invoice.model_copy(update={"total": Decimal("999999999.99")})
    d = decision(event_id=invoice.event_id, flow="invoices", item_sha256=sha256(lane),
                 record=CODEC.encode(swapped))  # fmt: skip
    with pytest.raises(UnverifiedDecision, match="approved record differs"):
        c.decided(d, lane)
