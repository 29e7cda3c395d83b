"""B1: brute force and a blocked loop. Argon2 ran on the event loop and failed logins were free:
40 concurrent wrong-password logins stalled every request (``/health/live`` included) for
seconds, and a name could be guessed at full speed.

Now the hash runs in a thread behind a small semaphore, and failed attempts are counted in Redis
per name and per client address: past the free attempts each further one waits 1 s, 2 s, 4 s ...
(429 with ``Retry-After``, no Argon2). Against a running review service: the liveness probe's
latency while 40 logins flood in, and the throttle's answers."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis

from streams.settings import Settings
from tests.security.review_helpers import PASSWORDS, Service, login, review_service

#: The issue's bound on /health/live during the flood. Measured well below it (see the report);
#: the assertion allows for 2 cores shared with other tests, and the old code took seconds.
HEALTH_MAX_MS = 150.0
#: Attempts one client address gets before its delay (SLUICE_REVIEW_LOGIN_CLIENT_ATTEMPTS; 20 by
#: default, fewer here to keep the test short: these many hashes run during the flood).
CLIENT = 10


@pytest.fixture(scope="module")
def service(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = Path(tmp_path_factory.mktemp("b1"))
    with review_service(services, tmp, SLUICE_REVIEW_LOGIN_CLIENT_ATTEMPTS=str(CLIENT)) as s:
        yield s


@pytest.fixture(autouse=True)
def fresh_counts(service: Service) -> None:
    """Each test starts with no failed logins counted (the throttle's keys deleted)."""
    r = redis.Redis.from_url(service.settings.redis_url)
    keys = list(r.scan_iter(f"{service.prefix}:login:*"))
    if keys:
        r.delete(*keys)


#: GET /health/live back to back on one connection until stdin closes; each latency (ms) a line.
#: A process of its own, so that neither the GIL nor the test's busy event loop delays a probe.
POLLER = """
import http.client, select, sys, time
host, port = sys.argv[1], int(sys.argv[2])
conn = http.client.HTTPConnection(host, port, timeout=10)
while not select.select([sys.stdin], [], [], 0)[0]:
    began = time.perf_counter()
    conn.request("GET", "/health/live")
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status
    print(f"{(time.perf_counter() - began) * 1000:.3f}", flush=True)
    time.sleep(0.005)
"""


async def test_a_login_flood_leaves_the_loop_free_and_is_throttled(service: Service) -> None:
    host, port = service.url.removeprefix("http://").split(":")
    poller = await asyncio.create_subprocess_exec(
        sys.executable, "-c", POLLER, host, port,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert poller.stdin is not None
    assert poller.stdout is not None
    try:
        await asyncio.sleep(0.5)  # the poller starts; its first probes are the baseline
        marker = time.perf_counter()
        jar = [aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) for _ in range(40)]
        try:
            statuses = await asyncio.gather(
                *(login(h, service.url, f"ghost-{n}", "wrong password") for n, h in enumerate(jar))
            )
            flood_s = time.perf_counter() - marker
        finally:
            await asyncio.gather(*(h.close() for h in jar))
    finally:
        poller.stdin.close()
        out = await poller.stdout.read()
        assert await asyncio.wait_for(poller.wait(), 10) == 0
    latencies = [float(line) for line in out.decode().split()]
    # Probes are ~6 ms apart at rest: those after the first 0.5 s ran during the flood.
    baseline = min(len(latencies), int(0.5 / 0.0065))
    during = sorted(latencies[baseline:])
    assert len(during) >= 5, "the poller got no answers during the flood"
    p50 = statistics.median(during)
    p99 = during[min(len(during) - 1, int(len(during) * 0.99))]
    print(
        f"\nmeasured: /health/live during a 40-login flood ({flood_s:.2f} s, {len(during)} "
        f"probes): p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {during[-1]:.1f} ms; "
        f"logins {sorted(statuses)[0]}..{sorted(statuses)[-1]}: "
        f"{statuses.count(401)} x 401, {statuses.count(429)} x 429"
    )
    assert during[-1] < HEALTH_MAX_MS, during[-10:]
    # One client, 40 names: the first CLIENT attempts are checked and fail; the rest wait,
    # answered at once without hashing.
    assert (statuses.count(401), statuses.count(429)) == (CLIENT, 40 - CLIENT)
    assert service.proc.alive(), service.proc.log_tail()


async def test_failed_logins_for_one_name_wait_longer_and_longer(service: Service) -> None:
    url = service.url
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        assert [await login(http, url, "alice", f"guess {n}") for n in range(5)] == [401] * 5
        # The 6th attempt waits: refused with Retry-After, even with the right password, and
        # without running Argon2 (it answers faster than one hash takes).
        async with http.get(url + "/login") as r:
            csrf = (await r.text()).split('name="csrf" value="')[1].split('"')[0]
        began = time.perf_counter()
        async with http.post(
            url + "/login",
            data={"csrf": csrf, "name": "alice", "password": PASSWORDS["alice"]},
            allow_redirects=False,
        ) as r:
            took_ms = (time.perf_counter() - began) * 1000
            assert r.status == 429
            assert r.headers["Retry-After"] == "1"
            assert "Too many failed logins" in await r.text()
        # Another name from another session is not held up by alice's count.
        assert await login(http, url, "bob", PASSWORDS["bob"]) == 303
        await asyncio.sleep(1.1)
        # After the wait one more guess is checked; it fails, and the next wait is 2 s.
        assert await login(http, url, "alice", "guess 6") == 401
        async with http.get(url + "/login") as r:
            csrf = (await r.text()).split('name="csrf" value="')[1].split('"')[0]
        async with http.post(
            url + "/login",
            data={"csrf": csrf, "name": "alice", "password": "guess 7"},
            allow_redirects=False,
        ) as r:
            assert (r.status, r.headers.get("Retry-After")) == (429, "2")
    print(f"\nmeasured: a throttled login answered in {took_ms:.1f} ms")
