"""The ack window: which in-flight events may be acknowledged, so a commit never passes one
that is unfinished.

Many events of one partition are processed at once and finish in any order, but Kafka keeps one
committed offset per partition: committing past an unfinished event loses it if the worker dies.
So each partition keeps its events in *arrival order*, and an event is released for acking only
once it and every event that arrived before it on that partition are finished: the finished
prefix (the Confluent Parallel Consumer's rule). Offsets are never compared: they have holes
(compaction, transaction markers), and arrival order is what the consumer guarantees.

faust's own ``concurrency=N`` acks each event when it finishes, and its committer skips a single
unfinished event at the head (faust #606): acking only prefixes means faust's acked set never
has a hole at the head, so that bug cannot trigger.

A partition revoked in a rebalance gets a new *epoch*: events of the old epoch that finish later
are dropped, never acked into a newer assignment of the same partition.

Pure bookkeeping, no I/O: unit- and property-tested alone (tests/unit/test_window.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
P = TypeVar("P", bound=Hashable)


@dataclass(eq=False)
class Ticket(Generic[P, T]):
    """One event in the window: what ``finish`` needs, and the payload it releases."""

    partition: P
    epoch: int
    item: T
    done: bool = False


@dataclass
class _Partition(Generic[P, T]):
    epoch: int = 0
    queue: deque[Ticket[P, T]] = field(default_factory=deque)


class AckWindow(Generic[P, T]):
    """Arrival-ordered in-flight events per partition; releases finished prefixes."""

    def __init__(self) -> None:
        self._parts: dict[P, _Partition[P, T]] = {}

    def add(self, partition: P, item: T) -> Ticket[P, T]:
        """Register an event that has just arrived on ``partition``; keep the ticket."""
        part = self._parts.setdefault(partition, _Partition())
        ticket = Ticket(partition, part.epoch, item)
        part.queue.append(ticket)
        return ticket

    def finish(self, ticket: Ticket[P, T]) -> list[T]:
        """Mark ``ticket``'s event finished; return the items now safe to ack, in arrival order.

        Empty when an earlier event of the partition is still in flight, or when the ticket
        belongs to a revoked epoch (its partition is no longer ours to ack).
        """
        part = self._parts.get(ticket.partition)
        if part is None or part.epoch != ticket.epoch:
            return []
        ticket.done = True
        released: list[T] = []
        queue = part.queue
        while queue and queue[0].done:
            released.append(queue.popleft().item)
        return released

    def revoke(self, partitions: Iterable[P]) -> list[T]:
        """Forget ``partitions``' in-flight events; return them (to cancel, never to ack).

        Their epoch moves on, so a ticket of theirs that finishes afterwards releases nothing.
        """
        dropped: list[T] = []
        for partition in partitions:
            part = self._parts.get(partition)
            if part is None:
                continue
            dropped.extend(t.item for t in part.queue)
            part.queue.clear()
            part.epoch += 1
        return dropped

    def in_flight(self, partition: P | None = None) -> int:
        """Events added and not yet released (finished ones behind an unfinished head count)."""
        if partition is not None:
            part = self._parts.get(partition)
            return len(part.queue) if part else 0
        return sum(len(p.queue) for p in self._parts.values())
