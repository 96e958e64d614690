"""``BroadcastQueue.take`` picks whole runs of a bucket at once when they fit; this checks
it against the rule it implements, written out item by item: the same items picked in
the same order, and the same buckets and counts after, over random queues and takes
(misfits, budgets running out, the scan limit, items reaching their limit)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from meshgpu.core.broadcast import _MAX_MISFITS, BroadcastQueue


class ItemByItem:
    """The rule of ``take``, one item at a time (the queue's state as plain lists)."""

    def __init__(self, scan_limit: int) -> None:
        self.buckets: list[dict[Hashable, bytes]] = [{}]
        self.queued: dict[Hashable, int] = {}
        self.scan_limit = scan_limit

    def enqueue(self, key: Hashable, payload: bytes) -> None:
        old = self.queued.get(key)
        if old is not None:
            del self.buckets[old][key]
        self.buckets[0][key] = payload
        self.queued[key] = 0

    def discard(self, key: Hashable) -> None:
        old = self.queued.pop(key, None)
        if old is not None:
            del self.buckets[old][key]

    def take(self, budget: int, limit: int, max_items: int) -> list[bytes]:
        picked: list[bytes] = []
        if not self.queued or budget <= 0 or max_items <= 0:
            return picked
        moved = []
        examined = misses = 0
        done = False
        for sent, bucket in enumerate(self.buckets):
            for key, payload in bucket.items():
                examined += 1
                if len(payload) <= budget:
                    picked.append(payload)
                    budget -= len(payload)
                    moved.append((sent, key, payload))
                    done = len(picked) >= max_items or budget < 8
                else:
                    misses += 1
                    done = misses >= _MAX_MISFITS
                if done or examined >= self.scan_limit:
                    done = True
                    break
            if done:
                break
        for sent, key, payload in moved:
            del self.buckets[sent][key]
            if sent + 1 >= limit:
                del self.queued[key]
                continue
            if len(self.buckets) <= sent + 1:
                self.buckets.append({})
            self.buckets[sent + 1][key] = payload
            self.queued[key] = sent + 1
        return picked


def state(buckets: list[dict[Hashable, bytes]], queued: Iterable[Hashable]) -> object:
    shown = [list(b.items()) for b in buckets]
    while shown and not shown[-1]:
        shown.pop()
    return shown, sorted(queued)  # type: ignore[type-var]


operation = st.one_of(
    st.tuples(st.just("enqueue"), st.integers(0, 60), st.integers(1, 90)),
    st.tuples(st.just("discard"), st.integers(0, 60), st.just(0)),
    st.tuples(st.just("take"), st.integers(0, 700), st.integers(1, 30)),
)


@settings(max_examples=300, deadline=None)
@given(
    scan_limit=st.integers(1, 100),
    limit=st.integers(1, 6),
    operations=st.lists(operation, max_size=120),
)
def test_take_follows_the_item_by_item_rule(
    scan_limit: int, limit: int, operations: list[tuple[str, int, int]]
) -> None:
    queue = BroadcastQueue(scan_limit=scan_limit)
    rule = ItemByItem(scan_limit)
    for step, (kind, a, b) in enumerate(operations):
        if kind == "enqueue":
            payload = bytes([step % 256]) * b
            queue.enqueue(("member", a), payload)
            rule.enqueue(("member", a), payload)
        elif kind == "discard":
            queue.discard(("member", a))
            rule.discard(("member", a))
        else:
            assert queue.take(a, limit, b) == rule.take(a, limit, b)
        assert state(queue.buckets(), queue.queued) == state(rule.buckets, rule.queued)


def test_a_run_that_fits_is_taken_whole_and_moved_on_in_order() -> None:
    queue = BroadcastQueue()
    for number in range(30):
        queue.enqueue(number, bytes([number]) * 20)
    assert queue.take(1400, limit=3, max_items=24) == [bytes([n]) * 20 for n in range(24)]
    assert list(queue.buckets()[1]) == list(range(24))
    assert list(queue.buckets()[0]) == list(range(24, 30))
    # the six left at 0 transmissions come first, then 18 of those sent once
    assert queue.take(1400, limit=3, max_items=24) == [
        bytes([n]) * 20 for n in [*range(24, 30), *range(18)]
    ]
