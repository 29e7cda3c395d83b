"""Reviewers and their API tokens.

The reviewers file (``SLUICE_REVIEWERS_FILE``, TOML) names each reviewer with the SHA-256 of their
API token and/or the Argon2id hash of their web password; neither secret is stored.
``sluice review token NAME`` and ``sluice review password NAME`` print the lines to add::

    [reviewers.alice]
    token_sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
    password_argon2 = "$argon2id$v=19$m=65536,t=3,p=4$..."

Tokens are 256-bit random values, so a fast hash is enough (nothing to guess from a dictionary);
every check compares digests in constant time. Passwords are chosen by people, so they get a slow,
salted hash (argon2-cffi's defaults). Without a reviewers file the service does not start: there
is no anonymous review.

The file is read again whenever it changes on disk (:class:`ReviewerBook`, one ``stat`` per
request), so removing a reviewer or changing a password takes effect on the next request, for
tokens and for web sessions alike. Verifying a password costs ~50 ms of CPU: it runs in a thread,
at most :data:`HASHING_SLOTS` at once, so a flood of logins never stalls the event loop, and
:class:`LoginThrottle` makes failed attempts wait (per name and per client, in Redis) before
Argon2 runs at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import math
import os
import secrets
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis.asyncio as aioredis
import structlog
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.errors import ConfigError, validation_problems

log = structlog.get_logger(__name__)

_HASHER = PasswordHasher()
_DUMMY = _HASHER.hash("not a password of anyone's")  # verified against for unknown names
#: Password checks running at once (each in its own thread, ~50 ms of CPU): the rest wait their
#: turn, so logins cannot take every core from the event loop and the service's other work.
HASHING_SLOTS = 2


class Reviewer(BaseModel):
    """One reviewer's credentials: an API token, a web password, or both."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    password_argon2: str | None = Field(None, pattern=r"^\$argon2(id|i|d)\$")

    @model_validator(mode="after")
    def _has_a_credential(self) -> Reviewer:
        if self.token_sha256 is None and self.password_argon2 is None:
            raise ValueError("a reviewer needs token_sha256 or password_argon2")
        return self


class Reviewers(BaseModel):
    """Every reviewer, by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reviewers: dict[str, Reviewer] = Field(min_length=1)

    def by_token(self, token: str) -> str | None:
        """The reviewer whose token this is, or None. Constant time per reviewer."""
        digest = token_digest(token)
        found = None
        for name, reviewer in self.reviewers.items():
            if reviewer.token_sha256 and hmac.compare_digest(digest, reviewer.token_sha256):
                found = name
        return found

    def check_password(self, name: str, password: str) -> bool:
        """Whether ``password`` is ``name``'s. An unknown name costs the same hashing time.
        Blocking (~50 ms of CPU): the service calls :func:`verify_password` instead."""
        reviewer = self.reviewers.get(name)
        stored = reviewer.password_argon2 if reviewer else None
        try:
            return _HASHER.verify(stored or _DUMMY, password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False

    def fingerprint(self, name: str, key: bytes) -> str | None:
        """A keyed digest of ``name``'s password hash, kept in their web sessions: a changed or
        removed password changes it, and that ends every session made with the old one. None:
        no such reviewer, or no web password."""
        reviewer = self.reviewers.get(name)
        if reviewer is None or reviewer.password_argon2 is None:
            return None
        message = f"password:{name}:{reviewer.password_argon2}".encode()
        return hmac.new(key, message, hashlib.sha256).hexdigest()


def _lower_priority() -> None:
    """Run this hashing thread (and the lanes Argon2 starts from it) below the event loop's
    priority: under a flood the loop's requests come first."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


_hashing = ThreadPoolExecutor(HASHING_SLOTS, "argon2", initializer=_lower_priority)
_slots: asyncio.Semaphore | None = None


async def verify_password(reviewers: Reviewers, name: str, password: str) -> bool:
    """:meth:`Reviewers.check_password` off the event loop: in one of :data:`HASHING_SLOTS`
    threads of lower priority, at most that many at once (the rest wait their turn on a
    semaphore, not in a queue of threads). Argon2 releases the GIL, so the loop keeps answering."""
    global _slots
    if _slots is None:
        _slots = asyncio.Semaphore(HASHING_SLOTS)
    async with _slots:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_hashing, reviewers.check_password, name, password)


class ReviewerBook:
    """The reviewers file as it is now: re-read when its modification time, size or inode
    changes (one ``stat`` per call). A file that no longer reads or validates names nobody —
    every token and session is refused until it is fixed — rather than keep reviewers someone
    may just have removed."""

    _NOBODY = Reviewers.model_construct(reviewers={})

    def __init__(self, path: Path, reviewers: Reviewers | None = None) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._reviewers = reviewers or self._NOBODY
        if reviewers is None:
            self.current()
        else:
            self._seen = self._stat()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> Reviewers:
        seen = self._stat()
        if seen != self._seen or seen is None:
            self._seen = seen
            try:
                self._reviewers = load_reviewers(self.path)
                log.info("review.reviewers_loaded", reviewers=len(self._reviewers.reviewers))
            except ConfigError as exc:
                log.error("review.reviewers_unreadable", error=str(exc))
                self._reviewers = self._NOBODY
        return self._reviewers


_THROTTLE = """
local now = tonumber(ARGV[1])
local wait = 0
for i = 1, #KEYS, 2 do
  local n = tonumber(redis.call('GET', KEYS[i]) or '0') + 1
  local free = tonumber(ARGV[4 + (i - 1) / 2])
  local until_ms = tonumber(redis.call('GET', KEYS[i + 1]) or '0')
  if n > free and until_ms > now then wait = math.max(wait, until_ms - now) end
end
if wait > 0 then return wait end
for i = 1, #KEYS, 2 do
  local n = redis.call('INCR', KEYS[i])
  redis.call('PEXPIRE', KEYS[i], ARGV[3])
  local free = tonumber(ARGV[4 + (i - 1) / 2])
  if n >= free then
    local delay = math.min(1000 * 2 ^ math.min(n - free, 30), tonumber(ARGV[2]))
    redis.call('SET', KEYS[i + 1], now + delay, 'PX', math.ceil(delay))
  end
end
return 0
"""


class LoginThrottle:
    """Failed web logins, counted in Redis per reviewer name and per client address.

    :meth:`admit` counts an attempt before the password is checked (so a burst of concurrent
    guesses is counted as it arrives, not after Argon2 finished) and refuses it with the seconds
    to wait while a name or a client is in its delay: the ``free``-th attempt starts a 1 s delay,
    each further one doubles it, up to ``max_delay_s``. A refused attempt costs no hashing and is
    not counted. :meth:`succeeded` forgets the name's failures and gives back the client's count
    for the attempt. Counts expire after ``window_s`` without attempts.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        *,
        per_name: int = 5,
        per_client: int = 20,
        max_delay_s: float = 300.0,
        window_s: float = 3600.0,
    ) -> None:
        self.redis, self.prefix = redis, prefix
        self.per_name, self.per_client = per_name, per_client
        self.max_delay_s, self.window_s = max_delay_s, window_s
        self._script = redis.register_script(_THROTTLE)

    def _keys(self, kind: str, value: str) -> list[str]:
        digest = hashlib.sha256(value.encode()).hexdigest()[:32]  # names and addresses unlogged
        base = f"{self.prefix}:login:{kind}:{digest}"
        return [f"{base}:n", f"{base}:until"]

    async def admit(self, name: str, client: str) -> float:
        """Seconds the attempt must wait (refused), or 0 (counted: check the password)."""
        keys = self._keys("name", name) + self._keys("client", client)
        args = [
            int(time.time() * 1000),
            int(self.max_delay_s * 1000),
            int(self.window_s * 1000),
            self.per_name,
            self.per_client,
        ]
        wait_ms = int(await self._script(keys=keys, args=args))
        return math.ceil(wait_ms / 1000) if wait_ms > 0 else 0.0

    async def succeeded(self, name: str, client: str) -> None:
        await self.redis.delete(*self._keys("name", name))
        count = self._keys("client", client)[0]
        if await self.redis.decr(count) <= 0:
            await self.redis.delete(count)


def token_digest(token: str) -> str:
    """The SHA-256 hex digest stored for ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


def password_hash(password: str) -> str:
    """The Argon2id hash stored for ``password``."""
    return _HASHER.hash(password)


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def load_reviewers(path: Path | None) -> Reviewers:
    """Read and validate the reviewers file; a missing or empty one is a configuration error."""
    if path is None:
        raise ConfigError(
            "SLUICE_REVIEWERS_FILE is not set: the review service has no anonymous access "
            "(make one with `sluice review token NAME`)"
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        return Reviewers.model_validate(raw)
    except OSError as exc:
        raise ConfigError(f"reviewers file {path}: cannot read it: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"reviewers file {path}: not valid TOML: {exc}") from exc
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise ConfigError(f"reviewers file {path}: {problems}") from exc
