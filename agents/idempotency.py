"""Two-phase idempotency keys in Redis: claim, run, mark done — Stripe's design, for effects.

One Redis hash per key (``sluice:v1:effect:<key>``) holds the claim:

- ``st``: ``inflight`` while an owner runs the effect, ``done`` once its result is stored, or
  ``unknown`` when a crash left it undecidable and reconcile could not tell (a person decides);
- ``fp``: the fingerprint of the input the key was first claimed with — a later claim with another
  input is a conflict, never a second effect;
- ``tok`` and ``lease``: the owner's token and when its lease ends, in Redis server time (so the
  executors' clocks do not matter); an owner extends it while the effect runs;
- ``res``: the stored result; ``n``: how many times the key was claimed (the attempts).

Every transition is one Lua script, so it is atomic: ``claim`` is the ``SET NX`` of the design
plus what to do when the key exists. A claim whose lease ran out while still ``inflight`` is
*stale*: its owner crashed somewhere between claim and done, so the effect may or may not have
happened. ``claim`` then hands the key to the new caller as ``stale`` — it owns it, but must ask the
tool's ``reconcile`` before it may run anything (:mod:`agents.effects`).

The whole key expires ``ttl_s`` after its last change. That TTL must outlive everything that can
bring the same event back: topic retention, the longest consumer lag, and the dead-letter redrive
window — a key that expired before a redrive lets the effect run again. Run Redis with AOF and
``maxmemory-policy noeviction`` (``infra/redis.sh`` does).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas.errors import StoreUnavailable

ClaimState = Literal["claimed", "stale", "in_flight", "done", "unknown", "mismatch"]

# KEYS[1] = key; ARGV = fingerprint, token, lease ms, ttl s.
# Returns {state, claims, result or remaining lease ms}.
_CLAIM = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local st = redis.call('HGET', KEYS[1], 'st')
if not st then
  redis.call('HSET', KEYS[1], 'st', 'inflight', 'fp', ARGV[1], 'tok', ARGV[2],
             'lease', now + tonumber(ARGV[3]), 'n', 1)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return {'claimed', 1, false}
end
local n = tonumber(redis.call('HGET', KEYS[1], 'n'))
if redis.call('HGET', KEYS[1], 'fp') ~= ARGV[1] then
  return {'mismatch', n, false}
end
if st == 'done' then
  return {'done', n, redis.call('HGET', KEYS[1], 'res')}
end
if st == 'unknown' then
  return {'unknown', n, false}
end
local lease = tonumber(redis.call('HGET', KEYS[1], 'lease'))
if lease > now then
  return {'in_flight', n, tostring(lease - now)}
end
n = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('HSET', KEYS[1], 'tok', ARGV[2], 'lease', now + tonumber(ARGV[3]))
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {'stale', n, false}
"""

# KEYS[1] = key; ARGV = token, then: result + ttl (done) | lease ms (renew) | ttl (unknown).
_OWNED = """
local owner = redis.call('HMGET', KEYS[1], 'tok', 'st')
if owner[1] ~= ARGV[1] or owner[2] ~= 'inflight' then
  return 0
end
"""
_DONE = (
    _OWNED
    + """
redis.call('HSET', KEYS[1], 'st', 'done', 'res', ARGV[2])
redis.call('HDEL', KEYS[1], 'lease')
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
)
_RENEW = (
    _OWNED
    + """
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'lease', t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[2]))
return 1
"""
)
_RELEASE = (
    _OWNED
    + """
redis.call('DEL', KEYS[1])
return 1
"""
)
_UNKNOWN = (
    _OWNED
    + """
redis.call('HSET', KEYS[1], 'st', 'unknown')
redis.call('HDEL', KEYS[1], 'lease')
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
)


@dataclass(frozen=True)
class Claim:
    """The answer to :meth:`IdempotencyStore.claim`.

    ``claimed`` and ``stale`` mean the caller now owns the key with ``token`` (``stale``: after
    reconcile only); ``in_flight`` that another owner's lease runs ``lease_left_ms`` more;
    ``done`` carries the stored ``result``; ``unknown`` and ``mismatch`` forbid running at all.
    """

    state: ClaimState
    key: str
    token: str
    claims: int
    result: str | None = None
    lease_left_ms: int = 0

    @property
    def owned(self) -> bool:
        return self.state in ("claimed", "stale")


class IdempotencyStore:
    """The claims of one Redis, under ``prefix``; see the module docstring."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str = "sluice:v1:effect",
        ttl_s: int = 7 * 24 * 3600,
        lease_s: float = 30.0,
    ) -> None:
        if ttl_s <= lease_s:
            raise ValueError("ttl_s must be longer than lease_s")
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.lease_ms = max(1, int(lease_s * 1000))
        self._claim = redis.register_script(_CLAIM)
        self._done = redis.register_script(_DONE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._unknown = redis.register_script(_UNKNOWN)

    def _name(self, key: str) -> str:
        return f"{self.prefix}:{key}"

    async def claim(self, key: str, fingerprint: str) -> Claim:
        """Claim ``key`` for input ``fingerprint``, or say why the caller may not run it now."""
        token = secrets.token_hex(8)
        reply: Any = await self._call(
            self._claim, key, fingerprint, token, self.lease_ms, self.ttl_s
        )
        state, claims, extra = (v.decode() if isinstance(v, bytes) else v for v in reply)
        state = cast(ClaimState, state)
        if state == "in_flight":
            return Claim("in_flight", key, token, int(claims), lease_left_ms=int(extra))
        return Claim(state, key, token, int(claims), result=extra if state == "done" else None)

    async def complete(self, claim: Claim, result: str) -> bool:
        """Store ``result`` and mark the key done; False if ``claim`` no longer owns it (its lease
        ran out and another caller took the key over)."""
        return bool(await self._call(self._done, claim.key, claim.token, result, self.ttl_s))

    async def renew(self, claim: Claim) -> bool:
        """Extend the owner's lease by another full lease; False if it was lost already."""
        return bool(await self._call(self._renew, claim.key, claim.token, self.lease_ms))

    async def release(self, claim: Claim) -> bool:
        """Forget the claim after a definite failure, so a later attempt may run the effect."""
        return bool(await self._call(self._release, claim.key, claim.token))

    async def mark_unknown(self, claim: Claim) -> bool:
        """Park the key as undecidable: nothing re-runs it automatically until it expires."""
        return bool(await self._call(self._unknown, claim.key, claim.token, self.ttl_s))

    async def _call(self, script: object, key: str, *args: object) -> object:
        try:
            return await script(keys=[self._name(key)], args=list(args))  # type: ignore[operator]
        except RedisError as exc:
            raise StoreUnavailable(f"idempotency store: {type(exc).__name__}: {exc}") from exc
