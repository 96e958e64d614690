"""What every invariant checker shares: the :class:`Checker` base (first violation,
count, skipped or disabled) and the bounds the checkers hold a run to.

Bounds come from the scenario's ``[invariants]`` table and the mesh config
(:func:`detection_bound`, :func:`convergence_bound`); docs/research.md explains them.
Checks that cannot be decided (the run ended before a bound elapsed) are reported in
``skipped()`` rather than as passes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from meshgpu.sim.observers import Observer

if TYPE_CHECKING:
    from meshgpu.sim.scenario import Scenario

HEALING_KINDS = frozenset({"start", "restart", "heal", "crash", "leave"})
"""Last disturbances after which views must agree (a crash or leave: once detected)."""
DETECTION_GOAL_S = 2.0


def detection_bound(scenario: Scenario, config: Any) -> float:
    """Invariant 6's bound: the scenario's, else the design's 2 s goal, or the config's
    worst case for an unconfirmed suspicion (3 probe periods + the longest suspicion
    timeout) when that is larger."""
    if scenario.invariants.detection_bound_s is not None:
        return scenario.invariants.detection_bound_s
    worst = 3 * config.probe_interval + config.suspicion_max(scenario.nodes)
    return max(DETECTION_GOAL_S, float(worst))


def convergence_bound(scenario: Scenario, config: Any) -> float:
    """Invariant 5's bound: ``c * ln(n)`` protocol periods (at least one period)."""
    periods = scenario.invariants.convergence_c * math.log(max(2, scenario.nodes))
    return max(1.0, periods) * float(config.probe_interval)


class Checker(Observer):
    """Bookkeeping shared by the checkers: first violation text and a count."""

    invariant = "invariant"

    def __init__(self) -> None:
        self.first_violation: str | None = None
        self.violation_count = 0
        self.skip_reason: str | None = None
        self.enforced = True

    def violate(self, text: str) -> None:
        self.violation_count += 1
        if self.first_violation is None:
            self.first_violation = text

    def invariants(self) -> dict[str, str]:
        if not self.enforced:
            return {}
        if self.first_violation is None:
            return {} if self.skip_reason else {self.invariant: "ok"}
        more = self.violation_count - 1
        return {self.invariant: self.first_violation + (f" (and {more} more)" if more else "")}

    def skipped(self) -> dict[str, str]:
        """Invariants not decided in this run, with the reason."""
        if not self.enforced:
            return {self.invariant: "disabled in the scenario's [invariants] table"}
        if self.skip_reason and not self.first_violation:
            return {self.invariant: self.skip_reason}
        return {}
