"""The coalescing rules (meshgpu/core/coalescing.py) that the daemon's entry node and the
simulator both follow: which submissions share a lane, which go at once, which wait, and
how many go together."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshgpu.core.coalescing import GoAlone, Lanes, Wait, lane_of
from meshgpu.core.tasks import DeviceRequirements, Priority, TaskSpec

SPEC = TaskSpec(model_digest="m", input_digest="a", input_shapes=(("x", (1, 4)),))


def test_specs_that_one_group_spec_can_serve_share_a_lane() -> None:
    lane = lane_of(SPEC, {"x": "<f4"})
    assert lane_of(replace(SPEC, input_digest="b", label="other"), {"x": "<f4"}) == lane
    for other in (
        replace(SPEC, model_digest="n"),
        replace(SPEC, priority=Priority.HIGH),
        replace(SPEC, input_shapes=(("x", (1, 8)),)),
        replace(SPEC, requirements=DeviceRequirements(require=(("room", "b12"),))),
        replace(SPEC, deadline_s=5.0),
        replace(SPEC, replicas=3),
        replace(SPEC, strategy="spread"),
    ):
        assert lane_of(other, {"x": "<f4"}) != lane
    assert lane_of(SPEC, {"x": "<f8"}) != lane  # another dtype


def test_a_lone_submission_goes_alone_and_the_next_ones_go_together() -> None:
    lanes: Lanes[str, int] = Lanes(max_members=4)
    assert lanes.arrive("a", 0) == GoAlone()
    assert lanes.arrive("b", 10) == GoAlone()  # another lane does not wait for "a"
    assert [lanes.arrive("a", n) for n in (1, 2)] == [Wait(), Wait()]
    assert lanes.answered("a") == (1, 2)  # one entry of two members
    assert lanes.arrive("a", 3) == Wait()  # the group is in flight now
    assert lanes.answered("a") == (3,)
    assert lanes.answered("a") == ()
    assert lanes.arrive("a", 4) == GoAlone()  # idle again: at once


def test_a_full_lane_sends_at_once_and_a_leaver_is_forgotten() -> None:
    lanes: Lanes[str, int] = Lanes(max_members=3)
    assert lanes.arrive("a", 0) == GoAlone()
    assert lanes.arrive("a", 1) == Wait()
    assert lanes.leave("a", 1) == ()  # its caller went away: waits no more
    assert lanes.arrive("a", 2) == Wait()
    assert lanes.arrive("a", 3) == Wait()
    assert lanes.arrive("a", 4) == Wait((2, 3, 4))  # full: goes without waiting
    assert lanes.in_flight("a") == 2
    lanes.forget(lambda key: key == "a")  # the entry node died
    assert lanes.in_flight("a") == 0 and lanes.arrive("a", 5) == GoAlone()
    with pytest.raises(ValueError):
        Lanes(max_members=0)


Operation = st.one_of(
    st.tuples(st.just("arrive"), st.integers(0, 2)),
    st.tuples(st.just("answer"), st.integers(0, 20)),
    st.tuples(st.just("leave"), st.integers(0, 200)),
)


@given(st.lists(Operation, max_size=120), st.integers(min_value=1, max_value=5))
def test_every_submission_goes_exactly_once_in_order_within_bounds(
    operations: list[tuple[str, int]], max_members: int
) -> None:
    """Model check: whatever the arrivals, answers and departures, every submission
    goes to the table once (alone or in one entry) or left; an entry holds at most
    ``max_members``, in arrival order; nothing waits in a lane with nothing in flight."""
    lanes: Lanes[int, int] = Lanes(max_members)
    in_flight: list[tuple[int, tuple[int, ...]]] = []  # (lane, members) of each entry
    sent: list[int] = []
    left: list[int] = []
    waiting: dict[int, list[int]] = {0: [], 1: [], 2: []}
    number = 0

    def went(lane: int, members: tuple[int, ...]) -> None:
        assert 1 <= len(members) <= max_members
        assert list(members) == waiting[lane][: len(members)]  # oldest first
        del waiting[lane][: len(members)]
        sent.extend(members)
        in_flight.append((lane, members))

    for kind, value in operations:
        if kind == "arrive":
            arrival = lanes.arrive(value, number)
            if isinstance(arrival, GoAlone):
                assert not waiting[value] and all(lane != value for lane, _ in in_flight)
                sent.append(number)
                in_flight.append((value, (number,)))
            else:
                waiting[value].append(number)
                if arrival.send:
                    went(value, arrival.send)
            number += 1
        elif kind == "answer" and in_flight:
            lane, _ = in_flight.pop(value % len(in_flight))
            members = lanes.answered(lane)
            if members:
                went(lane, members)
        elif kind == "leave":
            lane = value % 3
            if waiting[lane]:
                member = waiting[lane][value % len(waiting[lane])]
                waiting[lane].remove(member)
                left.append(member)
                members = lanes.leave(lane, member)
                if members:
                    went(lane, members)
        for lane in range(3):
            assert lanes.waiting(lane) == len(waiting[lane]) < max_members
            busy = sum(1 for owner, _ in in_flight if owner == lane)
            assert lanes.in_flight(lane) == busy
            assert busy or not waiting[lane]  # nothing waits for nothing
    assert len(sent) == len(set(sent))
    assert sorted(sent + left + [m for queue in waiting.values() for m in queue]) == list(
        range(number)
    )
