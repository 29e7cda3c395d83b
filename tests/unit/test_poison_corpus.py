"""Every poison-corpus entry through both flows' ``handle``, with the fault server as the model.

The same corpus goes through a real worker with kcat in tests/integration/test_poison_kcat.py;
this is the fast, broker-free version that pins each entry's lane and reason, and that ``handle``
returns an outcome for every one of them (an exception here is an event faust would have lost).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest

from agents.llm import LLMClient, LLMConfig
from agents.testing.fault_server import FaultServer
from schemas import codec
from schemas.records import DeadLetter, InvoiceExtracted, TicketTriaged
from streams.builtin import invoices_flow, tickets_flow
from streams.flow import Runtime
from streams.meta import Meta
from streams.pipeline import Pipeline
from streams.settings import Settings
from tests.poison import corpus

ENTRIES = corpus.load()


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer() as s:
        yield s


@pytest.fixture
async def pipelines(
    server: FaultServer,
) -> AsyncIterator[dict[str, Pipeline]]:
    # Per test: the openai client's connections belong to the event loop that opened them.
    # Logprobs asked for: the fault server's answers carry a measured signal, so the corpus's
    # confident answers can reach auto.
    llm = LLMClient(LLMConfig(base_url=server.base_url, api_key="test", model="fault"))
    llm.start()
    settings = Settings(topic_suffix=".unit")
    yield {
        "tickets": Pipeline(tickets_flow(Runtime(settings, llm)), settings),
        "documents": Pipeline(invoices_flow(Runtime(settings, llm)), settings),
    }
    await llm.close()


def test_the_corpus_is_big_and_varied_enough() -> None:
    assert len(ENTRIES) >= 30
    assert {e.topic for e in ENTRIES} == {"tickets", "documents"}
    reasons = Counter(e.reason for e in ENTRIES)
    assert {"poison_input", "input_too_large", "input_too_deep"} <= set(reasons)
    assert len({e.value for e in ENTRIES}) == len(ENTRIES)  # outputs are matched by value


@pytest.mark.parametrize("entry", ENTRIES, ids=[f"{e.id}-{e.note[:30]}" for e in ENTRIES])
async def test_entry_ends_in_its_lane(entry: corpus.Entry, pipelines: dict[str, Pipeline]) -> None:
    meta = Meta(f"{entry.topic}.received", 0, 7, datetime.now(UTC), b"k", entry.value)
    outcome = await pipelines[entry.topic].handle(meta)
    record = codec.decode(outcome.value)
    assert outcome.lane == entry.lane, record
    if entry.lane == "deadletter":
        assert isinstance(record, DeadLetter)
        assert record.reason == entry.reason, record.error_message
        assert record.error_message
        assert record.original_sha256 == (
            hashlib.sha256(entry.value).hexdigest() if entry.value is not None else None
        )
        if record.original_truncated:
            assert entry.value is not None
            assert entry.value.startswith(record.original_value or b"!")
            assert record.original_size == len(entry.value)
        else:
            assert record.original_value == entry.value
    else:
        assert isinstance(record, TicketTriaged | InvoiceExtracted)
        assert record.usage.attempts == 1  # the model answered, once
