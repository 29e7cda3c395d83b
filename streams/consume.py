"""``sluice consume``: print a topic's records as JSON lines, for people and shell pipelines.

Decodes either Avro wire format, or JSON (the audit trail); a record that does not decode is
printed with its error and its raw bytes (base64) instead of stopping the stream.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer

from schemas.errors import SluiceError
from streams import compose
from streams.settings import Settings
from streams.topics import partitions


def render(message: Any, codec: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "timestamp": message.timestamp,
        "key": message.key.decode(errors="replace") if message.key is not None else None,
        "headers": {k: v.decode(errors="replace") for k, v in message.headers or []},
    }
    try:
        record = codec.decode(message.value or b"")
        line["type"] = type(record).__name__
        line["value"] = record.model_dump(mode="json")
    except SluiceError as exc:
        try:  # a JSON topic (the audit trail), printed as it is
            line["value"] = json.loads(message.value or b"")
            line["type"] = "json"
        except (ValueError, RecursionError):
            line["error"] = f"{type(exc).__name__}: {exc}"
            line["raw_base64"] = base64.b64encode(message.value or b"").decode()
    return line


async def consume(
    settings: Settings,
    topic: str,
    out: TextIO,
    *,
    from_beginning: bool,
    max_records: int | None,
    idle_timeout_s: float | None,
) -> int:
    """Print records until ``max_records``, or ``idle_timeout_s`` without one, or forever."""
    codec = compose.codec(settings, register=False)  # a reader: registers nothing
    tps = await partitions(settings, [topic])
    # The reset policy matches the seek below: aiokafka starts a reset with the default policy at
    # assign(), and when its answer lands after seek_to_beginning it wins (the fetcher checks only
    # that *a* reset is awaited), so a "latest" default could make --from-beginning print nothing.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    await consumer.start()
    printed = 0
    try:
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        last = time.monotonic()
        while max_records is None or printed < max_records:
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                for message in messages:
                    if max_records is not None and printed >= max_records:
                        break
                    out.write(json.dumps(render(message, codec), default=str) + "\n")
                    printed += 1
                    last = time.monotonic()
            out.flush()
            if idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                break
        return printed
    finally:
        await consumer.stop()
