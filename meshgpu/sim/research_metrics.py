"""Measurements a paper needs beyond the invariants' own numbers (docs/research.md,
"The output"): message load per member and protocol period, the phases of crash
detection, dissemination, false suspicions and deaths split by healthy and slow targets,
how long each side of a partition takes to declare the other dead, and convergence after
every heal.

Each distribution is reported by :func:`distribution`: mean, p50, p90, p99, max, count
and the raw samples (the sweep's CSV keeps the numbers; the per-run JSON keeps the
samples). Like the checkers, everything is read from ``MemberChanged`` effects through the
:class:`meshgpu.sim.views.ViewTracker` (which runs first), never from node internals.

Definitions (the SWIM paper's, Das, Gupta and Motivala, DSN 2002, section 3.1):

* *first suspicion*: from a crash until the first live member suspects it, i.e. a probe
  of it failed: SWIM's "first detection", expected ``e/(e-1)`` protocol periods with
  uniformly random probe targets (sooner with round-robin targets);
* *first detection*: until the first member declares it dead (suspicion timeout added);
* *full detection*: until every member that held it live has declared it dead;
* *dissemination*: full minus first detection, the time the death verdict took to reach
  every member (SWIM: ``O(log n)`` protocol periods by infection-style gossip).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from meshgpu.core.effects import LeaderChanged, MemberChanged
from meshgpu.core.membership import DEAD, GONE_STATES, LIVE_STATES, SUSPECT, MemberState
from meshgpu.sim.faults import Partition, Reversal, Slow
from meshgpu.sim.observers import Observer
from meshgpu.sim.views import ViewTracker

if TYPE_CHECKING:
    from meshgpu.sim.faults import Fault
    from meshgpu.sim.runner import Simulation

HEAL_KINDS = frozenset({"heal", "restart"})


def distribution(samples: list[float], digits: int = 6) -> dict[str, Any]:
    """mean, p50, p90, p99 (nearest rank), max, count and the samples (in order)."""
    ordered = sorted(samples)
    if not ordered:
        return {
            "mean": None, "p50": None, "p90": None, "p99": None, "max": None,
            "count": 0, "samples": [],
        }  # fmt: skip

    def rank(fraction: float) -> float:
        return round(ordered[max(1, math.ceil(fraction * len(ordered))) - 1], digits)

    return {
        "mean": round(sum(ordered) / len(ordered), digits),
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "max": round(ordered[-1], digits),
        "count": len(ordered),
        "samples": [round(x, digits) for x in samples],
    }


class _Crash:
    __slots__ = ("at", "first_dead", "first_suspect", "full", "watchers")

    def __init__(self, at: float, watchers: set[int]) -> None:
        self.at = at
        self.watchers = watchers
        self.first_suspect: float | None = None
        self.first_dead: float | None = None
        self.full: float | None = None


class _Split:
    """One partition: per side, the (observer, target) cross pairs still believed live."""

    def __init__(self, at: float, sides: list[list[int]], pending: list[set[tuple[int, int]]]):
        self.at = at
        self.sides = sides
        self.pending = pending
        self.done: list[float | None] = [None] * len(sides)
        self.side_of = {index: number for number, side in enumerate(sides) for index in side}
        for number, pairs in enumerate(pending):
            if not pairs:
                self.done[number] = 0.0


class ResearchMetrics(Observer):
    """Message load, detection phases, dissemination, split accuracy, partition
    detection and per-heal convergence of one run."""

    name = "research"
    effect_types = (MemberChanged,)

    def __init__(self, views: ViewTracker, accuracy_window_s: float) -> None:
        self.views = views
        self.window_s = accuracy_window_s
        self.crashes: dict[int, _Crash] = {}
        self.closed: list[_Crash] = []
        self.slow_until: dict[int, float] = {}
        self.false_suspicions = {"healthy": 0, "slow": 0}
        self.false_deaths = {"healthy": 0, "slow": 0}
        self.splits: list[_Split] = []
        self.open_split: _Split | None = None
        self.heals: list[dict[str, Any]] = []
        self.open_heals: list[dict[str, Any]] = []
        # message load in the steady window: from the first agreement to the first fault
        self.window_start: tuple[float, int, int] | None = None
        self.window_end: tuple[float, int, int] | None = None
        self.member_seconds = 0.0
        self.period_s = 1.0
        self._up_count = 0
        self._last_change = 0.0

    # -- message load ------------------------------------------------------------------------

    def _snapshot(self, sim: Simulation, now: float) -> tuple[float, int, int]:
        return (now, sim.network.counters["sent"], sim.bytes_sent)

    def _account(self, now: float) -> None:
        if self.window_start is not None and self.window_end is None:
            self.member_seconds += self._up_count * (now - self._last_change)
        self._last_change = now

    def _maybe_open_window(self, sim: Simulation, now: float) -> None:
        if self.window_start is None and self.views.total_wrong == 0 and now > 0.0:
            self._account(now)
            self.window_start = self._snapshot(sim, now)

    def _close_window(self, sim: Simulation, now: float) -> None:
        if self.window_start is not None and self.window_end is None:
            self._account(now)
            self.window_end = self._snapshot(sim, now)

    # -- hooks -------------------------------------------------------------------------------

    def on_start(self, sim: Simulation) -> None:
        self.period_s = float(sim.config.probe_interval)

    def on_node_up(self, sim: Simulation, index: int, now: float) -> None:
        self._account(now)
        self._up_count += 1
        crash = self.crashes.pop(index, None)
        if crash is not None:
            self.closed.append(crash)

    def on_node_down(self, sim: Simulation, index: int, now: float, reason: str) -> None:
        self._close_window(sim, now)
        self._account(now)
        self._up_count -= 1
        for crash in self.crashes.values():
            crash.watchers.discard(index)
            self._check_full(crash, now)
        split = self.open_split
        if split is not None:
            for number, pairs in enumerate(split.pending):
                stale = {pair for pair in pairs if index in pair}
                if stale:
                    pairs -= stale
                    self._check_side(split, number, now)
        if reason != "crash":
            return
        group = sim.network.group_of
        watchers = {
            j
            for j in sim.up_indices()
            if group[j] == group[index] and self.views.believes_live(j, index)
        }
        crash = _Crash(now, watchers)
        self.crashes[index] = crash
        self._check_full(crash, now)

    def on_fault(
        self, sim: Simulation, fault: Fault | Reversal, targets: list[int], now: float
    ) -> None:
        self._close_window(sim, now)
        underlying = fault.fault if isinstance(fault, Reversal) else fault
        if isinstance(underlying, Slow):
            for index in targets:
                self.slow_until[index] = now if isinstance(fault, Reversal) else math.inf
        if isinstance(fault, Partition):
            self._start_split(sim, now)
        elif fault.kind == "heal" or (
            isinstance(fault, Reversal) and isinstance(fault.fault, Partition)
        ):
            self.open_split = None
        if isinstance(fault, Reversal):
            self._heal_event(sim, now, f"end of {fault.fault.kind}")
        elif fault.kind in HEAL_KINDS:
            self._heal_event(sim, now, fault.kind)

    def on_effect(self, sim: Simulation, index: int, effect: Any, now: float) -> None:
        if type(effect) is not MemberChanged:
            return
        target = sim.index_of_id.get(effect.node_id)
        if target is None or target == index:
            return
        state = effect.state
        crash = self.crashes.get(target)
        if crash is not None and index in crash.watchers:
            if state is SUSPECT and crash.first_suspect is None:
                crash.first_suspect = now
            elif state in GONE_STATES:
                if crash.first_suspect is None:
                    crash.first_suspect = now
                if crash.first_dead is None:
                    crash.first_dead = now
                crash.watchers.discard(index)
                self._check_full(crash, now)
        elif sim.up[target] and (state is SUSPECT or state is DEAD):
            self._false_verdict(index, target, state, now)
        split = self.open_split
        if split is not None:
            number = split.side_of.get(index)
            if number is not None and split.side_of.get(target) != number:
                pairs = split.pending[number]
                if state in LIVE_STATES:
                    if split.done[number] is None and target in split.side_of:
                        pairs.add((index, target))
                elif (index, target) in pairs:
                    pairs.discard((index, target))
                    self._check_side(split, number, now)
        if self.open_heals and self.views.total_wrong == 0:
            self._converged(now)
        self._maybe_open_window(sim, now)

    def on_finish(self, sim: Simulation, now: float) -> None:
        self._close_window(sim, now)
        self.closed.extend(self.crashes.values())
        self.crashes = {}

    # -- pieces ------------------------------------------------------------------------------

    def _check_full(self, crash: _Crash, now: float) -> None:
        if not crash.watchers and crash.full is None:
            crash.full = now

    def _false_verdict(self, index: int, target: int, state: MemberState, now: float) -> None:
        if self.views.was_disturbed(index, target, now - self.window_s, now):
            return
        slow = self.slow_until.get(target, -math.inf) >= now - self.window_s
        counts = self.false_suspicions if state is SUSPECT else self.false_deaths
        counts["slow" if slow else "healthy"] += 1

    def _start_split(self, sim: Simulation, now: float) -> None:
        group = sim.network.group_of
        members: dict[int, list[int]] = {}
        for index in sim.up_indices():
            members.setdefault(group[index], []).append(index)
        sides = [members[g] for g in sorted(members)]
        pending = []
        for side in sides:
            inside = set(side)
            pending.append(
                {(a, b) for a in side for b in self.views.live[a] if b not in inside and sim.up[b]}
            )
        self.open_split = split = _Split(now, sides, pending)
        self.splits.append(split)

    def _check_side(self, split: _Split, number: int, now: float) -> None:
        if not split.pending[number] and split.done[number] is None:
            split.done[number] = now - split.at

    def _heal_event(self, sim: Simulation, now: float, kind: str) -> None:
        entry: dict[str, Any] = {"after": kind, "at_s": round(now, 6), "convergence_s": None}
        self.heals.append(entry)
        self.open_heals.append(entry)
        if self.views.total_wrong == 0:
            self._converged(now)

    def _converged(self, now: float) -> None:
        for entry in self.open_heals:
            entry["convergence_s"] = round(now - entry["at_s"], 6)
        self.open_heals = []

    # -- report ------------------------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        crashes = sorted(self.closed, key=lambda c: c.at)
        period = self.period_s
        first_suspicion = [c.first_suspect - c.at for c in crashes if c.first_suspect is not None]
        first_detection = [c.first_dead - c.at for c in crashes if c.first_dead is not None]
        full = [c.full - c.at for c in crashes if c.full is not None and c.first_dead is not None]
        spread = [
            c.full - c.first_dead
            for c in crashes
            if c.full is not None and c.first_dead is not None
        ]
        load: dict[str, Any] = {"window_s": None, "per_member_per_period": None}
        if self.window_start is not None and self.window_end is not None:
            start, end = self.window_start, self.window_end
            periods = self.member_seconds / period
            load = {
                "window_s": round(end[0] - start[0], 6),
                "messages": end[1] - start[1],
                "bytes": end[2] - start[2],
                "per_member_per_period": round((end[1] - start[1]) / periods, 6)
                if periods
                else None,
                "bytes_per_member_per_period": round((end[2] - start[2]) / periods, 3)
                if periods
                else None,
            }
        heals = [h["convergence_s"] for h in self.heals if h["convergence_s"] is not None]
        split_sides = [d for split in self.splits for d in split.done]
        detected = [d for d in split_sides if d is not None]
        return {
            "message_load": load,
            "first_suspicion_s": distribution(first_suspicion),
            "first_suspicion_periods": distribution([x / period for x in first_suspicion], 4),
            "first_detection_s": distribution(first_detection),
            "full_detection_s": distribution(full),
            "dissemination_s": distribution(spread),
            "false_suspicions_healthy": self.false_suspicions["healthy"],
            "false_suspicions_slow": self.false_suspicions["slow"],
            "false_deaths_slow": self.false_deaths["slow"],
            "partition_detection": [
                {
                    "at_s": round(split.at, 6),
                    "sides": [
                        {"size": len(side), "declared_other_dead_s": _rounded(done)}
                        for side, done in zip(split.sides, split.done, strict=True)
                    ],
                }
                for split in self.splits
            ],
            "partition_detection_max_s": _rounded(max(detected))
            if split_sides and len(detected) == len(split_sides)
            else None,
            "convergence_after_heals": self.heals,
            "convergence_after_heal_max_s": max(heals) if heals else None,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


class BeliefTrace(Observer):
    """Writes every ``MemberChanged`` (as ``alive``, ``suspect``, ``dead`` or ``left``:
    ``n`` the observer, ``of`` the member, ``inc``) and ``LeaderChanged`` (``leader``:
    ``n``, ``view``, ``leader`` as an index or null) to the trace file, so an observer's
    view can be read instead of rebuilt. Only joins a run that writes a trace; the lines
    are outside ``trace_sha256`` (see :meth:`Simulation.trace_view`)."""

    name = "belief_trace"
    effect_types = (MemberChanged, LeaderChanged)

    def on_effect(self, sim: Simulation, index: int, effect: Any, now: float) -> None:
        if type(effect) is MemberChanged:
            sim.trace_view(
                effect.state.value,
                n=index,
                of=sim.index_of_id.get(effect.node_id),
                inc=effect.incarnation,
            )
        elif type(effect) is LeaderChanged:
            sim.trace_view("leader", n=index, view=effect.view, leader=sim.index_of(effect.leader))
