"""The fault server, driven through the real ``openai`` client.

Why through the real client: the LLM layer's error handling keys on the client's exception types
and parsed fields (``RateLimitError.response.headers``, ``message.refusal``, ``finish_reason``),
so these tests pin both that the server produces each fault and how the client surfaces it.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import json
import math
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from openai.types.shared_params import ResponseFormatJSONSchema
from pydantic import BaseModel, Field, ValidationError

from agents.confidence import TokenProb, label_probability, self_rated_only, value_probability
from agents.invoice import InvoiceExtractionAgent
from agents.llm import LLMClient, LLMConfig, response_format
from agents.testing.fault_server import (
    REFUSAL_TEXT,
    FaultServer,
    answer_marker,
    certainty_marker,
    example_instance,
    fault_marker,
)
from agents.triage import TicketTriageAgent, TriageAnswer
from schemas.events import DocumentReceived, TicketReceived
from schemas.records import TicketPriority
from tests.poison.corpus import INVOICE_ANSWER, TRIAGE_ANSWER

REPO = Path(__file__).resolve().parents[2]


class Category(enum.StrEnum):
    billing = "billing"
    technical = "technical"


class Item(BaseModel):
    name: str = Field(min_length=3)
    quantity: int = Field(ge=1)


class M(BaseModel):
    """Covers what the server's schema instances must handle: enum, date, $ref, minItems, null."""

    category: Category
    due: datetime.date
    items: list[Item] = Field(min_length=1)
    note: str | None = None
    confidence: float = Field(ge=0.0, le=1.0)


def _format(schema: dict[str, Any]) -> ResponseFormatJSONSchema:
    return {"type": "json_schema", "json_schema": {"name": "M", "schema": schema, "strict": True}}


PLAIN = _format(M.model_json_schema())
STRICT = _format(openai.pydantic_function_tool(M)["function"]["parameters"])
"""The strict form agents.llm sends: every property required, additionalProperties false."""


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer(hang_s=3.0, slow_ms=200) as fault_server:
        yield fault_server


@pytest.fixture
def client(server: FaultServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=server.base_url, api_key="x", max_retries=0, timeout=5.0
    ) as openai_client:
        yield openai_client


def ask(
    client: openai.OpenAI,
    user: str,
    *more: ChatCompletionMessageParam,
    response_format: ResponseFormatJSONSchema = PLAIN,
    max_tokens: int | openai.Omit = openai.omit,
    timeout: float | openai.NotGiven = openai.not_given,
) -> ChatCompletion:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "Triage the ticket."},
        {"role": "user", "content": user},
        *more,
    ]
    return client.chat.completions.create(
        model="fault-test",
        messages=messages,
        response_format=response_format,
        max_tokens=max_tokens,
        timeout=timeout,
    )


def content(response: ChatCompletion) -> str:
    text = response.choices[0].message.content
    assert text is not None
    return text


# -- every fault, as the client sees it ------------------------------------------------------------


@pytest.mark.parametrize("response_format", [PLAIN, STRICT], ids=["pydantic", "strict"])
def test_ok_is_a_valid_instance_of_the_schema(
    client: openai.OpenAI, response_format: ResponseFormatJSONSchema
) -> None:
    response = ask(client, "my invoice is wrong", response_format=response_format)
    answer = M.model_validate_json(content(response))
    assert answer.category is Category.billing  # the first enum value
    assert answer.due == datetime.date(2026, 1, 15)
    assert answer.items == [Item(name="xxx", quantity=1)]  # minItems, minLength, minimum
    assert answer.note == "x"  # the non-null branch of the optional
    assert answer.confidence == 0.9
    assert response.model == "fault-test"  # echoed
    assert response.choices[0].finish_reason == "stop"
    assert response.choices[0].message.refusal is None


def test_without_response_format_the_answer_is_ok(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model="fault-test", messages=[{"role": "user", "content": "ping"}]
    )
    assert content(response) == "ok"


def test_models_lists_the_fault_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["fault"]


def test_slow_answers_ok_after_slow_ms(client: openai.OpenAI) -> None:
    began = time.monotonic()
    response = ask(client, f"slow one {fault_marker('slow')}")
    assert time.monotonic() - began >= 0.2
    M.model_validate_json(content(response))


def test_latency_delays_every_fault() -> None:
    with (
        FaultServer(default="500", latency_ms=150) as server,
        openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0) as client,
    ):
        began = time.monotonic()
        with pytest.raises(openai.InternalServerError):
            ask(client, "anything")
        assert time.monotonic() - began >= 0.15


def test_fail_rate_turns_that_share_of_ok_answers_into_faults() -> None:
    with (
        FaultServer(fail_rate=0.25, fail_with=["500"], seed=7) as server,
        openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0) as client,
    ):
        failed = 0
        for i in range(200):
            try:
                ask(client, f"q{i}")
            except openai.InternalServerError:
                failed += 1
        forced = server.calls[-1]  # a fault marker is never overridden
        with pytest.raises(openai.RateLimitError):
            ask(client, f"x {fault_marker('429')}")
    assert 30 <= failed <= 70  # 25% of 200, binomial sd ~6
    assert forced.fault in ("ok", "500")


def test_429_is_a_rate_limit_error_with_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client, f"busy {fault_marker('429')}")
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "1"
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "rate_limit_error"  # the client unwraps {"error": ...}


def test_500_is_an_internal_server_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        ask(client, f"broken {fault_marker('500')}")
    assert caught.value.status_code == 500


@pytest.mark.parametrize(
    ("fault", "error", "status", "kind", "code"),
    [
        ("401", openai.AuthenticationError, 401, "invalid_request_error", "invalid_api_key"),
        (
            "403",
            openai.PermissionDeniedError,
            403,
            "request_forbidden",
            "unsupported_country_region_territory",
        ),
    ],
)
def test_401_and_403_are_openai_style_rejections(
    client: openai.OpenAI,
    server: FaultServer,
    fault: str,
    error: type[openai.APIStatusError],
    status: int,
    kind: str,
    code: str,
) -> None:
    with pytest.raises(error) as caught:
        ask(client, f"denied {fault_marker(fault)}")
    assert caught.value.status_code == status
    assert (caught.value.type, caught.value.code) == (kind, code)
    assert caught.value.message.startswith(f"Error code: {status} - fault: ")
    [call] = server.calls
    assert (call.fault, call.status, call.prompt_tokens, call.completion_tokens) == (
        fault,
        status,
        0,
        0,
    )


def test_context_exceeded_is_llama_cpp_s_400(client: openai.OpenAI, server: FaultServer) -> None:
    user = f"too long {fault_marker('context_exceeded')}"
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, user)
    prompt = (len("Triage the ticket.") + len(user)) // 4
    assert caught.value.type == "exceed_context_size_error"
    assert caught.value.code == "400"  # llama.cpp sends the status as a number; the client str()s
    assert caught.value.body == {
        "code": 400,
        "message": (
            f"request ({prompt} tokens) exceeds the available context size ({prompt // 2} "
            "tokens), try increasing it"
        ),
        "type": "exceed_context_size_error",
        "n_prompt_tokens": prompt,
        "n_ctx": prompt // 2,
    }
    [call] = server.calls
    assert (call.status, call.prompt_tokens, call.completion_tokens) == (400, 0, 0)


def test_hang_outlasts_the_client_timeout(client: openai.OpenAI, server: FaultServer) -> None:
    began = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        ask(client, f"stuck {fault_marker('hang')}", timeout=0.5)
    assert time.monotonic() - began < 2.0
    [call] = server.calls
    assert (call.fault, call.status, call.prompt_tokens, call.completion_tokens) == (
        "hang",
        0,
        0,
        0,
    )


def test_reset_is_a_connection_error(client: openai.OpenAI, server: FaultServer) -> None:
    with pytest.raises(openai.APIConnectionError) as caught:
        ask(client, f"gone {fault_marker('reset')}")
    assert not isinstance(caught.value, openai.APITimeoutError)
    assert server.calls[0].status == 0
    assert ask(client, "the next request on a fresh connection is fine").choices


def test_invalid_json_does_not_parse(client: openai.OpenAI) -> None:
    response = ask(client, f"garbled {fault_marker('invalid_json')}")
    with pytest.raises(json.JSONDecodeError):
        json.loads(content(response))


def test_schema_violation_parses_but_does_not_validate(client: openai.OpenAI) -> None:
    response = ask(client, f"off-schema {fault_marker('schema_violation')}")
    assert json.loads(content(response)) == {"unexpected": True}
    with pytest.raises(ValidationError):
        M.model_validate_json(content(response))


def test_refusal_sets_refusal_and_no_content(client: openai.OpenAI) -> None:
    response = ask(client, f"nope {fault_marker('refusal')}")
    message = response.choices[0].message
    assert message.refusal == REFUSAL_TEXT
    assert message.content is None
    assert response.choices[0].finish_reason == "stop"


def test_truncated_stops_at_max_tokens(client: openai.OpenAI) -> None:
    response = ask(client, f"long {fault_marker('truncated')}", max_tokens=37)
    assert response.choices[0].finish_reason == "length"
    assert response.usage is not None
    assert response.usage.completion_tokens == 37
    full = json.dumps(example_instance(M.model_json_schema()))
    assert full.startswith(content(response))
    assert len(content(response)) < len(full)


def test_truncated_without_max_tokens_books_16(client: openai.OpenAI) -> None:
    response = ask(client, f"long again {fault_marker('truncated')}")
    assert response.usage is not None
    assert response.usage.completion_tokens == 16


def test_context_full_stops_well_below_max_tokens(
    client: openai.OpenAI, server: FaultServer
) -> None:
    response = ask(client, f"full {fault_marker('context_full')}", max_tokens=100)
    assert response.choices[0].finish_reason == "length"
    assert response.usage is not None
    assert response.usage.completion_tokens == 25
    full = json.dumps(example_instance(M.model_json_schema()))
    assert full.startswith(content(response))
    assert len(content(response)) < len(full)
    assert server.calls[0].max_tokens == 100
    response = ask(client, f"full again {fault_marker('context_full')}")
    assert response.usage is not None
    assert response.usage.completion_tokens == 4
    assert server.calls[1].max_tokens is None


def test_content_filter(client: openai.OpenAI) -> None:
    response = ask(client, f"spicy {fault_marker('content_filter')}")
    assert response.choices[0].finish_reason == "content_filter"
    assert not response.choices[0].message.content


# -- choosing faults -------------------------------------------------------------------------------


def test_marker_sequence_is_counted_per_first_user_message(
    client: openai.OpenAI, server: FaultServer
) -> None:
    ticket = f"refund please {fault_marker('500', 'ok')}"
    with pytest.raises(openai.InternalServerError):
        ask(client, ticket)
    assert M.model_validate_json(content(ask(client, ticket)))
    # a re-ask appends messages but keeps the first user message: same key, past the list's end
    reask: list[ChatCompletionMessageParam] = [
        {"role": "assistant", "content": "{}"},
        {"role": "user", "content": "Your previous answer was rejected."},
    ]
    assert M.model_validate_json(content(ask(client, ticket, *reask)))
    with pytest.raises(openai.InternalServerError):  # another event starts its own count
        ask(client, f"another ticket {fault_marker('500', 'ok')}")
    assert [c.status for c in server.calls] == [500, 200, 200, 500]
    keys = [c.key for c in server.calls]
    assert keys[0] == keys[1] == keys[2] == hashlib.sha1(ticket.encode()).hexdigest()
    assert keys[3] != keys[0]


def test_marker_in_any_message_counts(client: openai.OpenAI) -> None:
    more: ChatCompletionMessageParam = {"role": "user", "content": fault_marker("refusal")}
    assert ask(client, "plain ticket", more).choices[0].message.refusal == REFUSAL_TEXT


def test_script_overrides_markers_and_default(client: openai.OpenAI, server: FaultServer) -> None:
    server.script(["429", "refusal"])
    with pytest.raises(openai.RateLimitError):
        ask(client, f"marked ok {fault_marker('ok')}")
    assert ask(client, "unmarked").choices[0].message.refusal == REFUSAL_TEXT
    assert ask(client, "unmarked").choices[0].finish_reason == "stop"  # queue empty: default
    assert [c.fault for c in server.calls] == ["429", "refusal", "ok"]
    with pytest.raises(ValueError, match="unknown faults"):
        server.script(["teapot"])


def test_answer_marker_forces_the_exact_content(client: openai.OpenAI) -> None:
    forced = {"category": "technical", "due": "2026-02-01", "items": [], "confidence": 0.3}
    response = ask(client, f"pinned {answer_marker(forced)}")
    assert json.loads(content(response)) == forced
    verbatim = ask(client, f"raw {answer_marker('not json at all')}")
    assert content(verbatim) == "not json at all"


# -- logprobs, when asked for -------------------------------------------------------------------


def ask_logprobs(
    client: openai.OpenAI, user: str, top: int = 5, model: type[BaseModel] = TriageAnswer
) -> ChatCompletion:
    return client.chat.completions.create(
        model="fault-test",
        messages=[{"role": "user", "content": user}],
        response_format=response_format(model),  # type: ignore[arg-type]
        logprobs=True,
        top_logprobs=top,
    )


def tokens_of(response: ChatCompletion) -> list[TokenProb]:
    logprobs = response.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    return [
        TokenProb(t.token, t.logprob, tuple((a.token, a.logprob) for a in t.top_logprobs))
        for t in logprobs.content
    ]


def test_logprobs_only_when_asked(client: openai.OpenAI) -> None:
    assert ask(client, answer_marker(TRIAGE_ANSWER)).choices[0].logprobs is None
    asked = ask_logprobs(client, answer_marker(TRIAGE_ANSWER))
    assert asked.choices[0].logprobs is not None
    refused = ask_logprobs(client, f"{answer_marker(TRIAGE_ANSWER)} {certainty_marker(None)}")
    assert refused.choices[0].logprobs is None  # a provider that gives none
    assert json.loads(content(refused)) == TRIAGE_ANSWER


@pytest.mark.parametrize(
    "answer",
    [
        TRIAGE_ANSWER,
        INVOICE_ANSWER,
        {"note": 'quote " and \\ backslash, ünïcødé € and emoji 🙂', "n": -1.5e3, "x": None},
        "not json at all",
        '{"category" :  "billing" ,\n "confidence": 1}',
    ],
    ids=["triage", "invoice", "escapes", "text", "spaced"],
)
def test_logprob_tokens_concatenate_to_the_content(client: openai.OpenAI, answer: Any) -> None:
    response = ask_logprobs(client, answer_marker(answer), top=3)
    logprobs = response.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content
    assert "".join(t.token for t in logprobs.content) == content(response)
    for t in logprobs.content:
        assert t.bytes == list(t.token.encode())
        assert t.logprob <= 0.0
        assert 1 <= len(t.top_logprobs) <= 3
        assert (t.top_logprobs[0].token, t.top_logprobs[0].logprob) == (t.token, t.logprob)
        assert all(a.bytes == list(a.token.encode()) for a in t.top_logprobs)


def test_a_fault_s_content_has_its_own_tokens(client: openai.OpenAI) -> None:
    response = ask_logprobs(client, f"cut {fault_marker('truncated')}")
    assert "".join(t.token for t in tokens_of(response)) == content(response)
    assert ask_logprobs(client, fault_marker("refusal")).choices[0].logprobs is None


def test_a_label_is_one_token_with_the_other_labels_as_alternatives(
    client: openai.OpenAI,
) -> None:
    tokens = tokens_of(ask_logprobs(client, answer_marker(TRIAGE_ANSWER), top=20))
    priority = [t for t in tokens if t.token == TRIAGE_ANSWER["priority"]]
    assert len(priority) == 1
    assert math.isclose(math.exp(priority[0].logprob), 0.95, rel_tol=1e-4)  # its confidence
    labels = set(get_args(TicketPriority))
    assert {a for a, _ in priority[0].top} == labels
    assert math.isclose(sum(math.exp(lp) for _, lp in priority[0].top), 1.0, rel_tol=1e-4)
    assert tokens_of(ask_logprobs(client, answer_marker(TRIAGE_ANSWER), top=0))[0].top == ()


@pytest.mark.parametrize(
    ("marker", "expected"),
    [("", 0.95), (certainty_marker(0.3), 0.3), (certainty_marker(1.0), 0.999)],
    ids=["its-confidence", "marker", "clamped"],
)
def test_sluice_reads_the_certainty_from_the_logprobs(
    client: openai.OpenAI, marker: str, expected: float
) -> None:
    triage = tokens_of(ask_logprobs(client, f"{answer_marker(TRIAGE_ANSWER)} {marker}", top=20))
    p = label_probability(triage, "priority", "high", get_args(TicketPriority))
    assert p == pytest.approx(expected, abs=1e-3)
    invoice = tokens_of(ask_logprobs(client, f"{answer_marker(INVOICE_ANSWER)} {marker}"))
    for field in ("vendor_name", "invoice_number", "total"):
        assert value_probability(invoice, field) == pytest.approx(expected, abs=1e-3)
    with pytest.raises(ValueError, match="certainty"):
        certainty_marker(0.0)


async def test_sluice_agents_get_a_logprob_signal(server: FaultServer) -> None:
    """Sluice's own client and agents, as a worker runs them: the routed score is measured."""
    llm = LLMClient(LLMConfig(base_url=server.base_url, api_key="x", model="fault"))
    llm.start()
    try:
        triage = await TicketTriageAgent(llm).triage(
            TicketReceived(ticket_id="T-1", body=f"Charged twice. {answer_marker(TRIAGE_ANSWER)}")
        )
        invoice = await InvoiceExtractionAgent(llm).extract(
            DocumentReceived(document_id="D-1", text=f"Invoice. {answer_marker(INVOICE_ANSWER)}")
        )
        unsure = await TicketTriageAgent(llm).triage(
            TicketReceived(
                ticket_id="T-2",
                body=f"Hm. {answer_marker({**TRIAGE_ANSWER, 'confidence': 0.4})}",
            )
        )
    finally:
        await llm.close()
    assert triage.confidence.logprob == pytest.approx(0.95, abs=0.01)
    assert not self_rated_only(triage.confidence)
    assert triage.confidence.score >= 0.9  # the auto lane's default threshold is 0.8
    route = next(a for a in triage.actions if a.action == "route_to_team")
    assert route.confidence == pytest.approx(0.9, abs=0.01)  # min(its rating, P(team))
    assert invoice.confidence.logprob == pytest.approx(INVOICE_ANSWER["confidence"], abs=0.01)
    assert not self_rated_only(invoice.confidence)
    assert all(v == pytest.approx(invoice.confidence.logprob, abs=0.01)
               for v in invoice.field_confidence.values())  # fmt: skip
    assert unsure.confidence.logprob == pytest.approx(0.4, abs=0.1)
    assert unsure.confidence.score < 0.8  # an unsure answer still goes to review


def test_unknown_fault_and_streaming_are_rejected(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="unknown fault"):
        ask(client, "[[fault:teapot]]")
    with pytest.raises(openai.BadRequestError, match="streaming"):
        client.chat.completions.create(
            model="fault-test", messages=[{"role": "user", "content": "hi"}], stream=True
        )


def test_calls_record_tokens_and_status(client: openai.OpenAI, server: FaultServer) -> None:
    user = "count my tokens " + fault_marker("ok", "429")
    response = ask(client, user)
    with pytest.raises(openai.RateLimitError):
        ask(client, user)
    ok, limited = server.calls
    chars = len("Triage the ticket.") + len(user)
    assert response.usage is not None
    assert ok.prompt_tokens == response.usage.prompt_tokens == chars // 4
    assert ok.completion_tokens == response.usage.completion_tokens == len(content(response)) // 4
    assert response.usage.total_tokens == ok.prompt_tokens + ok.completion_tokens
    assert (ok.fault, ok.status) == ("ok", 200)
    assert (limited.fault, limited.status, limited.prompt_tokens) == ("429", 429, 0)
    assert ok.messages[1] == {"role": "user", "content": user}


async def test_async_client_on_another_loop(server: FaultServer) -> None:
    """The server's loop is its own: an AsyncOpenAI on the test's loop can call it."""
    async with openai.AsyncOpenAI(
        base_url=server.base_url, api_key="x", max_retries=0, timeout=5.0
    ) as client:
        server.script(["500", "ok"])
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
        response = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    assert response.choices[0].message.content == "ok"


def test_cli_serves_until_sigterm() -> None:
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agents.testing.fault_server",
            "--port",
            "0",
            "--default",
            "refusal",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+/v1)\n", line)
        assert found, line
        with openai.OpenAI(base_url=found.group(1), api_key="x", max_retries=0) as client:
            assert ask(client, "hello").choices[0].message.refusal == REFUSAL_TEXT
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0


# -- schema instances ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "string", "minLength": 4}, "xxxx"),
        ({"type": "string", "format": "date"}, "2026-01-15"),
        ({"type": "string", "enum": ["b", "a"]}, "b"),
        ({"const": 7}, 7),
        ({"type": ["string", "null"]}, "x"),
        ({"type": "null"}, None),
        ({"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 3}]}, 3),
        ({"oneOf": [{"type": "null"}]}, None),
        ({"type": "integer"}, 0),
        ({"type": "integer", "exclusiveMinimum": 4}, 5),
        ({"type": "number"}, 0.9),
        ({"type": "number", "minimum": 0, "maximum": 0.5}, 0.5),
        ({"type": "number", "minimum": 10, "maximum": 20}, 10.0),
        ({"type": "number", "exclusiveMinimum": 0.5, "exclusiveMaximum": 0.75}, 0.625),
        ({"type": "boolean"}, False),
        ({"type": "array", "items": {"type": "boolean"}}, []),
        ({"type": "array", "items": {"type": "boolean"}, "minItems": 2}, [False, False]),
        (
            {
                "type": "object",
                "properties": {"a": {"$ref": "#/definitions/A"}, "confidence": {"type": "number"}},
                "required": ["a", "b"],
                "definitions": {"A": {"allOf": [{"$ref": "#/$defs/B"}]}},
                "$defs": {"B": {"type": "object", "properties": {"c": {"type": "integer"}}}},
            },
            {"a": {"c": 0}, "confidence": 0.9, "b": "x"},
        ),
    ],
)
def test_example_instance(schema: dict[str, Any], expected: Any) -> None:
    assert example_instance(schema) == expected


def test_example_instance_rejects_remote_refs() -> None:
    with pytest.raises(ValueError, match="local"):
        example_instance({"$ref": "https://example.com/schema.json"})
