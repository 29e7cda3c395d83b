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
