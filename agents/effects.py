"""Run one vetted action's effect at most once per idempotency key, and say what happened.

The failure windows (FIELD-NOTES, "Idempotency keys") and what closes each:

- a redelivered or replayed decision finds the key ``done``: ``duplicate``, the stored result
  returned, nothing run;
- the key is gone though the effect ran (Redis flushed or restored from an old backup, a key
  expired before a redrive): a tool that can reconcile (``Tool.reconciles``) is asked before its
  *first* apply too — one lookup per effect — and an effect found at the target is ``duplicate``;
  a target that refuses a second row for the key (:class:`~agents.tools.Existing`) is
  ``duplicate`` as well, never a second ``applied``;
- another executor is running it right now (a rebalance overlap): wait for its lease to end, then
  look again;
- a crash after the claim, before or after the effect: the lease runs out, the next claimer gets
  the key ``stale`` and asks the tool's ``reconcile`` first — ``happened``: mark done (``applied``,
  by reconcile); ``did not happen``: run it; cannot tell: ``unknown``, parked for a person;
- ``apply`` raises :class:`~schemas.errors.EffectFailed` (the target refused): release, ``failed``;
  any other exception from ``apply`` (a timeout mid-request): reconcile right away, as above;
- the same key with other input: :class:`~schemas.errors.IdempotencyConflict`, nothing run;
- Redis down: :class:`~schemas.errors.StoreUnavailable` before anything runs (the caller retries
  the event); after the effect, the claim stays ``inflight`` and the next attempt reconciles.

While ``apply`` runs, the owner renews its lease every third of it, so a slow effect is not taken
for a crashed one. A process frozen past its lease can still lose the key to a reconciling peer;
a tool that passes the key to its target (a unique column, an ``Idempotency-Key`` header) is exact
even then.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import BaseModel

from agents.idempotency import Claim, IdempotencyStore
from agents.observe import ToolCall, notify
from agents.tools import Existing, Reconciled, Tool, canonical, digest
from schemas.errors import EffectFailed, IdempotencyConflict
from schemas.records import EffectStatus

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class EffectOutcome:
    """What became of one action: the ``ToolEffect`` record's facts."""

    tool: str
    key: str
    status: EffectStatus
    input_json: str
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    latency_ms: int
    reconciled: bool = False
    """True when ``status`` was decided by asking the target (after a crash or an unclear error)."""


async def run_effect(
    store: IdempotencyStore, tool: Tool[Any], data: BaseModel, event_id: str
) -> EffectOutcome:
    """Run ``tool`` on ``data`` for ``event_id`` at most once per key; see the module docstring.

    Raises :class:`~schemas.errors.StoreUnavailable` when Redis cannot be asked (nothing ran, or
    what ran is still claimed and will be reconciled) — the caller retries the event, it does not
    record an outcome. Every other result is an :class:`EffectOutcome`.

    Reported as :class:`~agents.observe.ToolCall` facts: ``start``, then ``success`` (applied,
    or a duplicate whose key was done: ``dedup``) or ``failure`` (failed, unknown, or raised).
    """
    key = tool.key(event_id, data)
    notify(ToolCall("start", tool.name, event_id, key))
    began = time.monotonic()
    try:
        out = await _run(store, tool, data, event_id, key)
    except Exception as exc:
        ms = int((time.monotonic() - began) * 1000)
        notify(ToolCall("failure", tool.name, event_id, key, latency_ms=ms,
                        error=f"{type(exc).__name__}: {exc}"[:300]))  # fmt: skip
        raise
    ok = out.status in ("applied", "duplicate")
    notify(
        ToolCall(
            "success" if ok else "failure", tool.name, event_id, key, status=out.status,
            dedup=out.status == "duplicate", latency_ms=out.latency_ms, attempts=out.attempts,
            reconciled=out.reconciled, error=None if out.error is None else out.error[:300],
        )
    )  # fmt: skip
    return out


async def _run(
    store: IdempotencyStore, tool: Tool[Any], data: BaseModel, event_id: str, key: str
) -> EffectOutcome:
    began = time.monotonic()
    values = data.model_dump(mode="json")
    input_json = canonical(values)

    def outcome(
        status: EffectStatus,
        claims: int,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        reconciled: bool = False,
    ) -> EffectOutcome:
        ms = int((time.monotonic() - began) * 1000)
        return EffectOutcome(
            tool.name, key, status, input_json, result, error, claims, ms, reconciled
        )

    claim = await _claim(store, key, digest(values))
    if claim.state == "mismatch":
        raise IdempotencyConflict(
            f"{tool.name}: key {key[:16]}… was claimed before with different input"
        )
    if claim.state == "done":
        return outcome("duplicate", claim.claims, _loads(claim.result))
    if claim.state == "unknown":
        return outcome("unknown", claim.claims, error="parked: an earlier crash left it undecided")
    if claim.state == "stale":
        settled = await _settle(store, tool, data, claim, outcome, "after a crashed attempt")
        if settled is not None:
            return settled
    elif tool.reconciles:
        found = await _precheck(store, tool, data, claim, outcome)
        if found is not None:
            return found
    try:
        async with _lease(store, claim):
            result = await tool.apply(data, key)
    except EffectFailed as exc:
        await store.release(claim)
        return outcome("failed", claim.claims, error=f"{tool.name} refused: {exc}")
    except Exception as exc:  # may or may not have happened: ask the target
        why = f"{type(exc).__name__}: {exc}"
        log.warning("tool.call.unclear", tool=tool.name, key=key, error=why)
        settled = await _settle(store, tool, data, claim, outcome, why)
        if settled is not None:
            return settled
        await store.release(claim)  # reconcile says it did not happen
        return outcome("failed", claim.claims, error=why, reconciled=True)
    status: EffectStatus = "applied"
    if isinstance(result, Existing):  # the target refused a second one: an earlier run got there
        status, result = "duplicate", result.result
    if not await store.complete(claim, canonical(result)):
        # Our lease ran out mid-effect and a peer took the key over: it reconciles against the
        # target, which this effect already reached. Exact only if the tool passes the key on.
        log.error("tool.call.lease_lost", tool=tool.name, key=key)
    return outcome(status, claim.claims, result)


async def _precheck(
    store: IdempotencyStore, tool: Tool[Any], data: BaseModel, claim: Claim, outcome: Any
) -> EffectOutcome | None:
    """Before the first apply of a freshly claimed key: ask the target whether the effect is
    there already. ``duplicate`` if it is (the key was lost, not the effect); None (go on and
    apply) if it is not. A target that cannot be asked now gets nothing sent either: the claim is
    released and the outcome is ``failed``, so a redrive can run it once the target answers."""
    try:
        verdict = await tool.reconcile(data, claim.key)
    except Exception as exc:
        verdict = Reconciled(None, {"reconcile_error": f"{type(exc).__name__}: {exc}"})
    if verdict.happened is False:
        return None
    if verdict.happened:
        result = verdict.result or {}
        if not await store.complete(claim, canonical(result)):
            log.error("tool.call.lease_lost", tool=tool.name, key=claim.key)
        return outcome("duplicate", claim.claims, result, reconciled=True)  # type: ignore[no-any-return]
    await store.release(claim)
    detail = (verdict.result or {}).get("reconcile_error", "it cannot tell")
    error = f"{tool.name} could not say whether the effect is there already ({detail}): not sent"
    return outcome("failed", claim.claims, error=error, reconciled=True)  # type: ignore[no-any-return]


async def _claim(store: IdempotencyStore, key: str, fingerprint: str) -> Claim:
    """Claim, waiting out a live peer's lease (another executor running the same effect)."""
    while True:
        claim = await store.claim(key, fingerprint)
        if claim.state != "in_flight":
            return claim
        await asyncio.sleep(min(1.0, claim.lease_left_ms / 1000 + 0.01))


async def _settle(
    store: IdempotencyStore,
    tool: Tool[Any],
    data: BaseModel,
    claim: Claim,
    outcome: Any,
    why: str,
) -> EffectOutcome | None:
    """Ask ``reconcile``: an outcome if it happened or nobody can tell; None if it did not."""
    try:
        verdict = await tool.reconcile(data, claim.key)
    except Exception as exc:  # the target cannot be asked: as good as "cannot tell"
        verdict = Reconciled(None, {"reconcile_error": f"{type(exc).__name__}: {exc}"})
    if verdict.happened:
        result = verdict.result or {}
        if not await store.complete(claim, canonical(result)):
            log.error("tool.call.lease_lost", tool=tool.name, key=claim.key)
        return outcome("applied", claim.claims, result, reconciled=True)  # type: ignore[no-any-return]
    if verdict.happened is None:
        await store.mark_unknown(claim)
        detail = f"{why}; {tool.name} cannot tell whether it happened"
        return outcome("unknown", claim.claims, verdict.result, detail, True)  # type: ignore[no-any-return]
    return None


@contextlib.asynccontextmanager
async def _lease(store: IdempotencyStore, claim: Claim) -> AsyncIterator[None]:
    """Renew ``claim``'s lease every third of it while the body runs."""

    async def renew() -> None:
        while True:
            await asyncio.sleep(store.lease_ms / 3000)
            with contextlib.suppress(Exception):  # a missed renewal only shortens the lease
                await store.renew(claim)

    task = asyncio.create_task(renew())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _loads(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    value = json.loads(text)
    return value if isinstance(value, dict) else {"result": value}
