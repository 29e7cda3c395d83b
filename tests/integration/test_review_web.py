"""The review web UI: sessions and CSRF refuse what they must, and a reviewer clears an item in a
real headless Chromium (Debian's ``chromium`` package, driven by Playwright; nothing downloads a
browser). The decision is then read from Kafka with kcat and decoded.

The browser test saves screenshots to ``.local/artifacts/`` (the queue, the item, the result).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from agents.testing.fault_server import answer_marker
from schemas import codec
from schemas.records import ReviewDecision, TicketTriaged
from streams.review.auth import password_hash, token_digest
from tests.integration import kcat
from tests.integration.conftest import (
    ROOT,
    Isolated,
    Worker,
    fake_model_env,
    free_port,
    send_values,
    start_worker,
    stop,
)
from tests.integration.test_review_service import TOKENS, Api, serve, wait_for
from tests.poison.corpus import TRIAGE_ANSWER

PASSWORD = "correct horse battery"
ARTIFACTS = ROOT / ".local" / "artifacts"


def chromium() -> str:
    """Debian's chromium (``make test`` installs it: infra/deps.sh)."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("chromium not found: run `make test` (infra/deps.sh installs Debian's chromium)")


@pytest.fixture
async def review(isolated: Isolated, fault_server: str, tmp_path: Path) -> AsyncIterator[str]:
    """A worker and a review service with two tickets pending; yields the service's URL."""
    s = isolated.settings
    port = free_port()
    reviewers = tmp_path / "reviewers.toml"
    reviewers.write_text(
        f'[reviewers.alice]\npassword_argon2 = "{password_hash(PASSWORD)}"\n'
        f'token_sha256 = "{token_digest(TOKENS["alice"])}"\n'
    )
    env = {
        **fake_model_env(isolated.env, fault_server),
        "SLUICE_REVIEWERS_FILE": str(reviewers),
        "SLUICE_REVIEW_PORT": str(port),
    }
    answer = {**TRIAGE_ANSWER, "confidence": 0.4, "category": "shipping", "team": "logistics"}
    answer["actions"] = [{"action": "route_to_team", "target": "logistics", "confidence": 0.5}]
    tickets = [
        {"event_id": f"web-{n}", "ticket_id": f"T-{n}",
         "body": f"Ticket {n}: my parcel is lost. {answer_marker(answer)}"}
        for n in range(2)
    ]  # fmt: skip
    worker = start_worker(env, tmp_path / "worker.log")
    service: Worker = serve(env, tmp_path / "review.log")
    try:
        await send_values(
            s.bootstrap_servers,
            s.topics.tickets_received,
            [json.dumps(t).encode() for t in tickets],
        )
        async with aiohttp.ClientSession() as session:
            await wait_for(Api(session, f"http://127.0.0.1:{port}"), service, 2)
        yield f"http://127.0.0.1:{port}"
        assert service.alive(), service.log_tail()
    finally:
        stop(service)
        stop(worker)


async def test_pages_need_a_session_and_forms_need_their_csrf_token(review: str) -> None:
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        # No session: every page sends you to log in; every form post is refused.
        for path in ("/", "/stats", "/items/tickets-0-0"):
            async with http.get(review + path, allow_redirects=False) as r:
                assert (r.status, r.headers["Location"]) == (303, "/login")
        async with http.post(review + "/items/x/approve", data={"csrf": "x"}) as r:
            assert r.status == 403

        # The login form has its own CSRF token; without it, or with a wrong password, no session.
        async with http.get(review + "/login") as r:
            html = await r.text()
            assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        login_csrf = html.split('name="csrf" value="')[1].split('"')[0]
        async with http.post(
            review + "/login", data={"name": "alice", "password": PASSWORD}, allow_redirects=False
        ) as r:
            assert r.status == 403
        async with http.post(
            review + "/login",
            data={"csrf": login_csrf, "name": "alice", "password": "wrong password"},
            allow_redirects=False,
        ) as r:
            assert r.status == 401
        async with http.get(review + "/", allow_redirects=False) as r:
            assert r.status == 303

        async with http.get(review + "/login") as r:
            login_csrf = (await r.text()).split('name="csrf" value="')[1].split('"')[0]
        async with http.post(
            review + "/login",
            data={"csrf": login_csrf, "name": "alice", "password": PASSWORD},
            allow_redirects=False,
        ) as r:
            assert (r.status, r.headers["Location"]) == (303, "/")
        async with http.get(review + "/") as r:
            queue = await r.text()
        assert r.status == 200
        assert queue.count('href="/items/tickets-') == 2
        item = queue.split('href="/items/')[1].split('"')[0]

        # Logged in, a form post without the session's CSRF token is still refused, and the
        # item stays pending; with it, the post works.
        async with http.post(review + f"/items/{item}/approve", data={}) as r:
            assert r.status == 403
        async with http.post(review + f"/items/{item}/approve", data={"csrf": "forged"}) as r:
            assert r.status == 403
        async with http.get(review + f"/items/{item}") as r:
            page = await r.text()
        assert "Decided:" not in page
        csrf = page.split('name="csrf" value="')[1].split('"')[0]
        async with http.post(
            review + f"/items/{item}/approve", data={"csrf": csrf}, allow_redirects=False
        ) as r:
            assert (r.status, r.headers["Location"]) == (303, "/")

        # The API does not accept the session cookie: it wants a token.
        async with http.get(review + "/api/items") as r:
            assert r.status == 401


async def test_a_reviewer_clears_the_queue_in_a_real_browser(
    review: str, isolated: Isolated
) -> None:
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(review + "/")
            assert page.url.endswith("/login")
            await page.fill("input[name=name]", "alice")
            await page.fill("input[name=password]", PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_url(review + "/")
            rows = page.locator("a[href^='/items/tickets-']")
            assert await rows.count() == 2
            await page.screenshot(path=str(ARTIFACTS / "review-queue.png"), full_page=True)

            await rows.first.click()
            await page.wait_for_selector("#source")
            assert "my parcel is lost" in await page.inner_text("#source")
            low = page.locator("#fields tr.low")
            assert await low.count() >= 1  # the low-confidence action is highlighted
            item = page.url.rsplit("/", 1)[1]
            await page.select_option("#f-team", "billing")
            await page.fill("#edit input[name=comment]", "billing issue, not shipping")
            await page.screenshot(path=str(ARTIFACTS / "review-item.png"), full_page=True)
            await page.click("#edit button[type=submit]")
            await page.wait_for_url(review + "/")
            assert f"Edited and approved {item}." in await page.inner_text("[role=status]")
            rest = page.locator("a[href^='/items/tickets-']")
            assert await rest.count() == 1

            # The last one is wrong: reject it with a reason. The queue is then clear.
            await rest.first.click()
            await page.wait_for_selector("#source")
            await page.fill("form[action$='/reject'] input[name=reason]", "duplicate of T-0")
            await page.click("form[action$='/reject'] button[type=submit]")
            await page.wait_for_url(review + "/")
            assert "Nothing pending." in await page.inner_text("main")
            await page.screenshot(path=str(ARTIFACTS / "review-done.png"), full_page=True)
        finally:
            await browser.close()
    browser_s = time.monotonic() - began

    s = isolated.settings
    records = kcat.consume(s.bootstrap_servers, s.topics.of("tickets", "reviewed"))
    assert len(records) == 2
    decisions = [codec.decode_as(r.value or b"", ReviewDecision) for r in records]
    decision = next(d for d in decisions if d.verdict != "reject")
    rejected = next(d for d in decisions if d.verdict == "reject")
    assert (rejected.comment, rejected.record) == ("duplicate of T-0", None)
    assert (decision.reviewer, decision.verdict) == ("alice", "correct")
    assert decision.comment == "billing issue, not shipping"
    assert [(c.field, json.loads(c.before), json.loads(c.after)) for c in decision.changes] == [
        ("team", "logistics", "billing")
    ]
    assert codec.decode_as(decision.record or b"", TicketTriaged).team == "billing"
    print(f"\nmeasured: browser test {browser_s:.1f} s (login, queue, edit+approve, reject)")
