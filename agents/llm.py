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
is booked in a :class:`~agents.usage.Ledger`, failed ones included, and every error raised after a
call carries that usage.

**The context window.** A request that cannot fit the model's context is never sent: where the
window is known (``context_tokens``; the local model's is read from its server) the prompt is
measured before each call — exactly by the local server's own template and tokenizer
(``/apply-template`` + ``/tokenize``), by the high chars/3 estimate elsewhere — and the call refused
with :class:`ContextExceeded` if prompt + ``max_tokens`` would overflow. A re-ask, which appends the
previous answer and its problems, is sized the same way: if it would not fit (context or budget) a
compact re-ask (the original messages and the problems, without the previous answer) is tried, and
if that does not fit either, the business-invalid answer in hand goes to review or the event ends
with ContextExceeded (or BudgetExceeded). Where the window is unknown, the provider's own refusal
(HTTP 400 naming the context) and a generation cut short by a full context (``finish_reason``
``length`` below ``max_tokens``) map to ContextExceeded too, never to ConfigError or Truncated.

Nothing here logs or raises with message contents: log lines carry counts and outcomes, errors the
provider's own message (cut to :data:`PROVIDER_MESSAGE_CHARS`) and the problems found in the
model's answer.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache, cached_property
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import openai
import structlog
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ValidationError

from agents.confidence import TokenProb
from agents.limiter import CallLimiter
from agents.local_model import LOCAL_MODEL_ALIAS, LocalModelServer
from agents.observe import LLMCall, LLMRetry, ValidationFailed, notify
from agents.redact import url_without_credentials
from agents.usage import DEFAULT_PRICES, MICRO_USD, MILLION, Ledger, Price, estimate_tokens
from schemas.errors import (
    AgentError,
    BudgetExceeded,
    ContentFiltered,
    ContextExceeded,
    ModelBehaviorError,
    ProviderError,
    Refusal,
    RequestRejected,
    Truncated,
    validation_problems,
)
from schemas.records import AttemptOutcome, Usage

log = structlog.get_logger(__name__)

#: Awaited before each retry of a failed call, with the usage so far, when set. The engine sets
#: it around one agent run (its circuit-breaker seam) so that an event admitted before a breaker
#: opened stops retrying once it has: the gate raises ``BreakerOpen`` carrying that usage.
RETRY_GATE: ContextVar[Callable[[Usage], Awaitable[None]] | None] = ContextVar(
    "sluice_retry_gate", default=None
)

OutT = TypeVar("OutT", bound=BaseModel)
LOCAL_REPEAT_PENALTY = 1.1
#: The limiter's ceiling when a remote provider's capacity is not configured.
UNLIMITED = 1_000_000
#: A provider's error message is kept in our errors up to this length: enough to say what was
#: wrong, too short to carry back a request some provider chose to echo.
PROVIDER_MESSAGE_CHARS = 300
#: How providers say "the prompt does not fit": OpenAI's error code, llama.cpp's error type, and
#: the wording of both and of vLLM ("maximum context length", "exceeds the available context size").
CONTEXT_CODES = frozenset({"context_length_exceeded", "exceed_context_size_error"})
_CONTEXT_WORDS = re.compile(r"context (length|size|window)|maximum context", re.IGNORECASE)
#: Why a call cannot be sent: it would overflow the context window, or the token budget.
Blocked = Literal["context", "budget"]


@dataclass(frozen=True)
class LLMConfig:
    """What the LLM layer needs to know; built from the app's settings by the caller."""

    api_key: str | None = field(default=None, repr=False)
    """A secret: left out of ``repr`` so a logged or printed config never shows it."""
    base_url: str | None = None
    model: str = "gpt-4o-mini"
    timeout_s: float = 30.0
    max_attempts: int = 3
    """Calls per event for transient failures (the first call included)."""
    max_validation_attempts: int = 3
    """Answers per event that may fail validation before giving up (the first included)."""
    deadline_s: float = 90.0
    """Wall-time bound of one structured() call: every attempt, backoff and re-ask. Time spent
    queueing for a free provider slot is not counted (see :class:`~agents.limiter.CallLimiter`)."""
    token_budget: int | None = 6000
    """Tokens (prompt + completion, every attempt) one event may spend; None: unbounded."""
    max_backoff_s: float = 8.0
    logprobs: bool = True
    """Ask for token logprobs (measured confidence); turn off for providers that reject them."""
    prices: dict[str, Price] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    context_tokens: int | None = None
    """The model's context window per request (prompt + answer); None: unknown, the provider
    decides. Ignored for the local model, whose window is what its server gives each slot."""
    local_model_path: Path | None = None
    local_threads: int = 2
    local_context: int = 8192
    """The local server's whole KV cache (``n_ctx``), split evenly between its slots."""
    local_parallel: int = 2
    """Requests the local server decodes at once, each in its own slot."""
    local_cache_mib: int = 0
    """RAM for the local server's prompt cache, MiB; 0: off."""
    max_concurrency: int | None = None
    """Calls in flight at once (see :class:`~agents.limiter.CallLimiter`); None: the local
    model's slot count, or unlimited for a remote provider (the engine's window still bounds)."""


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


class _Rendered(openai.BaseModel):
    """llama.cpp's ``/apply-template`` answer: the conversation as the model will read it."""

    prompt: str


class _Tokens(openai.BaseModel):
    """llama.cpp's ``/tokenize`` answer."""

    tokens: list[Any]


def _provider_message(exc: openai.APIStatusError) -> str:
    """The provider's own message for a failed call, without the request and cut short."""
    body = exc.body
    message = body.get("message") if isinstance(body, dict) else None
    text = message if isinstance(message, str) and message else exc.message
    if len(text) > PROVIDER_MESSAGE_CHARS:
        text = text[:PROVIDER_MESSAGE_CHARS] + "..."
    return text


def _is_context_refusal(exc: openai.APIStatusError) -> bool:
    """Whether a 4xx says the request does not fit the model's context window."""
    if exc.code in CONTEXT_CODES or exc.type in CONTEXT_CODES:
        return True
    return bool(_CONTEXT_WORDS.search(_provider_message(exc)))


def _dropped_connection(exc: BaseException) -> str | None:
    """What dropped the connection, if a "timeout" was really a reset or refusal underneath
    (httpx-aiohttp maps aiohttp's ClientOSError to ConnectTimeout)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ConnectionError):
            return f"{type(current).__name__}: {current}"
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _redacted(url: str | None) -> str | None:
    """``url`` for logs: :func:`~agents.redact.url_without_credentials`."""
    return url_without_credentials(url) if url else url


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
        #: Tokens one request may use, prompt and answer together; None: unknown.
        self.context_tokens = config.context_tokens
        #: The local server's own endpoints (``/tokenize``), where prompts are measured exactly.
        self._tokenizer_url: str | None = None
        #: Sampling knobs only the local llama.cpp server understands; none for other providers.
        self._extra_body: dict[str, Any] | None = None
        #: Calls in flight to this provider, shared by every agent using this client.
        self.limiter = CallLimiter(config.max_concurrency or UNLIMITED)

    @cached_property
    def provider(self) -> str:
        """Which provider answers: ``local`` or ``openai-compatible:<base URL>`` (no userinfo)."""
        if self.config.api_key or self.config.base_url:
            return f"openai-compatible:{_redacted(self.config.base_url) or 'api.openai.com'}"
        return "local"

    def start(self) -> None:
        base_url = self.config.base_url
        if not (self.config.api_key or base_url):
            self._local = LocalModelServer(
                self.config.local_model_path,
                threads=self.config.local_threads,
                context=self.config.local_context,
                parallel=self.config.local_parallel,
                cache_mib=self.config.local_cache_mib,
            )
            self._local.start()
            if self.config.max_concurrency is None:  # more than its slots only queue there
                self.limiter = CallLimiter(self.config.local_parallel)
            base_url = self._local.base_url
            self.model = LOCAL_MODEL_ALIAS
            self.context_tokens = self._local.slot_context
            self._tokenizer_url = self._local.root_url
            # Greedy decoding sends a 135M model into loops ("1.1.1.1..." until max_tokens); a
            # mild penalty over the last 64 tokens breaks most of them without bending the JSON.
            self._extra_body = {"repeat_penalty": LOCAL_REPEAT_PENALTY, "repeat_last_n": 64}
        self._client = openai.AsyncOpenAI(
            api_key=self.config.api_key or "not-needed",
            base_url=base_url,
            max_retries=0,
            timeout=self.config.timeout_s,
            # The SDK's aiohttp transport (openai[aiohttp]): its default connection pool scans
            # every connection on every request, which costs a worker with hundreds of calls in
            # flight more CPU than the calls themselves.
            http_client=openai.DefaultAioHttpClient(timeout=self.config.timeout_s),
        )
        log.info(
            "llm.provider",
            provider=self.provider,
            model=self.model,
            base_url=_redacted(base_url),
            context_tokens=self.context_tokens,
            prompt_measure="tokenizer" if self._tokenizer_url else "estimate",
        )

    def health_target(self) -> tuple[str, dict[str, str]] | None:
        """A URL that says whether the provider answers, and the headers it needs: the local
        server's ``/health``, or ``<base URL>/models`` (with the key). None before start."""
        if self._local is not None:
            return f"{self._local.root_url}/health", {}
        if self._client is None:
            return None
        headers = {}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return f"{str(self._client.base_url).rstrip('/')}/models", headers

    def _body(
        self, conversation: list[dict[str, str]], response_model: type[BaseModel], max_tokens: int
    ) -> dict[str, Any]:
        """The chat-completions request, built by us and sent with the SDK's ``client.post``.

        Why not ``chat.completions.create``: it transforms every request against its TypedDict
        annotations, walking each message through every member of the message union — about 75
        Python calls per event, a quarter of a worker's CPU at hundreds of calls per second. The
        wire format is the same (``response_format`` is the strict ``json_schema`` form), and
        errors, retries-off and timeouts behave as with ``create``.
        """
        cfg = self.config
        body: dict[str, Any] = {
            "model": self.model,
            "messages": conversation,
            "response_format": response_format(response_model),
            "temperature": 0,
            "max_tokens": max_tokens,
            **(self._extra_body or {}),
        }
        if cfg.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = 5
        return body

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
        prompt_version: str | None = None,
    ) -> Completion[OutT]:
        """Ask for ``response_model``, re-asking with the problems when an answer is invalid.

        ``validate`` returns business-rule problems of a schema-valid answer (empty: fine).
        Raises :class:`ProviderError` when transient failures outlast ``max_attempts`` or the
        deadline, :class:`RequestRejected` when the provider refuses the request itself,
        :class:`ContextExceeded` when prompt + ``max_tokens`` cannot fit the context window,
        :class:`ModelBehaviorError` (or Refusal/Truncated/ContentFiltered) for unusable answers,
        :class:`BudgetExceeded` before a call that could overshoot the token budget. Every error
        raised after a call carries the usage of every call.

        Every call, answered or not, is reported as an :class:`~agents.observe.LLMCall` fact
        (with ``prompt_version``), every retry and invalid answer as a fact too.
        """
        if self._client is None:
            raise ProviderError("LLM client not started")
        cfg = self.config
        ledger = Ledger(self.model, cfg.prices, cfg.token_budget)
        deadline = ledger.started + cfg.deadline_s  # moved on by every wait for a slot, below
        conversation = list(messages)
        prompt_need = await self._prompt_tokens(conversation, deadline)
        if self._blocked(ledger, prompt_need, max_tokens) == "context":
            raise ContextExceeded(
                self._overflow(prompt_need, max_tokens, "the prompt"), usage=ledger.usage()
            )
        transient = invalid = 0
        #: The last schema-valid answer that broke business rules: better than nothing at the end.
        fallback: Completion[OutT] | None = None
        while True:
            ledger.check_before_call(prompt_need + max_tokens)
            failure: tuple[AttemptOutcome, str, float | None] | None = None
            cause: Exception | None = None
            began = time.monotonic()
            try:
                async with self.limiter.slot():
                    # Waiting for a slot is the worker's backpressure (many events in flight, a
                    # provider with few slots or a shared 429 pause), not time this event's calls
                    # took: queueing must not dead-letter events. max_attempts bounds the waits.
                    deadline += time.monotonic() - began
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise ProviderError(
                            f"deadline of {cfg.deadline_s}s spent", usage=ledger.usage()
                        )
                    began = time.monotonic()
                    response = await self._client.post(
                        "/chat/completions",
                        cast_to=ChatCompletion,
                        body=self._body(conversation, response_model, max_tokens),
                        options={"timeout": min(cfg.timeout_s, remaining)},
                    )
            except openai.APITimeoutError as exc:  # before APIConnectionError: it subclasses it
                dropped = _dropped_connection(exc)
                if dropped is not None:  # the aiohttp transport reports resets as timeouts
                    failure = ("connection_error", f"connection dropped: {dropped}", None)
                else:
                    failure = (
                        "timeout",
                        f"no answer within {min(cfg.timeout_s, remaining):.1f}s",
                        None,
                    )
                cause = exc
            except openai.APIConnectionError as exc:
                failure = ("connection_error", f"{type(exc).__name__}: {exc}", None)
                cause = exc
            except openai.RateLimitError as exc:
                failure = ("rate_limited", f"429: {_provider_message(exc)}", _retry_after(exc))
                cause = exc
            except openai.APIStatusError as exc:
                if exc.status_code < 500 and exc.status_code not in (408, 409):
                    rejected = self._rejected(exc, ledger, began)
                    self._observe(
                        ledger, began, max_tokens, prompt_version, error=str(rejected),
                        messages=conversation,
                    )  # fmt: skip
                    raise rejected from exc
                message = f"HTTP {exc.status_code}: {_provider_message(exc)}"
                failure, cause = ("server_error", message, None), exc
            else:
                if not response.choices:  # a provider glitch, not an answer: retried like a 5xx
                    failure = ("server_error", "the answer has no choices", None)
            if failure is not None:
                outcome, message, retry_after = failure
                ledger.record(outcome, 0, 0, _ms(began))
                self._observe(
                    ledger, began, max_tokens, prompt_version, error=message,
                    messages=conversation,
                )  # fmt: skip
                transient += 1
                backoff = self._backoff(transient, retry_after)
                if outcome == "rate_limited":  # every caller backs off, not just this one
                    await self.limiter.rate_limited(backoff)
                if transient >= cfg.max_attempts:
                    raise ProviderError(
                        f"{message} (gave up after {transient} attempts)", usage=ledger.usage()
                    ) from cause
                if time.monotonic() + backoff >= deadline:
                    raise ProviderError(
                        f"{message}; waiting {backoff:.1f}s would pass the {cfg.deadline_s}s "
                        "deadline",
                        usage=ledger.usage(),
                    ) from cause
                notify(LLMRetry(self.model, transient, outcome, round(backoff, 3), message))
                await asyncio.sleep(backoff)
                gate = RETRY_GATE.get()
                if gate is not None:  # the engine's breakers: stop retrying once one opened
                    await gate(ledger.usage())
                continue

            self.limiter.succeeded()
            usage = response.usage
            prompt = usage.prompt_tokens if usage else prompt_need
            completion = usage.completion_tokens if usage else max_tokens
            choice = response.choices[0]
            raw = choice.message.content or ""
            verdict, problems, value = self._judge(choice, raw, response_model, validate)
            if verdict == "truncated" and completion < max_tokens:
                # Stopped for length before max_tokens: the context filled up (llama.cpp ends a
                # slot's generation there), so a larger max_tokens would not have helped.
                verdict = "context_exceeded"
            ledger.record(verdict, prompt, completion, _ms(began))
            self._observe(
                ledger, began, max_tokens, prompt_version, finish_reason=choice.finish_reason,
                messages=conversation, response=raw,
            )  # fmt: skip
            if verdict == "context_exceeded":
                raise ContextExceeded(
                    f"the context filled up after {completion} answer tokens (max_tokens="
                    f"{max_tokens}, prompt {prompt} tokens)",
                    usage=ledger.usage(),
                    last_output=raw,
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
                refusal = str(choice.message.refusal)[:PROVIDER_MESSAGE_CHARS]
                raise Refusal(f"model refused: {refusal!r}", usage=ledger.usage(), last_output=raw)
            ledger.check_after_call()
            if value is not None:
                answer = Completion(value, raw, ledger.usage(), invalid, problems, _tokens(choice))
                if verdict == "ok":
                    return answer
                fallback = answer
            invalid += 1
            attempt = len(ledger.entries)
            if invalid >= cfg.max_validation_attempts:
                notify(ValidationFailed(self.model, attempt, verdict, problems, reask=False))
                if fallback is not None:  # well formed, but a person must check the problems
                    fallback.usage = ledger.usage()
                    return fallback
                raise ModelBehaviorError(
                    f"no valid {response_model.__name__} after {invalid} answers: {problems[0]}",
                    usage=ledger.usage(),
                    last_output=raw,
                )
            reask, prompt_need, blocked = await self._reask(
                messages, conversation, raw, problems, max_tokens, ledger, deadline
            )
            notify(
                ValidationFailed(self.model, attempt, verdict, problems, reask is not None, blocked)
            )
            if reask is None:
                if fallback is not None:  # the answer in hand goes to review, unsent re-ask
                    fallback.usage = ledger.usage()
                    return fallback
                raise self._no_room(blocked, prompt_need, max_tokens, ledger, raw)
            conversation = reask

    def _observe(
        self, ledger: Ledger, began: float, max_tokens: int, prompt_version: str | None, *,
        finish_reason: str | None = None, error: str | None = None,
        messages: list[dict[str, str]] | None = None, response: str | None = None,
    ) -> None:  # fmt: skip
        """Report the call just booked in ``ledger`` as an :class:`LLMCall` fact."""
        entry = ledger.entries[-1]
        price = self.config.prices.get(self.model)
        cost = None
        if price is not None:
            cost = (
                (price.prompt * entry.prompt_tokens + price.completion * entry.completion_tokens)
                / MILLION
            ).quantize(MICRO_USD)
        notify(
            LLMCall(
                provider=self.provider,
                model=self.model,
                attempt=entry.attempt,
                outcome=entry.outcome,
                latency_ms=entry.latency_ms,
                started_at=time.time() - (time.monotonic() - began),
                prompt_tokens=entry.prompt_tokens,
                completion_tokens=entry.completion_tokens,
                prompt_version=prompt_version,
                finish_reason=finish_reason,
                cost_usd=cost,
                max_tokens=max_tokens,
                error=error,
                messages=messages,
                response=response,
            )
        )

    async def _reask(
        self,
        messages: list[dict[str, str]],
        conversation: list[dict[str, str]],
        raw: str,
        problems: list[str],
        max_tokens: int,
        ledger: Ledger,
        deadline: float,
    ) -> tuple[list[dict[str, str]] | None, int, Blocked | None]:
        """The next conversation after an invalid answer, its measured prompt, or why none fits.

        The full re-ask shows the model its answer and the problems. If that would overflow the
        context or the budget, the compact one asks again from the original messages with only the
        problems: cheaper, and still tells the model what to fix. Returns ``(None, prompt, why)``
        with the compact re-ask's size when neither may be sent.
        """
        full = [
            *conversation,
            {"role": "assistant", "content": raw},
            {"role": "user", "content": reask_message(problems)},
        ]
        prompt = await self._prompt_tokens(full, deadline)
        if self._blocked(ledger, prompt, max_tokens) is None:
            return full, prompt, None
        compact = [*messages, {"role": "user", "content": reask_message(problems, compact=True)}]
        prompt = await self._prompt_tokens(compact, deadline)
        blocked = self._blocked(ledger, prompt, max_tokens)
        return (compact if blocked is None else None), prompt, blocked

    def _blocked(self, ledger: Ledger, prompt: int, max_tokens: int) -> Blocked | None:
        """Why a call with this prompt may not be sent, or None if it may."""
        if self.context_tokens is not None and prompt + max_tokens > self.context_tokens:
            return "context"
        if not ledger.allows(prompt + max_tokens):
            return "budget"
        return None

    def _overflow(self, prompt: int, max_tokens: int, what: str) -> str:
        return (
            f"{what} ({prompt} tokens) plus max_tokens={max_tokens} does not fit the context "
            f"window of {self.context_tokens} tokens"
        )

    def _no_room(
        self, blocked: Blocked | None, prompt: int, max_tokens: int, ledger: Ledger, raw: str
    ) -> AgentError:
        """The error for an invalid answer that may not be re-asked, with every call's usage."""
        if blocked == "context":
            return ContextExceeded(
                self._overflow(prompt, max_tokens, "even the compact re-ask"),
                usage=ledger.usage(),
                last_output=raw,
            )
        return BudgetExceeded(
            f"token budget {ledger.budget}: {ledger.spent} spent, even the compact re-ask could "
            f"take up to {prompt + max_tokens} more",
            usage=ledger.usage(),
            last_output=raw,
        )

    def _rejected(self, exc: openai.APIStatusError, ledger: Ledger, began: float) -> AgentError:
        """A 4xx other than 408/409/429: the request itself is refused; no retry fixes it."""
        message = _provider_message(exc)
        if _is_context_refusal(exc):
            ledger.record("context_exceeded", 0, 0, _ms(began))
            return ContextExceeded(
                f"the provider says the request exceeds the context window (HTTP "
                f"{exc.status_code}): {message}",
                usage=ledger.usage(),
            )
        # 400/401/403/404: a wrong key, model name or parameter. Not the event's fault.
        ledger.record("bad_request", 0, 0, _ms(began))
        return RequestRejected(
            f"provider rejected the request (HTTP {exc.status_code}): {message}",
            usage=ledger.usage(),
        )

    async def _prompt_tokens(self, conversation: list[dict[str, str]], deadline: float) -> int:
        """The prompt's size in tokens: exact from the local server, else the high estimate.

        The local server renders the conversation with its own chat template and counts it with
        its own tokenizer, so a call it would refuse for size is refused here first, and one it
        would take is never refused on a guess. Two loopback requests of a few ms each; if either
        fails, the estimate is used (it errs on the side of refusing).
        """
        if self._tokenizer_url is None or self._client is None:
            return estimate_tokens(conversation)
        timeout = max(0.1, min(5.0, deadline - time.monotonic()))
        try:
            rendered = await self._client.post(
                f"{self._tokenizer_url}/apply-template",
                cast_to=_Rendered,
                body={"messages": conversation},
                options={"timeout": timeout, "max_retries": 0},
            )
            counted = await self._client.post(
                f"{self._tokenizer_url}/tokenize",
                cast_to=_Tokens,
                body={"content": rendered.prompt, "add_special": True, "parse_special": True},
                options={"timeout": timeout, "max_retries": 0},
            )
            return len(counted.tokens)
        except (openai.APIError, AttributeError, TypeError, ValueError) as exc:
            log.warning("llm.measure_failed", error=type(exc).__name__)
            return estimate_tokens(conversation)

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
            return (
                "schema_invalid",
                [f"the JSON does not match the schema: {validation_problems(exc)}"],
                None,
            )
        problems = validate(value) if validate else []
        return ("business_invalid" if problems else "ok"), problems, value


def reask_message(problems: list[str], *, compact: bool = False) -> str:
    """What the model is told after an invalid answer: exactly what was wrong, and what to do.

    ``compact``: the previous answer is not in the conversation (it would not fit), so the message
    says so rather than refer to an answer the model cannot see.
    """
    listed = "\n".join(f"- {p}" for p in problems)
    lead = (
        "Your previous answer (not repeated here) was rejected:"
        if compact
        else "Your previous answer was rejected:"
    )
    return (
        f"{lead}\n"
        f"{listed}\n"
        "Answer again with one JSON object that fixes every problem above and follows the schema. "
        "Copy values from the input; do not invent them. Output only the JSON."
    )


def _ms(began: float) -> int:
    return int((time.monotonic() - began) * 1000)
