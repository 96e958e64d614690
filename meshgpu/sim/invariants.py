"""Invariant checkers for design.md section 4, items 3-7 (item 10 is in
:mod:`meshgpu.sim.report`, which replays a run in a second process).

Each checker is a :class:`meshgpu.sim.observers.Observer` that reports
``invariants()`` (name -> ``"ok"`` or the first violation, with how many more there were)
and ``metrics()``. They read beliefs from the :class:`meshgpu.sim.views.ViewTracker`,
never from private node state, so they hold for any core that honours the Node contract.

Here: invariant 3 (:class:`NoRegressionChecker`), the consistency of effects and views
the others rest on, and :func:`default_checkers`, which wires a scenario's set. The base
class and the bounds are in :mod:`meshgpu.sim.checker`, invariants 4 and 5 in
:mod:`meshgpu.sim.agreement_checks`, 6 and 7 in :mod:`meshgpu.sim.detection_checks`.
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING, Any

from meshgpu.core.effects import MemberChanged
from meshgpu.sim.agreement_checks import ConvergenceChecker, LeaderChecker
from meshgpu.sim.checker import (
    DETECTION_GOAL_S,
    HEALING_KINDS,
    Checker,
    convergence_bound,
    detection_bound,
)
from meshgpu.sim.detection_checks import AccuracyChecker, DetectionChecker
from meshgpu.sim.views import ViewTracker

if TYPE_CHECKING:
    from meshgpu.sim.runner import Simulation
    from meshgpu.sim.scenario import Scenario

__all__ = [
    "DETECTION_GOAL_S",
    "HEALING_KINDS",
    "AccuracyChecker",
    "Checker",
    "ConvergenceChecker",
    "DetectionChecker",
    "EffectConsistencyChecker",
    "LeaderChecker",
    "NoRegressionChecker",
    "convergence_bound",
    "default_checkers",
    "detection_bound",
]


class NoRegressionChecker(Checker):
    """Invariant 3: a node's own incarnation never decreases (across restarts too, when
    the incarnation is persisted), and no node sees another's incarnation decrease."""

    invariant = "no_regression"
    effect_types = (MemberChanged,)

    def on_start(self, sim: Simulation) -> None:
        n = sim.node_count
        self.seen = [array("q", [-1]) * n for _ in range(n)]
        self.own = [0] * n
        self.exempt = [False] * n

    def on_node_up(self, sim: Simulation, index: int, now: float) -> None:
        self.seen[index] = array("q", [-1]) * sim.node_count
        node = sim.nodes[index]
        assert node is not None
        if sim.reset_incarnation[index]:
            self.exempt[index] = True  # restarted without its persisted incarnation
        elif node.incarnation < self.own[index]:
            self.violate(
                f"{sim.node_ids[index]} restarted at {now:.3f}s with incarnation "
                f"{node.incarnation} below its persisted {self.own[index]}"
            )
        self.own[index] = node.incarnation

    def on_node_down(self, sim: Simulation, index: int, now: float, reason: str) -> None:
        self._check_own(sim, index, now)

    def on_effect(self, sim: Simulation, index: int, effect: Any, now: float) -> None:
        if type(effect) is not MemberChanged:
            return
        target = sim.index_of_id.get(effect.node_id)
        if target is None or self.exempt[target]:
            return
        row = self.seen[index]
        if effect.incarnation < row[target]:
            self.violate(
                f"at {now:.3f}s {sim.node_ids[index]} saw {effect.node_id}'s incarnation go "
                f"from {row[target]} down to {effect.incarnation} "
                f"(state {effect.state.value})"
            )
        row[target] = effect.incarnation

    def on_sample(self, sim: Simulation, now: float) -> None:
        own = self.own
        up = sim.up
        for index, node in enumerate(sim.nodes):
            if node is not None and up[index]:
                incarnation = node.incarnation
                if incarnation < own[index]:
                    self._check_own(sim, index, now)
                own[index] = incarnation

    def _check_own(self, sim: Simulation, index: int, now: float) -> None:
        node = sim.nodes[index]
        if node is None:
            return
        incarnation = node.incarnation
        if incarnation < self.own[index]:
            self.violate(
                f"at {now:.3f}s {sim.node_ids[index]}'s own incarnation went from "
                f"{self.own[index]} down to {incarnation}"
            )
        self.own[index] = incarnation


class EffectConsistencyChecker(Checker):
    """Not in design.md, but the other checkers rest on it: at the end of the run every
    node's ``live_members()`` matches what its ``MemberChanged`` effects announced."""

    invariant = "effects_match_views"

    def __init__(self, views: ViewTracker) -> None:
        super().__init__()
        self.views = views

    def on_finish(self, sim: Simulation, now: float) -> None:
        for text in self.views.inconsistent:
            self.violate(text)


def default_checkers(scenario: Scenario, config: Any, views: ViewTracker) -> list[Checker]:
    """The checkers a scenario's ``[invariants]`` table enables, wired to ``views``."""
    settings = scenario.invariants
    detection = detection_bound(scenario, config)
    convergence = convergence_bound(scenario, config)
    detection_checker = DetectionChecker(views, detection)
    checkers: list[Checker] = [
        EffectConsistencyChecker(views),
        NoRegressionChecker(),
        LeaderChecker(views, settings.quiet_periods * config.probe_interval),
        ConvergenceChecker(views, convergence, detection, detection_checker),
        detection_checker,
        AccuracyChecker(views, detection + convergence, settings.max_false_deaths),
    ]
    for checker in checkers:
        # a disabled invariant is still measured (its metrics are reported), not enforced
        checker.enforced = checker.invariant in settings.enabled or isinstance(
            checker, EffectConsistencyChecker
        )
    return checkers
