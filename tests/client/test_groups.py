"""The client's side of task groups: the group size ``map`` chooses, and ``collected``
named once per group when its last member's outcome arrives (repeats change nothing)."""

from __future__ import annotations

from typing import Any

from meshgpu.client.batches import GROUP_MAX, GROUP_UNKNOWN, BatchedSubmission, choose_group

MODEL = "ab" * 32


def _members(count: int, capacity: int = 4, latency: float | None = None) -> list[dict[str, Any]]:
    load: dict[str, Any] = {"free_slots": capacity, "active_tasks": 0}
    if latency is not None:
        load["latency"] = {MODEL: latency, "other": 10.0}
    return [{"state": "alive", "load": load} for _ in range(count)] + [
        {"state": "dead", "load": {"free_slots": 100, "active_tasks": 0}}
    ]


def test_group_size_is_bounded_by_time_spread_and_the_maximum() -> None:
    # no latency published yet: a small start
    assert choose_group(_members(3), MODEL, window=1024) == GROUP_UNKNOWN
    # 8 ms per member: 400 ms allows 50; 3 nodes x capacity 4 = 12 with window 1024 -> 85
    assert choose_group(_members(3, latency=0.008), MODEL, window=1024) == 50
    # 0.1 ms per member: the maximum
    assert choose_group(_members(3, latency=0.0001), MODEL, window=4096) == GROUP_MAX
    # spread: a window of 64 over 12 capacity units leaves 5 per group
    assert choose_group(_members(3, latency=0.0001), MODEL, window=64) == 5
    # slow members (80 ms): 5 per group; slower than the target: 1
    assert choose_group(_members(3, latency=0.08), MODEL, window=1024) == 5
    assert choose_group(_members(3, latency=0.5), MODEL, window=1024) == 1
    # a window smaller than the capacity: no grouping
    assert choose_group(_members(30, latency=0.0001), MODEL, window=64) == 1
    assert choose_group([], MODEL, window=64) >= 1


class _Client(BatchedSubmission):
    def __init__(self) -> None:
        self._group_left: dict[str, int] = {}


def test_a_group_is_collected_once_when_its_last_member_arrives() -> None:
    client = _Client()
    client._group_left["n-1/7"] = 3
    assert client._collectable("n-1/7:0", first=True) is None
    assert client._collectable("n-1/7:0", first=False) is None  # a repeat counts nothing
    assert client._collectable("n-1/7:2", first=True) is None
    assert client._collectable("n-1/7:1", first=True) == "n-1/7"
    assert "n-1/7" not in client._group_left
    assert client._collectable("n-1/8", first=True) == "n-1/8"  # a plain task
    assert client._collectable("n-1/9:0", first=True) == "n-1/9:0"  # attached, not ours


async def test_the_window_gathers_a_group_worth_of_places_or_gives_up() -> None:
    import trio

    from meshgpu.client.batches import _Window

    window = _Window(4)
    for _ in range(4):
        await window.acquire()
    released = 0

    async def release_three() -> None:
        nonlocal released
        for _ in range(3):
            await trio.lowlevel.checkpoint()
            released += 1
            window.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(release_three)
        with trio.fail_after(5):
            await window.gather(3, 5.0)
        assert released == 3 and window.value == 3
    with trio.fail_after(5):
        await window.gather(4, 0.01)  # not enough will come: it gives up after 10 ms
    assert window.value == 3
