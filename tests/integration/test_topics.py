"""Partitions are read from metadata only once every one of them exists and has a leader.

Right after CreateTopics, a broker answers DescribeTopics with UNKNOWN_TOPIC_OR_PARTITION and no
partitions (measured on Kafka 4.1). A reader that took that answer at face value would assign
itself no partitions and wait forever for records that are there (it hung a CI run).
"""

import uuid

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.lanes import end_offsets
from streams.settings import Settings
from streams.topics import ensure_topics, partitions


async def test_partitions_right_after_create_are_complete(services: Settings) -> None:
    names = [f"fresh-{uuid.uuid4().hex[:8]}-{i}" for i in range(7)]
    admin = AIOKafkaAdminClient(bootstrap_servers=services.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 3, 1) for n in names])
        tps = await partitions(services, names)
    finally:
        await admin.close()
    assert len(tps) == 7 * 3


async def test_fresh_topics_are_readable_once_ensured(services: Settings) -> None:
    s = services.model_copy(update={"topic_suffix": f".fresh-{uuid.uuid4().hex[:8]}"})
    assert sorted(await ensure_topics(s)) == sorted(s.topics.all())
    offsets = await end_offsets(s, s.topics.all())
    assert len(offsets) == len(s.topics.all()) * s.topic_partitions
    assert set(offsets.values()) == {0}
