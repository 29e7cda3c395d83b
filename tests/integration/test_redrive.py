"""``sluice dlq``: redrive keeps an event's id and lineage, reads truncated originals back from
the input topic, redrives each dead letter once, and stops an always-failing event at the
maximum attempt count. Real worker, Kafka and Redis; the CLI as an operator runs it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from schemas.records import DeadLetter
from streams.lanes import end_offsets
from tests.integration.conftest import Isolated, send_values, start_worker, stop
from tests.integration.test_executor import read_all
from tests.integration.test_outage import sluice, summary

ATTEMPTS = 3


async def dead_letters(isolated: Isolated, want: int) -> list[tuple[DeadLetter, dict[str, str]]]:
    """The dead-letter topic's records with their headers, once ``want`` are there."""
    s = isolated.settings
    out = []
    for line in sluice(isolated.env, "consume", s.topics.deadletter, "--from-beginning",
                       "--max", str(want), "--idle-timeout", "60").stdout.splitlines():  # fmt: skip
        got = json.loads(line)
        out.append((DeadLetter.model_validate(got["value"]), got["headers"]))
    assert len(out) == want, out
    return sorted(out, key=lambda x: int(x[1].get("sluice.redrive.attempt", "0")))


async def test_redrive_keeps_lineage_and_stops_at_the_maximum(
    isolated: Isolated, tmp_path: Path
) -> None:
    s = isolated.settings
    env = {**isolated.env, "SLUICE_BREAKER": "off", "SLUICE_MAX_MESSAGE_BYTES": "65536",
           "SLUICE_REDRIVE_MAX_ATTEMPTS": str(ATTEMPTS)}  # fmt: skip
    # Poison (not JSON) and too large to embed in a 64 KiB dead letter: always fails, and every
    # redrive must read the whole original back from the input topic.
    poison = b"{not json " + b"x" * 40_000
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        [(topic, partition, offset)] = await send_values(
            s.bootstrap_servers, s.topics.tickets_received, [poison]
        )
        first, _ = (await dead_letters(isolated, 1))[0]
        assert (first.reason, first.original_truncated) == ("poison_input", True)
        assert first.original_sha256 == hashlib.sha256(poison).hexdigest()
        event_id = first.event_id

        for attempt in range(1, ATTEMPTS + 1):
            done = sluice(env, "dlq", "redrive", "--event-id", event_id, "--why", "test")
            assert done.returncode == 0, done.stderr
            statuses = [json.loads(line)["status"] for line in done.stdout.splitlines()]
            assert statuses.count("redriven") == 1, done.stdout  # only the newest one
            letters = await dead_letters(isolated, attempt + 1)
            record, headers = letters[-1]
            assert headers["sluice.redrive.attempt"] == str(attempt)
            assert headers["sluice.origin"] == f"{topic}/{partition}/{offset}"
            assert record.event_id == event_id  # derived ids survive: the header carried it
            assert record.original_sha256 == first.original_sha256  # the whole value, re-read
            assert record.source.offset != offset  # it came back through the input topic

        before = await end_offsets(s, [s.topics.tickets_received])
        last = sluice(env, "dlq", "redrive", "--event-id", event_id, "--why", "once more")
        assert summary(last) == {
            "matched": ATTEMPTS + 1, "already_redriven": ATTEMPTS, "exhausted": 1
        }  # fmt: skip
        assert await end_offsets(s, [s.topics.tickets_received]) == before  # nothing sent

        listed = sluice(env, "dlq", "list", "--event-id", event_id)
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert sorted((r["attempt"], r["redriven"]) for r in rows) == [
            (0, True), (1, True), (2, True), (3, False)
        ]  # fmt: skip
        shown = sluice(env, "dlq", "show", "--event-id", event_id, "--limit", "1")
        assert json.loads(shown.stdout)["record"]["reason"] == "poison_input"
        assert worker.alive(), worker.log_tail()
    finally:
        stop(worker)
    audit = await read_all(s, s.topics.audit, ATTEMPTS + 1, timeout_s=10)
    assert [json.loads(v)["action"] for v in audit] == ["dlq.redrive"] * (ATTEMPTS + 1)


def test_redrive_needs_a_filter_and_a_reason(isolated: Isolated) -> None:
    refused = sluice(isolated.env, "dlq", "redrive", "--why", "x")
    assert refused.returncode == 2
    assert "--all" in refused.stderr
    unexplained = sluice(isolated.env, "dlq", "redrive", "--flow", "tickets")
    assert unexplained.returncode == 2
    assert "--why" in unexplained.stderr
