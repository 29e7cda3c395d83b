"""Reviewer credentials and the web form's parsing: pure parts of the review service."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.errors import ConfigError
from schemas.records import TicketTriaged
from streams.review.auth import Reviewers, load_reviewers, password_hash, token_digest
from streams.review.desk import LOCKED, editable
from streams.review.web import _parse
from tests.records import SAMPLES

TICKET = next(r for r in SAMPLES if isinstance(r, TicketTriaged))


def test_tokens_and_passwords_identify_their_reviewer_only() -> None:
    reviewers = Reviewers.model_validate(
        {
            "reviewers": {
                "alice": {
                    "token_sha256": token_digest("t-alice"),
                    "password_argon2": password_hash("pw-alice-1"),
                },
                "bob": {"token_sha256": token_digest("t-bob")},
            }
        }
    )
    assert reviewers.by_token("t-alice") == "alice"
    assert reviewers.by_token("t-bob") == "bob"
    assert reviewers.by_token("t-carol") is None
    assert reviewers.by_token("") is None
    assert reviewers.check_password("alice", "pw-alice-1")
    assert not reviewers.check_password("alice", "pw-alice-2")
    assert not reviewers.check_password("bob", "anything")  # no password: no web login
    assert not reviewers.check_password("carol", "pw-alice-1")


def test_the_hash_is_salted_and_slow() -> None:
    one, two = password_hash("same password"), password_hash("same password")
    assert one != two
    assert one.startswith("$argon2id$")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "reviewers"),  # nobody: no anonymous review
        ("[reviewers.alice]\n", "token_sha256 or password_argon2"),
        ('[reviewers.alice]\ntoken_sha256 = "abc"\n', "token_sha256"),
        ('[reviewers.alice]\ntoken = "plaintext"\n', "token"),  # a typo or a plain secret
        ("[reviewers.alice\n", "not valid TOML"),
    ],
)
def test_a_bad_reviewers_file_is_refused(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "reviewers.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=says):
        load_reviewers(path)


def test_no_file_means_no_service() -> None:
    with pytest.raises(ConfigError, match="no anonymous access"):
        load_reviewers(None)


def test_the_envelope_is_locked_and_the_answer_editable() -> None:
    allowed = set(editable(TICKET))
    assert {"event_id", "route", "usage", "source", "agent"} <= LOCKED
    assert {"team", "priority", "category", "summary", "actions"} <= allowed
    assert not allowed & {"event_id", "route", "usage", "source", "confidence", "received_at"}
    assert "ticket_id" not in allowed  # ids identify; they are not the model's judgement


def test_the_form_sends_only_what_changed_text_as_text_and_the_rest_as_json() -> None:
    record = TICKET.model_copy(update={"team": "logistics"})
    form = {
        "csrf": "x",
        "field:team": "billing",
        "field:summary": record.summary,  # unchanged
        "field:actions": '[{"action": "escalate", "target": null, "confidence": 1.0}]',
        "field:requires_human": "true",
    }
    changes = _parse(record, form)
    assert changes == {
        "team": "billing",
        "actions": [{"action": "escalate", "target": None, "confidence": 1.0}],
        "requires_human": True,
    }


def test_the_source_event_is_shown_as_a_person_reads_it() -> None:
    import base64
    import json

    from evals.documents import load_invoices, render_pdf
    from streams.review.context import readable
    from streams.settings import Settings

    s = Settings()
    ticket = {"ticket_id": "T-1", "subject": "Refund", "body": "Charged twice."}
    assert readable(json.dumps(ticket).encode(), s) == "Subject: Refund\n\nCharged twice."
    inv = load_invoices()[0]
    pdf = {"document_id": "D-1", "content_base64": base64.b64encode(render_pdf(inv)).decode()}
    shown = readable(json.dumps(pdf).encode(), s)
    assert shown is not None
    assert shown.startswith("Document D-1 (application/pdf):")
    assert inv["vendor_name"] in shown  # the PDF's text, not base64
    assert (
        readable(b"\xff\xfe not UTF-8", s)
        == "base64:" + base64.b64encode(b"\xff\xfe not UTF-8").decode()
    )
    assert readable(None, s) is None


def test_untouched_fields_are_not_changes_whatever_the_browser_does_to_newlines() -> None:
    from streams.review.web import _parse

    record = TICKET.model_copy(
        update={"summary": "Two lines\nof summary", "reasoning": "CRLF\r\nkept", "team": "billing"}
    )
    form = {
        "field:summary": "Two lines\r\nof summary",  # a textarea's newlines come back as CRLF
        "field:reasoning": "CRLF\r\nkept",
        "field:team": "billing",
        "field:sentiment": "",  # an optional choice left at "(none)"
        "field:actions": " [ ] ",  # JSON, spaced differently
        "field:priority": "urgent",
    }
    assert _parse(record, form) == {"priority": "urgent"}
    assert _parse(record, {**form, "field:team": ""}) == {"priority": "urgent", "team": None}


def test_the_form_shows_choices_as_selects_and_long_text_as_textareas() -> None:
    from streams.review.web import choices, widget

    record = TICKET.model_copy(update={"summary": "a\nb", "reasoning": "short"})
    assert choices(TicketTriaged.model_fields["team"].annotation) == (
        ["billing", "tech_support", "account_security", "logistics", "customer_success"],
        True,
    )
    assert choices(TicketTriaged.model_fields["summary"].annotation) is None
    shown = {n: widget(record, n) for n in ("summary", "reasoning", "priority", "team", "actions")}
    assert shown == {
        "summary": "textarea", "reasoning": "input", "priority": "select", "team": "select",
        "actions": "textarea",
    }  # fmt: skip


def test_the_reviewers_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    import os

    from streams.review.auth import ReviewerBook

    path = tmp_path / "reviewers.toml"
    path.write_text(f'[reviewers.alice]\ntoken_sha256 = "{token_digest("t-a")}"\n')
    book = ReviewerBook(path)
    assert book.current().by_token("t-a") == "alice"
    new = tmp_path / "new.toml"
    new.write_text(f'[reviewers.bob]\ntoken_sha256 = "{token_digest("t-b")}"\n')
    os.replace(new, path)
    assert book.current().by_token("t-a") is None
    assert book.current().by_token("t-b") == "bob"
    path.write_text("[reviewers.bob\n")  # broken: nobody, until fixed
    assert book.current().reviewers == {}
    path.unlink()
    assert book.current().reviewers == {}


def test_a_password_change_changes_the_fingerprint_sessions_carry() -> None:
    one = Reviewers.model_validate(
        {"reviewers": {"alice": {"password_argon2": password_hash("pw-1-long")}}}
    )
    two = Reviewers.model_validate(
        {"reviewers": {"alice": {"password_argon2": password_hash("pw-1-long")}}}
    )
    key = b"k" * 32
    assert one.fingerprint("alice", key) == one.fingerprint("alice", key)
    assert one.fingerprint("alice", key) != two.fingerprint("alice", key)  # a new hash
    assert one.fingerprint("alice", key) != one.fingerprint("alice", b"x" * 32)
    assert one.fingerprint("bob", key) is None
