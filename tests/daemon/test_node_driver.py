"""The node driver and the member history on their own: a real core node, fakes for the
effect queue and the identity store, trio's autojump clock for time."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

import pytest
import trio
import trio.testing

from meshgpu.core.config import MeshConfig
from meshgpu.core.effects import (
    Effect,
    LeaderChanged,
    MemberChanged,
    SendDatagram,
    TaskAccepted,
)
from meshgpu.core.events import DatagramReceived, Event, PeerDiscovered, SubmitTask, Tick
from meshgpu.core.membership import MemberState
from meshgpu.core.membership.wire import MemberRecord, PushPull
from meshgpu.core.messages import Envelope, encode
from meshgpu.core.node import Node
from meshgpu.core.tasks import TaskSpec
from meshgpu.daemon.member_history import MemberHistory
from meshgpu.daemon.node_driver import SAVE_RETRY_S, NodeDriver

ADDRESS = ("127.0.0.1", 7000)
PEER = ("127.0.0.1", 7001)
ACCUSATION = encode(
    Envelope(
        "b",
        0,
        0,
        PushPull(
            False,
            0,
            1,
            (MemberRecord("b", PEER, "alive", 0), MemberRecord("a", ADDRESS, "suspect", 0)),
        ),
    )
)
"""b's table, which has this node ("a") suspect at incarnation 0: a refutes."""
JOIN = encode(Envelope("b", 0, 0, PushPull(False, 0, 1, (MemberRecord("b", PEER, "alive", 0),))))
"""b joins (its table of itself): a member that a then probes every period."""


class Sink:
    def __init__(self) -> None:
        self.batches: list[tuple[list[Effect], bool]] = []

    def extend(self, effects: Iterable[Effect], free: bool) -> None:
        self.batches.append((list(effects), free))


def make_driver(
    saved: list[int] | None = None, save_ok: bool = True
) -> tuple[NodeDriver, Sink, list[str], list[str]]:
    node = Node("a", ADDRESS, MeshConfig(), random.Random(1), trio.current_time())
    sink = Sink()
    counted: list[str] = []
    drained: list[str] = []
    writes = saved if saved is not None else []

    def save(incarnation: int) -> bool:
        writes.append(incarnation)
        return save_ok

    driver = NodeDriver(node, sink, counted.append, save, lambda: drained.append("drained"))
    return driver, sink, counted, drained


async def test_feed_queues_the_effects_of_one_event_together() -> None:
    driver, sink, counted, _ = make_driver()
    driver.feed(PeerDiscovered(PEER, "b"))
    assert len(sink.batches) == 1
    effects, free = sink.batches[0]
    assert not free  # only a submission's datagrams are free
    assert any(isinstance(e, SendDatagram) and e.destination == PEER for e in effects)
    driver.feed(DatagramReceived(PEER, JOIN))  # b alive: a replica to ask
    driver.feed(SubmitTask("ref", TaskSpec("m", "d", replicas=2)))
    effects, free = sink.batches[-1]
    assert not any(isinstance(e, TaskAccepted) for e in effects)
    assert free is True  # hold requests claim nothing
    assert counted == []


@pytest.mark.parametrize("replicas", [1, 2])
async def test_a_submission_acknowledged_at_once_waits_for_the_journal(replicas: int) -> None:
    """replicas=1 (or no live peer to ask): the origin is the lone holder and acknowledges
    in the same handle; its datagrams carry the acknowledged mark that lets the leader
    assign the task, so they must wait for the origin's fsync like the acknowledgement."""
    driver, sink, _, _ = make_driver()
    if replicas == 1:
        driver.feed(DatagramReceived(PEER, JOIN))  # a live peer, not asked
    driver.feed(SubmitTask("ref", TaskSpec("m", "d", replicas=replicas)))
    effects, free = sink.batches[-1]
    assert any(isinstance(e, TaskAccepted) for e in effects)
    assert free is False


async def test_a_core_error_is_counted_and_the_driver_goes_on() -> None:
    driver, sink, counted, _ = make_driver()
    driver.feed("not an event")  # type: ignore[arg-type]
    assert counted == ["core_errors"]
    driver.feed(PeerDiscovered(PEER, "b"))
    assert sink.batches  # still serving


async def test_a_raised_incarnation_is_saved_before_its_effects_leave() -> None:
    saved: list[int] = []
    driver, _, _, _ = make_driver(saved)
    driver.feed(PeerDiscovered(PEER, "b"))
    assert saved == []
    # b accuses a: a refutes by raising its incarnation, which must be written first.
    driver.feed(DatagramReceived(PEER, ACCUSATION))
    assert driver.node.incarnation == 1
    assert saved == [1]
    driver.feed(DatagramReceived(PEER, ACCUSATION))  # an old accusation: nothing new
    assert saved == [1]


async def test_a_failed_save_is_tried_again_a_second_later_not_on_every_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # On a full disk every datagram tried (and logged) the write: hundreds a second.
    saved: list[int] = []
    driver, _, _, _ = make_driver(saved, save_ok=False)
    driver.feed(PeerDiscovered(PEER, "b"))
    driver.feed(DatagramReceived(PEER, ACCUSATION))
    for _ in range(50):
        driver.feed(Tick())
    assert saved == [1]
    await trio.sleep(SAVE_RETRY_S)
    driver.feed(Tick())
    driver.feed(Tick())
    assert saved == [1, 1]


async def test_the_timer_ticks_at_the_nodes_deadlines(
    autojump_clock: trio.testing.MockClock,
) -> None:
    driver, sink, _, drained = make_driver()
    driver.feed(DatagramReceived(PEER, JOIN))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.run_timers)
        await trio.sleep(5.0)
        nursery.cancel_scope.cancel()
    # A node with a peer probes it every protocol period: several ticks in 5 s, and the
    # socket was drained before each.
    probes = [
        e
        for effects, _ in sink.batches[1:]
        for e in effects
        if isinstance(e, SendDatagram) and e.destination == PEER
    ]
    assert len(probes) >= 5
    assert len(drained) >= 5


class Sleepy:
    """A node with no deadline until it is told of a peer; then one 1 s later."""

    incarnation = 0

    def __init__(self) -> None:
        self.deadline = math.inf
        self.ticks: list[float] = []

    def handle(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, Tick):
            self.ticks.append(now)
            self.deadline = math.inf
        else:
            self.deadline = now + 1.0
        return []

    def next_deadline(self) -> float:
        return self.deadline


async def test_an_earlier_deadline_wakes_the_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    node = Sleepy()
    driver = NodeDriver(node, Sink(), lambda name: None, lambda incarnation: True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.run_timers)
        await trio.sleep(10.0)  # the timer sleeps with no deadline
        assert node.ticks == []
        driver.feed(PeerDiscovered(PEER, "b"))  # at 10 s: a deadline at 11 s
        await trio.sleep(5.0)
        nursery.cancel_scope.cancel()
    assert node.ticks == [pytest.approx(11.0)]


def test_member_history_remembers_and_turns_states_into_text() -> None:
    changes: list[str] = []
    history = MemberHistory(lambda: changes.append("changed"), wall_clock=lambda: 123.0)
    history.member_changed(MemberChanged("b", PEER, MemberState.DEAD, 2, "suspicion timeout"))
    history.leader_changed(LeaderChanged(3, "b"))
    assert history.members == {
        "b": {
            "node_id": "b",
            "address": list(PEER),
            "state": "dead",
            "reason": "suspicion timeout",
            "incarnation": 2,
            "at": 123.0,
        }
    }
    assert changes == ["changed", "changed"]
