"""kcat, an independent Kafka client, used the way users will use it."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class KcatRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def produce(bootstrap: str, topic: str, pairs: list[tuple[str, bytes]]) -> None:
    """Produce ``key<TAB>value`` lines; values must not contain newlines or tabs."""
    data = b"".join(k.encode() + b"\t" + v + b"\n" for k, v in pairs)
    subprocess.run(
        ["kcat", "-b", bootstrap, "-P", "-t", topic, "-K", "\t"], input=data, check=True, timeout=60
    )


def consume(bootstrap: str, topic: str) -> list[KcatRecord]:
    """Everything on ``topic`` now. Length-prefixed format, because Avro values are binary."""
    out = subprocess.run(
        [
            "kcat",
            "-b",
            bootstrap,
            "-C",
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%p %o %K %S %k%s",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    records, i = [], 0
    while i < len(out):
        fields = []
        for _ in range(4):
            j = out.index(b" ", i)
            fields.append(int(out[i:j]))
            i = j + 1
        partition, offset, key_len, value_len = fields
        key = out[i : i + key_len] if key_len >= 0 else None
        i += max(key_len, 0)
        value = out[i : i + value_len] if value_len >= 0 else None
        i += max(value_len, 0)
        records.append(KcatRecord(topic, partition, offset, key, value))
    return records


def wait_for(bootstrap: str, topics: list[str], count: int, timeout_s: float) -> list[KcatRecord]:
    """Poll until ``count`` records exist across ``topics``: observable state, not a sleep."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = [r for t in topics for r in consume(bootstrap, t)]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(1)
