"""Reviewers' web sessions in Redis: a random id in the cookie names a hash holding the reviewer,
the session's CSRF token and a one-shot message, expiring after ``SESSION_S``."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import redis.asyncio as aioredis

SESSION_S = 8 * 3600


@dataclass(frozen=True)
class Session:
    sid: str
    reviewer: str
    csrf: str


class SessionStore:
    """Sessions in Redis: ``<prefix>:session:<sid>`` → reviewer, csrf, flash."""

    def __init__(self, redis: aioredis.Redis, prefix: str, ttl_s: int = SESSION_S) -> None:
        self.redis, self.prefix, self.ttl_s = redis, prefix, ttl_s

    def _key(self, sid: str) -> str:
        return f"{self.prefix}:session:{sid}"

    async def create(self, reviewer: str) -> Session:
        session = Session(secrets.token_urlsafe(32), reviewer, secrets.token_urlsafe(32))
        key = self._key(session.sid)
        await self.redis.hset(key, mapping={"reviewer": reviewer, "csrf": session.csrf})
        await self.redis.expire(key, self.ttl_s)
        return session

    async def get(self, sid: str | None) -> Session | None:
        if not sid or len(sid) > 100:
            return None
        found = await self.redis.hgetall(self._key(sid))
        if not found:
            return None
        values = {_text(k): _text(v) for k, v in found.items()}
        return Session(sid, values["reviewer"], values["csrf"])

    async def flash(self, sid: str, message: str) -> None:
        await self.redis.hset(self._key(sid), "flash", message[:500])

    async def take_flash(self, sid: str) -> str | None:
        key = self._key(sid)
        message = await self.redis.hget(key, "flash")
        await self.redis.hdel(key, "flash")
        return None if message is None else _text(message)

    async def delete(self, sid: str) -> None:
        await self.redis.delete(self._key(sid))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
