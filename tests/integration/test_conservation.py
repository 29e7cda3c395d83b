"""The conservation law: every input event ends in exactly one lane, matched by event_id.

The model is the fault server, so each valid ticket's lane is known in advance and asserted: a
worker whose model is down (every ticket dead-lettered as provider_unavailable) fails this test.
"""

import asyncio
import json
from pathlib import Path

from agents.testing.fault_server import answer_marker
from schemas.records import DeadLetter, TicketTriaged
from streams.lanes import collect, end_offsets, lane_topics
from streams.meta import Meta
from streams.settings import Settings
from tests.integration.conftest import (
    Isolated,
    Worker,
    fake_model_env,
    send_values,
    start_worker,
    stop,
)
from tests.poison.corpus import TRIAGE_ANSWER

AUTO = answer_marker(TRIAGE_ANSWER)
HUMAN = answer_marker({**TRIAGE_ANSWER, "priority": "urgent", "requires_human": True})
UNSURE = answer_marker({**TRIAGE_ANSWER, "confidence": 0.3})
#: Valid tickets, each with the lane the fault server's answer must send it to.
VALID: list[tuple[dict[str, object], str]] = [
    (
        {"event_id": "ev-1", "ticket_id": "T-1", "body": f"Refund my duplicate charge. {AUTO}"},
        "auto",
    ),
    ({"event_id": "ev-2", "ticket_id": "T-2", "body": f"Error 500 with PayPal. {HUMAN}"}, "review"),
    ({"ticket_id": "T-3", "body": f"Where is my parcel? {UNSURE}"}, "review"),  # id derived
    (
        {
            "event_id": "ev-4",
            "ticket_id": "T-4",
            "body": f"Reset my password. {AUTO}",
            "channel": "chat",
        },
        "auto",
    ),
    ({"ticket_id": "T-5", "body": f"Please close my account. {AUTO}"}, "auto"),  # id derived
    (
        {"event_id": "ev-6", "ticket_id": "T-6", "subject": "Late", "body": f"Again. {HUMAN}"},
        "review",
    ),
    (
        {"event_id": "ev-7", "ticket_id": "T-7", "body": f"Invoice please. {UNSURE}", "extra": 1},
        "review",
    ),
    ({"event_id": "ev-8", "ticket_id": "T-8", "body": f"The website is slow. {AUTO}"}, "auto"),
]
MALFORMED: list[bytes | None] = [
    b"definitely not json",
    b"\xff\xfe\xfa binary junk",
    b"[1, 2, 3]",
    b'{"event_id": "ev-bad-4", "ticket_id": "T-9"}',  # no body; its id must survive into deadletter
    b'{"ticket_id": "T-10", "body": "x", "channel": "fax"}',
    None,  # a tombstone
]


async def produce_all(bootstrap: str, topic: str) -> list[tuple[int, int, bytes | None]]:
    values: list[bytes | None] = [json.dumps(v).encode() for v, _ in VALID] + MALFORMED
    coords = await send_values(bootstrap, topic, values)
    return [(p, o, v) for (_, p, o), v in zip(coords, values, strict=True)]


async def test_every_event_ends_in_exactly_one_lane(
    isolated: Isolated, fault_server: str, tmp_path: Path
) -> None:
    s = isolated.settings
    worker = start_worker(fake_model_env(isolated.env, fault_server), tmp_path / "worker.log")
    try:
        await check_conservation(s, worker)
    finally:
        stop(worker)


async def check_conservation(s: Settings, worker: Worker) -> None:
    sent = await produce_all(s.bootstrap_servers, s.topics.tickets_received)
    n = len(sent)
    expected_ids = {}
    for partition, offset, value in sent:
        meta = Meta(s.topics.tickets_received, partition, offset, None, None, value)
        given = json.loads(value).get("event_id") if value and value.startswith(b"{") else None
        expected_ids[(s.topics.tickets_received, partition, offset)] = (
            given or meta.derived_event_id()
        )

    start = {tp: 0 for tp in await end_offsets(s, list(lane_topics(s)))}
    tally = await collect(s, start, set(expected_ids), timeout_s=240)
    assert worker.alive(), worker.log_tail()

    assert tally.seen() == set(expected_ids), f"missing: {set(expected_ids) - tally.seen()}"
    assert not tally.duplicates, f"written twice: {dict(tally.duplicates)}"
    counts = tally.counts()
    assert sum(counts.values()) == n
    # Nothing else was written to the lanes either: the topics hold exactly n records.
    await asyncio.sleep(2)  # a late duplicate would show up in the offsets below
    assert sum((await end_offsets(s, list(lane_topics(s)))).values()) == n

    records = {c: r for lane in tally.lanes.values() for c, r in lane.items()}
    assert {c: r.event_id for c, r in records.items()} == expected_ids  # type: ignore[attr-defined]

    by_value = {value: (p, o) for p, o, value in sent}
    for value in MALFORMED:
        p, o = by_value[value]
        dl = records[(s.topics.tickets_received, p, o)]
        assert isinstance(dl, DeadLetter)
        assert dl.reason == "poison_input"
        assert dl.original_value == value
        assert dl.error_message
    assert counts == {
        "auto": sum(lane == "auto" for _, lane in VALID),
        "review": sum(lane == "review" for _, lane in VALID),
        "deadletter": len(MALFORMED),
    }
    for (event, lane), value in zip(VALID, [v for _, _, v in sent], strict=False):
        p, o = by_value[value]
        record = records[(s.topics.tickets_received, p, o)]
        assert isinstance(record, TicketTriaged), record
        assert (record.ticket_id, record.route.lane) == (event["ticket_id"], lane)
        assert record in tally.lanes[lane].values()
        assert record.usage.attempts == 1  # the model answered, first time
        assert record.usage.prompt_tokens > 0
