"""Coalescing rules at the entry node: which concurrent single submissions become one table
entry, and when they go (docs/task-queue.md, "Coalescing at the entry node").

Every table entry costs about 23 ms of CPU across a loopback mesh, whatever it carries;
``Client.map`` packs its tasks into task groups, and the entry node does the same for
callers that send one task at a time. The daemon's entry node (``daemon/coalescing.py``)
and the simulator's clients (``sim/task_driver.py``) both keep their lanes in a
:class:`Lanes` and do what it answers.

The rules:

* **The lane** (:func:`lane_of`): submissions coalesce only when one spec can serve them
  all: same model, priority, requirements, deadline, replicas, strategy and retry policy,
  and inputs of the same names, shapes and dtypes (a group concatenates its members'
  tensors and answers them per member). Each entry node has its own lanes.
* **Nothing in flight: go at once, alone.** A submission whose lane has no entry being
  acknowledged goes to the table as an ordinary task: a lone caller never waits for
  anyone (and an idle node's tiny task takes the direct run, decided before this).
* **Something in flight: wait, then go together.** Later submissions of the lane wait;
  when the lane has nothing in flight any more they go as ONE entry (a task group when
  more than one), at most ``max_members`` of them, the rest waiting for the next; a lane
  with ``max_members`` waiting sends them at once even while another entry is in flight.

So the rule is the group commit's, not a timer: the group grows with the arrival rate
times the acknowledgement time, and the busier the node the fewer entries per task.

Rejected: a fixed gathering window (every sequential caller would pay it), and
coalescing in the client library (it does not see other processes' submissions).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from meshgpu.core.tasks.retry import RetryPolicy
from meshgpu.core.tasks.spec import DeviceRequirements, Priority, TaskSpec

MAX_COALESCED = 64
"""Most submissions in one coalesced entry (as ``map``'s largest groups)."""


@dataclass(frozen=True, slots=True)
class Lane:
    """What submissions must share to go as one table entry: everything of the spec but
    the inputs' digest and the label, and the inputs' dtypes."""

    model_digest: str
    priority: Priority
    requirements: DeviceRequirements
    deadline_s: float | None
    replicas: int
    strategy: str | None
    retry: RetryPolicy
    inputs: tuple[tuple[str, tuple[int, ...], str], ...]
    """(name, shape, dtype) of every input, by name."""


def lane_of(spec: TaskSpec, dtypes: Mapping[str, str] | None = None) -> Lane:
    """The lane of a single submission with ``spec`` (``members`` 1) whose inputs have
    ``dtypes`` by name (None: the caller's inputs have one dtype, as in the simulator)."""
    dtypes = dtypes or {}
    return Lane(
        model_digest=spec.model_digest,
        priority=spec.priority,
        requirements=spec.requirements,
        deadline_s=spec.deadline_s,
        replicas=spec.replicas,
        strategy=spec.strategy,
        retry=spec.retry,
        inputs=tuple(
            (name, shape, dtypes.get(name, "")) for name, shape in sorted(spec.input_shapes)
        ),
    )


Key = TypeVar("Key", bound=Hashable)
Member = TypeVar("Member")


@dataclass(frozen=True, slots=True)
class GoAlone:
    """Nothing of the lane is in flight: feed the submission now as an ordinary task
    (counted in flight: call :meth:`Lanes.answered` when it is answered)."""


@dataclass(frozen=True, slots=True)
class Wait(Generic[Member]):
    """The submission waits in its lane. ``send``, when not empty, is what the driver
    feeds now as one entry (the lane reached ``max_members``; counted in flight)."""

    send: tuple[Member, ...] = ()


Arrival = GoAlone | Wait[Member]


@dataclass(slots=True)
class _LaneState(Generic[Member]):
    in_flight: int = 0
    waiting: list[Member] = field(default_factory=list)


class Lanes(Generic[Key, Member]):
    """The lanes of one entry node (or, keyed by entry node too, of a simulated mesh).

    Every tuple of members it answers is one entry the driver feeds at once (a task
    group when it holds more than one) and reports back with :meth:`answered` when the
    table acknowledged or refused it."""

    def __init__(self, max_members: int = MAX_COALESCED) -> None:
        if max_members < 1:
            raise ValueError(f"max_members must be at least 1, got {max_members}")
        self.max_members = max_members
        self._lanes: dict[Key, _LaneState[Member]] = {}

    def arrive(self, key: Key, member: Member) -> Arrival[Member]:
        """Invoked when a single submission of lane ``key`` arrives at the entry node."""
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _LaneState()
        if lane.in_flight == 0 and not lane.waiting:
            lane.in_flight += 1
            return GoAlone()
        lane.waiting.append(member)
        if len(lane.waiting) >= self.max_members:
            return Wait(self._take(lane))
        return Wait()

    def answered(self, key: Key) -> tuple[Member, ...]:
        """Invoked when an entry of lane ``key`` was acknowledged or refused: what to feed
        now as one entry (empty: nothing)."""
        lane = self._lanes.get(key)
        if lane is None:
            return ()
        lane.in_flight = max(0, lane.in_flight - 1)
        return self._release(key, lane)

    def leave(self, key: Key, member: Member) -> tuple[Member, ...]:
        """Invoked when a waiting submission's caller went away before its entry left:
        it is forgotten; answers what to feed now, as :meth:`answered`."""
        lane = self._lanes.get(key)
        if lane is None or member not in lane.waiting:
            return ()
        lane.waiting.remove(member)
        return self._release(key, lane)

    def forget(self, which: Callable[[Key], bool]) -> None:
        """Drop every lane whose key ``which`` names, with its waiting submissions and its
        entries in flight (invoked when an entry node dies: they died with it)."""
        for key in [key for key in self._lanes if which(key)]:
            del self._lanes[key]

    def waiting(self, key: Key) -> int:
        """How many submissions of lane ``key`` wait."""
        lane = self._lanes.get(key)
        return 0 if lane is None else len(lane.waiting)

    def in_flight(self, key: Key) -> int:
        """How many entries of lane ``key`` are being acknowledged."""
        lane = self._lanes.get(key)
        return 0 if lane is None else lane.in_flight

    def __len__(self) -> int:
        return len(self._lanes)

    def _release(self, key: Key, lane: _LaneState[Member]) -> tuple[Member, ...]:
        if lane.in_flight == 0 and lane.waiting:
            return self._take(lane)
        if lane.in_flight == 0:
            del self._lanes[key]
        return ()

    def _take(self, lane: _LaneState[Member]) -> tuple[Member, ...]:
        members = tuple(lane.waiting[: self.max_members])
        del lane.waiting[: self.max_members]
        lane.in_flight += 1
        return members
