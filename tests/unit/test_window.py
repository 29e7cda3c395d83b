"""The ack window alone: whatever order events finish in, only finished arrival prefixes are
released, and a revoked partition's events are never released."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.window import AckWindow

# Offsets with holes (compaction, transaction markers): arrival order is what matters.
offsets = st.lists(st.integers(0, 10_000), min_size=1, max_size=60, unique=True).map(sorted)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), arrived=offsets)
def test_any_completion_order_releases_only_finished_arrival_prefixes(
    data: st.DataObject, arrived: list[int]
) -> None:
    window: AckWindow[str, int] = AckWindow()
    tickets = [window.add("p0", offset) for offset in arrived]
    order = data.draw(st.permutations(range(len(arrived))), label="completion order")
    finished: set[int] = set()
    acked: list[int] = []
    for index in order:
        finished.add(arrived[index])
        acked += window.finish(tickets[index])
        # Released so far = exactly the longest finished prefix of the arrivals, in order.
        prefix = []
        for offset in arrived:
            if offset not in finished:
                break
            prefix.append(offset)
        assert acked == prefix
        assert all(o in finished for o in acked), "an unfinished event was released"
    assert acked == arrived
    assert window.in_flight() == 0


@settings(max_examples=200, deadline=None)
@given(data=st.data(), a=offsets, b=offsets)
def test_partitions_are_independent(data: st.DataObject, a: list[int], b: list[int]) -> None:
    window: AckWindow[str, tuple[str, int]] = AckWindow()
    tickets = [window.add("a", ("a", o)) for o in a] + [window.add("b", ("b", o)) for o in b]
    order = data.draw(st.permutations(range(len(tickets))))
    released: list[tuple[str, int]] = []
    for i in order:
        released += window.finish(tickets[i])
    assert [o for p, o in released if p == "a"] == a
    assert [o for p, o in released if p == "b"] == b


def test_a_slow_head_holds_back_everything_behind_it() -> None:
    window: AckWindow[str, int] = AckWindow()
    head, *rest = [window.add("p", o) for o in (5, 6, 7, 9)]
    for t in rest:
        assert window.finish(t) == []
    assert window.in_flight("p") == 4
    assert window.finish(head) == [5, 6, 7, 9]


def test_revoked_events_are_never_released_not_even_into_a_new_assignment() -> None:
    window: AckWindow[str, int] = AckWindow()
    old_head, old_next = window.add("p", 1), window.add("p", 2)
    assert window.revoke(["p", "unknown"]) == [1, 2]
    new = window.add("p", 1)  # reassigned: the same offset arrives again
    assert window.finish(old_next) == []
    assert window.finish(old_head) == []
    assert window.finish(new) == [1]
    assert window.in_flight() == 0
