"""``sluice replay`` is a dry run next to live traffic, and it resumes.

A live worker and executor run the flow on real Kafka, their effects land in the test's sinks.
A replay of the input topic through a candidate model then runs while they keep running, and the
test proves it touched nothing live: every live topic ends where it ended (no lane, dead letter,
effect or audit record), the live group's committed offsets are unchanged and no consumer group
appeared, and the sinks received nothing more. Replays of a lane and of the reviewed topic find
their way back to the same input events (a rejection through the review record it names).
A replay SIGKILLed mid-flight goes on with ``--resume`` and, with the rows written before the
kill, covers every event (at least once).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from agents.testing.fault_server import answer_marker
from schemas.codec import Codec
from schemas.records import ReviewDecision, Source
from streams.decisions import DecisionKeys, sha256
from streams.lanes import end_offsets
from streams.settings import Settings
from streams.topics import partitions
from tests.integration.conftest import (
    ROOT,
    Isolated,
    Sinks,
    fake_model_env,
    running_fault_server,
    send_values,
    start_worker,
    stop,
)
from tests.integration.test_executor import read_all
from tests.integration.test_review_service import reviewers_file
from tests.poison.corpus import TRIAGE_ANSWER

N = 12


def tickets(run: str, n: int = N) -> list[bytes]:
    """``n`` tickets: even ones answered confidently (auto), odd ones unsure (review)."""
    out = []
    for i in range(n):
        answer = {**TRIAGE_ANSWER, "confidence": 0.95 if i % 2 == 0 else 0.4}
        out.append(
            json.dumps(
                {
                    "event_id": f"rp-{run}-{i}",
                    "ticket_id": f"T-{i}",
                    "channel": "email",
                    "subject": f"Replay ticket {i}",
                    "body": f"Please help with order {i}. {answer_marker(answer)}",
                }
            ).encode()
        )
    return out


def replay(env: dict[str, str], *args: str, timeout_s: float = 120) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "replay", *args, "--no-progress"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


async def review_records(s: Settings, want: int) -> list[tuple[Source, Any, bytes]]:
    """The first ``want`` review-lane records: coordinates, decoded record, bytes."""
    codec = Codec()
    found: list[tuple[Source, Any, bytes]] = []
    for tp in await partitions(s, [s.topics.tickets_review]):
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            consumer.assign([tp])
            for m in (await consumer.getmany(tp, timeout_ms=2000)).get(tp, []):
                source = Source(topic=m.topic, partition=m.partition, offset=m.offset)
                found.append((source, codec.decode(m.value), m.value))
        finally:
            await consumer.stop()
        if len(found) >= want:
            break
    return found[:want]


DECISION_KEYS = f"replay:{secrets.token_hex(20)}"
"""The review service's signing keys for this test (it writes decisions as the desk would)."""


def decisions(reviewed: list[tuple[Source, Any, bytes]]) -> list[bytes | None]:
    """An approval of the first record and a rejection of the second, as the review desk
    writes them: signed, by a reviewer in the reviewers file."""
    keys = DecisionKeys.parse(DECISION_KEYS)
    out: list[bytes | None] = []
    for (item, record, value), verdict in zip(reviewed, ("approve", "reject"), strict=True):
        decision = ReviewDecision(
            event_id=record.event_id,
            flow="tickets",
            reviewer="alice",
            verdict=verdict,
            corrections={},
            comment=None,
            model_confidence=record.confidence,
            decided_at=datetime.now(UTC),
            decision_id=f"d-{record.event_id}",
            item=item,
            record=value if verdict == "approve" else None,
            item_sha256=sha256(value),
        )
        out.append(Codec().encode(keys.sign(decision)))
    return out


def evaluate(env: dict[str, str], *args: str) -> dict[str, Any]:
    """``sluice eval ARGS --json``: the first flow's summary."""
    argv = [sys.executable, "-m", "streams.cli", "eval", *args, "--json"]
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)[0]  # type: ignore[no-any-return]


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def committed(s: Settings, group: str) -> dict[Any, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return {tp: meta.offset for tp, meta in offsets.items()}
    finally:
        await admin.close()


async def groups(s: Settings) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap_servers)
    await admin.start()
    try:
        return {g[0] for g in await admin.list_consumer_groups()}
    finally:
        await admin.close()


async def live_ends(s: Settings) -> dict[Any, int]:
    return await end_offsets(s, s.topics.all())


async def settled(s: Settings, want: int, timeout_s: float = 90) -> None:
    """Until the live worker has a result in a lane for every input and committed them all."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ends = await live_ends(s)
        outputs = sum(
            n
            for tp, n in ends.items()
            if tp.topic in (s.topics.tickets_auto, s.topics.tickets_review)
        )
        done = sum((await committed(s, s.app_id)).values())
        if outputs >= want and done >= want:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"the live worker did not settle: {ends}")


def wait_until(check: Any, timeout_s: float, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        time.sleep(interval_s)


async def test_replay_touches_nothing_live_and_finds_inputs_from_lanes(
    isolated: Isolated, fault_server: str, sinks: Sinks, tmp_path: Path
) -> None:
    s = isolated.settings
    run = s.topic_suffix.strip(".")
    env = fake_model_env(
        {**isolated.env, **sinks.env}, fault_server, SLUICE_DECISION_KEYS=DECISION_KEYS,
        SLUICE_REVIEWERS_FILE=str(reviewers_file(tmp_path)),
    )  # fmt: skip
    worker = start_worker(env, tmp_path / "worker.log")
    executor = start_worker(env, tmp_path / "executor.log", command="executor")
    try:
        await send_values(s.bootstrap_servers, s.topics.tickets_received, tickets(run))
        await settled(s, N)
        wait_until(lambda: sinks.webhook_requests() >= N // 2, 60)  # effects of the auto half
        # Two decisions, as the review desk writes them; the executor acts on the approval.
        reviewed = await review_records(s, 2)
        await send_values(s.bootstrap_servers, s.topics.tickets_reviewed, decisions(reviewed))
        wait_until(lambda: sinks.webhook_requests() > N // 2, 60)
        await asyncio.sleep(3)
        assert sinks.webhook_requests() == N // 2 + 1, executor.log_tail()
        before = (await live_ends(s), await committed(s, s.app_id), await groups(s))
        hooks, mails = sinks.webhook_requests(), sinks.mails()

        out = tmp_path / "candidate.jsonl"
        report = replay(env, s.topics.tickets_received, "--out", str(out), "--model", "cand-x")
        assert report["rows"] == N, report
        assert report["finished"], report
        assert report["failed"] == 0, report
        got = rows(out)
        assert sorted(r["event_id"] for r in got) == sorted(f"rp-{run}-{i}" for i in range(N))
        assert {r["candidate"]["model"] for r in got} == {"cand-x"}
        assert {r["record"]["agent"]["model"] for r in got} == {"cand-x"}
        lanes = {r["event_id"]: r["lane"] for r in got}
        assert lanes == {f"rp-{run}-{i}": "auto" if i % 2 == 0 else "review" for i in range(N)}

        # The same events found from the review lane (their records' source coordinates), and
        # an eval topic as the output.
        report = replay(
            env, s.topics.tickets_review, "--to-topic", f"tickets.eval.{run}", "--model", "cand-y"
        )
        assert report["rows"] == N // 2, report
        evals = [json.loads(v) for v in await read_all(s, f"tickets.eval.{run}", N // 2, 30)]
        assert sorted(r["event_id"] for r in evals) == sorted(
            f"rp-{run}-{i}" for i in range(1, N, 2)
        )
        assert all(r["source"]["topic"] == s.topics.tickets_received for r in evals)

        # ... and from the reviewed topic: an approval carries the decided record, a rejection
        # only the review record's coordinates (two hops back to the input).
        report = replay(env, s.topics.tickets_reviewed, "--out", str(tmp_path / "rv.jsonl"))
        assert sorted(r["event_id"] for r in rows(tmp_path / "rv.jsonl")) == sorted(
            r.event_id for _, r, _ in reviewed
        ), report
        # The decisions are labels too: the approval as it is, the rejection as wrong.
        summary = evaluate(env, str(tmp_path / "rv.jsonl"), "--labels", "reviewed")
        assert summary["run"]["labelled"] == 2, summary["run"]
        assert summary["calibration"]["positives"] == 1, summary["calibration"]

        await asyncio.sleep(3)  # give a wrongly fed executor time to act
        after = (await live_ends(s), await committed(s, s.app_id), await groups(s))
        assert after[0] == before[0], "a live topic was written"
        assert after[1] == before[1], "the live group's offsets moved"
        assert after[2] == before[2], "a consumer group appeared"
        assert (sinks.webhook_requests(), sinks.mails()) == (hooks, mails)
        assert worker.alive()
        assert executor.alive()
    finally:
        stop(executor)
        stop(worker)
        from tests.integration.conftest import delete_topics

        await delete_topics(s.bootstrap_servers, [f"tickets.eval.{run}"])


def test_a_killed_replay_resumes_and_covers_every_event(isolated: Isolated, tmp_path: Path) -> None:
    s = isolated.settings
    run = s.topic_suffix.strip(".")
    asyncio.run(send_values(s.bootstrap_servers, s.topics.tickets_received, tickets(run, 30)))
    with running_fault_server(tmp_path / "slow.log", "--latency-ms", "400") as url:
        env = fake_model_env(isolated.env, url)
        out = tmp_path / "rows.jsonl"
        argv = [sys.executable, "-m", "streams.cli", "replay", s.topics.tickets_received]
        # A candidate that cannot be built fails before any position is written, so the
        # corrected run is not refused as "exists: --resume it".
        typo = [*argv, "--out", str(out), "--prompt-version", "ticket_triage.v99"]
        failed = subprocess.run(typo, env=env, cwd=ROOT, capture_output=True, text=True)
        assert failed.returncode == 2, failed.stderr[-2000:]
        assert "no prompt 'ticket_triage.v99'" in failed.stderr
        assert not Path(str(out) + ".state.json").exists()
        argv += ["--out", str(out), "--concurrency", "2", "--no-progress"]
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stderr=subprocess.PIPE)
        state = Path(str(out) + ".state.json")
        wait_until(lambda: out.exists() and len(rows(out)) >= 6, 60, 0.05)
        time.sleep(2.5)  # past a position save
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()
        before = rows(out)
        saved = json.loads(state.read_text())["next"]
        assert 0 < sum(saved.values()) < 30, saved  # killed mid-flight, after a save
        assert len(before) >= sum(saved.values())  # the position never passes a written row

        report = replay(env, s.topics.tickets_received, "--out", str(out), "--resume")
        assert report["finished"], report
        every = rows(out)
        ids = [r["event_id"] for r in every]
        assert set(ids) == {f"rp-{run}-{i}" for i in range(30)}  # nothing lost
        assert report["rows"] == 30 - sum(saved.values())  # resumed exactly at the position
        print(f"killed after {len(before)} rows, position {sum(saved.values())}; "
              f"{len(ids) - 30} duplicate rows after the resume")  # fmt: skip
