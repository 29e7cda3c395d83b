"""Topic creation: every topic is declared in settings and created explicitly at start.

Explicit because the local broker runs with ``auto.create.topics.enable=false`` (a typo must fail,
not invent a topic) and because faust does not create an agent's source topic itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from schemas.errors import ConfigError
from streams.settings import Settings

log = structlog.get_logger(__name__)


def _not_ready(described: list[dict[str, Any]], topics: list[str]) -> list[str]:
    """Why ``described`` is not yet the full, led picture of ``topics`` (empty: it is)."""
    problems = []
    seen = {t["topic"]: t for t in described}
    for name in topics:
        topic = seen.get(name)
        if topic is None or topic["error_code"]:
            problems.append(f"{name}: error {topic['error_code'] if topic else 'missing'}")
        elif not topic["partitions"]:
            problems.append(f"{name}: no partitions yet")
        else:
            leaderless = [p["partition"] for p in topic["partitions"] if p["leader"] < 0]
            if leaderless:
                problems.append(f"{name}: partitions {leaderless} have no leader")
    return problems


async def _describe_ready(
    admin: AIOKafkaAdminClient, topics: list[str], timeout_s: float
) -> list[dict[str, Any]]:
    """Describe ``topics`` once every partition has a leader.

    Right after creation a broker can answer with some partitions missing or leaderless; a
    consumer assigned from that answer would silently never read the missing ones.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        described: list[dict[str, Any]] = await admin.describe_topics(topics)
        problems = _not_ready(described, topics)
        if not problems:
            return described
        if time.monotonic() > deadline:
            raise ConfigError(f"topics not ready after {timeout_s}s: {'; '.join(problems)}")
        await asyncio.sleep(0.2)


async def partitions(
    settings: Settings, topics: list[str], *, timeout_s: float = 30.0
) -> list[TopicPartition]:
    """Every partition of ``topics``, from the cluster's metadata, once all have leaders."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        described = await _describe_ready(admin, topics, timeout_s)
    finally:
        await admin.close()
    return sorted(
        TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]
    )


async def ensure_topics(settings: Settings, *, timeout_s: float = 30.0) -> list[str]:
    """Create any missing topic; return the names that were created. Idempotent."""
    return await create_missing(settings, settings.topics.all(), timeout_s=timeout_s)


async def create_missing(
    settings: Settings, topics: list[str], *, timeout_s: float = 30.0
) -> list[str]:
    """Create those of ``topics`` that do not exist, with the deployment's partitions,
    replication and message size; return the names created."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers, client_id=f"{settings.app_id}-admin"
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
    except (TimeoutError, KafkaConnectionError) as exc:
        raise ConfigError(
            f"Kafka at {settings.bootstrap_servers} does not answer; start it "
            "(make up) or set KAFKA_BOOTSTRAP_SERVERS"
        ) from exc
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in topics if t not in existing]
        if wanted:
            # max.message.bytes follows our one size setting, so a record Sluice may write is
            # one the topic accepts. Existing topics are the operator's: never altered.
            configs = {"max.message.bytes": str(settings.max_message_bytes)}
            new = [
                NewTopic(
                    t, settings.topic_partitions, settings.topic_replication, topic_configs=configs
                )
                for t in wanted
            ]
            response = await admin.create_topics(new)
            for name, code, message in (e[:3] for e in response.topic_errors):
                if code and code != TopicAlreadyExistsError.errno:
                    raise ConfigError(f"cannot create topic {name}: error {code} {message}")
            log.info("topics.created", topics=wanted, partitions=settings.topic_partitions)
            await _describe_ready(admin, wanted, timeout_s)
        return wanted
    finally:
        await admin.close()


async def read_to_end(settings: Settings, topics: list[str]) -> AsyncIterator[Any]:
    """Every record of ``topics`` from the start to where each partition ends at call time (no
    consumer group, nothing committed): for the commands that read a topic whole."""
    tps = await partitions(settings, topics)
    # "earliest" as the reset policy, not only a seek: see streams.consume for the aiokafka race.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        left = {tp for tp in tps if ends[tp] > await consumer.position(tp)}
        while left:
            for tp, messages in (await consumer.getmany(*left, timeout_ms=1000)).items():
                for m in messages:
                    if m.offset < ends[tp]:
                        yield m
            left = {tp for tp in left if await consumer.position(tp) < ends[tp]}
    finally:
        await consumer.stop()


async def read_at(consumer: AIOKafkaConsumer, topic: str, partition: int, offset: int) -> Any:
    """The record at these coordinates, or None when it is gone (retention, compaction), read by
    assigning ``consumer`` (no group) to its partition. Records before ``offset`` are skipped,
    whatever position an offset reset left the consumer at."""
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    first = (await consumer.beginning_offsets([tp]))[tp]
    end = (await consumer.end_offsets([tp]))[tp]
    if not first <= offset < end:
        return None
    consumer.seek(tp, offset)
    async with asyncio.timeout(30):
        while True:
            for m in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                if m.offset >= offset:  # compaction may have removed it: the next is another
                    return m if m.offset == offset else None
