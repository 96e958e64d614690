"""Invariant checkers for design.md section 4, items 3-7 (item 10 is in
:mod:`meshgpu.sim.report`, which replays a run in a second process).

Each checker is a :class:`meshgpu.sim.observers.Observer` that reports
``invariants()`` (name -> ``"ok"`` or the first violation, with how many more there were)
and ``metrics()``. They read beliefs from the :class:`meshgpu.sim.views.ViewTracker`,
never from private node state, so they hold for any core that honours the Node contract.

Bounds come from the scenario's ``[invariants]`` table and the mesh config
(:func:`detection_bound`, :func:`convergence_bound`); docs/research.md explains them.
Checks that cannot be decided (the run ended before a bound elapsed) are reported in
``skipped()`` rather than as passes.
"""

from __future__ import annotations

import math
from array import array
from typing import TYPE_CHECKING, Any

from meshgpu.core.effects import LeaderChanged, MemberChanged
from meshgpu.core.membership import DEAD, GONE_STATES, LIVE_STATES, SUSPECT
from meshgpu.sim.faults import Crash, Leave, Restart, Reversal, Slow
from meshgpu.sim.observers import Observer
from meshgpu.sim.views import ViewTracker

if TYPE_CHECKING:
    from meshgpu.sim.faults import Fault
    from meshgpu.sim.runner import Simulation
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


class _Checker(Observer):
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


class NoRegressionChecker(_Checker):
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


class LeaderChecker(_Checker):
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


class ConvergenceChecker(_Checker):
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


class DetectionChecker(_Checker):
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


class AccuracyChecker(_Checker):
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


class EffectConsistencyChecker(_Checker):
    """Not in design.md, but the other checkers rest on it: at the end of the run every
    node's ``live_members()`` matches what its ``MemberChanged`` effects announced."""

    invariant = "effects_match_views"

    def __init__(self, views: ViewTracker) -> None:
        super().__init__()
        self.views = views

    def on_finish(self, sim: Simulation, now: float) -> None:
        for text in self.views.inconsistent:
            self.violate(text)


def default_checkers(scenario: Scenario, config: Any, views: ViewTracker) -> list[_Checker]:
    """The checkers a scenario's ``[invariants]`` table enables, wired to ``views``."""
    settings = scenario.invariants
    detection = detection_bound(scenario, config)
    convergence = convergence_bound(scenario, config)
    detection_checker = DetectionChecker(views, detection)
    checkers: list[_Checker] = [
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
