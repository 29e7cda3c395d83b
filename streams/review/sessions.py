"""Reviewers' web sessions in Redis, authenticated by the service.

A random id in the cookie names a Redis hash holding the reviewer, the session's CSRF token, the
reviewer's password fingerprint (:meth:`~streams.review.auth.Reviewers.fingerprint`), the expiry
and a one-shot message. Redis is not trusted with the session's meaning:

- the key is the SHA-256 of the id, so whoever reads Redis does not learn a cookie;
- ``mac`` is an HMAC-SHA256 under the server's key (``SLUICE_REVIEW_SESSION_KEY``, or a random key
  kept 0600 in ``SLUICE_REVIEW_SESSION_KEY_FILE``) over the id's digest, reviewer, CSRF token,
  fingerprint and expiry, so whoever can write Redis can neither mint a session nor change the
  reviewer of one, nor keep one alive past its expiry;
- the caller (:func:`streams.review.web.guard`) checks the reviewer and the fingerprint against
  the current reviewers file on every request, so a removed reviewer or a changed password ends
  the sessions made before.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
import structlog

from schemas.errors import ConfigError
from streams.keyfile import private_key_file

log = structlog.get_logger(__name__)

SESSION_S = 8 * 3600
KEY_BYTES = 32


@dataclass(frozen=True)
class Session:
    sid: str
    reviewer: str
    csrf: str
    fingerprint: str = ""
    """The reviewer's password fingerprint when the session was made."""


def session_key(secret: str | None, path: Path) -> bytes:
    """The sessions' HMAC key: ``secret`` (the setting) if given, else the key kept at ``path``,
    made (random, 0600, never overwritten) on first use."""
    if secret:
        if len(secret) < 16:
            raise ConfigError("SLUICE_REVIEW_SESSION_KEY is too short: use 32 random bytes or more")
        return secret.encode()
    key = private_key_file(path, lambda: secrets.token_hex(KEY_BYTES))
    if len(key) < 32:
        raise ConfigError(f"session key file {path}: too short (delete it to make a new one)")
    return key.encode()


class SessionStore:
    """Sessions in Redis: ``<prefix>:session:<sha256(sid)>`` → reviewer, csrf, fingerprint,
    expires, mac, flash."""

    def __init__(
        self, redis: aioredis.Redis, prefix: str, key: bytes, ttl_s: int = SESSION_S
    ) -> None:
        self.redis, self.prefix, self.key, self.ttl_s = redis, prefix, key, ttl_s

    def _key(self, sid: str) -> str:
        return f"{self.prefix}:session:{_digest(sid)}"

    def _mac(self, sid: str, reviewer: str, csrf: str, fingerprint: str, expires: str) -> str:
        message = "\n".join(("session", _digest(sid), reviewer, csrf, fingerprint, expires))
        return hmac.new(self.key, message.encode(), hashlib.sha256).hexdigest()

    async def create(self, reviewer: str, fingerprint: str = "") -> Session:
        session = Session(
            secrets.token_urlsafe(32), reviewer, secrets.token_urlsafe(32), fingerprint
        )
        expires = str(int(time.time()) + self.ttl_s)
        mac = self._mac(session.sid, reviewer, session.csrf, fingerprint, expires)
        key = self._key(session.sid)
        values = {
            "reviewer": reviewer, "csrf": session.csrf, "fingerprint": fingerprint,
            "expires": expires, "mac": mac,
        }  # fmt: skip
        await self.redis.hset(key, mapping=values)  # type: ignore[arg-type]
        await self.redis.expire(key, self.ttl_s)
        return session

    async def get(self, sid: str | None) -> Session | None:
        """The session ``sid`` names, if it exists, is intact (its MAC) and has not expired."""
        if not sid or len(sid) > 100:
            return None
        found = await self.redis.hgetall(self._key(sid))
        if not found:
            return None
        v = {_text(k): _text(val) for k, val in found.items()}
        fields = [v.get(f, "") for f in ("reviewer", "csrf", "fingerprint", "expires")]
        mac = self._mac(sid, *fields)
        if not hmac.compare_digest(mac, v.get("mac", "")):
            log.warning("review.session_forged", reviewer=v.get("reviewer", "")[:64])
            await self.delete(sid)
            return None
        if not fields[3].isdigit() or int(fields[3]) < time.time():
            await self.delete(sid)
            return None
        return Session(sid, fields[0], fields[1], fields[2])

    async def flash(self, sid: str, message: str) -> None:
        await self.redis.hset(self._key(sid), "flash", message[:500])

    async def take_flash(self, sid: str) -> str | None:
        key = self._key(sid)
        message = await self.redis.hget(key, "flash")
        await self.redis.hdel(key, "flash")
        return None if message is None else _text(message)

    async def delete(self, sid: str) -> None:
        await self.redis.delete(self._key(sid))


def _digest(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
