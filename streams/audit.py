"""The operators' audit trail: every kill switch, tool switch and redrive, who did it and why.

Each action is one JSON record on the audit topic (``sluice.audit``, key: what it acted on), one
``operator.action`` log line, and one count in Redis (``sluice:<app_id>:operator.counts``, field
``<action>``), so "who opened the breaker at 02:14, and why" has an answer after the fact. JSON
rather than Avro: people and shell tools read it, and nothing downstream computes on it.

The action is taken first and audited after: a kill switch must work while Kafka is unwell. When
the audit record cannot be written the caller is told (:class:`AuditUnwritten`), and the log line
and the count are still made.
"""

from __future__ import annotations

import getpass
import json
import socket
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
import structlog
from aiokafka import AIOKafkaProducer

from schemas.errors import SluiceError
from streams.settings import Settings

log = structlog.get_logger(__name__)


class AuditUnwritten(SluiceError):
    """The operator action was taken but its audit record could not be written to Kafka."""

    reason = "other"


def operator(by: str | None) -> str:
    """Who acts: ``--by``, else the login name of this process."""
    return (by or "").strip() or getpass.getuser()


def counts_key(settings: Settings) -> str:
    """The Redis hash counting operator actions by name, for this deployment."""
    return f"sluice:{settings.app_id}:operator.counts"


async def audit(
    settings: Settings,
    action: str,
    target: str,
    *,
    by: str,
    reason: str,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Record one operator action; returns the record. Raises :class:`AuditUnwritten` when the
    audit topic could not take it (after logging and counting it)."""
    record = {
        "action": action,
        "target": target,
        "by": by,
        "reason": reason,
        "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "host": socket.gethostname(),
        "app_id": settings.app_id,
        "detail": detail or {},
    }
    log.warning("operator.action", **{k: v for k, v in record.items() if k != "detail"},
                detail=record["detail"])  # fmt: skip
    redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=2)
    try:
        await redis.hincrby(counts_key(settings), action, 1)
    except aioredis.RedisError as exc:
        log.error("operator.uncounted", action=action, error=str(exc))
    finally:
        await redis.aclose()
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, acks="all", request_timeout_ms=10_000
    )
    try:
        await producer.start()
        await producer.send_and_wait(
            settings.topics.audit,
            json.dumps(record, default=str).encode(),
            key=target.encode(),
        )
    except Exception as exc:
        raise AuditUnwritten(
            f"{action} on {target} was done, but its audit record could not be written to "
            f"{settings.topics.audit}: {exc}"
        ) from exc
    finally:
        await producer.stop()
    return record
