"""The client's side of task groups: the group size ``map`` chooses, and ``collected``
named once per group when its last member's outcome arrives (repeats change nothing)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from meshgpu.client.batches import (
    BATCH_MAX,
    GROUP_MAX,
    GROUP_UNKNOWN,
    BatchedSubmission,
    choose_group,
    submit_fields,
)
from meshgpu.client.link import Signal
from meshgpu.client.models import ModelBlob
from meshgpu.errors import ConfigError

MODEL = "ab" * 32


def _members(count: int, capacity: int = 2, latency: float | None = None) -> list[dict[str, Any]]:
    load: dict[str, Any] = {"free_slots": capacity, "active_tasks": 0}
    if latency is not None:
        load["latency"] = {MODEL: latency, "other": 10.0}
    return [{"state": "alive", "load": load} for _ in range(count)] + [
        {"state": "dead", "load": {"free_slots": 100, "active_tasks": 0}}
    ]


def test_group_size_is_bounded_by_time_spread_and_the_maximum() -> None:
    # no latency published yet: a small start
    assert choose_group(_members(3), MODEL, window=1024) == GROUP_UNKNOWN
    # 8 ms per member: 400 ms allows 50; 3 nodes x capacity 2 = 6 with window 1024 -> 170
    assert choose_group(_members(3, latency=0.008), MODEL, window=1024) == 50
    # 0.1 ms per member: the maximum
    assert choose_group(_members(3, latency=0.0001), MODEL, window=4096) == GROUP_MAX
    # spread: a window of 64 over 6 capacity units leaves 10 per group
    assert choose_group(_members(3, latency=0.0001), MODEL, window=64) == 10
    # slow members (80 ms): 5 per group; slower than the target: 1
    assert choose_group(_members(3, latency=0.08), MODEL, window=1024) == 5
    assert choose_group(_members(3, latency=0.5), MODEL, window=1024) == 1
    # a window smaller than the capacity: no grouping
    assert choose_group(_members(30, latency=0.0001), MODEL, window=64) == 1
    assert choose_group([], MODEL, window=64) >= 1


def test_a_large_mesh_gets_longer_groups_so_its_entry_rate_stays_bounded() -> None:
    # 20 ms per member. 3 nodes of capacity 2: the 400 ms target, 20 members
    assert choose_group(_members(3, capacity=2, latency=0.02), MODEL, window=10_000) == 20
    # 10 nodes (capacity 20): groups of at least 20 / ENTRY_RATE = 1 s, 50 members
    assert choose_group(_members(10, capacity=2, latency=0.02), MODEL, window=10_000) == 50
    # 30 nodes (capacity 60): 3 s would be 150 members; the maximum
    assert choose_group(_members(30, capacity=2, latency=0.02), MODEL, window=10_000) == GROUP_MAX
    # the window still spreads: 2,400 places over 60 capacity units, 40 a group
    assert choose_group(_members(30, capacity=2, latency=0.02), MODEL, window=2400) == 40


class _Client(BatchedSubmission):
    def __init__(self) -> None:
        self._group_left: dict[str, int] = {}
        self._group_taken: dict[str, list[str]] = {}


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


def test_a_group_given_up_half_taken_acknowledges_its_taken_members_one_by_one() -> None:
    client = _Client()
    client._group_left["n-1/7"] = 3
    assert client._collectable("n-1/7:0", first=True) is None
    assert client._collectable("n-1/7:2", first=True) is None
    # member 1 was never taken (a stopped map): the daemon counts 0 and 2 now, and the
    # group is collected once `meshgpu collect` has fetched member 1.
    assert sorted(client._forget_groups(["n-1/7:1"])) == ["n-1/7:0", "n-1/7:2"]
    assert "n-1/7" not in client._group_left and not client._group_taken
    assert client._forget_groups(["n-1/8"]) == []


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


async def test_a_map_holds_its_first_fill_to_a_probe_until_the_model_latency_is_known() -> None:
    import trio

    from meshgpu.client.batches import PROBE_REFRESH_S

    class Probing(_Client):
        def __init__(self) -> None:
            super().__init__()
            self.members = _members(2)  # capacity 4: a probe is 16 tasks
            self.asked = 0

        async def status(self) -> dict[str, Any]:
            self.asked += 1
            if self.asked == 3:
                self.members = _members(2, latency=0.02)
            return {"members": self.members}

    client = Probing()
    until = trio.current_time() + 60
    with trio.fail_after(1):
        # 10 out (the place just taken included): 7 more fit in the probe of 16
        assert await client._probe(MODEL, lambda: 10, until) == 7
        assert await client._probe(MODEL, lambda: 16, until) == 1
    assert client.asked == 0
    started = trio.current_time()
    # beyond it: waits for the latency, then the request may be whole
    assert await client._probe(MODEL, lambda: 17, until) == BATCH_MAX
    assert client.asked == 3
    assert trio.current_time() - started >= 2 * PROBE_REFRESH_S
    assert await client._probe(MODEL, lambda: 10_000, until) == BATCH_MAX  # known now
    assert client.asked == 3


async def test_a_probe_gives_up_when_no_latency_is_ever_published() -> None:
    import trio

    class Silent(_Client):
        def __init__(self) -> None:
            super().__init__()
            self.members = _members(2)
            self.asked = 0

        async def status(self) -> dict[str, Any]:
            self.asked += 1
            return {"members": self.members}

    client = Silent()
    until = trio.current_time() + 1.0
    with trio.fail_after(5):
        assert await client._probe(MODEL, lambda: 100, until) == BATCH_MAX
    assert trio.current_time() >= until and 3 <= client.asked <= 5


def test_collected_twice_counts_a_member_once() -> None:
    """A stopped blocking map may name a burst again (Ctrl-C during the hand-off): a
    group must not be collected before its last member was taken."""
    from meshgpu.client.handles import AsyncTaskHandle, Outcome
    from meshgpu.client.outcomes import OutcomeStreams

    class Streams(OutcomeStreams, _Client):
        def __init__(self) -> None:
            _Client.__init__(self)
            self._handles = {}
            self._to_ack = set()
            self._work = Signal()

    streams = Streams()
    streams._group_left["n-1/7"] = 3
    for index in range(3):
        handle = AsyncTaskHandle(f"n-1/7:{index}", deferred=True)
        handle.resolve(Outcome(handle.task_id, "done", "w", outputs={}))
        handle.from_mesh = True
        streams._handles[handle.task_id] = handle
    streams.collected(["n-1/7:0", "n-1/7:1"])
    streams.collected(["n-1/7:0", "n-1/7:1"])  # again
    assert streams._to_ack == set() and streams._group_left["n-1/7"] == 1
    streams.collected(["n-1/7:2"])
    assert streams._to_ack == {"n-1/7"}


@pytest.mark.parametrize("group", [2.5, 0, BATCH_MAX + 1, True, "2"])
def test_a_group_that_is_no_member_count_is_refused_not_cut_to_one(group: Any) -> None:
    """``group=2.5`` ran groups of 2 (``int()`` on the quiet), ``True`` groups of 1."""
    with pytest.raises(ConfigError, match="group is a member count, an integer from 1 to "):
        trio.run(lambda: _Client().submit_many(b"model", [], group=group))


@pytest.mark.parametrize(
    ("option", "value"),
    [("replicas", 2.5), ("replicas", 0), ("min_memory", 1.5), ("min_memory", -1)],
)
def test_counts_of_a_submission_are_integers(option: str, value: Any) -> None:
    fields: dict[str, Any] = {"replicas": 2, "min_memory": 0}
    fields[option] = value
    with pytest.raises(ConfigError, match=f"{option} is .*, an integer >= .*, got {value!r}"):
        submit_fields(ModelBlob.of(b"model"), "normal", deadline_s=None, device_type=None,
                      fp16=False, **fields)  # fmt: skip
    assert submit_fields(ModelBlob.of(b"m"), "normal", 3, None, None, 7, False)["replicas"] == 3


def test_a_float_with_a_whole_value_is_the_integer_it_names() -> None:
    """``min_memory=4e9`` is 4 GB, as a user writes it; only a fraction is refused."""
    fields = submit_fields(ModelBlob.of(b"m"), "normal", 2.0, None, None, 4e9, False)
    assert fields["min_memory"] == 4_000_000_000 and type(fields["min_memory"]) is int
    assert fields["replicas"] == 2 and type(fields["replicas"]) is int
