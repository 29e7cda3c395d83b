"""B14: 500 on malformed bodies. The review API parsed bodies with ``request.json()`` and used
their fields untyped: deep nesting raised ``RecursionError``, a number comment or a list of
changes reached the decision model, non-UTF-8 bytes a ``UnicodeDecodeError``; each a 500.

Now every JSON body goes through the input events' guard (:mod:`schemas.jsonlimits`: bytes,
depth, string length, integer digits, no NaN or duplicate keys) and a typed model: 400, 413 or
422 with a message that says what is wrong. So does JSON typed into the web form's fields.
Against a running review service: every body below is refused with a 4xx, nothing is decided,
and the service stays up."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from pydantic import BaseModel

from schemas.records import InvoiceExtracted, TicketTriaged
from streams.settings import Settings
from tests.records import SAMPLES
from tests.security.review_helpers import PASSWORDS, Service, api, csrf_of, login, review_service

TICKET = next(r for r in SAMPLES if isinstance(r, TicketTriaged))
INVOICE = next(r for r in SAMPLES if isinstance(r, InvoiceExtracted))


@pytest.fixture(scope="module")
def service(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    records: dict[str, list[BaseModel]] = {"tickets": [TICKET], "invoices": [INVOICE]}
    with review_service(services, Path(tmp_path_factory.mktemp("b14")), records) as s:
        yield s


DEEP = b'{"changes": {"summary": ' + b"[" * 5000 + b"]" * 5000 + b"}}"
#: (what, action, body bytes): each must be answered 4xx.
BODIES: list[tuple[str, str, bytes]] = [
    ("deep nesting", "edit", DEEP),
    ("deep nesting, no object", "approve", b"[" * 100_000),
    ("deep nesting in a comment", "approve", b'{"comment": ' + b"{" * 40 + b"}" * 40 + b"}"),
    ("a 5,000-digit integer", "edit", b'{"changes": {"priority": ' + b"9" * 5000 + b"}}"),
    ("a float beyond double", "approve", b'{"comment": 1e999999}'),
    ("infinite amount", "edit", b'{"changes": {"total": 1e400}}'),
    ("NaN literal", "edit", b'{"changes": {"total": NaN}}'),
    ("NaN as text", "edit", b'{"changes": {"total": "NaN"}}'),
    ("a comment that is a number", "approve", b'{"comment": 5}'),
    ("a comment that is a list", "approve", b'{"comment": ["a"]}'),
    ("changes as a list", "edit", b'{"changes": [1, 2]}'),
    ("changes as a string", "edit", b'{"changes": "team=billing"}'),
    ("changes missing", "edit", b'{"comment": "x"}'),
    ("no body for an edit", "edit", b""),
    ("a reason that is an object", "reject", b'{"reason": {"a": 1}}'),
    ("an unknown key", "approve", b'{"comment": "ok", "reviewer": "bob"}'),
    ("duplicate keys", "approve", b'{"comment": "a", "comment": "b"}'),
    ("a NUL in a string", "approve", b'{"comment": "a\\u0000b"}'),
    ("a lone surrogate", "approve", b'{"comment": "\\ud800"}'),
    ("not JSON", "approve", b"approve it please"),
    ("truncated JSON", "edit", b'{"changes": {"team": "billing"'),
    ("UTF-16", "approve", '{"comment": "x"}'.encode("utf-16")),
    ("not UTF-8", "approve", b'{"comment": "\xff\xfe"}'),
    ("a JSON array", "approve", b"[]"),
    ("a JSON number", "approve", b"42"),
    ("JSON null", "reject", b"null"),
    ("a JSON string", "approve", b'"approve"'),
    ("a body for a claim", "claim", b'{"reviewer": "bob"}'),
    ("a 300 KB comment", "approve", b'{"comment": "' + b"x" * 300_000 + b'"}'),
    ("a 2 MB body", "edit", b'{"changes": {"summary": "' + b"x" * 2_000_000 + b'"}}'),
    ("a 3 KB comment", "reject", json.dumps({"reason": "x" * 3000}).encode()),
    ("a summary of the wrong type", "edit", b'{"changes": {"summary": {"a": 1}}}'),
    ("actions not a list", "edit", b'{"changes": {"actions": "escalate"}}'),
    ("an action of the wrong shape", "edit", b'{"changes": {"actions": [{"action": 5}]}}'),
]
INVOICE_BODIES: list[tuple[str, str, bytes]] = [
    ("a line item of the wrong type", "edit", b'{"changes": {"line_items": [{"x": 1}]}}'),
    ("a total with 40 digits", "edit", b'{"changes": {"total": "1' + b"0" * 40 + b'"}}'),
    ("a date that is not one", "edit", b'{"changes": {"issue_date": "2026-02-31"}}'),
    ("a date as a huge number", "edit", b'{"changes": {"issue_date": 1e308}}'),
]


async def test_malformed_bodies_are_refused_with_4xx_never_500(service: Service) -> None:
    ticket, invoice = service.items
    answers: list[tuple[str, int, str]] = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        cases = [(ticket, c) for c in BODIES] + [(invoice, c) for c in INVOICE_BODIES]
        for item, (what, action, body) in cases:
            status, answer = await api(
                http, service.url, "POST", f"/api/items/{item}/{action}", data=io.BytesIO(body),
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            message = answer.get("message", "") if isinstance(answer, dict) else str(answer)
            answers.append((what, status, message[:90]))
            assert 400 <= status < 500, (what, status, answer)
            assert message, (what, "a 4xx says what is wrong")

        # The web form's JSON fields go through the same guard.
        assert await login(http, service.url, "alice", PASSWORDS["alice"]) == 303
        async with http.get(f"{service.url}/items/{ticket}") as r:
            csrf = csrf_of(await r.text())
        for what, text in [
            ("deep JSON in a form field", "[" * 50_000),
            ("a 5,000-digit number in a form field", "9" * 5000),
        ]:
            async with http.post(
                f"{service.url}/items/{ticket}/edit",
                data={"csrf": csrf, "field:actions": text},
                allow_redirects=False,
            ) as r:
                answers.append((what, r.status, ""))
                assert 400 <= r.status < 500, (what, r.status)

        # Nothing was decided, the service is alive and still answers.
        status, items = await api(http, service.url, "GET", "/api/items")
        assert status == 200
        assert sorted(i["id"] for i in items) == sorted(service.items)
        async with http.get(service.url + "/health/live") as r:
            assert r.status == 200
    assert service.proc.alive(), service.proc.log_tail()
    assert "Traceback" not in service.proc.log.read_text()
    print("\nmeasured: " + "; ".join(f"{w}: {s}" for w, s, _ in answers))


async def test_the_api_answers_rule_breaks_422_and_large_amounts_202(service: Service) -> None:
    """The same service, its wiring of B5/B6: the flows' rules and the four-eyes amount
    (``SLUICE_REVIEW_AMOUNT`` here, 10,000) reach the API's answers."""
    _, invoice = service.items
    url, path = service.url, f"/api/items/{invoice}"
    async with aiohttp.ClientSession() as http:
        status, body = await api(
            http, url, "POST", path + "/edit", json={"changes": {"currency": "XYZ"}}
        )
        assert (status, body["error"]) == (422, "invalid_edit")
        assert "ISO 4217" in body["message"]
        large = {"line_items": [{"description": "Work", "quantity": "1", "unit_price": "20000.00",
                                 "amount": "20000.00"}],
                 "subtotal": "20000.00", "tax": "0.00", "total": "20000.00"}  # fmt: skip
        status, body = await api(http, url, "POST", path + "/edit", json={"changes": large})
        assert status == 202, body
        assert (body["held"]["reviewer"], body["held"]["amount"]) == ("alice", "20000.00")
        status, shown = await api(http, url, "GET", path, who="bob")
        assert shown["held"]["verdict"] == "correct"
        assert (await api(http, url, "POST", path + "/confirm"))[0] == 409  # alice herself
        status, decision = await api(http, url, "POST", path + "/confirm", who="bob")
        assert status == 200, decision
        assert (decision["reviewer"], decision["second_reviewer"]) == ("alice", "bob")
        assert decision["verdict"] == "correct"
