"""A circuit breaker per flow, with resilience4j's semantics, its state shared through Redis.

States: ``closed`` (calls pass; outcomes fill a sliding window), ``open`` (no calls; after
``wait_open_s`` the next caller moves it to ``half_open``), ``half_open`` (``half_open_calls``
trial calls pass; their failure rate closes or re-opens it), and the operator states
``forced_open`` (the kill switch: no calls until closed) and ``disabled`` (always pass, nothing
recorded). In ``closed`` the breaker opens once the window holds at least ``minimum_calls`` and the
failure rate or the slow-call rate reaches its threshold.

The window and the state live in Redis and every transition is one Lua script, so all workers of a
flow trip and recover together, and an operator's ``sluice breaker open`` reaches every worker on
its next event. Times are Redis server time. If Redis does not answer, calls pass (the breaker
fails open: it must never be the reason a healthy model is not called) and the error is logged.

Which failures count comes from the error tree (``SluiceError.breaker_counts``): a provider
outage, timeout, 5xx, 429 or a rejected request does; bad input or a model's bad answer does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)

State = Literal["closed", "open", "half_open", "forced_open", "disabled"]
STATES: tuple[State, ...] = ("closed", "open", "half_open", "forced_open", "disabled")


@dataclass(frozen=True)
class BreakerConfig:
    """Thresholds and sizes; resilience4j's names, with smaller defaults for LLM traffic."""

    window_size: int = 50
    """Calls in the count-based sliding window."""
    minimum_calls: int = 20
    """Calls the window must hold before a rate is judged."""
    failure_rate: float = 0.5
    slow_call_rate: float = 1.0
    """1.0: slow calls alone open the breaker only if every call in the window is slow."""
    slow_call_s: float = 60.0
    wait_open_s: float = 30.0
    half_open_calls: int = 5


# KEYS[1] state hash, KEYS[2] window list. Returns {state, permitted 0/1, state before}.
_ACQUIRE = """
local now = tonumber(redis.call('TIME')[1])
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local before = state
if state == 'closed' or state == 'disabled' then return {state, 1, before} end
if state == 'forced_open' then return {state, 0, before} end
local wait = tonumber(ARGV[1])
if state == 'open' then
  local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at') or '0')
  if now - opened < wait then return {state, 0, before} end
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'trials', ARGV[2], 'ok', 0, 'failed', 0,
             'half_open_at', now)
  state = 'half_open'
elseif now - tonumber(redis.call('HGET', KEYS[1], 'half_open_at') or '0') >= wait then
  -- trials handed out but never reported (their worker died): start a new round of trials
  redis.call('HSET', KEYS[1], 'trials', ARGV[2], 'ok', 0, 'failed', 0, 'half_open_at', now)
end
local left = redis.call('HINCRBY', KEYS[1], 'trials', -1)
if left >= 0 then return {state, 1, before} end
return {state, 0, before}
"""

# ARGV: failed 0/1, slow 0/1, window_size, minimum_calls, failure_rate, slow_rate, half_open_calls
# Returns {previous state, new state}.
_RECORD = """
local now = tonumber(redis.call('TIME')[1])
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local failed, slow = tonumber(ARGV[1]), tonumber(ARGV[2])
if state == 'half_open' then
  local ok = redis.call('HINCRBY', KEYS[1], 'ok', 1 - failed)
  local bad = redis.call('HINCRBY', KEYS[1], 'failed', failed)
  if ok + bad >= tonumber(ARGV[7]) then
    if bad / (ok + bad) >= tonumber(ARGV[5]) then
      redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now)
      return {state, 'open'}
    end
    redis.call('HSET', KEYS[1], 'state', 'closed')
    redis.call('DEL', KEYS[2])
    return {state, 'closed'}
  end
  return {state, state}
end
if state ~= 'closed' then return {state, state} end
redis.call('LPUSH', KEYS[2], failed .. slow)
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
local calls = redis.call('LRANGE', KEYS[2], 0, -1)
local n = #calls
if n < tonumber(ARGV[4]) then return {state, state} end
local failures, slows = 0, 0
for _, c in ipairs(calls) do
  if string.sub(c, 1, 1) == '1' then failures = failures + 1 end
  if string.sub(c, 2, 2) == '1' then slows = slows + 1 end
end
if failures / n >= tonumber(ARGV[5]) or slows / n >= tonumber(ARGV[6]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now)
  redis.call('DEL', KEYS[2])
  return {state, 'open'}
end
return {state, state}
"""


class Breaker:
    """The breaker named ``name`` (a flow), shared by every process using the same Redis and
    ``prefix``."""

    def __init__(
        self, redis: aioredis.Redis, name: str, config: BreakerConfig, *, prefix: str
    ) -> None:
        self.redis = redis
        self.name = name
        self.config = config
        self.key = f"{prefix}:breaker:{name}"
        self.window_key = f"{self.key}:window"
        self._acquire = redis.register_script(_ACQUIRE)
        self._record = redis.register_script(_RECORD)

    async def acquire(self) -> tuple[bool, State]:
        """Whether a call may go out now, and the state that decided it."""
        c = self.config
        try:
            state, permitted, before = await self._acquire(
                keys=[self.key, self.window_key], args=[c.wait_open_s, c.half_open_calls]
            )
        except RedisError as exc:
            log.warning("breaker.unavailable", flow=self.name, error=str(exc))
            return True, "closed"
        state, before = _text(state), _text(before)
        if state != before:
            log.warning("breaker.transition", flow=self.name, before=before, after=state)
        return bool(permitted), state  # type: ignore[return-value]

    async def record(self, *, failed: bool, seconds: float) -> State:
        """Count one call's outcome; returns the state after it."""
        c = self.config
        slow = seconds >= c.slow_call_s
        try:
            before, after = await self._record(
                keys=[self.key, self.window_key],
                args=[int(failed), int(slow), c.window_size, c.minimum_calls, c.failure_rate,
                      c.slow_call_rate, c.half_open_calls],
            )  # fmt: skip
        except RedisError as exc:
            log.warning("breaker.unavailable", flow=self.name, error=str(exc))
            return "closed"
        before, after = _text(before), _text(after)
        if before != after:
            log.warning("breaker.transition", flow=self.name, before=before, after=after)
        return after  # type: ignore[return-value]

    async def status(self) -> dict[str, str]:
        """The stored fields (state, opened_at, reason, by, ...); ``closed`` when none."""
        found = await self.redis.hgetall(self.key)
        values = {_text(k): _text(v) for k, v in found.items()}
        values.setdefault("state", "closed")
        return values

    async def force(self, state: State, *, by: str, reason: str) -> None:
        """An operator's switch: ``forced_open`` (kill switch), ``closed`` (resume, window
        cleared) or ``disabled``. Logged with who and why."""
        if state not in ("forced_open", "closed", "disabled"):
            raise ValueError(f"an operator sets forced_open, closed or disabled, not {state}")
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.key, self.window_key)
        pipe.hset(self.key, mapping={"state": state, "by": by, "reason": reason})
        await pipe.execute()
        log.warning("breaker.operator", flow=self.name, state=state, by=by, reason=reason)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
