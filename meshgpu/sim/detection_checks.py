"""Invariants 6 and 7 (design.md section 4): crashes are detected, live nodes are not.

:class:`DetectionChecker`: every live node declares a crashed one dead within the
detection bound (:func:`~meshgpu.sim.checker.detection_bound`), and every delay is
measured. :class:`AccuracyChecker`: no live node is declared dead, unless it was down or
cut off from the declarer just before (healthy and slow targets counted apart, as
Lifeguard's claim is about the healthy ones).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from meshgpu.core.effects import MemberChanged
from meshgpu.core.membership import DEAD, GONE_STATES, LIVE_STATES, SUSPECT
from meshgpu.sim.checker import Checker
from meshgpu.sim.faults import Crash, Leave, Restart, Reversal, Slow
from meshgpu.sim.views import ViewTracker

if TYPE_CHECKING:
    from meshgpu.sim.faults import Fault
    from meshgpu.sim.runner import Simulation


class DetectionChecker(Checker):
    """Invariant 6: a crashed node is declared dead by every live node that believed it
    live, within ``bound_s``. Measures every (observer, crash) detection delay.

    The bound is the design's promise for a *settled* mesh: it is enforced for crashes
    that hit a mesh whose views agreed, and that no partition, link change or slow node
    disturbs before the bound has passed. Others (a crash during a partition, when every
    node is busy suspecting the far side and Lifeguard's local health has stretched its
    probes; concurrent crashes that leave fewer live peers than ``indirect_checks``, so
    that indirect probes go through dead relays) are still measured, and counted in
    ``detection_unsettled``."""

    invariant = "detection"
    effect_types = (MemberChanged,)

    def __init__(self, views: ViewTracker, bound_s: float) -> None:
        super().__init__()
        self.views = views
        self.bound_s = bound_s
        self.open: dict[int, tuple[float, set[int]]] = {}
        self.excused: set[int] = set()
        self.delays: list[float] = []
        self.crashes = 0
        self.unsettled = 0
        # when the last excused (unsettled) crash was detected by all; inf while pending
        self.unsettled_until = -math.inf
        # every crash: (when, live nodes of any group still holding it live)
        self.spreading: dict[int, tuple[float, set[int]]] = {}
        # (crashed at, declared dead by every live node at); inf while some still hold it live
        self.known_intervals: list[tuple[float, float]] = []

    def on_node_down(self, sim: Simulation, index: int, now: float, reason: str) -> None:
        for _, pending in self.open.values():
            pending.discard(index)
        for target in list(self.spreading):
            self._unhold(target, index, now)
        if reason != "crash":
            return
        self._close(sim, index, now)
        self._end_spread(index, now)
        holders = {j for j in sim.up_indices() if self.views.believes_live(j, index)}
        self.spreading[index] = (now, holders)
        if not holders:
            self._end_spread(index, now)
        group = sim.network.group_of
        watchers = {
            j
            for j in sim.up_indices()
            if group[j] == group[index] and self.views.believes_live(j, index)
        }
        self.crashes += 1
        self.open[index] = (now, watchers)
        if not self.views.settled_before_down or sim.network.partitioned:
            self._excuse(index)
        elif len(self.open) > 1 and len(sim.up_indices()) - 1 < sim.config.indirect_checks:
            # Concurrent crashes left a survivor fewer live peers than the indirect probes
            # it sends: some relays are dead, their nacks never come, and Lifeguard's local
            # health rightly stretches the survivor's timeouts (memberlist does the same).
            for target in self.open:
                self._excuse(target)

    def on_fault(
        self, sim: Simulation, fault: Fault | Reversal, targets: list[int], now: float
    ) -> None:
        underlying = fault.fault if isinstance(fault, Reversal) else fault
        if not isinstance(underlying, Crash | Restart | Leave):
            for target in self.open:
                self._excuse(target)

    def _excuse(self, target: int) -> None:
        if target not in self.excused:
            self.excused.add(target)
            self.unsettled += 1

    def on_node_up(self, sim: Simulation, index: int, now: float) -> None:
        self._close(sim, index, now)
        self._end_spread(index, now)

    def unknown_at(self, time: float) -> bool:
        """Whether some live node still held a crashed node live at ``time`` (so views
        could not agree before it declared the crash, whatever its side of a partition)."""
        return any(start <= time < end for start, end in self.known_intervals) or any(
            start <= time for start, _ in self.spreading.values()
        )

    def _unhold(self, target: int, holder: int, now: float) -> None:
        record = self.spreading.get(target)
        if record is not None:
            record[1].discard(holder)
            if not record[1]:
                self._end_spread(target, now)

    def _end_spread(self, target: int, now: float) -> None:
        record = self.spreading.pop(target, None)
        if record is not None:
            self.known_intervals.append((record[0], now))

    def on_effect(self, sim: Simulation, index: int, effect: Any, now: float) -> None:
        if type(effect) is not MemberChanged:
            return
        target = sim.index_of_id.get(effect.node_id)
        if target is not None and target in self.spreading and effect.state in GONE_STATES:
            self._unhold(target, index, now)
        record = self.open.get(target) if target is not None else None
        if record is None or index not in record[1] or effect.state not in GONE_STATES:
            return
        record[1].discard(index)
        if not record[1] and target in self.excused:
            self.unsettled_until = max(self.unsettled_until, now)
        delay = now - record[0]
        self.delays.append(delay)
        if delay > self.bound_s and target not in self.excused:
            self.violate(
                f"{sim.node_ids[index]} declared {effect.node_id} dead {delay:.3f}s after it "
                f"crashed at {record[0]:.3f}s; bound {self.bound_s:.3f}s"
            )

    def on_finish(self, sim: Simulation, now: float) -> None:
        if any(pending and target in self.excused for target, (_, pending) in self.open.items()):
            self.unsettled_until = math.inf
        for target in list(self.open):
            self._close(sim, target, now)
        if self.crashes == 0:
            self.skip_reason = "no node crashed in this run"
        elif self.unsettled == self.crashes:
            self.skip_reason = (
                "every crash hit an unsettled mesh (partition, link fault, slow node)"
            )

    def _close(self, sim: Simulation, target: int, now: float) -> None:
        record = self.open.pop(target, None)
        if record is None:
            return
        crashed_at, pending = record
        excused = target in self.excused
        self.excused.discard(target)
        if pending and now - crashed_at > self.bound_s and not excused:
            names = sorted(sim.node_ids[j] for j in pending)
            self.violate(
                f"{sim.node_ids[target]} crashed at {crashed_at:.3f}s and {len(names)} live "
                f"node(s) had not declared it dead {self.bound_s:.3f}s later: "
                f"{', '.join(names[:5])}"
            )

    def metrics(self) -> dict[str, Any]:
        ordered = sorted(self.delays)
        unsettled = {"detection_unsettled": self.unsettled}
        if not ordered:
            return {"detection_s": {"p50": None, "max": None, "count": 0}, **unsettled}
        return {
            "detection_s": {
                "p50": round(ordered[(len(ordered) - 1) // 2], 6),
                "max": round(ordered[-1], 6),
                "count": len(ordered),
            },
            **unsettled,
        }


class AccuracyChecker(Checker):
    """Invariant 7: live nodes are not declared dead. A declaration is *explained* (not
    false) when the target was down or cut off from the declarer within the last
    ``window_s``. Declarations of slow nodes are counted apart: Lifeguard's claim is about
    the healthy ones, which slow nodes must stop accusing."""

    invariant = "accuracy"
    effect_types = (MemberChanged,)

    def __init__(self, views: ViewTracker, window_s: float, max_false_deaths: int) -> None:
        super().__init__()
        self.views = views
        self.window_s = window_s
        self.max_false_deaths = max_false_deaths
        self.false_deaths = 0
        self.false_deaths_healthy = 0
        self.explained_deaths = 0
        self.suspicions = 0
        self.false_targets: set[int] = set()
        self.slow_until: dict[int, float] = {}

    def on_fault(
        self, sim: Simulation, fault: Fault | Reversal, targets: list[int], now: float
    ) -> None:
        if isinstance(fault, Slow):
            for index in targets:
                self.slow_until[index] = math.inf
        elif isinstance(fault, Reversal) and isinstance(fault.fault, Slow):
            for index in targets:
                self.slow_until[index] = now

    def on_effect(self, sim: Simulation, index: int, effect: Any, now: float) -> None:
        if type(effect) is not MemberChanged:
            return
        state = effect.state
        if state in LIVE_STATES:
            if state is SUSPECT:
                self.suspicions += 1
            return
        if state is not DEAD:
            return
        target = sim.index_of_id.get(effect.node_id)
        if target is None or not sim.up[target]:
            return
        if self.views.was_disturbed(index, target, now - self.window_s, now):
            self.explained_deaths += 1
            return
        self.false_deaths += 1
        self.false_targets.add(target)
        if self.slow_until.get(target, -math.inf) >= now - self.window_s:
            return
        self.false_deaths_healthy += 1
        if self.false_deaths_healthy > self.max_false_deaths:
            self.violate(
                f"at {now:.3f}s {sim.node_ids[index]} declared the live, healthy, reachable "
                f"{effect.node_id} dead (tolerated: {self.max_false_deaths})"
            )

    def metrics(self) -> dict[str, Any]:
        return {
            "suspicions": self.suspicions,
            "false_deaths": self.false_deaths,
            "false_deaths_healthy": self.false_deaths_healthy,
            "falsely_dead_nodes": len(self.false_targets),
            "explained_deaths": self.explained_deaths,
        }
