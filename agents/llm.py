"""The LLM client layer: structured output with a deadline, bounded retries and bounded re-asks.

This is the only module that knows the ``openai`` client's types; it maps them onto
:mod:`schemas.errors` so nothing above it depends on a provider SDK. The client's own retries are
off (``max_retries=0``) and its 600 s default timeout replaced: in a stream, we own both.

Two loops, both bounded, inside one deadline and one token budget:

- **transient failures** (429 honouring ``retry-after``, 5xx, timeouts, connection resets) are
  retried with exponential backoff and jitter, at most ``max_attempts`` calls;
- **invalid answers** (not JSON, schema violation, business-rule violation) are re-asked with the
  problems spelled out, at most ``max_validation_attempts`` answers.

Refusal, truncation and content filtering end the call at once with their own errors. Every call
is booked in a :class:`~agents.usage.Ledger`, failed ones included.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, Generic, TypeVar

import openai
import structlog
from pydantic import BaseModel, ValidationError

from agents.confidence import TokenProb
from agents.local_model import LOCAL_MODEL_ALIAS, LocalModelServer
from agents.usage import DEFAULT_PRICES, Ledger, Price, estimate_tokens
from schemas.errors import (
    ConfigError,
    ContentFiltered,
    ModelBehaviorError,
    ProviderError,
    Refusal,
    Truncated,
)
from schemas.records import AttemptOutcome, Usage

log = structlog.get_logger(__name__)

OutT = TypeVar("OutT", bound=BaseModel)
LOCAL_REPEAT_PENALTY = 1.1


@dataclass(frozen=True)
class LLMConfig:
    """What the LLM layer needs to know; built from the app's settings by the caller."""

    api_key: str | None = None
    base_url: str | None = None
    model: str = "gpt-4o-mini"
    timeout_s: float = 30.0
    max_attempts: int = 3
    """Calls per event for transient failures (the first call included)."""
    max_validation_attempts: int = 3
    """Answers per event that may fail validation before giving up (the first included)."""
    deadline_s: float = 90.0
    """Wall-time bound of one structured() call: every attempt, backoff and re-ask."""
    token_budget: int | None = 6000
    """Tokens (prompt + completion, every attempt) one event may spend; None: unbounded."""
    max_backoff_s: float = 8.0
    logprobs: bool = True
    """Ask for token logprobs (measured confidence); turn off for providers that reject them."""
    prices: dict[str, Price] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    local_model_path: Path | None = None
    local_threads: int = 2
    local_context: int = 4096
    local_parallel: int = 2


@dataclass
class Completion(Generic[OutT]):
    """A schema-valid structured answer and everything it cost to get it.

    ``issues`` is empty unless business validation still failed after every re-ask: the answer is
    well formed but a person must look at it (the caller routes it to review).
    """

    value: OutT
    raw: str
    usage: Usage
    reasks: int
    issues: list[str]
    logprobs: list[TokenProb]


Validator = Callable[[Any], list[str]]


@cache
def response_format(model: type[BaseModel]) -> dict[str, Any]:
    """The ``json_schema`` response format for ``model``, in the strict form OpenAI requires.

    Built by the openai SDK's public ``pydantic_function_tool`` (all properties required,
    ``additionalProperties: false``), the same conversion ``chat.completions.parse`` uses; we call
    ``create`` instead of ``parse`` so a failed validation still yields the raw text to re-ask with
    and the usage to book.
    """
    schema = openai.pydantic_function_tool(model)["function"]["parameters"]
    return {
        "type": "json_schema",
        "json_schema": {"name": model.__name__, "schema": schema, "strict": True},
    }


def _retry_after(exc: openai.APIStatusError) -> float | None:
    headers = exc.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(str(value)) * scale)
            except ValueError:
                continue  # an HTTP date: fall back to our own backoff
    return None


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:10]
    )


def _tokens(choice: Any) -> list[TokenProb]:
    content = choice.logprobs.content if choice.logprobs else None
    return [
        TokenProb(t.token, t.logprob, tuple((a.token, a.logprob) for a in t.top_logprobs or []))
        for t in content or []
    ]


class LLMClient:
    """Calls one chat model for structured output. Chosen provider is logged at start-up.

    A key (``api_key``) means a hosted provider at ``base_url`` (OpenAI's by default); a base URL
    without a key means an OpenAI-compatible server that needs none (vLLM, Ollama, llama.cpp);
    neither means the offline local model, served in-process.
    """

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        self._local: LocalModelServer | None = None
        self._client: openai.AsyncOpenAI | None = None
        self.model = config.model
        #: Sampling knobs only the local llama.cpp server understands; none for other providers.
        self._extra_body: dict[str, Any] | None = None

    @property
    def provider(self) -> str:
        if self.config.api_key or self.config.base_url:
            return f"openai-compatible:{self.config.base_url or 'api.openai.com'}"
        return "local"

    def start(self) -> None:
        base_url = self.config.base_url
        if not (self.config.api_key or base_url):
            self._local = LocalModelServer(
                self.config.local_model_path,
                threads=self.config.local_threads,
                context=self.config.local_context,
                parallel=self.config.local_parallel,
            )
            self._local.start()
            base_url = self._local.base_url
            self.model = LOCAL_MODEL_ALIAS
            # Greedy decoding sends a 135M model into loops ("1.1.1.1..." until max_tokens); a
            # mild penalty over the last 64 tokens breaks most of them without bending the JSON.
            self._extra_body = {"repeat_penalty": LOCAL_REPEAT_PENALTY, "repeat_last_n": 64}
        self._client = openai.AsyncOpenAI(
            api_key=self.config.api_key or "not-needed",
            base_url=base_url,
            max_retries=0,
            timeout=self.config.timeout_s,
        )
        log.info("llm.provider", provider=self.provider, model=self.model, base_url=base_url)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._local is not None:
            self._local.stop()

    async def structured(
        self,
        messages: list[dict[str, str]],
        response_model: type[OutT],
        *,
        max_tokens: int = 512,
        validate: Validator | None = None,
    ) -> Completion[OutT]:
        """Ask for ``response_model``, re-asking with the problems when an answer is invalid.

        ``validate`` returns business-rule problems of a schema-valid answer (empty: fine).
        Raises :class:`ProviderError` when transient failures outlast ``max_attempts`` or the
        deadline, :class:`ModelBehaviorError` (or Refusal/Truncated/ContentFiltered) for unusable
        answers, :class:`BudgetExceeded` before a call that could overshoot the token budget.
        """
        if self._client is None:
            raise ProviderError("LLM client not started")
        cfg = self.config
        ledger = Ledger(self.model, cfg.prices, cfg.token_budget)
        deadline = ledger.started + cfg.deadline_s
        conversation = list(messages)
        transient = invalid = 0
        #: The last schema-valid answer that broke business rules: better than nothing at the end.
        fallback: Completion[OutT] | None = None
        while True:
            ledger.check_before_call(estimate_tokens(conversation) + max_tokens)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProviderError(f"deadline of {cfg.deadline_s}s spent", usage=ledger.usage())
            began = time.monotonic()
            failure: tuple[AttemptOutcome, str, float | None] | None = None
            try:
                response = await self._client.chat.completions.create(  # type: ignore[call-overload]
                    model=self.model,
                    messages=conversation,
                    response_format=response_format(response_model),
                    temperature=0,
                    max_tokens=max_tokens,
                    logprobs=True if cfg.logprobs else openai.omit,
                    top_logprobs=5 if cfg.logprobs else openai.omit,
                    timeout=min(cfg.timeout_s, remaining),
                    extra_body=self._extra_body,
                )
            except openai.APITimeoutError as exc:  # before APIConnectionError: it subclasses it
                failure = (
                    "timeout",
                    f"no answer within {min(cfg.timeout_s, remaining):.1f}s",
                    None,
                )
                cause: Exception = exc
            except openai.APIConnectionError as exc:
                failure = ("connection_error", f"{type(exc).__name__}: {exc}", None)
                cause = exc
            except openai.RateLimitError as exc:
                failure = ("rate_limited", f"429: {exc.message}", _retry_after(exc))
                cause = exc
            except openai.APIStatusError as exc:
                if exc.status_code < 500 and exc.status_code not in (408, 409):
                    ledger.record("bad_request", 0, 0, _ms(began))
                    # 400/401/403/404: a wrong key, model name or parameter. Not the event's fault
                    # and no retry fixes it.
                    raise ConfigError(
                        f"provider rejected the request (HTTP {exc.status_code}): {exc.message}"
                    ) from exc
                failure = ("server_error", f"HTTP {exc.status_code}: {exc.message}", None)
                cause = exc
            if failure is not None:
                outcome, message, retry_after = failure
                ledger.record(outcome, 0, 0, _ms(began))
                transient += 1
                if transient >= cfg.max_attempts:
                    raise ProviderError(
                        f"{message} (gave up after {transient} attempts)", usage=ledger.usage()
                    ) from cause
                backoff = self._backoff(transient, retry_after)
                if time.monotonic() + backoff >= deadline:
                    raise ProviderError(
                        f"{message}; waiting {backoff:.1f}s would pass the {cfg.deadline_s}s "
                        "deadline",
                        usage=ledger.usage(),
                    ) from cause
                log.warning("llm.retry", outcome=outcome, attempt=transient, backoff_s=backoff)
                await asyncio.sleep(backoff)
                continue

            usage = response.usage
            prompt = usage.prompt_tokens if usage else estimate_tokens(conversation)
            completion = usage.completion_tokens if usage else max_tokens
            choice = response.choices[0]
            raw = choice.message.content or ""
            verdict, problems, value = self._judge(choice, raw, response_model, validate)
            ledger.record(verdict, prompt, completion, _ms(began))
            log.info(
                "llm.call",
                attempt=len(ledger.entries),
                outcome=verdict,
                prompt_tokens=prompt,
                completion_tokens=completion,
                latency_ms=ledger.entries[-1].latency_ms,
            )
            if verdict == "truncated":
                raise Truncated(
                    f"output truncated at max_tokens={max_tokens}",
                    usage=ledger.usage(),
                    last_output=raw,
                )
            if verdict == "content_filtered":
                raise ContentFiltered(
                    "output withheld by the provider's content filter",
                    usage=ledger.usage(),
                    last_output=raw,
                )
            if verdict == "refused":
                raise Refusal(
                    f"model refused: {choice.message.refusal!r}",
                    usage=ledger.usage(),
                    last_output=raw,
                )
            ledger.check_after_call()
            if value is not None:
                answer = Completion(value, raw, ledger.usage(), invalid, problems, _tokens(choice))
                if verdict == "ok":
                    return answer
                fallback = answer
            invalid += 1
            if invalid >= cfg.max_validation_attempts:
                if fallback is not None:  # well formed, but a person must check the problems
                    fallback.usage = ledger.usage()
                    return fallback
                raise ModelBehaviorError(
                    f"no valid {response_model.__name__} after {invalid} answers: {problems[0]}",
                    usage=ledger.usage(),
                    last_output=raw,
                )
            log.info("llm.reask", attempt=len(ledger.entries), problems=problems)
            conversation += [
                {"role": "assistant", "content": raw},
                {"role": "user", "content": reask_message(problems)},
            ]

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """The server's ``retry-after`` if it gave one, else capped exponential with jitter."""
        if retry_after is not None:
            return retry_after + random.uniform(0.0, 0.1)
        ceiling = min(self.config.max_backoff_s, 0.25 * 2.0 ** (attempt - 1))
        return ceiling * random.uniform(0.5, 1.0)

    @staticmethod
    def _judge(
        choice: Any, raw: str, model: type[OutT], validate: Validator | None
    ) -> tuple[AttemptOutcome, list[str], OutT | None]:
        """Classify one answer: its outcome, the problems to re-ask with, the parsed value."""
        if choice.finish_reason == "length":
            return "truncated", [], None
        if choice.finish_reason == "content_filter":
            return "content_filtered", [], None
        if getattr(choice.message, "refusal", None):
            return "refused", [], None
        try:
            data = json.loads(raw, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            return (
                "invalid_json",
                [f"the answer is not valid JSON ({exc.msg} at char {exc.pos})"],
                None,
            )
        try:
            value = model.model_validate(data)
        except ValidationError as exc:
            return "schema_invalid", [f"the JSON does not match the schema: {_problems(exc)}"], None
        problems = validate(value) if validate else []
        return ("business_invalid" if problems else "ok"), problems, value


def reask_message(problems: list[str]) -> str:
    """What the model is told after an invalid answer: exactly what was wrong, and what to do."""
    listed = "\n".join(f"- {p}" for p in problems)
    return (
        "Your previous answer was rejected:\n"
        f"{listed}\n"
        "Answer again with one JSON object that fixes every problem above and follows the schema. "
        "Copy values from the input; do not invent them. Output only the JSON."
    )


def _ms(began: float) -> int:
    return int((time.monotonic() - began) * 1000)
