"""B12: the edit form rewrote multi-line fields. Every field was an ``<input type=text>``, which
drops newlines: editing one field of an item whose summary spans lines also recorded the summary
as changed (and posted it without its line breaks).

Now a field nobody touched is never a change (submitted values are compared after the browser's
CRLF newlines), text that may span lines is a ``textarea`` (its leading newline kept), and choice
fields are ``select``s. In a real headless Chromium against a running review service: one field
edited, exactly one change recorded on the reviewed topic."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas import codec
from schemas.records import ReviewDecision, TicketTriaged
from streams.settings import Settings
from tests.integration import kcat
from tests.integration.test_review_web import chromium
from tests.records import SAMPLES
from tests.security.review_helpers import PASSWORDS, Service, review_service

SUMMARY = "Parcel late.\nThe customer wrote twice:\n  once on Monday,\n  once today."
REASONING = "\nStarts with a line break.\r\nAnd has a CRLF one."
TICKET = next(r for r in SAMPLES if isinstance(r, TicketTriaged)).model_copy(
    update={"summary": SUMMARY, "reasoning": REASONING, "team": "logistics", "priority": "high"}
)


@pytest.fixture(scope="module")
def service(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = Path(tmp_path_factory.mktemp("b12"))
    with review_service(services, tmp, {"tickets": [TICKET]}) as s:
        yield s


async def test_editing_one_field_records_exactly_one_change(service: Service) -> None:
    from playwright.async_api import async_playwright

    [item] = service.items
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await browser.new_page()
            await page.goto(service.url + "/login")
            await page.fill("input[name=name]", "alice")
            await page.fill("input[name=password]", PASSWORDS["alice"])
            await page.click("button[type=submit]")
            await page.wait_for_url(service.url + "/")
            await page.goto(f"{service.url}/items/{item}")

            # Multi-line text is a textarea holding the value exactly; choices are selects.
            widgets = {
                name: await page.eval_on_selector(f"#f-{name}", "e => e.tagName.toLowerCase()")
                for name in ("summary", "reasoning", "category", "priority", "team", "actions")
            }
            assert widgets == {
                "summary": "textarea", "reasoning": "textarea", "category": "select",
                "priority": "select", "team": "select", "actions": "textarea",
            }  # fmt: skip
            assert await page.input_value("#f-summary") == SUMMARY
            assert await page.input_value("#f-reasoning") == REASONING.replace("\r\n", "\n")
            options = await page.eval_on_selector_all(
                "#f-team option", "os => os.map(o => o.value)"
            )
            assert options == [
                "", "billing", "tech_support", "account_security", "logistics", "customer_success"
            ]  # fmt: skip

            await page.select_option("#f-priority", "urgent")
            await page.click("#edit button[type=submit]")
            await page.wait_for_url(service.url + "/")
            assert f"Edited and approved {item}." in await page.inner_text("[role=status]")
        finally:
            await browser.close()

    s = service.settings
    [record] = kcat.consume(s.bootstrap_servers, s.topics.of("tickets", "reviewed"))
    decision = codec.decode_as(record.value or b"", ReviewDecision)
    assert [(c.field, json.loads(c.before), json.loads(c.after)) for c in decision.changes] == [
        ("priority", "high", "urgent")
    ]
    decided = codec.decode_as(decision.record or b"", TicketTriaged)
    assert (decided.summary, decided.reasoning) == (SUMMARY, REASONING)
    assert decided.priority == "urgent"
