"""What every node believes about every other, kept in step with the truth.

The simulator knows the truth (which nodes are up, which can reach each other); each node
announces its beliefs through ``MemberChanged`` effects. :class:`ViewTracker` keeps both
and, incrementally, the number of (observer, target) pairs where an up observer is wrong:
it believes a target live (alive or suspect) that is down or unreachable from it, or does
not believe live a target that is up and reachable. Zero wrong pairs is what "all live
views agree" means (invariant 5); the convergence, leader and accuracy checkers read it.

Incremental because recomputing n^2 beliefs after every effect would dominate a
1,000-node run; a partition change recomputes once (O(n^2), rare). At the end of a run the
tracker cross-checks its picture against every node's ``live_members()``: a mismatch means
the core changed a view without saying so in a ``MemberChanged`` effect.

It also keeps the history the accuracy checker needs to tell a false death from an
explained one: when each node was down, and each partition layout with its interval.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshgpu.core.effects import MemberChanged
from meshgpu.core.membership import LIVE_STATES, MemberState
from meshgpu.sim.faults import Heal, Partition, Reversal
from meshgpu.sim.observers import Observer

if TYPE_CHECKING:
    from meshgpu.sim.faults import Fault
    from meshgpu.sim.runner import Simulation


class ViewTracker(Observer):
    """Beliefs vs truth, disagreement counts, and the fault history of the run."""

    name = "views"
    effect_types = (MemberChanged,)

    def __init__(self) -> None:
        self.live: list[set[int]] = []
        self.state: list[list[MemberState | None]] = []
        """``state[observer][target]``: the last state ``observer`` announced for ``target``
        (a list per observer, not a dict: a tenth of the memory at 1,000 nodes)."""
        self.wrong: list[int] = []
        self.total_wrong = 0
        self.last_change: list[float] = []
        self.last_disturbance = 0.0
        self.last_disturbance_kind = "start"
        self.agreed_at: float | None = None
        self.settled_before_down = False
        self.down_since: list[float | None] = []
        self.down_intervals: list[list[tuple[float, float]]] = []
        self.partitions: list[tuple[float, float, list[int]]] = []
        self._partition_start = 0.0
        self._layout: list[int] = []
        self.sim: Simulation | None = None
        self.inconsistent: list[str] = []
        self.version = 0
        """Bumped by every belief or truth change: equal versions, identical views (lets
        the sampling checkers skip a check whose answer cannot have changed)."""

    # -- hooks ------------------------------------------------------------------------------

    def on_start(self, sim: Simulation) -> None:
        n = sim.node_count
        self.sim = sim
        self.live = [set() for _ in range(n)]
        self.state = [[None] * n for _ in range(n)]
        self.wrong = [0] * n
        self.last_change = [0.0] * n
        self.down_since = [0.0] * n  # nodes are "down" until started
        self.down_intervals = [[] for _ in range(n)]
        self._layout = list(sim.network.group_of)

    def on_node_up(self, sim: Simulation, index: int, now: float) -> None:
        since = self.down_since[index]
        if since is not None and now > 0.0:
            self.down_intervals[index].append((since, now))
        self.down_since[index] = None
        self.live[index] = set()
        self.state[index] = [None] * len(self.state[index])
        # For each up peer in its group: the truth of (peer, index) flipped, so did whether
        # the peer's belief is wrong (_flip_truth, inlined: every node starting in a mesh
        # of n is n calls, n squared as a mesh starts).
        group = sim.network.group_of
        mine = group[index]
        up = sim.up
        truth = up[index]
        live = self.live
        wrong = self.wrong
        peers = 0
        total = 0
        for j in range(sim.node_count):
            if up[j] and j != index and group[j] == mine:
                peers += 1
                delta = 1 if (index in live[j]) != truth else -1
                wrong[j] += delta
                total += delta
        self.total_wrong += total
        self.wrong[index] = peers
        self.total_wrong += peers
        self.last_change[index] = now
        self._disturbed(now, "restart" if now > 0.0 else "start")

    def on_node_down(self, sim: Simulation, index: int, now: float, reason: str) -> None:
        # Were views agreed just before this stop? (Stops at the same instant chain: a
        # crash of three nodes at once happens to a settled mesh if the first did.)
        simultaneous = self.last_disturbance == now and self.last_disturbance_kind == reason
        self.settled_before_down = self.agreed_at is not None or (
            simultaneous and self.settled_before_down
        )
        self.down_since[index] = now
        self.total_wrong -= self.wrong[index]
        self.wrong[index] = 0
        self.live[index] = set()
        self.state[index] = [None] * len(self.state[index])
        group = sim.network.group_of
        for j in sim.up_indices():
            if group[j] == group[index]:
                self._flip_truth(j, index)
        self._disturbed(now, reason)

    def on_fault(
        self, sim: Simulation, fault: Fault | Reversal, targets: list[int], now: float
    ) -> None:
        if isinstance(fault, Partition | Heal) or (
            isinstance(fault, Reversal) and isinstance(fault.fault, Partition)
        ):
            self._partition_changed(sim, now)
        kind = fault.kind if not isinstance(fault, Reversal) else f"end of {fault.fault.kind}"
        self._disturbed(now, kind)

    def on_effect(self, sim: Simulation, index: int, effect: Any, now: float) -> None:
        if type(effect) is not MemberChanged:
            return
        target = sim.index_of_id.get(effect.node_id)
        if target is None or target == index:
            return
        self.version += 1
        state = effect.state
        self.state[index][target] = state
        self.last_change[index] = now
        believed = state in LIVE_STATES
        live = self.live[index]
        if believed == (target in live):
            return
        if believed:
            live.add(target)
        else:
            live.discard(target)
        truth = sim.up[target] and sim.network.group_of[target] == sim.network.group_of[index]
        delta = -1 if believed == truth else 1
        self.wrong[index] += delta
        self.total_wrong += delta
        if self.total_wrong == 0 and self.agreed_at is None:
            self.agreed_at = now

    def on_finish(self, sim: Simulation, now: float) -> None:
        for index in sim.up_indices():
            node = sim.nodes[index]
            assert node is not None
            reported = {sim.index_of_id.get(m) for m in node.live_members()} - {index, None}
            if reported != self.live[index]:
                extra = sorted(
                    sim.node_ids[j] for j in reported - self.live[index] if j is not None
                )
                missing = sorted(sim.node_ids[j] for j in self.live[index] - reported)
                self.inconsistent.append(
                    f"{sim.node_ids[index]}: live_members() has {extra} beyond its MemberChanged "
                    f"effects and lacks {missing}"
                )
        self.partitions.append((self._partition_start, now, self._layout))

    # -- queries ----------------------------------------------------------------------------

    def believes_live(self, observer: int, target: int) -> bool:
        return target in self.live[observer]

    def believed_state(self, observer: int, target: int) -> MemberState | None:
        return self.state[observer][target]

    def was_disturbed(self, observer: int, target: int, since: float, now: float) -> bool:
        """Whether ``target`` was down, or cut off from ``observer``, at some time in
        ``[since, now]`` (so ``observer`` declaring it dead is explained)."""
        if self.down_since[target] is not None:
            return True
        if any(end >= since for _, end in self.down_intervals[target]):
            return True
        sim = self.sim
        assert sim is not None
        group = sim.network.group_of
        if group[observer] != group[target]:
            return True
        return any(
            end >= since and layout[observer] != layout[target]
            for _, end, layout in self.partitions
        )

    # -- internals --------------------------------------------------------------------------

    def _flip_truth(self, observer: int, target: int) -> None:
        """The truth of (observer, target) just flipped; so did whether the belief is wrong."""
        sim = self.sim
        assert sim is not None
        truth = sim.up[target] and sim.network.group_of[target] == sim.network.group_of[observer]
        delta = 1 if (target in self.live[observer]) != truth else -1
        self.wrong[observer] += delta
        self.total_wrong += delta

    def _partition_changed(self, sim: Simulation, now: float) -> None:
        self.partitions.append((self._partition_start, now, self._layout))
        self._partition_start = now
        self._layout = list(sim.network.group_of)
        self._recount(sim)

    def _recount(self, sim: Simulation) -> None:
        group = sim.network.group_of
        up = sim.up_indices()
        total = 0
        for observer in up:
            truth = {j for j in up if j != observer and group[j] == group[observer]}
            wrong = len(truth ^ self.live[observer])
            self.wrong[observer] = wrong
            total += wrong
        self.total_wrong = total

    def _disturbed(self, now: float, kind: str) -> None:
        self.version += 1
        self.last_disturbance = now
        self.last_disturbance_kind = kind
        self.agreed_at = now if self.total_wrong == 0 else None
