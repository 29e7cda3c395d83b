"""No secret or input text outside its one field: the key, and what customers write, stay put.

A worker runs at DEBUG (where faust prints every sent value and openai every request) with a
marker API key, on tickets that carry marker "secrets" in every place input can go wrong: a valid
body, an invalid field, an over-long body, a bad document path, broken JSON. Then every log line
and every output record, headers included, is searched for the markers. The one place input
bytes may appear is a dead letter's ``original_value`` (the event itself, for redrive).

A second run uses a key that has no known credential shape (so only the registry of configured
secrets can catch it) and a provider that quotes the key back in its 401 error: the key must be
scrubbed from the dead letter's message and stack trace, the headers and every log line.
"""

from __future__ import annotations

import json
from pathlib import Path

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from agents.testing.fault_server import answer_marker, fault_marker
from schemas import codec
from schemas.records import DeadLetter
from streams.lanes import collect, end_offsets, lane_topics
from streams.settings import Settings
from streams.topics import partitions
from tests.integration.conftest import Isolated, fake_model_env, send_values, start_worker, stop
from tests.poison.corpus import TRIAGE_ANSWER

KEY = "sk-MARKERKEY-7f3a9c"
CARD = "4111-1111-MARKERCARD-1111"
PASSWORD = "hunter2-MARKERPASS"
SECRETS = (KEY, CARD, PASSWORD, "MARKERKEY", "MARKERCARD", "MARKERPASS")


def tickets() -> list[bytes]:
    body = f"My card {CARD} was charged twice, password {PASSWORD}."
    return [
        json.dumps({"ticket_id": "S-1", "body": f"{body} {answer_marker(TRIAGE_ANSWER)}"}).encode(),
        json.dumps({"ticket_id": "S-2", "body": body, "channel": f"fax {CARD}"}).encode(),
        json.dumps({"ticket_id": "S-3", "body": body * 600}).encode(),  # over 20,000 chars
        json.dumps({"ticket_id": "S-4", "body": body, "created_at": PASSWORD}).encode(),
        f'{{"ticket_id": "S-5", "body": "{body}", '.encode(),  # cut off
        json.dumps({"ticket_id": f"S-6 {CARD}" * 10, "body": body}).encode(),
    ]


def documents() -> list[bytes]:
    return [
        json.dumps({"document_id": "S-D1", "path": f"../{PASSWORD}/{CARD}.pdf"}).encode(),
        json.dumps({"document_id": "S-D2", "content_base64": f"{CARD}!!"}).encode(),
    ]


async def test_no_secret_leaves_its_field(
    isolated: Isolated, fault_server: str, tmp_path: Path
) -> None:
    s = isolated.settings
    t = s.topics
    env = fake_model_env(
        isolated.env,
        fault_server,
        OPENAI_API_KEY=KEY,
        SLUICE_LOG_LEVEL="debug",
        SLUICE_DOCUMENT_DIR=str(tmp_path),
    )
    start = {tp: 0 for tp in await end_offsets(s, list(lane_topics(s)))}
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        sent = await send_values(s.bootstrap_servers, t.tickets_received, list(tickets()))
        sent += await send_values(s.bootstrap_servers, t.invoices_received, list(documents()))
        tally = await collect(s, start, set(sent), timeout_s=120)
    finally:
        stop(worker)
    assert tally.seen() == set(sent), worker.log_tail()
    assert len(tally.lanes["auto"]) == 1  # S-1 reached the model and came back
    assert len(tally.lanes["deadletter"]) == len(sent) - 1

    log = worker.log.read_text(errors="replace")
    assert "send: topic=" not in log  # faust's DEBUG line that prints whole values is capped
    assert '"level": "debug"' in log  # ... while our own DEBUG is on
    leaks = [marker for marker in SECRETS if marker in log]
    assert not leaks, [line[:300] for line in log.splitlines() if any(m in line for m in leaks)]

    records = await read_all(s, list(lane_topics(s)))
    assert len(records) == len(sent)
    for message in records:
        record = codec.decode(message.value or b"")
        fields = record.model_dump(mode="json")
        if isinstance(record, DeadLetter):
            fields.pop("original_value")
        text = json.dumps(fields) + repr(message.key) + repr(message.headers)
        assert not [m for m in SECRETS if m in text], (message.topic, fields, message.headers)


async def read_all(settings: Settings, topics: list[str]) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record on ``topics``, headers included."""
    tps = await partitions(settings, topics)
    # earliest: seek_to_beginning alone can lose a race with the default "latest" reset
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[ConsumerRecord[bytes, bytes]] = []
        while len(out) < sum(ends.values()):
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                out += batch
        return out
    finally:
        await consumer.stop()


#: Not ``sk-``-shaped: only the registry of configured secrets knows it is one.
PLAIN_KEY = "plain-MARKERPLAIN-key-91c2"
CONFIGURED = "conf-MARKERCONF-5a7e"


async def test_a_key_the_provider_echoes_is_scrubbed_everywhere(
    isolated: Isolated, fault_server: str, tmp_path: Path
) -> None:
    s = isolated.settings
    env = fake_model_env(
        isolated.env, fault_server, OPENAI_API_KEY=PLAIN_KEY, SLUICE_SECRETS=CONFIGURED,
        SLUICE_LOG_LEVEL="debug", SLUICE_LOG_PROMPTS="full",
    )  # fmt: skip
    start = {tp: 0 for tp in await end_offsets(s, list(lane_topics(s)))}
    worker = start_worker(env, tmp_path / "worker.log")
    body = f"Please help, my token is {CONFIGURED}. {fault_marker('401_echo')}"
    try:
        sent = await send_values(
            s.bootstrap_servers,
            s.topics.tickets_received,
            [json.dumps({"ticket_id": "E-1", "body": body}).encode()],
        )
        tally = await collect(s, start, set(sent), timeout_s=60)
    finally:
        stop(worker)
    assert tally.seen() == set(sent), worker.log_tail()
    (letter,) = tally.lanes["deadletter"].values()
    assert isinstance(letter, DeadLetter)
    assert letter.reason == "config_error"
    assert "incorrect API key provided: Bearer [REDACTED]" in letter.error_message  # scrubbed, kept
    log = worker.log.read_text(errors="replace")
    assert "Please help, my token is [REDACTED]" in log  # the prompt is logged (full), scrubbed
    assert '"event": "llm.call"' in log
    assert '"event": "event.deadlettered"' in log
    for marker in (PLAIN_KEY, "MARKERPLAIN", CONFIGURED):
        assert marker not in log, [line[:300] for line in log.splitlines() if marker in line]
    for message in await read_all(s, list(lane_topics(s))):
        fields = codec.decode(message.value or b"").model_dump(mode="json")
        fields.pop("original_value", None)  # the event itself, kept for redrive
        text = repr(fields) + repr(message.headers)
        assert not [m for m in (PLAIN_KEY, "MARKERPLAIN", CONFIGURED) if m in text], message.topic
