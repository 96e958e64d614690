"""Invariants 4 and 5 (design.md section 4): once the mesh is quiet, the live views agree.

:class:`LeaderChecker`: one leader per view in a connected, quiet component, and the
time a leader's crash takes to be replaced. :class:`ConvergenceChecker`: after the last
fault heals, every live node's view equals its reachable component within
:func:`~meshgpu.sim.checker.convergence_bound`. Both read beliefs from the
:class:`~meshgpu.sim.views.ViewTracker`, never private node state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshgpu.core.effects import LeaderChanged
from meshgpu.sim.checker import HEALING_KINDS, Checker
from meshgpu.sim.views import ViewTracker

if TYPE_CHECKING:
    from meshgpu.sim.detection_checks import DetectionChecker
    from meshgpu.sim.runner import Simulation


class LeaderChecker(Checker):
    """Invariant 4: in a connected component whose views agree and have been quiet for
    ``quiet_periods`` protocol periods, all members at the same view name the same leader,
    and that leader is a member of the component. Also measures leader changes and the
    time from a leader's crash until all live nodes agree on a live successor."""

    invariant = "leader"
    effect_types = (LeaderChanged,)

    def __init__(self, views: ViewTracker, quiet_s: float) -> None:
        super().__init__()
        self.views = views
        self.quiet_s = quiet_s
        self.terms: set[tuple[int, str | None]] = set()
        self.failover_started: float | None = None
        self.failover_group: int = 0
        self.failovers: list[float] = []
        self.checked_samples = 0
        self._leader_effects = 0
        self._settled_at: tuple[int, int] | None = None
        """(views version, leader effects) when a sample last checked every component
        and all were quiet: until either moves, the next check must give the same answer."""

    def on_effect(self, sim: Simulation, index: int, effect: Any, now: float) -> None:
        if type(effect) is not LeaderChanged:
            return
        self._leader_effects += 1
        self.terms.add((effect.view, effect.leader))
        if self.failover_started is not None:
            self._check_failover(sim, now)

    def on_node_down(self, sim: Simulation, index: int, now: float, reason: str) -> None:
        if reason == "crash" and self.failover_started is None and sim.majority_leader() == index:
            self.failover_started = now
            self.failover_group = sim.network.group_of[index]

    def on_sample(self, sim: Simulation, now: float) -> None:
        if self.failover_started is not None:
            self._check_failover(sim, now)
        views = self.views
        if now - views.last_disturbance < self.quiet_s:
            return
        signature = (views.version, self._leader_effects)
        if signature == self._settled_at:
            return  # nothing moved since a check of every component passed
        components: dict[int, list[int]] = {}
        for index in sim.up_indices():
            components.setdefault(sim.network.group_of[index], []).append(index)
        complete = True
        violations = self.violation_count
        for members in components.values():
            if any(views.wrong[i] for i in members):
                complete = False
                continue
            if max(views.last_change[i] for i in members) > now - self.quiet_s:
                complete = False
                continue
            self.checked_samples += 1
            self._check_component(sim, members, now)
        passed = complete and self.violation_count == violations
        self._settled_at = signature if passed else None

    def _check_component(self, sim: Simulation, members: list[int], now: float) -> None:
        named: dict[int, dict[str | None, list[str]]] = {}
        member_ids = {sim.node_ids[i] for i in members}
        for index in members:
            node = sim.nodes[index]
            assert node is not None
            leader = node.leader()
            named.setdefault(node.view, {}).setdefault(leader, []).append(sim.node_ids[index])
            if leader not in member_ids:
                self.violate(
                    f"at {now:.3f}s, in a stable component of {len(members)} nodes, "
                    f"{sim.node_ids[index]} names {leader} as leader of view {node.view}, "
                    "which is not a live member of its component"
                )
                return
        for view, leaders in sorted(named.items()):
            if len(leaders) > 1:
                claims = "; ".join(
                    f"{names[0]} (+{len(names) - 1}) names {leader}"
                    for leader, names in leaders.items()
                )
                self.violate(
                    f"at {now:.3f}s, in a stable component of {len(members)} nodes, view {view} "
                    f"has {len(leaders)} leaders: {claims}"
                )
                return

    def _check_failover(self, sim: Simulation, now: float) -> None:
        assert self.failover_started is not None
        named: set[str | None] = set()
        for index in sim.up_indices():
            if sim.network.group_of[index] == self.failover_group:
                node = sim.nodes[index]
                assert node is not None
                named.add(node.leader())
                if len(named) > 1:
                    return
        if len(named) == 1:
            leader = sim.index_of(named.pop())
            if leader is not None and sim.up[leader]:
                self.failovers.append(now - self.failover_started)
                self.failover_started = None

    def metrics(self) -> dict[str, Any]:
        return {
            "leader_changes": max(0, len(self.terms) - 1),
            "leader_failover_s": [round(x, 6) for x in self.failovers],
            "leader_failover_pending": self.failover_started is not None,
        }


class ConvergenceChecker(Checker):
    """Invariant 5: after the last fault heals (or the start, or a restart), every live
    node's view equals its reachable component within :func:`convergence_bound` (plus the
    detection bound when the last fault was a crash or leave, or when a crashed node was
    still held live by some live node at the last fault, which must be detected first).
    When the last fault is still in force at the end (a partition, lossy links or slow
    nodes that never end), there was no heal: the time to agree is measured and reported,
    not enforced."""

    invariant = "convergence"

    def __init__(
        self,
        views: ViewTracker,
        bound_s: float,
        detection_bound_s: float,
        detection: DetectionChecker | None = None,
    ) -> None:
        super().__init__()
        self.views = views
        self.bound_s = bound_s
        self.detection_bound_s = detection_bound_s
        self.detection = detection
        self.convergence_s: float | None = None
        self.allowed_s = bound_s

    def on_finish(self, sim: Simulation, now: float) -> None:
        views = self.views
        since = views.last_disturbance
        allowed = self.bound_s
        kind = views.last_disturbance_kind
        if kind in ("crash", "leave") or (
            self.detection is not None and self.detection.unknown_at(since)
        ):
            # A crash some live node still held live at the last fault (typically one on
            # the far side of a partition that just healed) must first be declared dead
            # there: on the verdict the other side sends at the heal, after a suspicion
            # of its own (the hearsay rule, docs/protocol.md), so one detection more.
            allowed += self.detection_bound_s
        self.allowed_s = allowed
        healed = kind in HEALING_KINDS or kind.startswith("end of ")
        if self.detection is not None and self.detection.unsettled_until >= since:
            # views cannot agree before an unsettled crash is detected, and that detection
            # is itself measured, not enforced (see DetectionChecker)
            if views.agreed_at is not None:
                self.convergence_s = views.agreed_at - since
            self.skip_reason = (
                f"a crash on an unsettled mesh was still being detected after the last fault "
                f"({kind} at {since:.3f}s)"
            )
        elif views.agreed_at is not None:
            self.convergence_s = views.agreed_at - since
            if not healed:
                self.skip_reason = f"the last fault ({kind} at {since:.3f}s) never healed"
            elif self.convergence_s > allowed:
                self.violate(
                    f"views agreed only {self.convergence_s:.3f}s after the last fault "
                    f"({views.last_disturbance_kind} at {since:.3f}s); bound {allowed:.3f}s"
                )
        elif not healed:
            self.skip_reason = f"the last fault ({kind} at {since:.3f}s) never healed"
        elif now - since > allowed:
            self.violate(
                f"views still disagree ({views.total_wrong} wrong beliefs) {now - since:.3f}s "
                f"after the last fault ({views.last_disturbance_kind} at {since:.3f}s); "
                f"bound {allowed:.3f}s"
            )
        else:
            self.skip_reason = (
                f"the run ended {now - since:.3f}s after the last fault, before the "
                f"{allowed:.3f}s bound, with views not yet agreeing"
            )

    def metrics(self) -> dict[str, Any]:
        return {
            "convergence_s": None if self.convergence_s is None else round(self.convergence_s, 6),
            "convergence_after": self.views.last_disturbance_kind,
            "convergence_bound_s": round(self.allowed_s, 6),
        }
