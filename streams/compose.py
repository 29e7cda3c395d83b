"""The composition root: the one place settings (plain data) become clients.

Everything that talks to the outside — the Avro codec and its schema registry, the LLM client,
the flows' agents — is built here from :class:`~streams.settings.Settings` and handed down, so
modules receive what they use instead of reaching for configuration.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from agents.idempotency import IdempotencyStore
from agents.invoice import AGENT_NAME as INVOICE_AGENT
from agents.ledger import PostInvoiceTool
from agents.llm import LLMClient, LLMConfig
from agents.notify import AcknowledgeTool, RouteTicketTool
from agents.redact import url_without_credentials
from agents.tools import Toolbox, ToolPolicy
from agents.triage import AGENT_NAME as TRIAGE_AGENT
from agents.usage import parse_prices
from schemas.codec import Codec
from schemas.registry import RegistryClient
from streams.breaker import Breaker, BreakerConfig
from streams.flow import Flow, FlowSpec, Runtime
from streams.settings import Settings
from streams.switches import ToolSwitches


def codec(settings: Settings, *, register: bool = True) -> Codec:
    """The codec for this deployment; with a registry, every schema is registered now.

    ``register=False`` for readers (``sluice consume``, the lane tally): they register nothing,
    and look up the schemas of Confluent-framed records by id as they meet them.
    """
    if not settings.schema_registry_url:
        return Codec()
    built = Codec(RegistryClient(settings.schema_registry_url))
    if register:
        built.register_all()
    return built


#: Per-call timeout and per-event deadline for the in-process local model unless set explicitly.
#: On a shared CPU one answer can take over 30 s while both slots decode; a timeout there only
#: throws the work away and queues it again (there is no network to hang).
LOCAL_TIMEOUT_S = 120.0
LOCAL_DEADLINE_S = 300.0


def llm_config(settings: Settings) -> LLMConfig:
    """The LLM layer's configuration from the app's settings."""
    s = settings
    local = not (s.openai_api_key or s.openai_base_url)
    explicit = s.model_fields_set
    timeout_s = LOCAL_TIMEOUT_S if local and "llm_timeout_s" not in explicit else s.llm_timeout_s
    deadline_s = (
        LOCAL_DEADLINE_S if local and "llm_deadline_s" not in explicit else s.llm_deadline_s
    )
    return LLMConfig(
        api_key=s.openai_api_key.get_secret_value() if s.openai_api_key else None,
        base_url=s.openai_base_url,
        model=s.model,
        timeout_s=timeout_s,
        max_attempts=s.llm_max_attempts,
        max_validation_attempts=s.llm_max_validation_attempts,
        deadline_s=deadline_s,
        token_budget=s.llm_token_budget,
        logprobs=s.llm_logprobs,
        prices=parse_prices(s.llm_prices),
        local_model_path=s.local_model_path,
        local_threads=s.local_threads,
        context_tokens=s.llm_context_tokens,
        local_context=s.local_context,
        local_parallel=s.local_parallel,
        local_cache_mib=s.local_cache_mib,
        max_concurrency=s.llm_max_concurrency,
    )


def flows(settings: Settings, specs: list[FlowSpec]) -> tuple[list[Flow[Any, Any]], LLMClient]:
    """Build ``specs`` on one started LLM client (shared, so its call limit is provider-wide)."""
    llm = LLMClient(llm_config(settings))
    llm.start()
    runtime = Runtime(settings, llm)
    return [spec.build(runtime) for spec in specs], llm


def toolbox(settings: Settings) -> Toolbox:
    """The built-in tools and the agents allowed to use them.

    The invoice agent may post invoices up to ``SLUICE_MAX_AMOUNT`` by size (a negative total,
    a credit note's, only on a person's decision); the triage agent may route a ticket (at
    confidence 0.7 or more) and acknowledge it. Every other action it proposes (``escalate``,
    ``close_as_resolved``, ...) is refused as ``not_allowlisted`` and recorded. Add your own
    tools with ``Toolbox.add``.
    """
    s = settings
    box = Toolbox()
    ledger = s.ledger_url.get_secret_value() if s.ledger_url else s.ledger_path
    box.add(PostInvoiceTool(ledger, ToolPolicy(max_amount=s.max_amount)), agents=[INVOICE_AGENT])
    route = RouteTicketTool(s.webhook_url, ToolPolicy(min_confidence=0.7))
    box.add(route, agents=[TRIAGE_AGENT])
    box.add(AcknowledgeTool(s.smtp_host, s.smtp_port, s.mail_store), agents=[TRIAGE_AGENT])
    return box


def tool_switches(settings: Settings) -> ToolSwitches:
    """The per-tool switches of this deployment (``sluice tool off|on``)."""
    redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    return ToolSwitches(
        redis, prefix=f"sluice:{settings.app_id}", refresh_s=settings.switch_refresh_s
    )


def effect_store(settings: Settings) -> IdempotencyStore:
    """The idempotency store on the deployment's Redis."""
    return IdempotencyStore(
        aioredis.Redis.from_url(settings.redis_url, socket_timeout=5),
        ttl_s=settings.effect_ttl_s,
        lease_s=settings.effect_lease_s,
    )


def endpoint_breaker_name(endpoint: str | None, settings: Settings | None = None) -> str:
    """The breaker name of an LLM endpoint: ``endpoint:<scheme://host:port/path>``,
    ``endpoint:local`` for the offline model, ``endpoint:openai`` for the provider's default URL.
    ``endpoint`` None: the one ``settings`` configure.

    The name is a ``/metrics`` label, a Redis key and ``sluice breaker status`` output, so a base
    URL's user and password (``http://user:pass@host``), query (``?key=...``) and fragment are
    never part of it: the same endpoint with other credentials is the same breaker."""
    if endpoint is None and settings is not None:
        local = not (settings.openai_api_key or settings.openai_base_url)
        endpoint = "local" if local else settings.openai_base_url or "openai"
    endpoint = (endpoint or "local").strip()
    if "://" in endpoint:
        endpoint = url_without_credentials(endpoint)
    return f"endpoint:{endpoint.rstrip('/')}"


def breaker_for(settings: Settings, flow: str) -> Breaker:
    """The circuit breaker of ``flow``, shared by every worker of this deployment (``app_id``)."""
    s = settings
    config = BreakerConfig(
        window_size=s.breaker_window,
        minimum_calls=s.breaker_min_calls,
        failure_rate=s.breaker_failure_rate,
        slow_call_rate=s.breaker_slow_call_rate,
        slow_call_s=s.breaker_slow_call_s,
        wait_open_s=s.breaker_wait_s,
        half_open_calls=s.breaker_half_open_calls,
        window_type=s.breaker_window_type,
        refresh_s=s.breaker_refresh_s,
    )
    redis = aioredis.Redis.from_url(s.redis_url, socket_timeout=2, socket_connect_timeout=2)
    return Breaker(redis, flow, config, prefix=f"sluice:{s.app_id}")
