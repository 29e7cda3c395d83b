"""The engine on an in-memory stream: concurrency bounds, prefix acks, key order, cancellation.

Kafka itself is exercised by the integration tests (kill tests, new-agent flow); here the stream
is a plain async iterator so the ack discipline can be checked event by event.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from streams.engine import Engine


@dataclass(frozen=True)
class Ev:
    partition: int
    offset: int
    key: str
    delay: float


async def stream(events: list[Ev]) -> AsyncIterator[Ev]:
    for e in events:
        yield e


async def endless(events: list[Ev]) -> AsyncIterator[Ev]:
    """The events, then a stream that stays open (as Kafka's does)."""
    for e in events:
        yield e
    await asyncio.Event().wait()


class Probe:
    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.finished: set[Ev] = set()
        self.acked: list[Ev] = []
        self.started: list[Ev] = []
        self.cancelled: list[Ev] = []

    async def process(self, e: Ev) -> None:
        self.started.append(e)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(e.delay)
        except asyncio.CancelledError:
            self.cancelled.append(e)
            raise
        finally:
            self.running -= 1
        self.finished.add(e)

    async def ack(self, e: Ev) -> None:
        assert e in self.finished, "acked an unfinished event"
        same = [a for a in self.acked if a.partition == e.partition]
        assert not same or same[-1].offset < e.offset, "acked out of arrival order"
        self.acked.append(e)


def events(n: int, partitions: int, seed: int, keys: int = 1000) -> list[Ev]:
    rnd = random.Random(seed)
    offsets = [0] * partitions
    out = []
    for _ in range(n):
        p = rnd.randrange(partitions)
        offsets[p] += rnd.choice((1, 1, 1, 2, 5))  # holes, as after compaction
        out.append(Ev(p, offsets[p], f"k{rnd.randrange(keys)}", rnd.uniform(0, 0.02)))
    return out


async def test_many_in_flight_and_every_event_acked_in_arrival_order() -> None:
    evs = events(400, partitions=3, seed=1)
    probe = Probe()
    engine: Engine[Ev] = Engine(max_in_flight=32, max_unacked=128)
    await engine.run(stream(evs), probe.process, probe.ack, partition_of=lambda e: e.partition)
    await asyncio.sleep(0.1)  # the run returns when the stream ends; let the last tasks finish
    assert probe.peak == 32
    assert sorted(probe.acked, key=lambda e: (e.partition, e.offset)) == sorted(
        evs, key=lambda e: (e.partition, e.offset)
    )


async def test_a_slow_head_holds_back_acks_but_not_work_until_the_unacked_bound() -> None:
    head = Ev(0, 0, "h", 0.5)
    followers = [Ev(0, i, f"f{i}", 0.0) for i in range(1, 40)]
    probe = Probe()
    engine: Engine[Ev] = Engine(max_in_flight=8, max_unacked=16)
    task = asyncio.create_task(
        engine.run(stream([head, *followers]), probe.process, probe.ack, partition_of=lambda e: 0)
    )
    await asyncio.sleep(0.2)
    # Fifteen followers finished behind the head, none acked; the bound stops the sixteenth.
    assert probe.acked == []
    assert len(probe.finished) == 15
    assert engine.in_flight == 16
    await asyncio.sleep(0.5)
    assert probe.acked[:16] == [head, *followers[:15]]
    await task
    await asyncio.sleep(0.05)
    assert probe.acked == [head, *followers]


async def test_order_by_key_runs_one_key_at_a_time_in_arrival_order() -> None:
    evs = events(200, partitions=2, seed=2, keys=5)
    probe = Probe()
    active: dict[tuple[int, str], int] = {}
    order: dict[tuple[int, str], list[int]] = {}

    async def process(e: Ev) -> None:
        k = (e.partition, e.key)
        assert active.get(k, 0) == 0, "two events of one key ran at once"
        active[k] = 1
        order.setdefault(k, []).append(e.offset)
        await probe.process(e)
        active[k] = 0

    engine: Engine[Ev] = Engine(max_in_flight=16, max_unacked=64, order_by_key=True)
    await engine.run(
        stream(evs), process, probe.ack, partition_of=lambda e: e.partition, key_of=lambda e: e.key
    )
    await asyncio.sleep(0.3)
    assert len(probe.acked) == 200
    assert all(offs == sorted(offs) for offs in order.values())
    assert probe.peak > 1, "keys of different values should still run in parallel"


async def test_cancelling_the_run_acks_nothing_unfinished() -> None:
    evs = [Ev(0, 0, "a", 10.0)] + [Ev(0, i, "b", 0.0) for i in range(1, 20)]
    probe = Probe()
    engine: Engine[Ev] = Engine(max_in_flight=8, max_unacked=32)

    task = asyncio.create_task(
        engine.run(endless(evs), probe.process, probe.ack, partition_of=lambda e: 0)
    )
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert probe.acked == []  # the head never finished, so nothing behind it may be acked


async def test_revoked_partitions_are_cancelled_and_never_acked() -> None:
    evs = [Ev(0, 0, "a", 10.0), Ev(1, 0, "b", 0.0), Ev(0, 1, "c", 0.0)]
    probe = Probe()
    engine: Engine[Ev] = Engine(max_in_flight=8, max_unacked=32)

    task = asyncio.create_task(
        engine.run(endless(evs), probe.process, probe.ack, partition_of=lambda e: e.partition)
    )
    await asyncio.sleep(0.1)
    assert probe.running == 1  # the head of partition 0 (10 s) still runs; the others finished
    assert engine.revoke([0]) == 2
    await asyncio.sleep(0.1)
    # Cancelled, not left running on a partition this worker no longer owns: its new owner
    # processes the event too, and two runs of one event may both act.
    assert probe.cancelled == [evs[0]]
    assert probe.running == 0
    assert probe.acked == [evs[1]]
    assert engine.in_flight == 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_exception_from_process_is_never_acked() -> None:
    died = []

    def die() -> None:  # the real one is os._exit(70); here: note it, the engine re-raises
        died.append(True)

    async def process(e: Ev) -> None:
        raise RuntimeError("a bug outside the guard")

    acked: list[Ev] = []

    async def ack(e: Ev) -> None:
        acked.append(e)

    engine: Engine[Ev] = Engine(max_in_flight=2, max_unacked=4, die=die)  # type: ignore[arg-type]
    await engine.run(stream([Ev(0, 0, "a", 0)]), process, ack, partition_of=lambda e: 0)
    await asyncio.sleep(0.05)
    assert died == [True]
    assert acked == []
