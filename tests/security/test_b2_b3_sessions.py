"""B2: sessions outlived the reviewer — a reviewer removed from the reviewers file, or whose
password was changed, kept working for the session's 8 hours. B3: sessions were forgeable in
Redis — whoever could write Redis could mint a session for any reviewer, or turn their own into
someone else's, and whoever could read it learned every cookie.

Now every request checks the session's reviewer and password fingerprint against the reviewers
file as it is on disk, session contents carry an HMAC under the server's key, the Redis key is a
digest of the cookie, and the cookie is ``Secure`` when the service says it is served over HTTPS.
Against one running review service."""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis

from streams.settings import Settings
from tests.security.review_helpers import (
    PASSWORDS,
    TOKENS,
    Service,
    api,
    csrf_of,
    review_service,
    reviewers_toml,
)


@pytest.fixture(scope="module")
def service(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = Path(tmp_path_factory.mktemp("b2b3"))
    with review_service(services, tmp, SLUICE_REVIEW_SECURE_COOKIE="true") as s:
        yield s


@pytest.fixture
def reviewers(service: Service) -> Iterator[Path]:
    """The reviewers file, put back as it was after the test."""
    before = service.reviewers.read_text()
    yield service.reviewers
    _replace(service.reviewers, before)


def _replace(path: Path, text: str) -> None:
    """Write the file as an editor or a deployment would: a new file moved into place."""
    new = path.with_suffix(".new")
    new.write_text(text)
    os.replace(new, path)


def _rewrite(path: Path, change: Callable[[str], str]) -> None:
    _replace(path, change(path.read_text()))


def _with_password(text: str, name: str, password: str) -> str:
    """The reviewers file ``text`` with ``name``'s password hash replaced, the rest as it was."""
    head, _, tail = text.partition(f"[reviewers.{name}]\n")
    old = tail.split("password_argon2 = ")[1].split("\n")[0]
    new = reviewers_toml({name: password}, {}).split("password_argon2 = ")[1].split("\n")[0]
    return head + f"[reviewers.{name}]\n" + tail.replace(old, new, 1)


class Browser:
    """Cookies by hand: the session cookie is ``Secure`` and the service here is plain HTTP, so
    a client's cookie jar would (rightly) never send it back."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url, self.sid = http, url, ""

    async def login(self, name: str, password: str) -> int:
        async with self.http.get(self.url + "/login") as r:
            login_csrf = r.cookies["sluice_login_csrf"].value
            assert r.cookies["sluice_login_csrf"]["secure"]
            form = csrf_of(await r.text())
        async with self.http.post(
            self.url + "/login",
            data={"csrf": form, "name": name, "password": password},
            cookies={"sluice_login_csrf": login_csrf},
            allow_redirects=False,
        ) as r:
            if r.status == 303:
                cookie = r.cookies["sluice_session"]
                assert cookie["secure"], "the session cookie must be Secure over HTTPS"
                assert cookie["httponly"]
                assert cookie["samesite"] == "Strict"
                self.sid = cookie.value
            return r.status

    async def get(self, path: str = "/", sid: str | None = None) -> tuple[int, str]:
        cookies = {"sluice_session": self.sid if sid is None else sid}
        async with self.http.get(self.url + path, cookies=cookies, allow_redirects=False) as r:
            return r.status, await r.text()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def test_b2_sessions_end_when_the_reviewer_or_their_password_goes(
    service: Service, reviewers: Path, http: aiohttp.ClientSession
) -> None:
    alice, bob = Browser(http, service.url), Browser(http, service.url)
    assert await alice.login("alice", PASSWORDS["alice"]) == 303
    assert await bob.login("bob", PASSWORDS["bob"]) == 303
    assert (await alice.get())[0] == 200
    assert (await bob.get())[0] == 200

    # alice's password changes: her session ends at once; bob's is untouched.
    _rewrite(reviewers, lambda text: _with_password(text, "alice", "a new password"))
    assert (await alice.get())[0] == 303
    assert (await bob.get())[0] == 200
    assert await alice.login("alice", PASSWORDS["alice"]) == 401
    assert await alice.login("alice", "a new password") == 303
    assert (await alice.get())[0] == 200

    # bob is removed: his session ends, and his API token stops working, on the next request.
    assert (await api(http, service.url, "GET", "/api/items", who="bob"))[0] == 200
    _rewrite(reviewers, lambda text: text.split("[reviewers.bob]")[0])
    assert (await bob.get())[0] == 303
    assert (await api(http, service.url, "GET", "/api/items", who="bob"))[0] == 401
    assert (await alice.get())[0] == 200

    # A reviewers file that no longer reads names nobody (fail closed), until it is fixed.
    _replace(reviewers, "[reviewers.alice\n")
    assert (await alice.get())[0] == 303
    assert (await api(http, service.url, "GET", "/api/items"))[0] == 401
    _replace(reviewers, reviewers_toml(PASSWORDS, TOKENS))
    assert (await api(http, service.url, "GET", "/api/items"))[0] == 200
    assert service.proc.alive(), service.proc.log_tail()


async def test_b3_a_redis_writer_cannot_mint_or_alter_a_session(
    service: Service, http: aiohttp.ClientSession
) -> None:
    r = redis.Redis.from_url(service.settings.redis_url, decode_responses=True)
    prefix = f"{service.prefix}:session:"
    bob = Browser(http, service.url)
    assert await bob.login("bob", PASSWORDS["bob"]) == 303
    assert (await bob.get())[0] == 200

    # Reading Redis does not give a cookie away: keys and values never hold the session id.
    keys = list(r.scan_iter(prefix + "*"))
    assert keys
    assert all(bob.sid not in k for k in keys)
    assert all(bob.sid not in v for k in keys for v in r.hgetall(k).values())
    [key] = [k for k in keys if k == prefix + hashlib.sha256(bob.sid.encode()).hexdigest()]
    real = r.hgetall(key)

    # Minted: a session for alice written straight into Redis, under every key layout, with
    # and without a MAC of the attacker's making.
    forged_sid = secrets.token_urlsafe(32)
    forged = {
        "reviewer": "alice",
        "csrf": "x" * 43,
        "fingerprint": real["fingerprint"],  # copied from bob's: a Redis reader can
        "expires": str(int(time.time()) + 3600),
        "mac": "0" * 64,
    }
    for k in (prefix + forged_sid, prefix + hashlib.sha256(forged_sid.encode()).hexdigest()):
        r.hset(k, mapping=forged)  # type: ignore[arg-type]
        r.expire(k, 600)
    status, page = await bob.get("/", sid=forged_sid)
    assert status == 303, "a session written into Redis must not log anyone in"
    assert "alice" not in page

    # Altered: bob's own session turned into alice's.
    r.hset(key, "reviewer", "alice")
    assert (await bob.get())[0] == 303
    assert not r.exists(key)  # a forged session is deleted, not just refused

    # Extended: a fresh login's expiry pushed out and its TTL removed.
    assert await bob.login("bob", PASSWORDS["bob"]) == 303
    key = prefix + hashlib.sha256(bob.sid.encode()).hexdigest()
    r.hset(key, "expires", str(int(time.time()) + 365 * 86400))
    r.persist(key)
    assert (await bob.get())[0] == 303
    assert service.proc.alive(), service.proc.log_tail()
