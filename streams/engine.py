"""Many events in flight per worker, acked only as finished prefixes.

An LLM-bound stream is latency-bound, not CPU-bound: throughput = events in flight / latency.
One event at a time at 250 ms is 4 events/s; 256 at a time is up to 1,024/s. The engine takes
events from a stream as fast as it is allowed to, runs each in its own task, and acks through
:class:`~streams.window.AckWindow`, so an offset is committed only once every earlier event of its
partition is finished — at-least-once stays intact whatever order calls finish in.

Two bounds, both per worker and shared by all its flows:

- ``max_in_flight`` events are being processed at once (``SLUICE_MAX_IN_FLIGHT``);
- ``max_unacked`` events may be finished but held behind a slow head (``SLUICE_MAX_UNACKED``),
  so one event stuck at a partition's head cannot make the window grow without bound.

With ``order_by_key``, events with the same key on one partition are processed one after the
other, in arrival order (keys of different values still run in parallel).

Rebalance: faust drains in-flight events before it revokes partitions (``stream_wait_empty``);
whatever is left for a revoked partition (a stop cut the drain short) is cancelled and never
acked. Shutdown: cancelling :meth:`Engine.run` cancels its tasks; nothing unfinished is acked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, NoReturn, TypeVar

import structlog

from streams.window import AckWindow, Ticket

log = structlog.get_logger(__name__)

E = TypeVar("E")


@dataclass(eq=False)
class _Job(Generic[E]):
    event: E
    task: asyncio.Task[None] | None = None


@dataclass
class Engine(Generic[E]):
    """Runs a stream's events concurrently; ``ack`` is called only for finished prefixes.

    ``partition_of`` and ``key_of`` read an event's partition and key; ``die`` ends the process
    when processing raised (``process`` must never raise: an exception means a bug in the guard,
    and the event must be redelivered, not acked).
    """

    max_in_flight: int = 64
    max_unacked: int = 1024
    order_by_key: bool = False
    die: Callable[[], NoReturn] | None = None
    _window: AckWindow[Hashable, _Job[E]] = field(default_factory=AckWindow)
    _running: asyncio.Semaphore | None = None
    _unacked: asyncio.Semaphore | None = None
    _chains: dict[tuple[Hashable, Any], asyncio.Task[None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_in_flight < 1 or self.max_unacked < self.max_in_flight:
            raise ValueError("need 1 <= max_in_flight <= max_unacked")

    @property
    def in_flight(self) -> int:
        """Events taken and not yet acked (running, or finished behind an unfinished head)."""
        return self._window.in_flight()

    async def run(
        self,
        events: AsyncIterable[E],
        process: Callable[[E], Awaitable[None]],
        ack: Callable[[E], Awaitable[Any]],
        *,
        partition_of: Callable[[E], Hashable],
        key_of: Callable[[E], Any] = lambda e: None,
    ) -> None:
        """Process ``events`` until the stream ends or this coroutine is cancelled."""
        if self._running is None:
            self._running = asyncio.Semaphore(self.max_in_flight)
            self._unacked = asyncio.Semaphore(self.max_unacked)
        running, unacked = self._running, self._unacked
        assert unacked is not None
        mine: set[asyncio.Task[None]] = set()
        try:
            async for event in events:
                await unacked.acquire()
                await running.acquire()
                partition = partition_of(event)
                job = _Job(event)
                ticket = self._window.add(partition, job)
                after = None
                chain_key = None
                if self.order_by_key:
                    chain_key = (partition, key_of(event))
                    after = self._chains.get(chain_key)
                job.task = asyncio.create_task(self._one(ticket, process, ack, after, chain_key))
                mine.add(job.task)
                job.task.add_done_callback(mine.discard)
                if chain_key is not None:
                    self._chains[chain_key] = job.task
        except BaseException:
            # Cancelled (shutdown) or the stream failed: abandon what runs; it is never acked.
            for task in mine:
                task.cancel()
            if mine:
                await asyncio.gather(*mine, return_exceptions=True)
            raise
        # The stream ended: let what was taken finish (and be acked).
        if mine:
            await asyncio.gather(*mine, return_exceptions=True)

    async def _one(
        self,
        ticket: Ticket[Hashable, _Job[E]],
        process: Callable[[E], Awaitable[None]],
        ack: Callable[[E], Awaitable[Any]],
        after: asyncio.Task[None] | None,
        chain_key: tuple[Hashable, Any] | None,
    ) -> None:
        assert self._running is not None
        assert self._unacked is not None
        released: list[_Job[E]] = []
        try:
            if after is not None:
                # Same key, earlier arrival: wait for it (its failure is its own business).
                with contextlib.suppress(BaseException):
                    await asyncio.shield(after)
            try:
                await process(ticket.item.event)
            except Exception:
                log.critical("engine.process_raised", exc_info=True)
                if self.die is not None:
                    self.die()
                raise
            released = self._window.finish(ticket)
        finally:
            self._running.release()
            if chain_key is not None and self._chains.get(chain_key) is asyncio.current_task():
                del self._chains[chain_key]
        for job in released:
            await ack(job.event)
            self._unacked.release()

    def revoke(self, partitions: Iterable[Hashable]) -> int:
        """Drop ``partitions``' events: cancel what still runs, never ack any of them."""
        dropped = self._window.revoke(partitions)
        for job in dropped:
            if job.task is not None and not job.task.done():
                job.task.cancel()
            if self._unacked is not None:
                self._unacked.release()
        if dropped:
            log.warning("engine.revoked_in_flight", events=len(dropped))
        return len(dropped)
