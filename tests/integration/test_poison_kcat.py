"""The poison corpus, produced with kcat, through a running worker: nothing lost, nothing stuck.

Every entry goes to partition 0 of its input topic, in manifest order, so poison and valid events
share a partition and the last entries (valid) prove the worker got *past* all the poison. The
tickets topic accepts 3 MB, as an operator-made topic might, while the worker keeps its default
1 MiB limit: the 2 MB entry's dead letter must fit anyway. The model is the fault server, so the
valid entries' lanes are exact.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from schemas.records import DeadLetter, InvoiceExtracted, TicketTriaged
from streams.lanes import collect, end_offsets, lane_topics
from tests.integration.conftest import (
    Isolated,
    fake_model_env,
    set_topic_config,
    start_worker,
    stop,
)
from tests.integration.kcat import consume
from tests.poison import corpus

THREE_MB = str(3 * 1024 * 1024)


def kcat_produce(bootstrap: str, topic: str, key: str, value: bytes | None, tmp: Path) -> None:
    """One message, value byte for byte: a file for content, line mode for empty and null."""
    base = ["kcat", "-b", bootstrap, "-P", "-t", topic, "-p", "0"]
    if value is None or value == b"":
        flags = ["-K", "\t"] + (["-Z"] if value is None else [])
        subprocess.run(base + flags, input=key.encode() + b"\t\n", check=True, timeout=60)
        return
    path = tmp / f"value-{key}"
    path.write_bytes(value)
    subprocess.run(
        [*base, "-k", key, "-X", "message.max.bytes=5000000", str(path)], check=True, timeout=60
    )


@pytest.mark.timeout(400)
async def test_poison_corpus_through_a_worker(
    isolated: Isolated, fault_server: str, tmp_path: Path
) -> None:
    s = isolated.settings
    t = s.topics
    topic_of = {"tickets": t.tickets_received, "documents": t.invoices_received}
    await set_topic_config(s.bootstrap_servers, t.tickets_received, {"max.message.bytes": THREE_MB})
    entries = corpus.load()
    start = {tp: 0 for tp in await end_offsets(s, list(lane_topics(s)))}
    worker = start_worker(fake_model_env(isolated.env, fault_server), tmp_path / "worker.log")
    try:
        for e in entries:
            kcat_produce(s.bootstrap_servers, topic_of[e.topic], f"p{e.id}", e.value, tmp_path)
        # Where each value landed, read back with kcat: the coordinates outputs must name.
        landed = {
            (r.topic, r.partition, r.offset): r.value
            for topic in topic_of.values()
            for r in consume(s.bootstrap_servers, topic)
        }
        assert sorted(landed.values(), key=repr) == sorted((e.value for e in entries), key=repr)
        coord_of = {value: coord for coord, value in landed.items()}
        tally = await collect(s, start, set(landed), timeout_s=240)
        assert worker.alive(), worker.log_tail()  # no crash, no crash loop
    finally:
        stop(worker)

    missing = set(landed) - tally.seen()
    assert not missing, f"lost: {[landed[c] for c in missing]}\n{worker.log_tail()}"
    assert not tally.duplicates, dict(tally.duplicates)
    assert sum(tally.counts().values()) == len(entries)
    by_coord = {c: (lane, r) for lane, records in tally.lanes.items() for c, r in records.items()}
    for e in entries:
        lane, record = by_coord[coord_of[e.value]]
        assert lane == e.lane, (e.id, e.note, record)
        if lane != "deadletter":
            assert isinstance(record, TicketTriaged | InvoiceExtracted)
            assert record.usage.attempts == 1, (e.id, record.usage)  # the model answered
            continue
        assert isinstance(record, DeadLetter)
        assert record.reason == e.reason, (e.id, e.note, record.error_message)
        assert record.original_sha256 == (
            hashlib.sha256(e.value).hexdigest() if e.value is not None else None
        )
        if e.value is not None and len(e.value) > s.max_message_bytes:
            assert record.original_truncated, e.id
            assert record.original_size == len(e.value)
            assert record.original_value
            assert e.value.startswith(record.original_value)
        else:
            assert not record.original_truncated, e.id
            assert record.original_value == e.value, e.id
    reasons = Counter(
        r.reason for r in tally.lanes["deadletter"].values() if isinstance(r, DeadLetter)
    )
    print(f"\ncorpus {len(entries)}: lanes {tally.counts()}, dead-letter reasons {dict(reasons)}")
