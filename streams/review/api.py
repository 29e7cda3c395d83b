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
import base64
import contextlib
import json
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
import structlog
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.errors import ItemNotFound, ReviewConflict, ReviewError
from schemas.records import Source
from streams.review.auth import Reviewers, load_reviewers
from streams.review.desk import ReviewDesk, editable
from streams.review.state import Item, ReviewState, TopicFeed
from streams.review.web import SessionStore, add_routes, guard
from streams.settings import Settings

log = structlog.get_logger(__name__)

DESK: web.AppKey[ReviewDesk] = web.AppKey("desk", ReviewDesk)
SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
REVIEWERS: web.AppKey[Reviewers] = web.AppKey("reviewers", Reviewers)
SESSIONS: web.AppKey[SessionStore] = web.AppKey("sessions", SessionStore)
STATUS = {ItemNotFound: 404, ReviewConflict: 409}


@web.middleware
async def authenticate(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Refuse every request without valid credentials (``/healthz`` excepted): a reviewer token
    for ``/api``, a session and its CSRF token for pages."""
    if request.path == "/healthz":
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


def render(item: Item, settings: Settings, claimed_by: str | None = None) -> dict[str, Any]:
    """An item as the API shows it."""
    age = item.age_s()
    out: dict[str, Any] = {
        "id": item.id,
        "flow": item.flow,
        "event_id": item.event_id,
        "kind": item.kind,
        "confidence": item.confidence,
        "reason": item.reason,
        "age_s": round(age, 1),
        "sla_breached": item.decision is None and age > settings.review_sla_s,
        "claimed_by": claimed_by,
        "low_confidence": item.low_confidence(settings.auto_threshold),
        "editable": editable(item.record),
        "record": item.record.model_dump(mode="json"),
        "decision": None,
    }
    if item.decision is not None:
        out["decision"] = item.decision.model_dump(mode="json", exclude={"record"})
    return out


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
    claims = [await desk.claimed_by(i.id) for i in items]
    return web.json_response([render(i, settings, c) for i, c in zip(items, claims, strict=True)])


async def show_item(request: web.Request) -> web.Response:
    desk, settings = request.app[DESK], request.app[SETTINGS]
    item = desk.item(request.match_info["id"])
    out = render(item, settings, await desk.claimed_by(item.id))
    source = getattr(item.record, "source", None)
    if isinstance(source, Source):
        raw = await fetch(settings, source)
        out["source_event"] = _text(raw)
        out["source_text"] = await asyncio.to_thread(readable, raw, settings)  # pypdf is slow
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


def decision_metrics(state: ReviewState) -> dict[str, Any]:
    """Per flow: pending count and oldest age, decisions by verdict with their rates, and how
    often each field was edited."""
    out: dict[str, Any] = {}
    for flow in sorted({i.flow for i in state.items.values()}):
        pending = state.pending(flow)
        decided = [i.decision for i in state.decided(flow) if i.decision]
        verdicts = Counter(d.verdict for d in decided)
        fields = Counter(c.field for d in decided for c in d.changes)
        n = len(decided)
        audits = [i.decision for i in state.decided(flow) if i.decision and i.kind == "audit"]
        right = sum(1 for d in audits if d.verdict == "approve")
        out[flow] = {
            "pending": len(pending),
            "oldest_pending_s": round(max((i.age_s() for i in pending), default=0.0), 1),
            "decided": n,
            "verdicts": dict(verdicts),
            "rates": {v: round(verdicts[v] / n, 4) for v in ("approve", "correct", "reject")}
            if n
            else {},
            "field_edit_rate": {f: round(k / n, 4) for f, k in sorted(fields.items())},
            # Audit samples approved as they were, over all decided samples: the auto lane's
            # precision as reviewers judge it (None until a sample is decided).
            "audit_decided": len(audits),
            "auto_precision": round(right / len(audits), 4) if audits else None,
        }
    return out


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


def readable(raw: bytes | None, settings: Settings) -> str | None:
    """The source event as a reviewer reads it: a ticket's subject and body, a document's text
    (PDFs through pypdf), otherwise the raw value. Never raises: a failure shows the raw value."""
    text = _text(raw)
    if raw is None or text is None:
        return None
    try:
        value = json.loads(raw)
        if isinstance(value, dict) and "document_id" in value:
            from agents.documents import load
            from schemas.events import DocumentReceived

            doc = load(DocumentReceived.model_validate(value), settings.document_dir)
            return f"Document {value['document_id']} ({doc.content_type}):\n\n{doc.text}"
        if isinstance(value, dict) and "ticket_id" in value:
            subject = str(value.get("subject") or "").strip()
            body = str(value.get("body") or "").strip()
            return f"Subject: {subject}\n\n{body}" if subject else body
    except Exception:  # a reviewer still sees the bytes
        return text
    return text


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(raw[:4096]).decode()


async def fetch(settings: Settings, where: Source) -> bytes | None:
    """The value of the one record at ``where`` (the input event a result came from)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(where.topic, where.partition)
        consumer.assign([tp])
        consumer.seek(tp, where.offset)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                message = await consumer.getone(tp)
                if message.offset == where.offset:
                    return message.value  # type: ignore[no-any-return]
        return None
    finally:
        await consumer.stop()


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
    app.router.add_get("/api/items", list_items)
    app.router.add_get("/api/items/{id}", show_item)
    app.router.add_post("/api/items/{id}/claim", claim)
    app.router.add_post("/api/items/{id}/release", release)
    app.router.add_post("/api/items/{id}/approve", approve)
    app.router.add_post("/api/items/{id}/edit", edit)
    app.router.add_post("/api/items/{id}/reject", reject)
    app.router.add_get("/api/metrics", metrics)
    return app


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

        async def send(topic: str, key: bytes, value: bytes) -> None:
            await producer.send_and_wait(topic, value, key=key)

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
