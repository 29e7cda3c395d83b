"""A circuit breaker per flow, with resilience4j's semantics, its state shared through Redis.

States: ``closed`` (calls pass; outcomes fill a sliding window), ``open`` (no calls; after
``wait_open_s`` the next caller moves it to ``half_open``), ``half_open`` (``half_open_calls``
trial calls pass; their failure rate closes or re-opens it), and the operator states
``forced_open`` (the kill switch: no calls until closed) and ``disabled`` (always pass, nothing
recorded). In ``closed`` the breaker opens once the window holds at least ``minimum_calls`` and the
failure rate or the slow-call rate reaches its threshold. The window is count-based (the last
``window_size`` calls) or time-based (the calls of the last ``window_size`` seconds).

The window and the state live in Redis and every transition is one Lua script on Redis time, so
all workers of a flow trip and recover together. If Redis does not answer, calls pass (the breaker
fails open: it must never be the reason a healthy model is not called) and the error is logged.

Asking Redis twice per event cost 13-14 % of a worker's throughput, so each :class:`Breaker` keeps
a local view of the shared state. While that view is ``closed`` or ``disabled`` and younger than
``refresh_s``, :meth:`Breaker.acquire` answers without Redis, and :meth:`Breaker.record` buffers
outcomes and sends them in one script call per batch. Every other state goes to Redis on each
call, as the half-open trials and the open wait must be decided in one place. An operator's
``sluice breaker open`` therefore reaches every worker within ``refresh_s``.

Which failures count comes from the error tree (``SluiceError.breaker_counts``): a provider
outage, timeout, 5xx, 429 or a rejected request does; bad input or a model's bad answer does not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from agents.observe import BreakerTransition, notify

log = structlog.get_logger(__name__)

State = Literal["closed", "open", "half_open", "forced_open", "disabled"]
STATES: tuple[State, ...] = ("closed", "open", "half_open", "forced_open", "disabled")

FLUSH_AT = 16
"""Buffered outcomes that are sent at once, without waiting for ``refresh_s``."""
MAX_ENTRIES = 10_000
"""Most calls a time-based window stores: a burst of traffic cannot grow Redis without bound
(beyond it the oldest calls leave early; 10,000 calls still judge a rate well)."""


@dataclass(frozen=True)
class BreakerConfig:
    """Thresholds and sizes; resilience4j's names, with smaller defaults for LLM traffic."""

    window_size: int = 50
    """Calls in a count-based window; seconds in a time-based one."""
    minimum_calls: int = 20
    """Calls the window must hold before a rate is judged."""
    failure_rate: float = 0.5
    slow_call_rate: float = 1.0
    """1.0: slow calls alone open the breaker only if every call in the window is slow."""
    slow_call_s: float = 60.0
    wait_open_s: float = 30.0
    half_open_calls: int = 5
    window_type: Literal["count", "time"] = "count"
    """``count``: the last ``window_size`` calls; ``time``: the calls of the last ``window_size``
    seconds, which judges a bursty flow by its recent traffic however many calls that was."""
    refresh_s: float = 0.25
    """How old the local view of a ``closed``/``disabled`` state may be before Redis is asked
    again, and how long outcomes wait in the buffer. Under a second, so an operator's switch
    reaches every worker within about a second; 0 asks Redis on every call."""

    def __post_init__(self) -> None:
        if self.window_type not in ("count", "time"):
            raise ValueError(f"window_type is count or time, not {self.window_type!r}")
        if not 0 <= self.refresh_s < 1:
            raise ValueError(f"refresh_s must be in [0, 1), not {self.refresh_s}")


# KEYS[1] state hash, KEYS[2] window list. Returns {state, permitted 0/1, state before}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = t[1] + t[2] / 1000000
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

# KEYS[1] state hash, KEYS[2] window list (newest first; entries 'FS' or, time-based,
# '<time>:FS' with F failed 0/1 and S slow 0/1). The window's counts are kept in the hash
# (window_calls, window_failed, window_slow), so judging costs no scan of the window; when they
# are missing or disagree with the list's length (a new or reset window, a window written by an
# older version during a rolling deploy) they are counted from the list once.
# ARGV: batch 0/1, window_size, minimum_calls, failure_rate, slow_rate, half_open_calls,
# time-based 0/1, max entries, then the outcomes 'FS', oldest first. A batch (outcomes of calls
# permitted while closed) counts only while closed; a single outcome also counts as a half-open
# trial. Returns {state before, state after}.
_RECORD = """
local t = redis.call('TIME')
local now = t[1] + t[2] / 1000000
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local fail_rate, slow_rate = tonumber(ARGV[4]), tonumber(ARGV[5])
if state == 'half_open' and ARGV[1] == '0' then
  local failed = tonumber(string.sub(ARGV[9], 1, 1))
  local ok = redis.call('HINCRBY', KEYS[1], 'ok', 1 - failed)
  local bad = redis.call('HINCRBY', KEYS[1], 'failed', failed)
  if ok + bad >= tonumber(ARGV[6]) then
    if bad / (ok + bad) >= fail_rate then
      redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now)
      return {state, 'open'}
    end
    redis.call('HSET', KEYS[1], 'state', 'closed')
    redis.call('HDEL', KEYS[1], 'window_calls', 'window_failed', 'window_slow')
    redis.call('DEL', KEYS[2])
    return {state, 'closed'}
  end
  return {state, state}
end
if state ~= 'closed' then return {state, state} end
local size, minimum = tonumber(ARGV[2]), tonumber(ARGV[3])
local timed = ARGV[7] == '1'
local cap = timed and tonumber(ARGV[8]) or size
local n, failures, slows = 0, 0, 0
local function bits(entry)
  return tonumber(string.sub(entry, -2, -2)), tonumber(string.sub(entry, -1))
end
local counted = redis.call('HMGET', KEYS[1], 'window_calls', 'window_failed', 'window_slow')
if tonumber(counted[1]) == redis.call('LLEN', KEYS[2]) then
  n, failures, slows = tonumber(counted[1]), tonumber(counted[2]), tonumber(counted[3])
else  -- not counted yet, or the list changed behind the counts: count it once (LLEN is O(1))
  for _, entry in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
    local f, s = bits(entry)
    n, failures, slows = n + 1, failures + f, slows + s
  end
end
local function drop_oldest()
  local f, s = bits(redis.call('RPOP', KEYS[2]))
  n, failures, slows = n - 1, failures - f, slows - s
end
local stamp = ''
if timed then
  stamp = string.format('%.6f:', now)
  while n > 0 do  -- entries without a time (written count-based) are the oldest of all
    local oldest = tonumber(string.match(redis.call('LINDEX', KEYS[2], -1), '^([^:]*):')) or 0
    if oldest > now - size then break end
    drop_oldest()
  end
end
for i = 9, #ARGV do
  redis.call('LPUSH', KEYS[2], stamp .. ARGV[i])
  local f, s = bits(ARGV[i])
  n, failures, slows = n + 1, failures + f, slows + s
  while n > cap do drop_oldest() end
  if n >= minimum and (failures / n >= fail_rate or slows / n >= slow_rate) then
    redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now)
    redis.call('HDEL', KEYS[1], 'window_calls', 'window_failed', 'window_slow')
    redis.call('DEL', KEYS[2])
    return {state, 'open'}
  end
end
redis.call('HSET', KEYS[1], 'window_calls', n, 'window_failed', failures, 'window_slow', slows)
return {state, state}
"""


class Breaker:
    """The breaker named ``name`` (a flow), shared by every process using the same Redis and
    ``prefix``; one instance per process, with its local view of the shared state."""

    def __init__(
        self, redis: aioredis.Redis, name: str, config: BreakerConfig, *, prefix: str
    ) -> None:
        self.redis = redis
        self.name = name
        self.config = config
        self.key = f"{prefix}:breaker:{name}"
        self.window_key = f"{self.key}:window"
        self.transitions_key = f"{self.key}:transitions"
        self._acquire = redis.register_script(_ACQUIRE)
        self._record = redis.register_script(_RECORD)
        self._state: State = "closed"
        self._asked = -float("inf")  # monotonic time of the question that gave ``_state``
        self._pending: list[str] = []  # outcomes 'FS' of calls permitted while closed
        self._flushed = time.monotonic()

    async def acquire(self) -> tuple[bool, State]:
        """Whether a call may go out now, and the state that decided it."""
        if self._pending and not self._fresh():
            await self.flush()  # its answer refreshes the view: one script call, not two
        if self._fresh() and self._state in ("closed", "disabled"):
            return True, self._state
        c = self.config
        asked = time.monotonic()
        try:
            state, permitted, before = await self._acquire(
                keys=[self.key, self.window_key], args=[c.wait_open_s, c.half_open_calls]
            )
        except RedisError as exc:
            self._unavailable(exc, asked)
            return True, "closed"
        state, before = _text(state), _text(before)
        if state != before:
            await self._transition(before, state)
        self._see(state, asked)  # type: ignore[arg-type]
        return bool(permitted), state  # type: ignore[return-value]

    async def record(self, *, failed: bool, seconds: float) -> State:
        """Count one call's outcome; returns the state after it, as far as this worker knows.

        While closed, outcomes are buffered and sent as one batch when ``FLUSH_AT`` are waiting
        or ``refresh_s`` has passed since the last batch, and at once with a failed or slow call:
        those are the ones that can open the breaker, so a failure burst trips it as before (this
        worker's waiting successes go first, in order). Only fast successes wait, at most
        ``FLUSH_AT - 1`` per worker for about ``refresh_s``, so other workers' failures may be
        judged a little before them. In every other state the outcome goes to Redis at once
        (half-open trials count there)."""
        slow = seconds >= self.config.slow_call_s
        outcome = f"{int(failed)}{int(slow)}"
        if self._state == "disabled" and self._fresh():
            return "disabled"  # nothing is recorded while disabled
        if self._state != "closed":
            return await self._send([outcome], batch=False)
        self._pending.append(outcome)
        due = time.monotonic() - self._flushed >= self.config.refresh_s
        if failed or slow or due or len(self._pending) >= FLUSH_AT:
            return await self.flush()
        return "closed"

    async def flush(self) -> State:
        """Send the buffered outcomes now (also called on the next call once due; call it at
        shutdown so the last ones count); returns the state after them."""
        if not self._pending:
            return self._state
        batch, self._pending = self._pending, []
        self._flushed = time.monotonic()
        return await self._send(batch, batch=True)

    async def status(self) -> dict[str, str]:
        """The stored fields (state, opened_at, reason, by, window counts, ...); ``closed`` when
        none."""
        found = await self.redis.hgetall(self.key)
        values = {_text(k): _text(v) for k, v in found.items()}
        values.setdefault("state", "closed")
        counted = await self.redis.hgetall(self.transitions_key)
        values.update({f"transitions.{_text(k)}": _text(v) for k, v in counted.items()})
        return values

    @property
    def view(self) -> State:
        """This process's last-known state (no Redis call): what its permits are based on, and
        what the ``sluice_breaker_state`` metric shows."""
        return self._state

    async def state(self) -> State:
        """The shared state as Redis has it now (one read; no permit taken, nothing cached)."""
        found = await self.redis.hget(self.key, "state")
        return _text(found) if found is not None else "closed"  # type: ignore[return-value]

    async def _transition(self, before: str, after: str) -> None:
        """Log a transition this process's script made (each is made by exactly one) and count
        it in ``<key>:transitions`` (field ``before>after``), kept across operator switches."""
        notify(BreakerTransition(self.name, before, after))
        try:
            await self.redis.hincrby(self.transitions_key, f"{before}>{after}", 1)
        except RedisError as exc:
            log.warning("breaker.uncounted", flow=self.name, error=str(exc))

    async def force(self, state: State, *, by: str, reason: str) -> None:
        """An operator's switch: ``forced_open`` (kill switch), ``closed`` (resume, window
        cleared) or ``disabled``. Logged with who and why. Other workers see it within their
        ``refresh_s``; this instance at once."""
        if state not in ("forced_open", "closed", "disabled"):
            raise ValueError(f"an operator sets forced_open, closed or disabled, not {state}")
        asked = time.monotonic()
        before = self._state
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.key, self.window_key)
        pipe.hset(self.key, mapping={"state": state, "by": by, "reason": reason})
        await pipe.execute()
        self._pending = []  # outcomes from before the switch belong to no new window
        self._see(state, asked)
        log.warning("breaker.operator", flow=self.name, state=state, by=by, reason=reason)
        notify(BreakerTransition(self.name, before, state, by=by))

    async def _send(self, outcomes: list[str], *, batch: bool) -> State:
        c = self.config
        asked = time.monotonic()
        try:
            before, after = await self._record(
                keys=[self.key, self.window_key],
                args=[int(batch), c.window_size, c.minimum_calls, c.failure_rate,
                      c.slow_call_rate, c.half_open_calls, int(c.window_type == "time"),
                      MAX_ENTRIES, *outcomes],
            )  # fmt: skip
        except RedisError as exc:
            self._unavailable(exc, asked, lost=len(outcomes))
            return "closed"
        before, after = _text(before), _text(after)
        if before != after:
            await self._transition(before, after)
        self._see(after, asked)  # type: ignore[arg-type]
        return after  # type: ignore[return-value]

    def _fresh(self) -> bool:
        return time.monotonic() - self._asked < self.config.refresh_s

    def _see(self, state: State, asked: float) -> None:
        """Take ``state`` as the local view unless a later question already answered (answers
        of concurrent calls can arrive out of order)."""
        if asked >= self._asked:
            self._state, self._asked = state, asked

    def _unavailable(self, exc: RedisError, asked: float, lost: int = 0) -> None:
        """Fail open, and keep failing open for ``refresh_s`` without asking: a dead Redis must
        not cost every event a connection timeout. Outcomes that could not be sent are lost
        (counted in the log): the window must not grow in memory during an outage."""
        log.warning("breaker.unavailable", flow=self.name, error=str(exc), outcomes_lost=lost)
        self._see("closed", asked)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
