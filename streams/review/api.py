"""``sluice review serve``: the JSON API and the web UI (:mod:`streams.review.web`) over the desk.

Every ``/api`` route needs ``Authorization: Bearer <token>`` of a configured reviewer
(:mod:`streams.review.auth`); anything else gets 401 before any handler runs. Pages need a
session (``/login``) and, for every form, its CSRF token. API errors are JSON
``{"error": reason, "message": ...}``: 404 unknown item, 409 claimed by another reviewer or
decided already, 422 an edit the record's schema refuses.

    GET  /api/items?flow=F&state=pending|decided|all    items, oldest first
    GET  /api/items/{id}                                one item, with its source event
    POST /api/items/{id}/claim | release
    POST /api/items/{id}/approve   {"comment": ...}
    POST /api/items/{id}/edit      {"changes": {field: value}, "comment": ...}
    POST /api/items/{id}/reject    {"reason": ...}
    GET  /api/metrics                                   decision rates per flow and field
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
import structlog
from aiohttp import web
from aiokafka import AIOKafkaProducer

from schemas.errors import ItemNotFound, ReviewConflict, ReviewError
from streams.metrics import track_review
from streams.review.auth import Reviewers, load_reviewers
from streams.review.context import (
    DESK,
    REVIEWERS,
    SESSIONS,
    SETTINGS,
    decision_metrics,
    render,
    source_of,
)
from streams.review.desk import ReviewDesk
from streams.review.sessions import SessionStore
from streams.review.state import ReviewState, TopicFeed
from streams.review.web import add_routes, guard
from streams.serve import add_routes as telemetry_routes
from streams.settings import Settings
from streams.telemetry import health_of

log = structlog.get_logger(__name__)

STATUS = {ItemNotFound: 404, ReviewConflict: 409}


#: Paths served without credentials: liveness, readiness and Prometheus metrics (counts only).
UNAUTHENTICATED = frozenset({"/healthz", "/health", "/health/live", "/metrics"})


@web.middleware
async def authenticate(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Refuse every request without valid credentials (health and ``/metrics`` excepted: probes
    and scrapers carry no reviewer token, and neither shows an item): a reviewer token for
    ``/api``, a session and its CSRF token for pages."""
    if request.path in UNAUTHENTICATED:
        return await handler(request)
    if not request.path.startswith("/api/"):
        return await guard(request, handler, request.app[SESSIONS])
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    reviewer = (
        request.app[REVIEWERS].by_token(token.strip()) if scheme.lower() == "bearer" else None
    )
    if reviewer is None:
        return _error(401, "unauthorized", "a valid reviewer token is required (Bearer)")
    request["reviewer"] = reviewer
    try:
        return await handler(request)
    except ReviewError as exc:
        return _error(STATUS.get(type(exc), 422), exc.reason, str(exc))


def _error(status: int, reason: str, message: str) -> web.Response:
    return web.json_response({"error": reason, "message": message}, status=status)


async def list_items(request: web.Request) -> web.Response:
    desk, settings = request.app[DESK], request.app[SETTINGS]
    flow = request.query.get("flow")
    state = request.query.get("state", "pending")
    if state == "pending":
        items = desk.state.pending(flow)
    elif state == "decided":
        items = desk.state.decided(flow)
    else:
        items = desk.state.pending(flow) + desk.state.decided(flow)
    claims = await desk.claims([i.id for i in items])
    return web.json_response([render(i, settings, claims[i.id]) for i in items])


async def show_item(request: web.Request) -> web.Response:
    desk, settings = request.app[DESK], request.app[SETTINGS]
    item = desk.item(request.match_info["id"])
    out = render(item, settings, await desk.claimed_by(item.id))
    out["source_event"], out["source_text"] = await source_of(item, settings)
    return web.json_response(out)


async def claim(request: web.Request) -> web.Response:
    seconds = await request.app[DESK].claim(request.match_info["id"], request["reviewer"])
    return web.json_response({"claimed_by": request["reviewer"], "for_s": seconds})


async def release(request: web.Request) -> web.Response:
    await request.app[DESK].release(request.match_info["id"], request["reviewer"])
    return web.json_response({"released": True})


async def approve(request: web.Request) -> web.Response:
    body = await _body(request)
    decision = await request.app[DESK].approve(
        request.match_info["id"], request["reviewer"], body.get("comment")
    )
    return web.json_response(decision.model_dump(mode="json", exclude={"record"}))


async def edit(request: web.Request) -> web.Response:
    body = await _body(request)
    changes = body.get("changes")
    if not isinstance(changes, dict):
        return _error(422, "invalid_edit", 'the body needs "changes": {field: value}')
    decision = await request.app[DESK].edit(
        request.match_info["id"], request["reviewer"], changes, body.get("comment")
    )
    return web.json_response(decision.model_dump(mode="json", exclude={"record"}))


async def reject(request: web.Request) -> web.Response:
    body = await _body(request)
    decision = await request.app[DESK].reject(
        request.match_info["id"], request["reviewer"], str(body.get("reason") or "")
    )
    return web.json_response(decision.model_dump(mode="json", exclude={"record"}))


async def metrics(request: web.Request) -> web.Response:
    return web.json_response(decision_metrics(request.app[DESK].state))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except json.JSONDecodeError as exc:
        raise web.HTTPBadRequest(text=f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return body


def create_review_app(
    desk: ReviewDesk, settings: Settings, reviewers: Reviewers, sessions: SessionStore
) -> web.Application:
    """The aiohttp application (API and UI routes, the auth middleware) over ``desk``."""
    app = web.Application(middlewares=[authenticate], client_max_size=1024 * 1024)
    app[DESK] = desk
    app[SETTINGS] = settings
    app[REVIEWERS] = reviewers
    app[SESSIONS] = sessions
    add_routes(app)
    app.router.add_get("/healthz", healthz)
    health = health_of(settings)
    telemetry_routes(app, health)

    async def close_health(app: web.Application) -> None:
        await health.close()

    app.on_cleanup.append(close_health)
    app.router.add_get("/api/items", list_items)
    app.router.add_get("/api/items/{id}", show_item)
    app.router.add_post("/api/items/{id}/claim", claim)
    app.router.add_post("/api/items/{id}/release", release)
    app.router.add_post("/api/items/{id}/approve", approve)
    app.router.add_post("/api/items/{id}/edit", edit)
    app.router.add_post("/api/items/{id}/reject", reject)
    app.router.add_get("/api/metrics", metrics)
    return app


def review_queue(state: ReviewState, flows: list[str]) -> dict[str, tuple[int, float | None]]:
    """Per flow: items pending and the oldest one's age (seconds), for the metrics."""
    now = datetime.now(UTC)
    queue: dict[str, tuple[int, float | None]] = {}
    for flow in flows:
        pending = state.pending(flow)
        queue[flow] = (len(pending), max((i.age_s(now) for i in pending), default=None))
    return queue


async def serve(settings: Settings, flows: list[str]) -> None:
    """Run the review service for ``flows`` until SIGINT or SIGTERM."""
    from streams import compose
    from streams.topics import ensure_topics

    reviewers = load_reviewers(settings.reviewers_file)
    await ensure_topics(settings)
    codec = compose.codec(settings)
    state = ReviewState()
    feed = TopicFeed(settings, flows, state, codec)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, acks="all", enable_idempotence=True
    )
    redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5)
    await producer.start()
    await feed.start()
    runner: web.AppRunner | None = None
    try:
        await feed.caught_up()

        async def send(topic: str, key: bytes, value: bytes, headers: list[Any]) -> None:
            await producer.send_and_wait(topic, value, key=key, headers=headers)

        desk = ReviewDesk(
            state,
            redis,
            send,
            lambda flow: settings.topics.of(flow, "reviewed"),
            prefix=f"sluice:review:{settings.app_id}",
            claim_s=settings.review_claim_s,
            codec=codec,
        )
        sessions = SessionStore(redis, f"sluice:review:{settings.app_id}")
        app = create_review_app(desk, settings, reviewers, sessions)
        track_review(lambda: review_queue(state, flows))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.review_host, settings.review_port).start()
        log.info(
            "review.serving",
            url=f"http://{settings.review_host}:{settings.review_port}",
            flows=flows,
            pending=len(state.pending()),
            started=datetime.now(UTC).isoformat(),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        if runner is not None:
            await runner.cleanup()
        await feed.stop()
        await producer.stop()
        await redis.aclose()
