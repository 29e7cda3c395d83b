"""One limit on concurrent calls to a provider, shared by every agent and flow of a process.

Why: a worker keeps many events in flight, but the provider has its own capacity — the local
model has a few slots, a hosted API has a rate limit. Sending more than it takes only converts
waiting into 429s and retries. The limiter:

- lets at most ``limit`` calls run at once;
- on a 429, halves the limit (not below 1) and makes *every* caller wait out the provider's
  ``retry-after`` (or the caller's own backoff), not just the one that was refused;
- after each success, creeps the limit back up by ``1 / limit`` (additive increase, so about one
  more slot per round of calls) until it is back at ``ceiling``.

That is AIMD, as TCP does it: it finds the provider's real capacity without configuration and
backs off at once when it shrinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator


class CallLimiter:
    """AIMD concurrency limit plus a shared pause; see the module docstring."""

    def __init__(self, ceiling: int) -> None:
        if ceiling < 1:
            raise ValueError("ceiling must be >= 1")
        self.ceiling = ceiling
        self.limit = float(ceiling)
        self.active = 0
        self._resume_at = 0.0
        self._waiting = 0
        self._changed = asyncio.Condition()

    @property
    def paused_for(self) -> float:
        """Seconds until calls may start again after a 429 (0: not paused)."""
        return max(0.0, self._resume_at - time.monotonic())

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one call slot for the body; waits for a free slot and for any pause to end."""
        if self._waiting or not self._free():
            await self._wait()
        else:
            self.active += 1  # no await between the check and this: atomic on the event loop
        try:
            yield
        finally:
            self.active -= 1
            if self._waiting:
                async with self._changed:
                    self._changed.notify_all()

    def _free(self) -> bool:
        return self.paused_for <= 0 and self.active < max(1, int(self.limit))

    async def _wait(self) -> None:
        self._waiting += 1
        try:
            async with self._changed:
                while not self._free():
                    pause = self.paused_for
                    if pause > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._changed.wait(), pause)
                    else:
                        await self._changed.wait()
                self.active += 1
        finally:
            self._waiting -= 1

    def succeeded(self) -> None:
        """A call was answered: grow the limit back towards the ceiling."""
        if self.limit < self.ceiling:
            self.limit = min(float(self.ceiling), self.limit + 1.0 / self.limit)

    async def rate_limited(self, wait_s: float) -> None:
        """A call got a 429: halve the limit and pause every caller for ``wait_s`` seconds."""
        async with self._changed:
            self.limit = max(1.0, self.limit / 2)
            self._resume_at = max(self._resume_at, time.monotonic() + max(0.0, wait_s))
            self._changed.notify_all()
