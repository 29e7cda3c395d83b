"""``sluice review serve``: the JSON API and the web UI (:mod:`streams.review.web`) over the desk.

Every ``/api`` route needs ``Authorization: Bearer <token>`` of a configured reviewer
(:mod:`streams.review.auth`); anything else gets 401 before any handler runs. Pages need a
session (``/login``) and, for every form, its CSRF token. API errors are JSON
``{"error": reason, "message": ...}``: 404 unknown item, 409 claimed by another reviewer or
decided already, 422 an edit the record's schema or the flow's business rules refuse, 400/413 a
body that is not a JSON object within the limits (:data:`BODY_LIMITS`: the input events' guard,
:mod:`schemas.jsonlimits`) or has fields of the wrong type. An approval or edit above the flow's
four-eyes amount answers 202 with the held decision; a second reviewer confirms it.

    GET  /api/items?flow=F&state=pending|decided|all    items, oldest first
    GET  /api/items/{id}                                one item, with its source event
    POST /api/items/{id}/claim | release
    POST /api/items/{id}/approve   {"comment": ...}
    POST /api/items/{id}/edit      {"changes": {field: value}, "comment": ...}
    POST /api/items/{id}/reject    {"reason": ...}
    POST /api/items/{id}/confirm   a second reviewer confirms a held decision
    GET  /api/metrics                                   decision rates per flow and field

Tokens are 256-bit random values checked with one SHA-256 (no Argon2, nothing to throttle: a
guess costs the service microseconds and has no chance); the reviewers file is read again when it
changes, so a removed reviewer's token stops working on the next request.
"""

from __future__ import annotations

import asyncio
import math
import signal
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import redis.asyncio as aioredis
import structlog
from aiohttp import web
from aiokafka import AIOKafkaProducer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas import jsonlimits
from schemas.errors import (
    InputError,
    InputTooDeep,
    InputTooLarge,
    ItemNotFound,
    ReviewConflict,
    ReviewError,
    validation_problems,
)
from streams.metrics import track_review
from streams.review.auth import LoginThrottle, ReviewerBook, load_reviewers
from streams.review.context import (
    DESK,
    SESSIONS,
    SETTINGS,
    decision_metrics,
    render,
    source_of,
)
from streams.review.desk import Pending, ReviewDesk
from streams.review.sessions import SessionStore, session_key
from streams.review.state import ReviewState, TopicFeed
from streams.review.web import BOOK, THROTTLE, add_routes, guard
from streams.serve import add_routes as telemetry_routes
from streams.settings import Settings
from streams.telemetry import health_of

log = structlog.get_logger(__name__)

STATUS = {ItemNotFound: 404, ReviewConflict: 409}
#: Every JSON body of the API: a decision's comment, reason and edit are small; nesting past a
#: record's own (an invoice's line items in a list) is never needed.
BODY_LIMITS = jsonlimits.Limits(
    max_bytes=256 * 1024, max_depth=8, max_string_chars=64 * 1024, max_int_digits=24
)
MAX_COMMENT = 2000


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApproveBody(_Body):
    comment: str | None = Field(None, max_length=MAX_COMMENT)


class EditBody(_Body):
    changes: dict[str, Any]
    comment: str | None = Field(None, max_length=MAX_COMMENT)


class RejectBody(_Body):
    reason: str = Field("", max_length=MAX_COMMENT)


class EmptyBody(_Body):
    pass


B = TypeVar("B", bound=_Body)


class BadBody(Exception):
    """A request body the API refuses before any handler logic: its status and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


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
        return await guard(request, handler)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    reviewers = request.app[BOOK].current()
    reviewer = reviewers.by_token(token.strip()) if scheme.lower() == "bearer" else None
    if reviewer is None:
        return _error(401, "unauthorized", "a valid reviewer token is required (Bearer)")
    request["reviewer"] = reviewer
    try:
        return await handler(request)
    except ReviewError as exc:
        return _error(STATUS.get(type(exc), 422), exc.reason, str(exc))
    except BadBody as exc:
        return _error(exc.status, exc.reason, str(exc))


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
    keys = [i.id for i in items]
    claims, held = await desk.claims(keys), await desk.pendings(keys)
    return web.json_response(
        [{**render(i, settings, claims[i.id]), "held": _held(held[i.id])} for i in items]
    )


def _held(pending: Pending | None) -> dict[str, Any] | None:
    return None if pending is None else asdict(pending)


async def show_item(request: web.Request) -> web.Response:
    desk, settings = request.app[DESK], request.app[SETTINGS]
    item = desk.item(request.match_info["id"])
    out = render(item, settings, await desk.claimed_by(item.id))
    out["held"] = _held(await desk.pending(item.id))
    out["source_event"], out["source_text"] = await source_of(item, settings)
    return web.json_response(out)


async def claim(request: web.Request) -> web.Response:
    await _body(request, EmptyBody)
    seconds = await request.app[DESK].claim(request.match_info["id"], request["reviewer"])
    return web.json_response({"claimed_by": request["reviewer"], "for_s": seconds})


async def release(request: web.Request) -> web.Response:
    await _body(request, EmptyBody)
    await request.app[DESK].release(request.match_info["id"], request["reviewer"])
    return web.json_response({"released": True})


async def approve(request: web.Request) -> web.Response:
    body = await _body(request, ApproveBody)
    done = await request.app[DESK].approve(
        request.match_info["id"], request["reviewer"], body.comment
    )
    return _decided(done)


async def edit(request: web.Request) -> web.Response:
    body = await _body(request, EditBody, required=True)
    done = await request.app[DESK].edit(
        request.match_info["id"], request["reviewer"], body.changes, body.comment
    )
    return _decided(done)


async def reject(request: web.Request) -> web.Response:
    body = await _body(request, RejectBody)
    decision = await request.app[DESK].reject(
        request.match_info["id"], request["reviewer"], body.reason
    )
    return _decided(decision)


async def confirm(request: web.Request) -> web.Response:
    await _body(request, EmptyBody)
    decision = await request.app[DESK].confirm(request.match_info["id"], request["reviewer"])
    return _decided(decision)


def _decided(done: Any) -> web.Response:
    """A decision as written (200), or one held for a second reviewer (202)."""
    if isinstance(done, Pending):
        message = f"moves {done.amount}, above {done.limit}: a second reviewer must confirm it"
        return web.json_response({"held": asdict(done), "message": message}, status=202)
    return web.json_response(done.model_dump(mode="json", exclude={"record"}))


async def metrics(request: web.Request) -> web.Response:
    return web.json_response(decision_metrics(request.app[DESK].state))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _body(request: web.Request, model: type[B], required: bool = False) -> B:
    """The request's JSON body as ``model``, read within :data:`BODY_LIMITS` (bytes, nesting,
    string length, integer digits, no NaN or duplicate keys) and typed by the model. Anything
    else is a :class:`BadBody` (400, 413 or 422) with a message that says what, never a 500.
    An empty body is ``{}`` unless ``required``."""
    if request.content_length is not None and request.content_length > BODY_LIMITS.max_bytes:
        raise BadBody(413, "body_too_large", f"the body may have {BODY_LIMITS.max_bytes} bytes")
    raw = await request.content.read(BODY_LIMITS.max_bytes + 1) if request.can_read_body else b""
    if not raw.strip():
        if required:
            raise BadBody(400, "bad_body", f"the body must be a JSON object ({model.__name__})")
        return model()
    try:
        value = jsonlimits.loads(raw, BODY_LIMITS)
    except InputTooLarge as exc:
        raise BadBody(413, "body_too_large", f"body refused: {exc}") from exc
    except (InputTooDeep, InputError) as exc:
        raise BadBody(400, "bad_body", f"body refused: {exc}") from exc
    if not isinstance(value, dict):
        raise BadBody(
            400, "bad_body", f"the body must be a JSON object, not {type(value).__name__}"
        )
    _finite(value)
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise BadBody(422, "bad_body", validation_problems(exc)) from exc


def _finite(value: Any) -> None:
    """Refuse numbers JSON parses to infinity (``1e999``): no amount or count of ours."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise BadBody(400, "bad_body", "a number in the body is too large (infinite)")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def create_review_app(
    desk: ReviewDesk,
    settings: Settings,
    book: ReviewerBook,
    sessions: SessionStore,
    throttle: LoginThrottle,
) -> web.Application:
    """The aiohttp application (API and UI routes, the auth middleware) over ``desk``."""
    app = web.Application(middlewares=[authenticate], client_max_size=1024 * 1024)
    app[DESK] = desk
    app[SETTINGS] = settings
    app[BOOK] = book
    app[SESSIONS] = sessions
    app[THROTTLE] = throttle
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
    app.router.add_post("/api/items/{id}/confirm", confirm)
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
    from streams.decisions import load_keys
    from streams.flow import registered
    from streams.policy import Policy, load_policy
    from streams.topics import ensure_topics

    reviewers = load_reviewers(settings.reviewers_file)
    assert settings.reviewers_file is not None  # load_reviewers refused None
    book = ReviewerBook(settings.reviewers_file, reviewers)
    secret = settings.review_session_key
    key = session_key(
        secret.get_secret_value() if secret else None, settings.review_session_key_file
    )
    policy = (
        load_policy(settings.policy_file, threshold=settings.auto_threshold)
        if settings.policy_file
        else Policy()
    )

    def four_eyes(flow: str) -> Decimal:
        found = policy.of(flow).four_eyes_amount
        return settings.review_amount if found is None else found

    signer = load_keys(settings)  # a key problem stops the start, before any decision
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
            signer=signer,
            specs={spec.name: spec for spec in registered()},
            four_eyes=four_eyes,
        )
        prefix = f"sluice:review:{settings.app_id}"
        sessions = SessionStore(redis, prefix, key)
        throttle = LoginThrottle(
            redis,
            prefix,
            per_name=settings.review_login_attempts,
            per_client=settings.review_login_client_attempts,
            max_delay_s=settings.review_login_max_delay_s,
        )
        app = create_review_app(desk, settings, book, sessions, throttle)
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
