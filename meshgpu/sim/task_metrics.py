"""Task-queue invariants (design.md section 4, items 1, 2, 3 for tasks, 8 and 9) and the
``tasks`` section of ``meshgpu simulate --json``.

* ``task_no_loss`` (1): every acknowledged task was resolved to its client (DONE or FAILED
  with a reason) by the end of the run, unless none of its holders survived with its data
  (those are counted as ``lost_exempt``, not as violations).
* ``task_exactly_once_delivery`` (2): no client received an outcome for a task id twice.
* ``task_no_regression`` (3, for tasks): within one life of a node, an entry's state never
  moves down its lattice, and a collected id never reappears.
* ``task_no_duplicate_execution`` (8): in a run with no faults and no packet loss, every
  task ran to completion at most once (skipped otherwise: execution is at-least-once).
* ``task_priority`` (9): a leader never assigned a task to a worker that could have run a
  higher-priority task that was already waiting in that leader's queue.
* ``task_balance`` (9, when ``balance_tolerance`` is set): completed tasks per worker within
  that fraction of the mean.
* ``task_no_started_steal`` (with work stealing on): no run that was on a device was taken
  away by a steal (core/tasks/stealing.py).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from meshgpu.core.effects import RunTask
from meshgpu.core.tasks import DeviceRequirements, TaskId
from meshgpu.core.tasks.leading import AssignmentRecord
from meshgpu.core.tasks.state import OrderKey
from meshgpu.sim.devices import DeviceClass
from meshgpu.sim.faults import Crash

if TYPE_CHECKING:
    from meshgpu.sim.task_driver import TaskDriver


MESSAGE_COUNTERS = ("task_datagrams_sent", "task_bytes_sent")
"""Node counters summed over every life for ``messages_per_task``."""

STEAL_COUNTERS = ("steals_requested", "tasks_stolen", "steals_refused", "task_starts_superseded")
"""Node counters summed over every life for the ``stealing`` figures (work stealing on)."""

REGRESSION_CHECK_INTERVAL_S = 1.0
"""How often (virtual seconds) every node's table is compared with what it held before."""


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def _capable(device: DeviceClass, requirements: DeviceRequirements) -> bool:
    if requirements.device_type is not None and requirements.device_type not in device.device_types:
        return False
    if requirements.min_memory and device.memory_total < requirements.min_memory:
        return False
    return not (requirements.fp16 and not device.fp16)


class TaskMetrics:
    """Collects what the task invariants and metrics need, for one :class:`TaskDriver`."""

    def __init__(self, driver: TaskDriver) -> None:
        self.driver = driver
        self.violations: dict[str, str] = {}
        self.seen: dict[tuple[int, int], dict[TaskId, OrderKey]] = {}
        self.logs: list[tuple[int, list[AssignmentRecord]]] = []
        self.leader_crashes: list[list[float | None]] = []
        self.worker_counts: dict[int, int] = {}
        self.fault_free = True
        self.node_count = 0
        self.result: dict[str, Any] = {}
        self.message_totals = dict.fromkeys(MESSAGE_COUNTERS, 0)
        self.steal_totals = dict.fromkeys(STEAL_COUNTERS, 0)
        self._next_check = 0.0

    # --- hooks (called by the driver) ---------------------------------------------------

    def on_start(self, sim: Any) -> None:
        self.node_count = sim.node_count
        network = sim.scenario.network
        self.fault_free = not sim.scenario.faults and not getattr(network, "loss", 0.0)

    def on_fault(self, sim: Any, fault: Any, targets: list[int], now: float) -> None:
        if isinstance(fault, Crash):
            leader = sim.majority_leader()
            if leader is not None and leader in targets:
                views = [sim.nodes[i].view for i in sim.up_indices()]
                self.leader_crashes.append([now, float(max(views, default=0)), None])

    def on_node_down(self, sim: Any, index: int, now: float, reason: str) -> None:
        node = sim.nodes[index]
        if node is not None:
            # The runner has already counted the next life: check the one that just ended.
            self._check_regression(sim, index, sim.lives[index] - 1)
            self.logs.append((index, list(node.tasks.assignment_log)))
            self._add_messages(node)

    def _add_messages(self, node: Any) -> None:
        for name in MESSAGE_COUNTERS:
            self.message_totals[name] += node.counters.get(name, 0)
        for name in STEAL_COUNTERS:
            self.steal_totals[name] += node.counters.get(name, 0)

    def on_effect(self, sim: Any, index: int, effect: Any, now: float) -> None:
        if type(effect) is not RunTask:
            return
        self.worker_counts[index] = self.worker_counts.get(index, 0) + 1
        for crash in self.leader_crashes:
            if crash[2] is None and crash[0] is not None and now >= crash[0]:
                entry = sim.nodes[index].tasks.table.get(effect.task_id)
                if entry is not None and entry.state.view > (crash[1] or 0):
                    crash[2] = now

    def on_sample(self, sim: Any, now: float) -> None:
        if now < self._next_check:
            return
        self._next_check = now + REGRESSION_CHECK_INTERVAL_S
        for index in sim.up_indices():
            self._check_regression(sim, index)

    def _check_regression(self, sim: Any, index: int, life: int | None = None) -> None:
        if "task_no_regression" in self.violations:
            return
        tasks = sim.nodes[index].tasks
        seen = self.seen.setdefault((index, sim.lives[index] if life is None else life), {})
        for entry in tasks.table:
            key = entry.state.order_key
            previous = seen.get(entry.task_id)
            if entry.task_id in tasks.table.collected:
                self.violations["task_no_regression"] = (
                    f"node {index}: collected task {entry.task_id} reappeared at {sim.now:.3f}s"
                )
                return
            if previous is not None and key < previous:
                self.violations["task_no_regression"] = (
                    f"node {index}: task {entry.task_id} moved down to {entry.state} at "
                    f"{sim.now:.3f}s"
                )
                return
            seen[entry.task_id] = key

    def on_finish(self, sim: Any, now: float) -> None:
        for index in sim.up_indices():
            self._check_regression(sim, index)
            self.logs.append((index, list(sim.nodes[index].tasks.assignment_log)))
            self._add_messages(sim.nodes[index])
        self._check_priority()
        self.result = self._summarise(sim, now)

    # --- checks ---------------------------------------------------------------------------

    def _check_priority(self) -> None:
        layout = self.driver.settings.layout
        for leader, log in self.logs:
            # Walk backwards keeping, per priority and requirement, the earliest ready time
            # of a task assigned later by this leader.
            earliest: dict[tuple[int, DeviceRequirements], AssignmentRecord] = {}
            for record in reversed(log):
                for (priority, requirements), later in earliest.items():
                    if (
                        priority > record.priority
                        and later.ready_since < record.time
                        and later.time > record.time
                        and _capable(layout[self._index(record.worker)], requirements)
                    ):
                        self.violations.setdefault(
                            "task_priority",
                            f"leader {leader} assigned {record.task_id} (priority "
                            f"{record.priority.name}) to {record.worker} at {record.time:.3f}s "
                            f"while {later.task_id} (priority {later.priority.name}) waited "
                            f"since {later.ready_since:.3f}s",
                        )
                key = (int(record.priority), record.requirements)
                known = earliest.get(key)
                if known is None or record.ready_since <= known.ready_since:
                    earliest[key] = record

    def _index(self, node_id: str) -> int:
        return int(node_id.rsplit("-", 1)[1])

    def _summarise(self, sim: Any, now: float) -> dict[str, Any]:
        driver = self.driver
        subs = driver.submissions
        acked = [s for s in subs if s.acked_at is not None]
        delivered = [s for s in acked if s.delivered_at is not None]
        lost: list[str] = []
        exempt = 0
        for sub in acked:
            if sub.delivered_at is not None or sub.task_id is None:
                continue
            digest = sub.stored_digest or sub.spec.input_digest
            if self._a_holder_survives(sim, sub.task_id, digest, sub.entry):
                lost.append(str(sub.task_id))
            else:
                exempt += 1
        duplicates = sum(max(0, s.deliveries - 1) for s in subs)
        if lost:
            self.violations.setdefault(
                "task_no_loss", f"{len(lost)} acknowledged task(s) never resolved, e.g. {lost[:3]}"
            )
        if duplicates:
            self.violations.setdefault(
                "task_exactly_once_delivery", f"{duplicates} duplicate deliveries to clients"
            )
        duplicate_executions = sum(max(0, c - 1) for c in driver.executions.values())
        if self.fault_free and duplicate_executions:
            self.violations.setdefault(
                "task_no_duplicate_execution",
                f"{duplicate_executions} duplicate executions in a fault-free run",
            )
        latencies = [
            s.delivered_at - s.submitted_at
            for s in delivered
            if s.outcome == "done" and s.delivered_at is not None
        ]
        slots = [d.slots for d in driver.settings.layout]
        counts = [driver.executions_by_worker.get(i, 0) for i in range(self.node_count)]
        mean = sum(counts) / len(counts) if counts else 0.0
        spread = (max(counts) - min(counts)) / mean if mean else 0.0
        tolerance = driver.settings.balance_tolerance
        if tolerance is not None and spread > tolerance:
            self.violations.setdefault(
                "task_balance", f"per-worker counts {counts} spread {spread:.1%} > {tolerance:.0%}"
            )
        failovers = [
            c[2] - c[0] for c in self.leader_crashes if c[2] is not None and c[0] is not None
        ]

        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        datagrams = self.message_totals["task_datagrams_sent"]
        sent_bytes = self.message_totals["task_bytes_sent"]

        busy = [driver.busy_s[i] / (slots[i] * now) for i in range(self.node_count) if slots[i]]
        if driver.report_starts and driver.started_runs_stolen:
            self.violations.setdefault(
                "task_no_started_steal",
                f"{driver.started_runs_stolen} run(s) on a device were taken away by a steal",
            )
        batching: dict[str, Any] = {}
        if driver.settings.max_batch > 1 or driver.settings.coalesce:
            # Device runs vs the tasks they ran (Triton's exec count vs inference count),
            # and the submissions the entry nodes coalesced into task groups.
            batching["batching"] = {
                "max_batch": driver.settings.max_batch,
                "device_runs": driver.device_runs,
                "average_batch": round(driver.batched_tasks / driver.device_runs, 3)
                if driver.device_runs
                else None,
                "coalesced": driver.coalesced,
                "groups": driver.groups,
                "table_entries": len(subs) - driver.coalesced + driver.groups,
            }
        summary = {
            **batching,
            "strategy": sim.config.tasks.strategy,
            "submitted": len(subs),
            "acknowledged": len(acked),
            "acknowledged_short": sum(
                1 for s in acked if s.copies is not None and s.copies < s.spec.replicas
            ),
            "unacknowledged": len(subs) - len(acked),
            "done": sum(1 for s in delivered if s.outcome == "done"),
            "failed": sum(1 for s in delivered if s.outcome == "failed"),
            "failed_reasons": _reasons(delivered),
            "lost": len(lost),
            "lost_exempt": exempt,
            "duplicate_deliveries": duplicates,
            "executions": sum(driver.executions.values()),
            "duplicate_executions": duplicate_executions,
            "latency_p50_s": rounded(percentile(latencies, 0.50)),
            "latency_p99_s": rounded(percentile(latencies, 0.99)),
            "latency_mean_s": rounded(sum(latencies) / len(latencies)) if latencies else None,
            "utilisation": {
                sim.node_ids[i]: round(driver.busy_s[i] / (slots[i] * now), 4) if slots[i] else 0.0
                for i in range(self.node_count)
            },
            "utilisation_mean": round(sum(busy) / len(busy), 4) if busy else None,
            "utilisation_max": round(max(busy), 4) if busy else None,
            "utilisation_min": round(min(busy), 4) if busy else None,
            "per_worker_tasks": {sim.node_ids[i]: counts[i] for i in range(self.node_count)},
            "balance_spread": round(spread, 4),
            "failover_s": rounded(max(failovers)) if failovers else None,
            "failovers_s": [round(f, 4) for f in failovers],
            "leader_crashes": len(self.leader_crashes),
            "task_datagrams": datagrams,
            "task_bytes": sent_bytes,
            # Task-protocol datagrams (and their bytes, piggybacked gossip included) sent
            # by every node, per submitted task: what each task costs the mesh on the wire.
            "messages_per_task": {
                "datagrams": round(datagrams / len(subs), 2) if subs else None,
                "bytes": round(sent_bytes / len(subs)) if subs else None,
            },
        }
        if driver.report_starts:
            summary["stealing"] = {
                **self.steal_totals,
                "started_runs_stolen": driver.started_runs_stolen,
            }
        return summary

    def _a_holder_survives(self, sim: Any, task_id: TaskId, digest: str, entry: int) -> bool:
        holders: set[int] = {entry}
        for index in sim.up_indices():
            known = sim.nodes[index].tasks.table.get(task_id)
            if known is not None:
                holders.update(i for i in (sim.index_of(h) for h in known.holders) if i is not None)
        return any(sim.up[h] and digest in self.driver.disks[h].payloads for h in holders)

    # --- results --------------------------------------------------------------------------

    def invariants(self) -> dict[str, str]:
        names = [
            "task_no_loss",
            "task_exactly_once_delivery",
            "task_no_regression",
            "task_priority",
        ]
        if self.fault_free:
            names.append("task_no_duplicate_execution")
        if self.driver.settings.balance_tolerance is not None:
            names.append("task_balance")
        if self.driver.report_starts:
            names.append("task_no_started_steal")
        return {name: self.violations.get(name, "ok") for name in names}

    def skipped(self) -> dict[str, str]:
        if self.fault_free:
            return {}
        return {"task_no_duplicate_execution": "the run has faults: execution is at-least-once"}

    def metrics(self) -> dict[str, Any]:
        return {"tasks": self.result}


def _reasons(delivered: list[Any]) -> dict[str, int]:
    reasons: dict[str, int] = {}
    for sub in delivered:
        if sub.outcome == "failed":
            key = sub.reason.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
    return dict(sorted(reasons.items()))
