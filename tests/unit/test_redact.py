"""Redaction: no credential reaches a log line or a dead letter; PII redaction keeps what an agent
needs (dates, amounts, invoice numbers)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog

from agents.redact import (
    REDACTED,
    luhn_ok,
    redact_pii,
    register_secret,
    register_url_password,
    reset_secrets,
    scrub,
    scrub_value,
)
from schemas.errors import AgentError
from streams import logconfig
from streams.deadletter import dead_letter, headers, minimal
from streams.meta import Meta
from streams.settings import Settings

SECRET = "c0rrect-h0rse-battery"  # a registered value: no shape gives it away
SK = "sk-proj-Abc123def456GHI789jkl012MNO345pqr"  # a provider key shape, never registered


@pytest.fixture(autouse=True)
def _empty_registry() -> Iterator[None]:
    reset_secrets()
    yield
    reset_secrets()


# --- scrub ---------------------------------------------------------------------------------------

SCRUB_CASES = [
    # (text, expected): registered and well-known shapes replaced, the rest kept
    ("nothing to hide here", "nothing to hide here"),
    (f"key {SK} end", f"key {REDACTED} end"),
    ("sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz", REDACTED),
    ("task-abcdefghijklmnopqrstuvwxyz012345", "task-abcdefghijklmnopqrstuvwxyz012345"),
    ("Authorization: Bearer eyToken.abc-123", f"Authorization: {REDACTED}"),
    ("curl -H 'authorization: Basic dXNlcjpwYXNz'", f"curl -H 'authorization: {REDACTED}'"),
    ("sent Bearer abcDEF123456 to it", f"sent Bearer {REDACTED} to it"),
    ("Basic authentication failed", "Basic authentication failed"),
    ("X-Api-Key: 9f8e7d6c5b4a", f"X-Api-Key: {REDACTED}"),
    ("Cookie: session=abc123; theme=dark", f"Cookie: {REDACTED}"),
    ("redis://:hunter2@redis:6379/0", f"redis://:{REDACTED}@redis:6379/0"),
    ("postgresql://ledger:p@ss@db:5432/x", f"postgresql://ledger:{REDACTED}@db:5432/x"),
    ("http://host:8080/path@v2", "http://host:8080/path@v2"),
    ("GET /v1?api_key=abc123&page=2", f"GET /v1?api_key={REDACTED}&page=2"),
    ("password=abc token=xyz", f"password={REDACTED} token={REDACTED}"),
    ("openai_api_key = abc123", f"openai_api_key = {REDACTED}"),
    ("{'ledger_password': 'p4ss', 'n': 1}", f"{{'ledger_password': '{REDACTED}', 'n': 1}}"),
    ('{"client_secret": "it\\"s"}', f'{{"client_secret": "{REDACTED}"}}'),
    ("mypassword=abc", "mypassword=abc"),  # not a key of ours: a word that ends in one
    ("max_tokens=512 prompt_tokens: 12 tokens=3", "max_tokens=512 prompt_tokens: 12 tokens=3"),
    ("AKIAIOSFODNN7EXAMPLE", REDACTED),
    ("ghp_" + "a1" * 18, REDACTED),
    (f"registered {SECRET}!", f"registered {REDACTED}!"),
    (f"inside:{SECRET}suffix", f"inside:{REDACTED}suffix"),
    (f"password={SECRET[:8]} {SECRET[8:]}", f"password={REDACTED} {SECRET[8:]}"),
]


@pytest.mark.parametrize(("text", "expected"), SCRUB_CASES)
def test_scrub(text: str, expected: str) -> None:
    register_secret(SECRET)
    assert scrub(text) == expected
    assert scrub(expected) == expected  # idempotent: scrubbing twice changes nothing


def test_a_registered_secret_with_spaces_is_not_half_taken_by_a_shape() -> None:
    register_secret("correct horse battery")
    assert scrub("password=correct horse battery ok") == f"password={REDACTED} ok"


def test_nothing_to_do_returns_the_same_object() -> None:
    text = "route.decided for tickets"
    assert scrub(text) is text


def test_short_values_are_not_registered() -> None:
    register_secret("admin")
    assert scrub("admin logged in") == "admin logged in"


def test_reset_forgets_registered_secrets() -> None:
    register_secret(SECRET)
    reset_secrets()
    assert scrub(SECRET) == SECRET


def test_url_password_is_registered_as_written_and_decoded() -> None:
    register_url_password("redis://default:p%40ss-w0rd@redis:6379/0")
    assert scrub("auth failed: p@ss-w0rd") == f"auth failed: {REDACTED}"
    assert scrub("auth failed: p%40ss-w0rd") == f"auth failed: {REDACTED}"


VALUE_CASES: list[tuple[Any, Any]] = [
    ({"api_key": "plain"}, {"api_key": REDACTED}),
    ({"Authorization": "whatever"}, {"Authorization": REDACTED}),
    (
        {"openai_api_key": "x1", "ledger_password": b"p"},
        {"openai_api_key": REDACTED, "ledger_password": REDACTED},
    ),  # fmt: skip
    ({"set-cookie": "a=1", "x-api-key": "k"}, {"set-cookie": REDACTED, "x-api-key": REDACTED}),
    (
        {"prompt_tokens": 812, "completion_tokens": 40, "total_tokens": 852, "max_tokens": 1024},
        {"prompt_tokens": 812, "completion_tokens": 40, "total_tokens": 852, "max_tokens": 1024},
    ),
    ({"tokens": 812, "token": 3}, {"tokens": 812, "token": 3}),  # counts, not credentials
    (
        {"headers": {"authorization": "Bearer abcDEF123456"}},
        {"headers": {"authorization": REDACTED}},
    ),
    (
        {"calls": [{"url": "redis://:pw1234@r"}, ("ok", SECRET)]},
        {"calls": [{"url": f"redis://:{REDACTED}@r"}, ("ok", REDACTED)]},
    ),  # fmt: skip
    ([1, 2.5, None, True, SECRET], [1, 2.5, None, True, REDACTED]),
    ({"key": "an idempotency key", "n": 1}, {"key": "an idempotency key", "n": 1}),
]


@pytest.mark.parametrize(("value", "expected"), VALUE_CASES)
def test_scrub_value(value: Any, expected: Any) -> None:
    register_secret(SECRET)
    assert scrub_value(value) == expected


def test_scrub_value_leaves_other_types_unless_asked_for_their_repr() -> None:
    register_secret(SECRET)
    error = ValueError(f"bad {SECRET}")
    assert scrub_value(error) is error
    assert scrub_value(error, repr_others=True) == f"ValueError('bad {REDACTED}')"
    unchanged = {"a": [1, "x"], "b": ("y",)}
    assert scrub_value(unchanged) is unchanged  # nothing copied when nothing changed


# --- PII -----------------------------------------------------------------------------------------

PII_CASES = [
    ("write to jane.doe+billing@example.co.uk today", "write to [EMAIL] today"),
    ("call +1 (555) 123-4567.", "call [PHONE]."),
    ("(555) 123-4567", "[PHONE]"),
    ("555-123-4567 or 555.123.4567", "[PHONE] or [PHONE]"),
    ("+44 20 7946 0958", "[PHONE]"),
    ("tel:+4930901820", "tel:[PHONE]"),
    ("020 7946 0958 / 06 12 34 56 78 / 0612345678", "[PHONE] / [PHONE] / [PHONE]"),
    ("card 4111 1111 1111 1111 exp 12/27", "card [CARD] exp 12/27"),
    ("4111-1111-1111-1111 and 378282246310005", "[CARD] and [CARD]"),
    (
        "on 2024-03-15 [PHONE]? no: 2024-03-15 555-123-4567",
        "on 2024-03-15 [PHONE]? no: 2024-03-15 [PHONE]",
    ),
    # negatives: what the text is about stays
    ("4111 1111 1111 1112", "4111 1111 1111 1112"),  # fails Luhn
    ("invoice INV-2024-0042 dated 2024-01-31", "invoice INV-2024-0042 dated 2024-01-31"),
    ("due 15.03.2024 or 03/15/2024 at 10:30:00", "due 15.03.2024 or 03/15/2024 at 10:30:00"),
    ("2024-03-15T10:30:00Z", "2024-03-15T10:30:00Z"),
    ("from 2024-03-15 - 2024-03-20", "from 2024-03-15 - 2024-03-20"),
    (
        "total 1,234.56 EUR, 12.345.678 or 1234567.89",
        "total 1,234.56 EUR, 12.345.678 or 1234567.89",
    ),
    (
        "order 1234567890, PO 4500012345, ticket 48213",
        "order 1234567890, PO 4500012345, ticket 48213",
    ),
    ("host 10.10.100.200 version 1.2.3", "host 10.10.100.200 version 1.2.3"),
    ("user@localhost is not an address", "user@localhost is not an address"),
]


@pytest.mark.parametrize(("text", "expected"), PII_CASES)
def test_redact_pii(text: str, expected: str) -> None:
    assert redact_pii(text) == expected


@pytest.mark.parametrize(
    ("digits", "ok"),
    [("4111111111111111", True), ("378282246310005", True), ("5555555555554444", True),
     ("4111111111111112", False), ("1234567812345678", False), ("79927398713", True)],
)  # fmt: skip
def test_luhn(digits: str, ok: bool) -> None:
    assert luhn_ok(digits) is ok


# --- logs ----------------------------------------------------------------------------------------


def test_configured_logging_never_prints_a_registered_secret(
    capsys: pytest.CaptureFixture[str],
) -> None:
    register_secret(SECRET)
    # configured here, not in a fixture: the handler keeps the sys.stderr it finds, and the
    # test phase's is the one capsys reads
    logconfig.configure("debug", "json")
    try:
        log = structlog.get_logger("tests.redact")
        log.info("marker.field", detail=f"connecting with {SECRET}", api_key="not-a-shape-1")
        log.warning(f"marker.text {SECRET} and {SK}")
        try:
            raise RuntimeError(f"provider said: invalid key {SECRET}")
        except RuntimeError as exc:
            log.error("marker.exc", exc_info=True, error=exc)
        logging.getLogger("aiokafka").warning(
            "marker.foreign password=%s url=%s", SECRET, "redis://:pw-123456@r:6379"
        )
        cut = "x" * (logconfig.MAX_FOREIGN_MESSAGE_CHARS - 20) + SECRET  # cut through the secret
        logging.getLogger("faust").warning("marker.long %s", cut)
        out = capsys.readouterr().err
    finally:
        logconfig.configure("info", "console")
    for marker in ("marker.field", "marker.text", "marker.exc", "marker.foreign", "marker.long"):
        assert marker in out
    assert "Traceback" in out
    assert "RuntimeError: provider said" in out  # the stack trace is scrubbed, not dropped
    assert SECRET not in out
    assert SECRET[:6] not in out  # not even the part before a cut
    assert SK not in out
    assert "not-a-shape-1" not in out
    assert "pw-123456" not in out


def test_settings_register_every_configured_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "provider-key-0001")
    monkeypatch.setenv("REDIS_URL", "redis://default:redis-pw-0002@redis:6379/0")
    monkeypatch.setenv("SLUICE_LEDGER_URL", "postgresql://ledger:ledger-pw-0003@db/ledger")
    monkeypatch.setenv("SLUICE_REVIEW_TOKEN", "review-token-0004")
    monkeypatch.setenv("SLUICE_SECRETS", "own-secret-0005, own-secret-0006")
    settings = Settings()
    assert settings.register_secrets() is settings
    for value in ("provider-key-0001", "redis-pw-0002", "ledger-pw-0003", "review-token-0004",
                  "own-secret-0005", "own-secret-0006"):  # fmt: skip
        assert scrub(f"failed: {value}.") == f"failed: {REDACTED}."
    assert scrub("redis:6379") == "redis:6379"  # hosts are not secrets


# --- dead letters --------------------------------------------------------------------------------


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, bytes):
        yield value.decode("utf-8", "replace")
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def test_dead_letter_carries_no_secret_except_in_the_original_value() -> None:
    register_secret(SECRET)
    original = f'{{"text": "my key is {SK}", "pw": "{SECRET}"}}'.encode()
    meta = Meta("tickets.received", 0, 7, datetime.now(UTC), b"t-1", original)
    try:
        try:
            raise ConnectionError(f"redis://:{SECRET}@redis refused")
        except ConnectionError as cause:
            raise AgentError(f"provider rejected {SK} (Authorization: Bearer {SECRET})") from cause
    except AgentError as exc:
        record = dead_letter(exc, meta, event_id="e-1", flow="tickets", max_message_bytes=1 << 20)
    last = minimal(meta, event_id="e-1", flow="tickets", reason="outcome_unwritable",
                   message=f"send failed: {SECRET}", error_class="x.Y")  # fmt: skip
    assert record.original_value == original  # the user's input, kept for redrive
    assert "ConnectionError" in record.stacktrace  # the cause's trace is kept, scrubbed
    assert REDACTED in record.error_message
    for letter in (record, last):
        fields = letter.model_dump(exclude={"original_value"})
        texts = [*_strings(fields), *_strings(headers(letter))]
        assert not [t for t in texts if SECRET in t or SK in t]


def test_dead_letter_headers_are_scrubbed_whatever_built_the_record() -> None:
    register_secret(SECRET)
    meta = Meta("tickets.received", 0, 7, None, None, b"{}")
    record = minimal(
        meta, event_id="e-1", flow="tickets", reason="other", message="m", error_class="x.Y"
    ).model_copy(  # fmt: skip
        update={"error_message": f"token {SECRET}", "stacktrace": f"Traceback: {SK}"}
    )
    texts = [v.decode() for _, v in headers(record)]
    assert not [t for t in texts if SECRET in t or SK in t]
