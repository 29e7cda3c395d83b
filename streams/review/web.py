"""The review web UI: server-rendered pages over the same desk as the JSON API.

Reviewers log in with their name and password (Argon2id hash in the reviewers file). A session is
a random id in an ``HttpOnly``, ``SameSite=Strict`` cookie naming a Redis hash (reviewer, CSRF
token, a one-shot message) that expires after ``SESSION_S``. Every form carries the session's
CSRF token, and a POST whose token is missing or wrong is refused with 403 before any handler runs;
the login form has its own double-submit token. Pages without a session redirect to ``/login``.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import jinja2
from aiohttp import web
from pydantic import BaseModel

from schemas.errors import ReviewError
from streams.review.context import (
    DESK,
    REVIEWERS,
    SESSIONS,
    SETTINGS,
    decision_metrics,
    render,
    source_of,
)
from streams.review.desk import editable
from streams.review.sessions import SESSION_S, Session, SessionStore
from streams.review.state import Item
from streams.settings import Settings

#: No framing (clickjacking), no scripts or other origins (the pages need none), no referrer
#: leaking item ids elsewhere.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
COOKIE = "sluice_session"
LOGIN_COOKIE = "sluice_login_csrf"

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("streams.review", "templates"),
    autoescape=jinja2.select_autoescape(default=True),
)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def guard(
    request: web.Request, handler: Handler, sessions: SessionStore
) -> web.StreamResponse:
    """Session and CSRF checks for every page (the login page excepted)."""
    if request.path in ("/login", "/favicon.ico"):
        return await handler(request)
    session = await sessions.get(request.cookies.get(COOKIE))
    if session is None:
        if request.method == "GET":
            raise web.HTTPSeeOther("/login")
        return web.Response(status=403, text="log in first")
    if request.method == "POST":
        form = await request.post()
        if not hmac.compare_digest(str(form.get("csrf", "")), session.csrf):
            return web.Response(status=403, text="CSRF token missing or wrong")
        request["form"] = form
    request["session"] = session
    request["reviewer"] = session.reviewer
    return await handler(request)


def page(template: str, request: web.Request, status: int = 200, **values: Any) -> web.Response:
    session: Session | None = request.get("session")
    html = _env.get_template(template).render(
        reviewer=session.reviewer if session else None,
        csrf=session.csrf if session else "",
        **values,
    )
    return web.Response(text=html, content_type="text/html", status=status, headers=HEADERS)


async def login_form(request: web.Request) -> web.Response:
    # Keep a token the browser already holds: a second load (another tab, the favicon request's
    # redirect) must not invalidate the form the reviewer is filling in.
    token = request.cookies.get(LOGIN_COOKIE) or ""
    if len(token) != 43:
        token = secrets.token_urlsafe(32)
    response = page("login.html", request, login_csrf=token)
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Strict", max_age=3600)
    return response


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not cookie or not hmac.compare_digest(str(form.get("csrf", "")), cookie):
        return web.Response(status=403, text="CSRF token missing or wrong")
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    if not request.app[REVIEWERS].check_password(name, password):
        token = secrets.token_urlsafe(32)
        response = page(
            "login.html", request, 401, login_csrf=token, error="Wrong name or password."
        )
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Strict", max_age=3600)
        return response
    session = await request.app[SESSIONS].create(name)
    response = web.HTTPSeeOther("/")
    response.set_cookie(COOKIE, session.sid, httponly=True, samesite="Strict", max_age=SESSION_S)
    response.del_cookie(LOGIN_COOKIE)
    raise response


async def logout(request: web.Request) -> web.Response:
    await request.app[SESSIONS].delete(request["session"].sid)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE)
    raise response


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _view(item: Item, settings: Settings, claimed_by: str | None) -> dict[str, Any]:
    """The API's view of an item, with its age for people."""
    view = render(item, settings, claimed_by)
    view["age"] = _age(view["age_s"])
    return view


async def queue(request: web.Request) -> web.Response:
    desk, settings = request.app[DESK], request.app[SETTINGS]
    pending = desk.state.pending()
    claims = await desk.claims([i.id for i in pending])
    flows = sorted({i.flow for i in desk.state.items.values()})
    queues = [
        (f, [_view(i, settings, claims[i.id]) for i in pending if i.flow == f]) for f in flows
    ]
    return page("queue.html", request, queues=queues, flash=await _flash(request))


async def _flash(request: web.Request) -> str | None:
    return await request.app[SESSIONS].take_flash(request["session"].sid)


def _fields(item: Item, threshold: float) -> list[dict[str, Any]]:
    record = item.record
    values = record.model_dump(mode="json")
    confidences = getattr(record, "field_confidence", None) or {}
    low = set(item.low_confidence(threshold))
    can_edit = set(editable(record))
    out = []
    for name in type(record).model_fields:
        value = values[name]
        if name in ("agent", "usage", "source", "confidence_detail", "route"):
            continue  # the envelope's machinery; the reason above says what matters
        conf = confidences.get(name)
        out.append(
            {
                "name": name,
                "shown": value if isinstance(value, str) else json.dumps(value),
                "edit": value if isinstance(value, str) else json.dumps(value),
                "confidence": "" if conf is None else f"{conf:.2f}",
                "low": name in low
                or (name == "actions" and any(x.startswith("actions[") for x in low)),
                "editable": name in can_edit,
            }
        )
    return out


async def item_page(
    request: web.Request, error: str | None = None, status: int = 200
) -> web.Response:
    desk, settings = request.app[DESK], request.app[SETTINGS]
    try:
        item = desk.item(request.match_info["id"])
    except ReviewError as exc:
        raise web.HTTPNotFound(text=str(exc)) from exc
    _, shown = await source_of(item, settings)
    return page(
        "item.html",
        request,
        status,
        item=_view(item, settings, await desk.claimed_by(item.id)),
        decision=item.decision,
        fields=_fields(item, settings.auto_threshold),
        source_event=shown,
        flash=await _flash(request),
        error=error,
    )


def _parse(record: BaseModel, form: Any) -> dict[str, Any]:
    """The fields whose submitted text differs from the record's: text as is for text fields,
    JSON for the rest (a value that is not JSON is passed on as text, and the schema decides)."""
    values = record.model_dump(mode="json")
    changes: dict[str, Any] = {}
    for key in form:
        if not key.startswith("field:"):
            continue
        name, text = key.removeprefix("field:"), str(form[key])
        current = values.get(name)
        shown = current if isinstance(current, str) else json.dumps(current)
        if text == shown:
            continue
        if isinstance(current, str):
            changes[name] = text
        else:
            try:
                changes[name] = json.loads(text)
            except json.JSONDecodeError:
                changes[name] = text
    return changes


async def act(request: web.Request) -> web.Response:
    """A form post on an item: claim, release, approve, edit or reject, then back to the queue
    (a decision) or the item (a claim)."""
    desk, form = request.app[DESK], request["form"]
    key, what, who = request.match_info["id"], request.match_info["action"], request["reviewer"]
    comment = str(form.get("comment") or "").strip() or None
    try:
        if what == "claim":
            await desk.claim(key, who)
            message = f"You hold {key}."
        elif what == "release":
            await desk.release(key, who)
            message = f"Released {key}."
        elif what == "approve":
            await desk.approve(key, who, comment)
            message = f"Approved {key}."
        elif what == "edit":
            item = desk.item(key)
            await desk.edit(key, who, _parse(item.record, form), comment)
            message = f"Edited and approved {key}."
        elif what == "reject":
            await desk.reject(key, who, str(form.get("reason") or ""))
            message = f"Rejected {key}."
        else:
            raise web.HTTPNotFound()
    except ReviewError as exc:
        status = {"item_not_found": 404, "review_conflict": 409}.get(exc.reason, 422)
        return await item_page(request, error=str(exc), status=status)
    await request.app[SESSIONS].flash(request["session"].sid, message)
    raise web.HTTPSeeOther("/" if what not in ("claim", "release") else f"/items/{key}")


async def metrics_page(request: web.Request) -> web.Response:
    return page("metrics.html", request, metrics=decision_metrics(request.app[DESK].state))


async def favicon(request: web.Request) -> web.Response:
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    """The UI's routes on ``app`` (the API's application)."""
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/", queue)
    app.router.add_get("/stats", metrics_page)
    app.router.add_get("/items/{id}", item_page)
    app.router.add_post("/items/{id}/{action}", act)
