"""The conservation law: every input event ends in exactly one lane, matched by event_id."""

import asyncio
import json

from schemas.records import DeadLetter, TicketTriaged
from streams.lanes import collect, end_offsets, lane_topics
from streams.meta import Meta
from tests.integration.conftest import Isolated, Worker, send_values

VALID = [
    {"event_id": "ev-1", "ticket_id": "T-1", "body": "Refund my duplicate charge please."},
    {"event_id": "ev-2", "ticket_id": "T-2", "body": "Error 500 when I pay with PayPal."},
    {"ticket_id": "T-3", "body": "Where is my parcel? It is two weeks late."},  # id derived
    {
        "event_id": "ev-4",
        "ticket_id": "T-4",
        "body": "Reset my password, the link expired.",
        "channel": "chat",
    },
    {"ticket_id": "T-5", "body": "Please close my account."},  # id derived
    {"event_id": "ev-6", "ticket_id": "T-6", "subject": "Late", "body": "Delivery is late again."},
    {"event_id": "ev-7", "ticket_id": "T-7", "body": "Invoice for order 123 please.", "extra": 1},
    {"event_id": "ev-8", "ticket_id": "T-8", "body": "The website is very slow today."},
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
    values: list[bytes | None] = [json.dumps(v).encode() for v in VALID] + MALFORMED
    coords = await send_values(bootstrap, topic, values)
    return [(p, o, v) for (_, p, o), v in zip(coords, values, strict=True)]


async def test_every_event_ends_in_exactly_one_lane(isolated: Isolated, worker: Worker) -> None:
    s = isolated.settings
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
    assert counts["deadletter"] >= len(MALFORMED)
    for record in records.values():
        if isinstance(record, DeadLetter) and record.original_value not in MALFORMED:
            # A valid ticket may only be dead-lettered for a model reason, never as poison.
            assert record.reason != "poison_input", record
        elif isinstance(record, TicketTriaged):
            assert record.ticket_id in {v["ticket_id"] for v in VALID}
