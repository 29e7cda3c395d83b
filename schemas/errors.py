"""The one error tree of Sluice.

Every error says whether retrying the same call can help (``retriable``), so the retry loop, the
breaker and the dead-letter code read a flag instead of walking ``isinstance`` ladders.
"We are misconfigured" is kept apart from "the event is bad" and from "the model misbehaved".

::

    SluiceError
    ├── ConfigError              we are misconfigured: missing model file, unknown provider
    ├── InputError               the event itself is bad (poison); retrying cannot help
    │   ├── UndecodableInput     not UTF-8, not JSON, not a JSON object
    │   ├── InvalidInput         JSON that fails the event's pydantic model
    │   ├── InputTooLarge        over a size limit: bytes, string length, integer digits
    │   ├── InputTooDeep         JSON nested deeper than the parser's limit
    │   └── DocumentTooCostly    a document whose parsing passed its time budget (a PDF bomb)
    ├── CodecError               Avro encoding or decoding failed
    │   ├── UnknownSchema        a fingerprint or registry id we hold no schema for
    │   ├── CorruptRecord        a header or body that does not parse
    │   └── IncompatibleSchema   the registry refused a schema under its compatibility rule
    ├── AgentError               the LLM step failed; carries every attempt's usage, last output
    │   ├── ProviderError        transport, 5xx, 429, timeouts (retriable)
    │   ├── RequestRejected      400/401/403/404: wrong key, model or parameter (reason
    │   │                        config_error: fix the deployment, then redrive)
    │   ├── ContextExceeded      prompt + answer cannot fit the model's context window
    │   ├── BudgetExceeded       the event's token budget would be or was exceeded
    │   └── ModelBehaviorError   the model answered, but unusably: invalid JSON or schema after
    │       │                    every re-ask (not retriable as-is)
    │       ├── Refusal          the model declined to answer
    │       ├── Truncated        the answer hit max_tokens
    │       └── ContentFiltered  the provider's content filter blocked the answer
    ├── BreakerOpen              the flow's circuit breaker is open: the model was not called
    ├── UnverifiedDecision       a decision on <flow>.reviewed the executor cannot trust:
    │                            unsigned, wrongly signed, by no known reviewer, or not about
    │                            the review-lane record it names
    ├── ToolError                a side effect did not run, or may not have
    │   ├── EffectFailed         the target system said no: nothing happened (a tool raises it)
    │   ├── IdempotencyConflict  the effect's key was claimed before with different input
    │   └── StoreUnavailable     the idempotency store (Redis) did not answer: nothing was run
    └── ReviewError              a reviewer's request cannot be done as asked
        ├── ItemNotFound         no review item with that id
        ├── ReviewConflict       claimed by another reviewer, or decided already
        └── InvalidEdit          an edit names an unknown or locked field, or fails the schema
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from schemas.records import Usage


def validation_problems(exc: Any, limit: int = 10) -> str:
    """A pydantic ``ValidationError`` as one line: ``where: what`` per problem, never the input
    value (it may carry customer text or a secret)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
        for e in exc.errors()[:limit]
    )


class SluiceError(Exception):
    """Root of every error Sluice raises on purpose."""

    retriable: ClassVar[bool] = False
    #: Short machine-readable reason carried in dead-letter records and logs.
    reason: ClassVar[str] = "error"
    #: Whether this failure counts against the circuit breaker (the endpoint is unwell), as
    #: opposed to the event's or the model's fault.
    breaker_counts: ClassVar[bool] = False


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


class InputTooLarge(InputError):
    """The event breaks an explicit size limit: total bytes, a string's length, an integer's
    digits. Its own reason so operators can tell "raise the limit" apart from "fix the producer".
    """

    reason = "input_too_large"


class InputTooDeep(InputError):
    """The JSON nests deeper than the parser allows: refused before parsing, never a
    ``RecursionError``."""

    reason = "input_too_deep"


class DocumentTooCostly(InputError):
    """Reading the document's text passed its budget (``SLUICE_PDF_BUDGET_S``): a small file can
    hold content that keeps a parser busy for minutes. The parse was stopped; the same document
    would cost the same again, so it is not retried. Raise the budget and redrive if it is real.
    """

    reason = "document_too_costly"


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
    """The LLM step failed. Carries what it cost so budgets, dead letters and evals account for it.

    ``usage`` lists every call made, failed ones included; ``last_output`` is the model's last
    text, kept for debugging prompts.
    """

    reason = "agent_error"

    def __init__(
        self, message: str, *, usage: Usage | None = None, last_output: str | None = None
    ) -> None:
        super().__init__(message)
        self.usage = usage
        self.last_output = last_output

    @property
    def attempts(self) -> int:
        return self.usage.attempts if self.usage else 0


class ProviderError(AgentError):
    """The provider could not answer (network, timeout, rate limit, server error)."""

    retriable = True
    reason = "provider_unavailable"
    breaker_counts = True


class RequestRejected(AgentError):
    """The provider refused the request itself (HTTP 400/401/403/404): a wrong key, model name or
    parameter. Not the event's fault and no retry fixes it; the dead letter keeps the calls made so
    a redrive after the fix can be costed.
    """

    reason = "config_error"
    breaker_counts = True


class ContextExceeded(AgentError):
    """The prompt plus the room for an answer does not fit the model's context window.

    Raised before the call where the prompt can be measured, or mapped from the provider's own
    refusal or a generation cut short by a full context (not by ``max_tokens``).
    """

    reason = "context_exceeded"


class BudgetExceeded(AgentError):
    """The event's token budget is spent: another call could exceed it, or one already did.

    Not retriable: the same event would cost the same again. A larger budget or a shorter input is
    the fix, so it goes to the dead-letter lane with the spend recorded.
    """

    reason = "token_budget_exceeded"


class ModelBehaviorError(AgentError):
    """The provider answered but the output is unusable after every re-ask."""

    reason = "model_output_invalid"


class Refusal(ModelBehaviorError):
    """The model refused (``message.refusal``); asking again the same way will not help."""

    reason = "model_refused"


class Truncated(ModelBehaviorError):
    """The answer stopped at ``max_tokens`` (finish_reason ``length``): it cannot be complete."""

    reason = "output_truncated"


class ContentFiltered(ModelBehaviorError):
    """The provider's content filter withheld the answer (finish_reason ``content_filter``)."""

    reason = "content_filtered"


class ToolError(SluiceError):
    """A tool's side effect did not run, or may not have (see :mod:`agents.effects`)."""

    reason = "tool_error"


class EffectFailed(ToolError):
    """Raised by a tool's ``apply`` when the target system refused: the effect definitely did not
    happen, so the claim is released and a later attempt may run it. Anything else ``apply`` raises
    (a timeout, a dropped connection) leaves the outcome unknown and goes through ``reconcile``.
    """

    reason = "effect_failed"

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable_failure = retriable


class IdempotencyConflict(ToolError):
    """The same idempotency key was claimed earlier with different input (Stripe's rule): two
    versions of one decision exist, and running the second would duplicate the effect."""

    reason = "idempotency_conflict"


class StoreUnavailable(ToolError):
    """Redis did not answer: without a claim no effect may run; the event is retried later."""

    retriable = True
    reason = "idempotency_store_unavailable"


class ReviewError(SluiceError):
    """A reviewer's request cannot be done as asked (see :mod:`streams.review`)."""

    reason = "review_error"


class ItemNotFound(ReviewError):
    """No review item has that id (or not yet: the service reads the review lanes as they grow)."""

    reason = "item_not_found"


class ReviewConflict(ReviewError):
    """Another reviewer holds the item's claim, or the item is decided already."""

    reason = "review_conflict"


class InvalidEdit(ReviewError):
    """An edit names an unknown or locked field, or its result fails the record's schema."""

    reason = "invalid_edit"


class BreakerOpen(SluiceError):
    """A circuit breaker of the flow or its LLM endpoint is open (tripped by failures, or forced
    by an operator): the event is dead-lettered without calling the model (or, if it opened while
    the event's call was being retried, without retrying), to be redriven once it closes."""

    retriable = True
    reason = "breaker_open"

    def __init__(self, message: str, *, usage: Usage | None = None) -> None:
        super().__init__(message)
        self.usage = usage
        """The calls made before the breaker stopped the retries (None: no call was made)."""


class UnverifiedDecision(SluiceError):
    """A record on ``<flow>.reviewed`` that the executor cannot take for a reviewer's decision:
    unsigned, signed with an unknown key or wrongly, by a name not in the reviewers file, or not
    about the review-lane record it names (see :mod:`streams.decisions`). Nothing runs for it; it
    is dead-lettered, and retrying cannot make it true."""

    reason = "decision_unverified"
