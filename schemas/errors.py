"""The one error tree of Sluice.

Every error says whether retrying the same call can help (``retriable``), so the retry loop, the
breaker and the dead-letter code read a flag instead of walking ``isinstance`` ladders.
"We are misconfigured" is kept apart from "the event is bad" and from "the model misbehaved".

::

    SluiceError
    ├── ConfigError              we are misconfigured: missing model file, unknown provider
    ├── InputError               the event itself is bad (poison); retrying cannot help
    │   ├── UndecodableInput     not UTF-8, not JSON, not a JSON object
    │   └── InvalidInput         JSON that fails the event's pydantic model
    ├── CodecError               Avro encoding or decoding failed
    │   ├── UnknownSchema        a fingerprint or registry id we hold no schema for
    │   ├── CorruptRecord        a header or body that does not parse
    │   └── IncompatibleSchema   the registry refused a schema under its compatibility rule
    └── AgentError               the LLM step failed; carries attempts, token usage, last output
        ├── ProviderError        transport, 5xx, 429, timeouts (retriable)
        └── ModelBehaviorError   the model answered, but unusably: invalid JSON or schema,
                                 refusal, truncation (not retriable as-is)
"""

from __future__ import annotations

from typing import ClassVar


class SluiceError(Exception):
    """Root of every error Sluice raises on purpose."""

    retriable: ClassVar[bool] = False
    #: Short machine-readable reason carried in dead-letter records and logs.
    reason: ClassVar[str] = "error"


class ConfigError(SluiceError):
    """A setting, file or dependency is missing or wrong: fix the deployment, not the event."""

    reason = "config_error"


class InputError(SluiceError):
    """The input event cannot be processed by any retry: it goes to the dead-letter lane."""

    reason = "poison_input"


class UndecodableInput(InputError):
    """The bytes are not a UTF-8 JSON object."""


class InvalidInput(InputError):
    """The JSON is well formed but does not satisfy the event model."""


class CodecError(SluiceError):
    """Avro encoding or decoding failed."""

    reason = "codec_error"


class UnknownSchema(CodecError):
    """The record names a schema (fingerprint or registry id) that cannot be found."""


class CorruptRecord(CodecError):
    """The header or body of an Avro record does not parse."""


class IncompatibleSchema(CodecError):
    """The schema registry refused a schema (HTTP 409): it breaks the subject's compatibility rule.

    Raised at start-up when schemas are registered, so a breaking change stops the worker before it
    writes a record that existing consumers could not read.
    """


class AgentError(SluiceError):
    """The LLM step failed. Carries what it cost so budgets and evals can account for it."""

    reason = "agent_error"

    def __init__(
        self,
        message: str,
        *,
        attempts: int = 0,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        last_output: str | None = None,
    ) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.last_output = last_output


class ProviderError(AgentError):
    """The provider could not answer (network, timeout, rate limit, server error)."""

    retriable = True
    reason = "provider_unavailable"


class ModelBehaviorError(AgentError):
    """The provider answered but the output is unusable (invalid, refused, truncated)."""

    reason = "model_output_invalid"
