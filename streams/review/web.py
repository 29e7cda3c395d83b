"""The review web UI: server-rendered pages over the same desk as the JSON API.

Reviewers log in with their name and password (Argon2id hash in the reviewers file). A session is
a random id in an ``HttpOnly``, ``SameSite=Strict`` cookie (``Secure`` with
``SLUICE_REVIEW_SECURE_COOKIE``) naming a Redis hash that the service authenticates
(:mod:`streams.review.sessions`) and expires after ``SESSION_S``. Every request checks the
session's reviewer and password fingerprint against the reviewers file as it is now, so removing
a reviewer or changing a password logs them out everywhere at once. Every form carries the
session's CSRF token, and a POST whose token is missing or wrong is refused with 403 before any
handler runs; the login form has its own double-submit token. Pages without a session redirect to
``/login``.

Logins are throttled before the password is checked (:class:`~streams.review.auth.LoginThrottle`:
429 with ``Retry-After``), and the check itself runs off the event loop
(:func:`~streams.review.auth.verify_password`).

The edit form shows each field as what it is: a ``select`` for a choice (a ``Literal``), a
``textarea`` for text that may span lines and for JSON values, an input for the rest; a field
whose submitted value equals the record's (after the browser's CRLF newlines, or JSON spacing) is
not an edit.
"""

from __future__ import annotations

import hmac
import json
import secrets
import types
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Union, get_args, get_origin

import jinja2
from aiohttp import web
from pydantic import BaseModel

from schemas import jsonlimits
from schemas.errors import InputError, InvalidEdit, ReviewError, UndecodableInput
from streams.review.auth import LoginThrottle, ReviewerBook, verify_password
from streams.review.context import (
    DESK,
    SESSIONS,
    SETTINGS,
    decision_metrics,
    render,
    source_of,
)
from streams.review.desk import Pending, editable
from streams.review.sessions import SESSION_S, Session
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
BOOK: web.AppKey[ReviewerBook] = web.AppKey("reviewer_book", ReviewerBook)
THROTTLE: web.AppKey[LoginThrottle] = web.AppKey("login_throttle", LoginThrottle)
#: Longest name and password a login form may carry; longer ones fail without hashing.
MAX_NAME, MAX_PASSWORD = 100, 1024
#: JSON typed into one form field: the same guard as input events, much smaller.
FIELD_LIMITS = jsonlimits.Limits(max_bytes=256 * 1024, max_depth=8, max_int_digits=24)

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("streams.review", "templates"),
    autoescape=jinja2.select_autoescape(default=True),
)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Session and CSRF checks for every page (the login page excepted)."""
    if request.path in ("/login", "/favicon.ico"):
        return await handler(request)
    sessions = request.app[SESSIONS]
    session = await sessions.get(request.cookies.get(COOKIE))
    if session is not None and not still_valid(session, request.app[BOOK], sessions.key):
        await sessions.delete(session.sid)
        session = None
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


def still_valid(session: Session, book: ReviewerBook, key: bytes) -> bool:
    """Whether the session's reviewer is still in the reviewers file with the password the
    session was made with."""
    now = book.current().fingerprint(session.reviewer, key)
    return now is not None and hmac.compare_digest(now, session.fingerprint)


def page(
    template: str,
    request: web.Request,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **values: Any,
) -> web.Response:
    session: Session | None = request.get("session")
    html = _env.get_template(template).render(
        reviewer=session.reviewer if session else None,
        csrf=session.csrf if session else "",
        **values,
    )
    return web.Response(
        text=html, content_type="text/html", status=status, headers={**HEADERS, **(headers or {})}
    )


def _secure(request: web.Request) -> bool:
    return request.app[SETTINGS].review_secure_cookie


def _login_page(
    request: web.Request, status: int, error: str, headers: dict[str, str] | None = None
) -> web.Response:
    token = secrets.token_urlsafe(32)
    response = page("login.html", request, status, headers, login_csrf=token, error=error)
    response.set_cookie(
        LOGIN_COOKIE, token, httponly=True, samesite="Strict", max_age=3600, secure=_secure(request)
    )
    return response


async def login_form(request: web.Request) -> web.Response:
    # Keep a token the browser already holds: a second load (another tab, the favicon request's
    # redirect) must not invalidate the form the reviewer is filling in.
    token = request.cookies.get(LOGIN_COOKIE) or ""
    if len(token) != 43:
        token = secrets.token_urlsafe(32)
    response = page("login.html", request, login_csrf=token)
    response.set_cookie(
        LOGIN_COOKIE, token, httponly=True, samesite="Strict", max_age=3600, secure=_secure(request)
    )
    return response


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not cookie or not hmac.compare_digest(str(form.get("csrf", "")), cookie):
        return web.Response(status=403, text="CSRF token missing or wrong")
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    client = request.remote or "unknown"
    wait = await request.app[THROTTLE].admit(name[:MAX_NAME], client)
    if wait:
        error = f"Too many failed logins: try again in {wait:.0f} s."
        return _login_page(request, 429, error, {"Retry-After": f"{wait:.0f}"})
    reviewers = request.app[BOOK].current()
    ok = len(name) <= MAX_NAME and len(password) <= MAX_PASSWORD
    if not (ok and await verify_password(reviewers, name, password)):
        return _login_page(request, 401, "Wrong name or password.")
    await request.app[THROTTLE].succeeded(name, client)
    sessions = request.app[SESSIONS]
    session = await sessions.create(name, reviewers.fingerprint(name, sessions.key) or "")
    response = web.HTTPSeeOther("/")
    response.set_cookie(
        COOKIE, session.sid, httponly=True, samesite="Strict", max_age=SESSION_S,
        secure=_secure(request),
    )  # fmt: skip
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
    held = await desk.pendings([i.id for i in pending])
    flows = sorted({i.flow for i in desk.state.items.values()})
    queues = [
        (f, [{**_view(i, settings, claims[i.id]), "held": held[i.id]} for i in pending
             if i.flow == f])
        for f in flows
    ]  # fmt: skip
    return page("queue.html", request, queues=queues, flash=await _flash(request))


async def _flash(request: web.Request) -> str | None:
    return await request.app[SESSIONS].take_flash(request["session"].sid)


def choices(annotation: Any) -> tuple[list[str], bool] | None:
    """The values of a choice field (a ``Literal``, or an optional one) and whether it may be
    empty (None); None for any other field."""
    optional = False
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) < len(get_args(annotation))
        if len(args) != 1:
            return None
        annotation = args[0]
    if get_origin(annotation) is Literal and all(isinstance(v, str) for v in get_args(annotation)):
        return [str(v) for v in get_args(annotation)], optional
    return None


def widget(record: BaseModel, name: str) -> str:
    """How the edit form shows ``name``: ``select``, ``textarea`` or ``input``."""
    if choices(type(record).model_fields[name].annotation) is not None:
        return "select"
    value = getattr(record, name)
    if isinstance(value, str) and ("\n" in value or "\r" in value or len(value) > 80):
        return "textarea"
    return "textarea" if isinstance(value, list | dict | BaseModel) else "input"


def _fields(item: Item, threshold: float) -> list[dict[str, Any]]:
    record = item.record
    values = record.model_dump(mode="json")
    confidences = getattr(record, "field_confidence", None) or {}
    low = set(item.low_confidence(threshold))
    can_edit = set(editable(record))
    out = []
    for name, info in type(record).model_fields.items():
        value = values[name]
        if name in ("agent", "usage", "source", "confidence_detail", "route"):
            continue  # the envelope's machinery; the reason above says what matters
        conf = confidences.get(name)
        options = choices(info.annotation)
        out.append(
            {
                "name": name,
                "shown": value if isinstance(value, str) else json.dumps(value),
                "edit": _shown(value),
                "widget": widget(record, name) if name in can_edit else "input",
                "options": [] if options is None else ([""] if options[1] else []) + options[0],
                "confidence": "" if conf is None else f"{conf:.2f}",
                "low": name in low
                or (name == "actions" and any(x.startswith("actions[") for x in low)),
                "editable": name in can_edit,
            }
        )
    return out


def _shown(value: Any) -> str:
    """A field's value as the edit form shows it: text as is, None as empty, JSON otherwise."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


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
        held=await desk.pending(item.id),
        fields=_fields(item, settings.auto_threshold),
        source_event=shown,
        flash=await _flash(request),
        error=error,
    )


def _parse(record: BaseModel, form: Any) -> dict[str, Any]:
    """The fields whose submitted value differs from the record's: text as is for text fields,
    an empty choice or empty field as None where the field may be None, JSON for the rest (a
    value that is not JSON is passed on as text, and the schema decides). Browsers send a
    textarea's newlines as CRLF and may re-space JSON: neither is a change."""
    values = record.model_dump(mode="json")
    fields = type(record).model_fields
    changes: dict[str, Any] = {}
    for key in form:
        if not key.startswith("field:"):
            continue
        name, text = key.removeprefix("field:"), _newlines(str(form[key]))
        if name not in fields:
            changes[name] = text  # the desk refuses it by name
            continue
        current = values.get(name)
        if text == _newlines(_shown(current)):
            continue
        annotation = fields[name].annotation
        if isinstance(current, str) or _texty(annotation):
            changes[name] = None if text == "" and _nullable(annotation) else text
            continue
        if text.strip() == "" and current is None:
            continue
        try:
            parsed = jsonlimits.loads(text.encode(), FIELD_LIMITS)
        except UndecodableInput:
            parsed = text  # not JSON: the schema says what is wrong with it
        except InputError as exc:  # too deep, too large
            raise InvalidEdit(f"{name}: {exc}") from exc
        if parsed != current:
            changes[name] = parsed
    return changes


def _newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _texty(annotation: Any) -> bool:
    """A text or choice field (optional or not): its form value is the value, never JSON."""
    if choices(annotation) is not None:
        return True
    if get_origin(annotation) in (Union, types.UnionType):
        return [a for a in get_args(annotation) if a is not type(None)] == [str]
    return annotation is str


def _nullable(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation)


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
            done = await desk.approve(key, who, comment)
            message = _held(key, done) or f"Approved {key}."
        elif what == "edit":
            item = desk.item(key)
            done = await desk.edit(key, who, _parse(item.record, form), comment)
            message = _held(key, done) or f"Edited and approved {key}."
        elif what == "confirm":
            await desk.confirm(key, who)
            message = f"Confirmed {key} as second reviewer."
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


def _held(key: str, done: object) -> str | None:
    if not isinstance(done, Pending):
        return None
    return (
        f"{key} moves {done.amount}, above {done.limit}: held until a second reviewer confirms it."
    )


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
