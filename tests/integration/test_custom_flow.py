"""A third agent, defined entirely in this file, runs through a real worker on real Kafka.

The part above the line is the README's "Write your own agent": an input model, an agent that
asks the model one question through the shared LLM client, a record type with its Avro schema
(``note_scored.avsc``, made by :func:`schemas.envelope.result_schema`), and one
:class:`FlowSpec`. The stock worker runs it with
``sluice worker --flow tests.integration.test_custom_flow:NOTES``; nothing in Sluice changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal, get_args

import pytest
from pydantic import BaseModel

from agents.base import AgentResult
from agents.confidence import combine, label_probability
from agents.llm import LLMClient
from agents.testing.fault_server import answer_marker
from schemas.envelope import ResultRecord
from schemas.records import DeadLetter
from streams.flow import Envelope, Flow, FlowSpec, register_flow, unregister_flow
from streams.lanes import collect, end_offsets
from streams.topics import ensure_topics
from tests.integration.conftest import Isolated, fake_model_env, send_values, start_worker, stop


class Note(BaseModel):  # the input event: JSON on notes.received
    note_id: str
    text: str


Moods = Literal["happy", "neutral", "angry"]


class Mood(BaseModel):  # what the model must answer
    mood: Moods
    confidence: float


class NoteScored(ResultRecord):  # the Avro record on notes.auto / notes.review
    note_id: str
    mood: str


class MoodAgent:
    name, version = "note-mood", "1.0.0"

    def __init__(self, llm: LLMClient) -> None:
        self.llm = llm

    async def run(self, note: Note) -> AgentResult[Mood]:
        messages = [
            {"role": "system", "content": "Classify the mood of the note."},
            {"role": "user", "content": note.text},
        ]
        c = await self.llm.structured(messages, Mood, max_tokens=64)
        # The label's probability from the tokens: a self-rating alone never reaches auto.
        measured = label_probability(c.logprobs, "mood", c.value.mood, get_args(Moods))
        confidence = combine(c.value.confidence, measured, reasks=c.reasks)
        return AgentResult(c.value, confidence, c.usage, self.llm.model, "mood.v1", c.issues)


def note_record(note: Note, result: AgentResult[Mood], envelope: Envelope) -> NoteScored:
    return NoteScored(**envelope, note_id=note.note_id, mood=result.answer.mood)


NOTES = FlowSpec(
    "notes",
    lambda rt: Flow("notes", Note, MoodAgent(rt.llm), note_record),
    record_model=NoteScored,
    record_avsc=Path(__file__).with_name("note_scored.avsc"),
)

# --- the test ----------------------------------------------------------------------------------


@pytest.fixture
def notes_registered() -> Iterator[None]:
    register_flow(NOTES)  # in this process too, so its topics are created and records decode
    yield
    unregister_flow("notes")


def note(note_id: str, text: str, answer: dict[str, object]) -> bytes:
    return Note(note_id=note_id, text=f"{text} {answer_marker(answer)}").model_dump_json().encode()


async def test_a_new_agent_defined_in_a_test_file_runs_in_a_real_worker(
    isolated: Isolated, notes_registered: None, fault_server: str, tmp_path: Path
) -> None:
    s = isolated.settings
    t = s.topics
    assert t.notes_received == f"notes.received{s.topic_suffix}"
    await ensure_topics(s)
    values = [
        note("N-1", "Great service!", {"mood": "happy", "confidence": 0.95}),
        note("N-2", "Meh.", {"mood": "neutral", "confidence": 0.3}),
        b'{"note_id": 7}',
    ]
    start = await end_offsets(s, list(t.lanes()))
    worker = start_worker(
        fake_model_env(isolated.env, fault_server),
        tmp_path / "worker.log",
        "--flow",
        "tests.integration.test_custom_flow:NOTES",
    )
    try:
        sent = await send_values(s.bootstrap_servers, t.notes_received, values, partition=0)
        tally = await collect(s, start, set(sent), timeout_s=90)
        assert worker.alive(), worker.log_tail()
    finally:
        stop(worker)
    assert tally.counts() == {"auto": 1, "review": 1, "deadletter": 1}, worker.log_tail()
    assert not tally.duplicates
    [scored] = tally.lanes["auto"].values()
    assert isinstance(scored, NoteScored)
    assert (scored.note_id, scored.mood, scored.agent.name) == ("N-1", "happy", "note-mood")
    assert (scored.route.lane, scored.usage.attempts, scored.source.topic) == (
        "auto",
        1,
        t.notes_received,
    )
    [low] = tally.lanes["review"].values()
    assert isinstance(low, NoteScored)
    assert (low.note_id, low.mood) == ("N-2", "neutral")
    [bad] = tally.lanes["deadletter"].values()
    assert isinstance(bad, DeadLetter)
    assert (bad.flow, bad.reason) == ("notes", "poison_input")
    # The worker ran only the flow it was given.
    assert "tickets.received" not in worker.log.read_text().split('"worker.starting"')[1][:2000]
