"""The small machines: named timers, the dissemination queue, Lifeguard's timing math."""

from __future__ import annotations

import math

import pytest

from meshgpu.core.broadcast import BroadcastQueue
from meshgpu.core.suspicion import LocalHealth, Suspicion, suspicion_timeout
from meshgpu.core.timers import Timers


def test_timers_report_earliest_and_pop_due_in_order() -> None:
    timers = Timers()
    assert timers.next_deadline() == math.inf
    timers.schedule("b", 2.0)
    timers.schedule("a", 1.0)
    timers.schedule("c", 3.0)
    timers.schedule("a", 2.5)  # moved: the old heap entry must be ignored
    timers.cancel("c")
    assert timers.next_deadline() == 2.0
    assert timers.pop_due(2.6) == ["b", "a"]
    assert timers.next_deadline() == math.inf
    assert len(timers) == 0


def test_queue_sends_each_item_at_most_limit_times_fewest_first() -> None:
    queue = BroadcastQueue()
    queue.enqueue("x", b"xxxx")
    assert queue.take(100, limit=2, max_items=10) == [b"xxxx"]
    queue.enqueue("y", b"yy")
    assert queue.take(100, limit=2, max_items=1) == [b"yy"]  # fewer transmissions first
    assert queue.take(100, limit=2, max_items=10) == [b"xxxx", b"yy"]
    assert queue.take(100, limit=2, max_items=10) == []
    assert len(queue) == 0


def test_queue_replaces_by_key_and_respects_budget() -> None:
    queue = BroadcastQueue()
    queue.enqueue("k", b"old")
    queue.enqueue("k", b"new!")
    queue.enqueue("big", b"b" * 50)
    assert len(queue) == 2
    assert queue.take(10, limit=5, max_items=10) == [b"new!"]
    queue.discard("big")
    assert "big" not in queue


@pytest.mark.parametrize(
    ("confirmations", "expected"),
    [(0, 3.0), (1, 3.0 - 2.0 * math.log(2) / math.log(4)), (3, 1.0), (9, 1.0)],
)
def test_lifeguard_suspicion_timeout(confirmations: int, expected: float) -> None:
    assert suspicion_timeout(confirmations, 3, 1.0, 3.0) == pytest.approx(expected)


def test_no_expected_confirmations_means_minimum() -> None:
    assert suspicion_timeout(0, 0, 1.0, 3.0) == 1.0


def test_suspicion_counts_each_accuser_once_and_stops_at_k() -> None:
    suspicion = Suspicion("a", 0, started=10.0, expected=2, minimum=1.0, maximum=3.0)
    assert suspicion.deadline() == pytest.approx(13.0)
    assert suspicion.confirm("b")
    assert not suspicion.confirm("b")
    assert suspicion.confirm("c")
    assert not suspicion.confirm("d")  # K reached: more changes nothing, not re-gossiped
    assert suspicion.deadline() == pytest.approx(11.0)


def test_confirm_fully_shrinks_to_minimum() -> None:
    suspicion = Suspicion("a", 0, started=0.0, expected=3, minimum=1.0, maximum=3.0)
    assert suspicion.confirm_fully()
    assert suspicion.deadline() == pytest.approx(1.0)


def test_local_health_clamps_and_scales() -> None:
    health = LocalHealth(maximum=8)
    health.apply(-1)
    assert health.score == 0
    health.apply(20)
    assert health.score == 8
    assert health.scale(0.1) == pytest.approx(0.9)
