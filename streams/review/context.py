"""What the review API and the web UI share: the application's keys, an item as shown, its
source event, and the decision metrics."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections import Counter
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.records import Source
from streams.review.desk import ReviewDesk, editable
from streams.review.sessions import SessionStore
from streams.review.state import Item, ReviewState
from streams.settings import Settings

DESK: web.AppKey[ReviewDesk] = web.AppKey("desk", ReviewDesk)
SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
SESSIONS: web.AppKey[SessionStore] = web.AppKey("sessions", SessionStore)


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


async def source_of(item: Item, settings: Settings) -> tuple[str | None, str | None]:
    """The item's input event, raw (as text) and as a reviewer reads it. Read from Kafka once per
    item: the record at an offset never changes."""
    if item.source is None:
        where = getattr(item.record, "source", None)
        raw = await fetch(settings, where) if isinstance(where, Source) else None
        if raw is None:
            return None, None  # not cached: the next view tries again
        shown = await asyncio.to_thread(readable, raw, settings)  # pypdf is slow
        item.source = (_text(raw), shown)
    return item.source


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

            doc = load(
                DocumentReceived.model_validate(value),
                settings.document_dir,
                pdf_budget_s=settings.pdf_budget_s,
            )
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
