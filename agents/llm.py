"""The LLM client layer: one structured-output call with a deadline and a bounded retry policy.

This is the only module that knows the ``openai`` client's exception types; it maps them onto
:mod:`schemas.errors` so nothing above it depends on a provider SDK. The client's own retries are
off (``max_retries=0``) and its 600 s default timeout replaced: in a stream, we own both.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import openai
import structlog
from pydantic import BaseModel

from agents.local_model import LOCAL_MODEL_ALIAS, LocalModelServer
from schemas.errors import AgentError, ModelBehaviorError, ProviderError

log = structlog.get_logger(__name__)

OutT = TypeVar("OutT", bound=BaseModel)


@dataclass(frozen=True)
class LLMConfig:
    """What the LLM layer needs to know; built from the app's settings by the caller."""

    api_key: str | None = None
    base_url: str | None = None
    model: str = "gpt-4o-mini"
    timeout_s: float = 30.0
    max_attempts: int = 3
    local_model_path: Path | None = None
    local_threads: int = 2
    local_context: int = 4096
    local_parallel: int = 2


@dataclass
class Completion(Generic[OutT]):
    """A validated structured answer and everything it cost to get it."""

    value: OutT
    raw: str
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    logprobs: list[Any] = field(default_factory=list)


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
    ) -> Completion[OutT]:
        """Ask for ``response_model``; retry transient failures with jittered backoff.

        Bounded by ``max_attempts`` and by a deadline of ``max_attempts × timeout_s``, so no loop
        runs unbounded. Tokens of failed attempts are counted too.
        """
        if self._client is None:
            raise ProviderError("LLM client not started")
        started = time.monotonic()
        deadline = started + self.config.max_attempts * self.config.timeout_s
        prompt_tokens = completion_tokens = 0
        last_error: AgentError | None = None
        for attempt in range(1, self.config.max_attempts + 1):
            try:
                response = await self._client.chat.completions.parse(
                    model=self.model,
                    messages=messages,  # type: ignore[arg-type]
                    response_format=response_model,
                    temperature=0,
                    max_tokens=max_tokens,
                    logprobs=True,
                    top_logprobs=5,
                )
            except openai.LengthFinishReasonError as exc:
                usage = exc.completion.usage
                raise ModelBehaviorError(
                    "output truncated at max_tokens",
                    attempts=attempt,
                    prompt_tokens=prompt_tokens + (usage.prompt_tokens if usage else 0),
                    completion_tokens=completion_tokens + (usage.completion_tokens if usage else 0),
                ) from exc
            except openai.ContentFilterFinishReasonError as exc:
                raise ModelBehaviorError(
                    "output blocked by content filter", attempts=attempt
                ) from exc
            except (
                openai.APIConnectionError,
                openai.RateLimitError,
                openai.InternalServerError,
            ) as exc:
                last_error = ProviderError(f"{type(exc).__name__}: {exc}", attempts=attempt)
            except openai.APIStatusError as exc:  # 4xx other than 429: our request is wrong
                raise ProviderError(f"{type(exc).__name__}: {exc}", attempts=attempt) from exc
            except ValueError as exc:  # pydantic validation of the model's JSON
                raise ModelBehaviorError(
                    f"output does not match {response_model.__name__}: {exc}",
                    attempts=attempt,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                ) from exc
            else:
                usage = response.usage
                prompt_tokens += usage.prompt_tokens if usage else 0
                completion_tokens += usage.completion_tokens if usage else 0
                choice = response.choices[0]
                raw = choice.message.content or ""
                if choice.message.refusal or choice.message.parsed is None:
                    raise ModelBehaviorError(
                        f"model refused or returned nothing: {choice.message.refusal or raw!r}",
                        attempts=attempt,
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                        last_output=raw,
                    )
                return Completion(
                    value=choice.message.parsed,
                    raw=raw,
                    attempts=attempt,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    latency_ms=int((time.monotonic() - started) * 1000),
                    logprobs=list(choice.logprobs.content or []) if choice.logprobs else [],
                )
            backoff = min(8.0, 0.25 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            log.warning("llm.retry", attempt=attempt, error=str(last_error), backoff_s=backoff)
            if time.monotonic() + backoff >= deadline:
                break
            await asyncio.sleep(backoff)
        assert last_error is not None
        last_error.attempts = attempt
        last_error.prompt_tokens, last_error.completion_tokens = prompt_tokens, completion_tokens
        raise last_error
