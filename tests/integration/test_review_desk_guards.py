"""The review desk's guarantees, one fast test each against real Redis and no Kafka (the desk's
writes go to a list): no decision without the item's claim, one decision at a time (the
"deciding" marker is taken with NX), no edit without validation, no form post without the
session's CSRF token. Each test uses its own key prefix and removes its keys."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import redis.asyncio as aioredis
from aiohttp import streams, web
from aiohttp.test_utils import make_mocked_request
from argon2 import PasswordHasher

from schemas.errors import InvalidEdit, ReviewConflict
from schemas.records import Source, TicketTriaged
from streams.flow import registered
from streams.review.auth import ReviewerBook
from streams.review.context import DESK, SESSIONS, SETTINGS
from streams.review.desk import ReviewDesk
from streams.review.sessions import SessionStore
from streams.review.state import ReviewState
from streams.review.web import BOOK, COOKIE, guard
from streams.settings import Settings
from tests.records import SAMPLES

TICKET = next(r for r in SAMPLES if isinstance(r, TicketTriaged))


class Sent(list[tuple[str, bytes]]):
    async def __call__(self, topic: str, key: bytes, value: bytes, headers: Any) -> None:
        self.append((topic, value))


def sent(desk: ReviewDesk) -> Sent:
    assert isinstance(desk.send, Sent)
    return desk.send


@pytest.fixture
async def desk(redis_settings: Settings) -> AsyncIterator[ReviewDesk]:
    redis = aioredis.Redis.from_url(redis_settings.redis_url)
    prefix = f"sluice:test:desk:{uuid.uuid4().hex}"
    yield ReviewDesk(
        ReviewState(),
        redis,
        Sent(),
        lambda flow: f"{flow}.reviewed",
        prefix=prefix,
        specs={spec.name: spec for spec in registered()},
    )
    keys = [k async for k in redis.scan_iter(f"{prefix}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


def _item(desk: ReviewDesk) -> str:
    return desk.state.add_item("tickets", Source(topic="tickets.review", partition=0, offset=0),
                               TICKET).id  # fmt: skip


async def test_deciding_needs_the_claim(desk: ReviewDesk) -> None:
    key = _item(desk)
    await desk.claim(key, "bob")
    with pytest.raises(ReviewConflict, match="claimed by bob"):
        await desk.approve(key, "alice")
    with pytest.raises(ReviewConflict, match="claimed by bob"):
        await desk.reject(key, "alice", "spam")
    assert sent(desk) == []
    assert desk.state.items[key].decision is None
    await desk.approve(key, "bob")
    assert len(sent(desk)) == 1


async def test_a_second_decision_waits_for_the_first_one_s_marker(desk: ReviewDesk) -> None:
    key = _item(desk)
    await desk.claim(key, "alice")
    # Another request (a double click, another replica) is writing its decision now.
    await desk.redis.set(f"{desk.prefix}:deciding:{key}", "other", nx=True, px=60_000)
    with pytest.raises(ReviewConflict, match="being decided"):
        await desk.approve(key, "alice")
    assert sent(desk) == []
    assert (
        await desk.redis.get(f"{desk.prefix}:deciding:{key}") == b"other"
    )  # the first one's marker stays
    # Two at once: exactly one is written.
    await desk.redis.delete(f"{desk.prefix}:deciding:{key}")
    results = await asyncio.gather(
        desk.approve(key, "alice"), desk.approve(key, "alice"), return_exceptions=True
    )
    assert sorted(type(r).__name__ for r in results) == ["ReviewConflict", "ReviewDecision"]
    assert len(sent(desk)) == 1


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"priority": "sky-high"}, "priority"),
        ({"team": "finance"}, "team"),
        ({"actions": "escalate"}, "actions"),
        ({"summary": None}, "summary"),
        ({"event_id": "forged"}, "cannot edit event_id"),
        ({"route": {"lane": "auto", "reason": "x", "threshold": 0}}, "cannot edit route"),
        ({"priority": TICKET.priority}, "changes nothing"),
    ],
)
async def test_an_edit_is_validated_before_anything_is_written(
    desk: ReviewDesk, changes: dict[str, Any], says: str
) -> None:
    key = _item(desk)
    with pytest.raises(InvalidEdit, match=says):
        await desk.edit(key, "alice", changes)
    assert sent(desk) == []
    assert desk.state.items[key].decision is None


async def _post(app: web.Application, body: bytes, sid: str, handler: Any) -> web.StreamResponse:
    payload = streams.StreamReader(
        mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop()
    )
    payload.feed_data(body)
    payload.feed_eof()
    request = make_mocked_request(
        "POST", "/items/tickets-0-0/approve",
        headers={"Content-Type": "application/x-www-form-urlencoded",
                 "Cookie": f"{COOKIE}={sid}"},
        payload=payload, app=app,
    )  # fmt: skip
    return await guard(request, handler)


# The handlers keep the reviewer and the session under str keys of the request.
@pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")
async def test_a_form_post_needs_the_session_s_csrf_token(desk: ReviewDesk, tmp_path: Path) -> None:
    reviewers = tmp_path / "reviewers.toml"
    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    reviewers.write_text(f'[reviewers.alice]\npassword_argon2 = "{cheap.hash("pw")}"\n')
    app = web.Application()
    book = ReviewerBook(reviewers)
    sessions = SessionStore(desk.redis, desk.prefix, b"k" * 32)
    app[BOOK], app[SESSIONS], app[DESK], app[SETTINGS] = book, sessions, desk, Settings()
    session = await sessions.create(
        "alice", book.current().fingerprint("alice", sessions.key) or ""
    )
    reached: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        reached.append(request["reviewer"])
        return web.Response(text="decided")

    for body in (
        b"",
        b"comment=ok",
        b"csrf=",
        b"csrf=forged",
        b"csrf=" + session.csrf[:-1].encode(),
    ):
        response = await _post(app, body, session.sid, handler)
        assert response.status == 403, body
    assert reached == []
    response = await _post(app, b"csrf=" + session.csrf.encode(), session.sid, handler)
    assert response.status == 200
    assert reached == ["alice"]
    # No session: refused whatever the token.
    response = await _post(app, b"csrf=" + session.csrf.encode(), "no-such-session", handler)
    assert response.status == 403
    assert reached == ["alice"]
