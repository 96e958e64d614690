"""The simulator's task driver: clients, the data plane, device execution and journals.

This is the simulated counterpart of what the daemon does around the core's task effects
(docs/task-queue.md section 2), built as an :class:`~meshgpu.sim.observers.Observer` that
joins a run through the scenario's ``[tasks]`` table:

* **clients** submit the workload (:mod:`meshgpu.sim.workload`) to a random live node,
  receive ``TaskAccepted`` / ``TaskResolved``, confirm receipt (``ResultCollected``) and,
  when their entry node dies, reconnect to another live node after ``reconnect_s`` and ask
  for their results by id (``ResultRequested``);
* **data plane**: ``FetchPayload`` and the input/result transfers of ``RunTask`` take
  ``data_latency_s + bytes / bandwidth_bps`` and fail if no listed node is up, connected and
  holding the bytes (a partition cuts the data plane too);
* **devices**: a ``RunTask`` occupies one of the worker's slots for a service time drawn
  from its device profile (:mod:`meshgpu.sim.devices`), plus a one-off model fetch;
* **journal and payload store** per node: ``Persist`` records and stored inputs survive a
  crash; a restart with ``keep_incarnation = false`` models a wiped data dir (both lost);
* **dynamic batching** (``batching = { max_batch = N, max_delay_ms = F }``): a worker
  whose slot frees starts the waiting tasks of one model together, up to N, by the core's
  rules (:mod:`meshgpu.core.batching`, as the daemon's worker; with a delay the run that
  has the slot first waits up to F ms for more while fewer than N wait), as one run of the device's
  batch service time (devices.py); a bad input among them fails alone (as the daemon's
  worker re-runs a failed batch member by member; that re-run's cost is not modelled);
* **coalescing** (``coalesce = true``): while a submission of a lane (entry node and
  :func:`~meshgpu.core.coalescing.lane_of` its spec) waits for its acknowledgement, later
  ones of that lane wait at the entry and go as one task group (``TaskSpec.members``)
  once it is acknowledged, by the core's rules that the daemon's entry node follows too
  (:mod:`meshgpu.core.coalescing`); each member is a submission of
  its own (own latency, own outcome, delivered once); a group runs as a batch when
  batching is on, else member after member.

Checks and metrics live in :mod:`meshgpu.sim.task_metrics`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from meshgpu.core.batching import delay_left, pick_batch
from meshgpu.core.catalog import MAX_BATCH_SIZE, MAX_DELAY_US, Batching
from meshgpu.core.coalescing import Lane, Lanes, Wait, lane_of
from meshgpu.core.effects import (
    CancelTask,
    DropPayload,
    FetchPayload,
    Persist,
    RunTask,
    TaskAccepted,
    TaskRejected,
    TaskResolved,
)
from meshgpu.core.events import (
    JournalReplayed,
    LoadChanged,
    PayloadFetchFailed,
    PayloadStored,
    ResultCollected,
    ResultRequested,
    SubmitTask,
    TaskFinished,
    TaskStarted,
)
from meshgpu.core.tasks import TaskId, TaskRecord, TaskSpec
from meshgpu.core.tasks.config import TaskConfig
from meshgpu.core.tasks.state import is_steal
from meshgpu.errors import ConfigError
from meshgpu.sim.devices import DeviceClass, device_classes, lab_layout
from meshgpu.sim.faults import Crash, Restart, Reversal
from meshgpu.sim.observers import Observer
from meshgpu.sim.task_metrics import TaskMetrics
from meshgpu.sim.workload import Workload, config_int, config_number

CONFIRM_WINDOW_S = 1.0
"""A client whose entry node dies within this long after it received an outcome confirms
again through another node (its first confirmation may have died with the node)."""

DRIVER_KEYS = {
    "workload",
    "lab",
    "profiles",
    "strategy",
    "config",
    "data_latency_s",
    "bandwidth_bps",
    "model_fetch_s",
    "reconnect_s",
    "client_rtt_s",
    "balance_tolerance",
    "batching",
    "coalesce",
    "prefetch_per_slot",
}


@dataclass(frozen=True, slots=True)
class TaskSimSettings:
    """The ``[tasks]`` table of a scenario."""

    workload: Workload
    layout: tuple[DeviceClass, ...]
    task_config: Mapping[str, object]
    data_latency_s: float = 0.002
    bandwidth_bps: float = 1e9
    model_fetch_s: float = 0.5
    reconnect_s: float = 1.0
    client_rtt_s: float = 0.001
    balance_tolerance: float | None = None
    max_batch: int = 1
    """Most tasks of one model a worker runs as one batch (1: no batching)."""
    max_delay_s: float = 0.0
    """Longest a run that has a slot waits for more tasks of its model before it gathers
    its batch (``batching = { max_delay_ms = F }``; 0: never waits)."""
    coalesce: bool = False
    """Entry nodes coalesce concurrent submissions of one lane into task groups."""
    prefetch_per_slot: int = 0
    """Tasks a node accepts beyond its device slots (they wait for a slot on the node, as
    the daemon's prefetch queue does: ``daemon/execution.py``'s ``PREFETCH_PER_SLOT``);
    0 offers the device slots only."""

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], node_count: int) -> TaskSimSettings:
        where = "[tasks]"
        unknown = sorted(set(table) - DRIVER_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(DRIVER_KEYS)}")
        workload = Workload.from_mapping(table.get("workload", {}), f"{where}.workload")
        classes = device_classes(table.get("profiles", {}), where)
        layout = lab_layout(table.get("lab", {}), node_count, classes, where)
        config = dict(table.get("config", {}))
        if "strategy" in table:
            config["strategy"] = table["strategy"]
        TaskConfig.from_mapping(config)  # validate now, with a clear error
        numbers = {
            key: config_number(table[key], f"{where}.{key}")
            for key in ("data_latency_s", "bandwidth_bps", "model_fetch_s", "reconnect_s",
                        "client_rtt_s", "balance_tolerance")
            if key in table
        }  # fmt: skip
        prefetch = config_int(table.get("prefetch_per_slot", 0), f"{where}.prefetch_per_slot")
        if prefetch < 0:
            raise ConfigError(f"{where}.prefetch_per_slot must be >= 0, got {prefetch}")
        batching = table.get("batching", {})
        if not isinstance(batching, Mapping) or set(batching) - {"max_batch", "max_delay_ms"}:
            raise ConfigError(f"{where}.batching is a table of max_batch and max_delay_ms")
        max_batch = config_int(batching.get("max_batch", 1), f"{where}.batching.max_batch")
        if not 1 <= max_batch <= MAX_BATCH_SIZE:
            raise ConfigError(f"{where}.batching.max_batch must be 1 to {MAX_BATCH_SIZE}")
        delay_ms = config_number(batching.get("max_delay_ms", 0), f"{where}.batching.max_delay_ms")
        if not 0 <= delay_ms * 1000 <= MAX_DELAY_US:
            raise ConfigError(f"{where}.batching.max_delay_ms must be 0 to {MAX_DELAY_US // 1000}")
        coalesce = table.get("coalesce", False)
        if not isinstance(coalesce, bool):
            raise ConfigError(f"{where}.coalesce must be true or false")
        return cls(
            workload,
            tuple(layout),
            config,
            **numbers,
            max_batch=max_batch,
            max_delay_s=delay_ms / 1000,
            coalesce=coalesce,
            prefetch_per_slot=prefetch,
        )


@dataclass(slots=True)
class Submission:
    """One client submission and everything the client saw of it."""

    number: int
    spec: TaskSpec
    bad: bool
    submitted_at: float
    entry: int
    client_ref: str
    attached: int | None = None
    task_id: TaskId | None = None
    acked_at: float | None = None
    copies: int | None = None
    rejected: str | None = None
    outcome: str | None = None
    reason: str = ""
    delivered_at: float | None = None
    deliveries: int = 0
    group: list[Submission] | None = None
    """The members of the coalesced group this submission went in (None: alone)."""
    stored_digest: str | None = None
    """The digest its holders store (its group's inputs when coalesced)."""


@dataclass(slots=True)
class Job:
    """One execution on a simulated device."""

    task_id: TaskId
    attempt: int
    spec: TaskSpec
    holders: tuple[int, ...]
    worker: int
    life: int
    started: bool = False
    cancelled: bool = False
    finished: bool = False
    batch: int | None = None
    """The device run it shares with other jobs (dynamic batching); None: its own."""


@dataclass(slots=True)
class NodeDisk:
    """What survives a crash of one node: its task journal and its payload store."""

    journal: dict[TaskId, TaskRecord] = field(default_factory=dict)
    payloads: set[str] = field(default_factory=set)


class TaskDriver(Observer):
    """Drives the task queue of every simulated node (see the module docstring)."""

    name = "tasks"

    def __init__(self, settings: TaskSimSettings) -> None:
        self.settings = settings
        self.metrics_observer = TaskMetrics(self)
        self.submissions: list[Submission] = []
        self.by_ref: dict[str, Submission] = {}
        self.by_task: dict[TaskId, Submission] = {}
        self.digest_model: dict[str, str] = {}
        self.bad_digests: set[str] = set()
        self.disks: list[NodeDisk] = []
        self.models: list[set[str]] = []
        self.running: list[list[Job]] = []
        self.waiting: list[list[Job]] = []
        self.gathering: list[list[Job]] = []
        """Per node: runs that hold a slot while they wait (``max_delay``) for more of
        their model before they gather their batch."""
        self.keep_state: dict[int, bool] = {}
        self.executions: dict[TaskId, int] = {}
        self.executions_by_worker: dict[int, int] = {}
        self.busy_s: list[float] = []
        self.lanes: Lanes[tuple[int, Lane], Submission] = Lanes()
        """Coalescing: the lanes of every entry node, keyed (entry, lane)."""
        self.lane_refs: dict[str, tuple[int, Lane]] = {}
        """Client ref of an entry in flight -> its lane."""
        self.group_refs: dict[str, list[Submission]] = {}
        self.group_subs: dict[TaskId, list[Submission]] = {}
        self.device_runs = 0
        self.batched_tasks = 0
        self.coalesced = 0
        self.groups = 0
        self._batches = 0
        self.report_starts = False
        """Feed ``TaskStarted`` when a run takes a slot (only with work stealing on: the
        reference traces of the scenarios without it predate the event)."""
        self.started_runs_stolen = 0
        """Runs already on a device that a steal took away (must stay 0)."""

    # --- set-up -------------------------------------------------------------------------

    def on_start(self, sim: Any) -> None:
        self._sim = sim
        n = sim.node_count
        self.disks = [NodeDisk() for _ in range(n)]
        self.models = [set() for _ in range(n)]
        self.running = [[] for _ in range(n)]
        self.waiting = [[] for _ in range(n)]
        self.gathering = [[] for _ in range(n)]
        self._batching = Batching(self.settings.max_batch, round(self.settings.max_delay_s * 1e6))
        self.busy_s = [0.0] * n
        self._service_rng: random.Random = sim.random_stream("task-service")
        self._entry_rng: random.Random = sim.random_stream("task-entry")
        spec_rng: random.Random = sim.random_stream("task-specs")
        times = self.settings.workload.arrival_times(
            sim.scenario.duration_s, sim.random_stream("task-arrivals")
        )
        self._install_node_factory(sim)
        for number, at in enumerate(times):
            spec, bad = self.settings.workload.make_spec(number, spec_rng)
            sim.call_at(
                at, lambda s, number=number, spec=spec, bad=bad: self._submit(s, number, spec, bad)
            )
        self.metrics_observer.on_start(sim)

    def _install_node_factory(self, sim: Any) -> None:
        """Nodes get the scenario's task settings (strategy, timeouts) in their config."""
        from meshgpu.sim.nodes import core_node

        base = sim.config
        merged = {**_task_config_mapping(base.tasks), **self.settings.task_config}
        config = replace(base, tasks=TaskConfig.from_mapping(merged))
        sim.config = config
        self.report_starts = config.tasks.work_stealing

        def build(node_id: str, address: Any, rng: Any, now: float, incarnation: int) -> Any:
            return core_node(node_id, address, config, rng, now, incarnation)

        sim.node_factory = build

    def on_node_up(self, sim: Any, index: int, now: float) -> None:
        life = sim.lives[index]
        # Decided after on_fault has told us whether this restart keeps the data dir.
        sim.call_at(now, lambda s: self._boot(s, index, life))

    def on_fault(self, sim: Any, fault: Any, targets: list[int], now: float) -> None:
        if isinstance(fault, Restart):
            for index in targets:
                self.keep_state[index] = fault.keep_incarnation
        elif isinstance(fault, Reversal) and isinstance(fault.fault, Crash):
            for index in targets:
                self.keep_state[index] = fault.fault.keep_incarnation
        self.metrics_observer.on_fault(sim, fault, targets, now)

    def _boot(self, sim: Any, index: int, life: int) -> None:
        if not sim.up[index] or sim.lives[index] != life:
            return
        disk = self.disks[index]
        if not self.keep_state.pop(index, True):
            disk.journal.clear()
            disk.payloads.clear()
            self.models[index].clear()
        now = sim.now
        sim.inject(index, JournalReplayed(tuple(disk.journal.values())), now)
        device = self.settings.layout[index]
        sim.inject(index, LoadChanged(device.load_vector(self.settings.prefetch_per_slot)), now)

    def on_node_down(self, sim: Any, index: int, now: float, reason: str) -> None:
        # Its waiting submissions and entries in flight died with the entry node.
        self.lanes.forget(lambda lane: lane[0] == index)
        for ref in [ref for ref, lane in self.lane_refs.items() if lane[0] == index]:
            del self.lane_refs[ref]
        for job in self.running[index] + self.waiting[index] + self.gathering[index]:
            job.cancelled = True
        self.running[index] = []
        self.waiting[index] = []
        self.gathering[index] = []
        for sub in self.submissions:
            recent = sub.delivered_at is None or now - sub.delivered_at < CONFIRM_WINDOW_S
            if sub.attached == index and recent:
                sub.attached = None
                if sub.task_id is not None:
                    sim.call_at(
                        now + self.settings.reconnect_s, lambda s, sub=sub: self._reconnect(s, sub)
                    )
        self.metrics_observer.on_node_down(sim, index, now, reason)

    # --- clients --------------------------------------------------------------------------

    def _submit(self, sim: Any, number: int, spec: TaskSpec, bad: bool) -> None:
        up = sim.up_indices()
        if not up:
            return
        entry = self._entry_rng.choice(up)
        sub = Submission(number, spec, bad, sim.now, entry, f"client-{number}", attached=entry)
        self.submissions.append(sub)
        self.by_ref[sub.client_ref] = sub
        self.digest_model[spec.input_digest] = spec.model_digest
        if bad:
            self.bad_digests.add(spec.input_digest)
        self.disks[entry].payloads.add(spec.input_digest)  # the upload precedes SubmitTask
        if self.settings.coalesce:
            lane = (entry, lane_of(spec))
            arrival = self.lanes.arrive(lane, sub)
            if isinstance(arrival, Wait):
                self._send_lane(sim, lane, arrival.send)  # waits behind what is in flight
                return
            self.lane_refs[sub.client_ref] = lane
        sim.inject(entry, SubmitTask(sub.client_ref, spec), sim.now)

    def _flush_lane(self, sim: Any, client_ref: str) -> None:
        """The lane's submission (or group) ``client_ref`` in flight was answered: send
        what the core's lanes say waits behind it, alone or as one group."""
        lane = self.lane_refs.pop(client_ref, None)
        if lane is not None:
            self._send_lane(sim, lane, self.lanes.answered(lane))

    def _send_lane(self, sim: Any, lane: tuple[int, Lane], waiting: tuple[Submission, ...]) -> None:
        """Submit ``waiting`` (what the lanes named; maybe none) as one table entry."""
        if not waiting:
            return
        entry = lane[0]
        if len(waiting) == 1:
            only = waiting[0]
            self.lane_refs[only.client_ref] = lane
            sim.inject(entry, SubmitTask(only.client_ref, only.spec), sim.now)
            return
        members = list(waiting)
        ref = f"group-{members[0].number}"
        digest = hashlib.sha256(ref.encode()).hexdigest()
        group_spec = replace(members[0].spec, input_digest=digest, members=len(members))
        for member in members:
            member.group = members
            member.stored_digest = digest
        self.group_refs[ref] = members
        self.digest_model[digest] = lane[1].model_digest
        self.disks[entry].payloads.add(digest)
        self.lane_refs[ref] = lane
        self.groups += 1
        self.coalesced += len(members)
        sim.inject(entry, SubmitTask(ref, group_spec), sim.now)

    def _reconnect(self, sim: Any, sub: Submission) -> None:
        if sub.attached is not None or sub.task_id is None:
            return
        if sub.delivered_at is not None:
            # Received, but the confirmation may have died with the entry node: confirm
            # again through another node (idempotent), so the task can be collected.
            up = sim.up_indices()
            if up:
                confirm = ResultCollected(sub.task_id)
                sim.inject(
                    self._entry_rng.choice(up), confirm, sim.now + self.settings.client_rtt_s
                )
            return
        up = sim.up_indices()
        if not up:
            sim.call_at(sim.now + self.settings.reconnect_s, lambda s: self._reconnect(s, sub))
            return
        sub.attached = self._entry_rng.choice(up)
        sim.inject(sub.attached, ResultRequested(sub.task_id), sim.now + self.settings.client_rtt_s)

    # --- effects ----------------------------------------------------------------------------

    def on_effect(self, sim: Any, index: int, effect: Any, now: float) -> None:
        kind = type(effect)
        if kind is Persist:
            self.disks[index].journal[effect.record.task_id] = effect.record
        elif kind is RunTask:
            self._run(sim, index, effect)
        elif kind is FetchPayload:
            self._fetch(sim, index, effect)
        elif kind is CancelTask:
            self._cancel(sim, index, effect)
        elif kind is DropPayload:
            self.disks[index].payloads.discard(effect.input_digest)
        elif kind is TaskAccepted:
            self._accepted(index, effect, now)
            self._flush_lane(sim, effect.client_ref)
        elif kind is TaskRejected:
            for sub in self._subs_of_ref(effect.client_ref):
                sub.rejected = effect.reason
            self._flush_lane(sim, effect.client_ref)
        elif kind is TaskResolved:
            self._resolved(sim, index, effect, now)
        self.metrics_observer.on_effect(sim, index, effect, now)

    def _subs_of_ref(self, client_ref: str) -> list[Submission]:
        group = self.group_refs.get(client_ref)
        if group is not None:
            return group
        sub = self.by_ref.get(client_ref)
        return [] if sub is None else [sub]

    def _accepted(self, index: int, effect: TaskAccepted, now: float) -> None:
        group = self.group_refs.get(effect.client_ref)
        if group is not None:
            for member in group:
                if member.attached == index:
                    member.task_id = effect.task_id
                    member.acked_at = now
                    member.copies = effect.copies
            self.group_subs[effect.task_id] = group
            return
        sub = self.by_ref.get(effect.client_ref)
        if sub is None or sub.attached != index:
            return  # the client gave up on this entry node
        sub.task_id = effect.task_id
        sub.acked_at = now
        sub.copies = effect.copies
        self.by_task[effect.task_id] = sub

    def _resolved(self, sim: Any, index: int, effect: TaskResolved, now: float) -> None:
        group = self.group_subs.get(effect.task_id)
        if group is not None:
            self._resolved_members(sim, index, effect, now, group)
            return
        sub = self.by_task.get(effect.task_id)
        if sub is None or sub.attached != index:
            return  # no client of this task is connected to that node
        sub.deliveries += 1
        if sub.delivered_at is None:
            sub.delivered_at = now
            sub.outcome = effect.state.value
            sub.reason = effect.reason
        sim.inject(index, ResultCollected(effect.task_id), now + self.settings.client_rtt_s)

    def _resolved_members(
        self, sim: Any, index: int, effect: TaskResolved, now: float, group: list[Submission]
    ) -> None:
        """A coalesced group's outcome reached ``index``: every member attached there gets
        its own (a bad member's input fails it alone); the group is collected once every
        member holds its outcome (as the daemon counts member ids, handlers.py)."""
        for member in group:
            if member.attached != index or member.task_id != effect.task_id:
                continue
            if member.delivered_at is not None:
                # Its client holds the outcome and listens no more; the group is answered
                # again only because another member's client asked (a reconnect).
                continue
            member.deliveries += 1
            member.delivered_at = now
            if member.bad and effect.state.value == "done":
                member.outcome = "failed"
                member.reason = "input has the wrong shape for the model"
            else:
                member.outcome = effect.state.value
                member.reason = effect.reason
        if all(member.delivered_at is not None for member in group):
            sim.inject(index, ResultCollected(effect.task_id), now + self.settings.client_rtt_s)

    def _transfer_s(self, model: str) -> float:
        size = self.settings.workload.input_size(model)
        return self.settings.data_latency_s + size * 8 / self.settings.bandwidth_bps

    def _source(self, sim: Any, index: int, candidates: Any, digest: str) -> int | None:
        for node_id in candidates:
            source = sim.index_of(node_id) if isinstance(node_id, str) else node_id
            if source is None or not sim.up[source]:
                continue
            if digest not in self.disks[source].payloads:
                continue
            if source == index or sim.network.connected(source, index):
                return int(source)
        return None

    def _fetch(self, sim: Any, index: int, effect: FetchPayload) -> None:
        life = sim.lives[index]
        source = self._source(sim, index, effect.from_nodes, effect.input_digest)
        if source is None:
            sim.inject(
                index,
                PayloadFetchFailed(effect.task_id, "no listed holder reachable"),
                sim.now + self.settings.data_latency_s,
            )
            return
        model = self.digest_model.get(effect.input_digest, "")

        def stored(s: Any) -> None:
            if s.up[index] and s.lives[index] == life:
                self.disks[index].payloads.add(effect.input_digest)
                s.inject(index, PayloadStored(effect.task_id), s.now)

        sim.call_at(sim.now + self._transfer_s(model), stored)

    def _run(self, sim: Any, index: int, effect: RunTask) -> None:
        holders = tuple(i for i in (sim.index_of(h) for h in effect.holders) if i is not None)
        job = Job(effect.task_id, effect.attempt, effect.spec, holders, index, sim.lives[index])
        if self._slots_used(index) < self.settings.layout[index].slots:
            if self._delays():
                self._hold(sim, job)
            else:
                self._start(sim, job)
        else:
            self.waiting[index].append(job)
            if self._delays():
                for first in list(self.gathering[index]):
                    if first.spec.model_digest == job.spec.model_digest:
                        self._gather_when_full(sim, first)

    def _slots_used(self, index: int) -> int:
        """Slots taken on ``index``: one per running job, one per batch of jobs, one per
        run gathering its batch."""
        running = self.running[index]
        if self.settings.max_batch == 1:
            return len(running)
        return len(self.gathering[index]) + len(
            {job.batch if job.batch is not None else -1 - n for n, job in enumerate(running)}
        )

    def _delays(self) -> bool:
        """Whether a run that gets a slot may wait for more (batching with a delay)."""
        return self.settings.max_batch > 1 and self.settings.max_delay_s > 0

    def _rows_waiting(self, first: Job) -> int:
        """Rows (group members) of ``first``'s model waiting on its worker, its own too."""
        model = first.spec.model_digest
        waiting = self.waiting[first.worker]
        return first.spec.members + sum(
            job.spec.members for job in waiting if job.spec.model_digest == model
        )

    def _hold(self, sim: Any, first: Job) -> None:
        """``first`` has a slot: by the core's rule (:func:`~meshgpu.core.batching.delay_left`)
        it gathers its batch now, or holds the slot up to ``max_delay`` for more of its
        model, as the daemon's worker does."""
        self.gathering[first.worker].append(first)
        slot_at = sim.now
        left = delay_left(self._rows_waiting(first), self._batching, slot_at, sim.now)
        if left == 0:
            self._gather(sim, first)
            return
        sim.call_at(sim.now + left, lambda s: self._gather(s, first))

    def _gather_when_full(self, sim: Any, first: Job) -> None:
        """More of ``first``'s model arrived: gather at once if the batch is full now."""
        if self._rows_waiting(first) >= self.settings.max_batch:
            self._gather(sim, first)

    def _gather(self, sim: Any, first: Job) -> None:
        """``first``'s wait is over (or its batch is full): start its batch."""
        gathering = self.gathering[first.worker]
        if first.cancelled or first not in gathering:
            return  # cancelled, its node went down, or it gathered already
        gathering.remove(first)
        self._start_batch(sim, first)

    def _start_batch(self, sim: Any, first: Job) -> None:
        """Start ``first`` with the jobs of its model waiting on its worker, as one device
        run: the core's batching rule (:func:`~meshgpu.core.batching.pick_batch`, group
        members counting as rows) up to ``max_batch`` tasks. The simulated device has no
        per-shape plan cost, so any batch size is taken (no powers of two)."""
        index = first.worker
        model = first.spec.model_digest
        candidates = [first, *(j for j in self.waiting[index] if j.spec.model_digest == model)]
        chosen = pick_batch([job.spec.members for job in candidates], self.settings.max_batch)
        batch = [candidates[position] for position in chosen]
        for job in batch[1:]:
            self.waiting[index].remove(job)
        tasks = sum(job.spec.members for job in batch)
        if tasks == 1:
            self._start(sim, first)
            return
        self._batches += 1
        device = self.settings.layout[index]
        delay = max(self._transfer_s(model) for _ in batch)
        if model not in self.models[index]:
            self.models[index].add(model)
            delay += self.settings.model_fetch_s
        service = device.service_time(model, self._service_rng) * tasks**device.batch_exponent
        failed = self._service_rng.random() < device.failure_rate
        self.device_runs += 1
        self.batched_tasks += tasks
        for job in batch:
            job.started = True
            job.batch = self._batches
            self.running[index].append(job)
            if self.report_starts:
                sim.inject(index, TaskStarted(job.task_id, job.attempt), sim.now)
            digest = job.spec.input_digest
            if self._source(sim, index, job.holders, digest) is None:
                self._finish_later(sim, job, delay, "inputs_unavailable",
                                   "inputs unreachable on every holder", 0.0)  # fmt: skip
            elif digest in self.bad_digests:
                self._finish_later(sim, job, delay + service, "permanent_error",
                                   "input has the wrong shape for the model", 0.0)  # fmt: skip
            elif failed:
                self._finish_later(sim, job, delay + service, "transient_error",
                                   f"device error on {device.name}", 0.0)  # fmt: skip
            else:
                share = service * job.spec.members / tasks
                self._finish_later(sim, job, delay + service, "ok", "", share)

    def _start(self, sim: Any, job: Job) -> None:
        index = job.worker
        job.started = True
        self.running[index].append(job)
        if self.report_starts:
            sim.inject(index, TaskStarted(job.task_id, job.attempt), sim.now)
        device = self.settings.layout[index]
        spec = job.spec
        model = spec.model_digest
        digest = spec.input_digest
        source = self._source(sim, index, job.holders, digest)
        if source is None:
            self._finish_later(sim, job, self.settings.data_latency_s, "inputs_unavailable",
                               "inputs unreachable on every holder", 0.0)  # fmt: skip
            return
        delay = self._transfer_s(model)
        if model not in self.models[index]:
            self.models[index].add(model)
            delay += self.settings.model_fetch_s
        if digest in self.bad_digests:
            self._finish_later(sim, job, delay + 0.001, "permanent_error",
                               "input has the wrong shape for the model", 0.001)  # fmt: skip
            return
        service = device.service_time(model, self._service_rng)
        members = spec.members
        if members != 1:  # a coalesced group: one batch, or member after member
            exponent = device.batch_exponent if self.settings.max_batch > 1 else 1.0
            service *= members**exponent
        if self.settings.max_batch > 1:
            self.device_runs += 1
            self.batched_tasks += members
        elif members != 1:  # member after member: one device run each
            self.device_runs += members
            self.batched_tasks += members
        failed = self._service_rng.random() < device.failure_rate
        outcome = "transient_error" if failed else "ok"
        reason = f"device error on {device.name}" if failed else ""
        self._finish_later(sim, job, delay + service, outcome, reason, service)

    def _finish_later(
        self, sim: Any, job: Job, delay: float, outcome: str, reason: str, service: float
    ) -> None:
        def finish(s: Any) -> None:
            index = job.worker
            if job.cancelled or not s.up[index] or s.lives[index] != job.life:
                return
            job.finished = True
            self.running[index].remove(job)
            self.busy_s[index] += service
            self._start_waiting(s, index)
            result_holders: tuple[str, ...] = ()
            final_outcome, final_reason = outcome, reason
            if outcome == "ok":
                self.executions[job.task_id] = self.executions.get(job.task_id, 0) + 1
                self.executions_by_worker[index] = self.executions_by_worker.get(index, 0) + 1
                result_holders = tuple(
                    s.node_ids[h]
                    for h in job.holders
                    if s.up[h] and (h == index or s.network.connected(index, h))
                )
                if not result_holders:
                    final_outcome, final_reason = (
                        "transient_error",
                        "no holder reachable for the result",
                    )
            event = TaskFinished(job.task_id, job.attempt, final_outcome, final_reason,  # type: ignore[arg-type]
                                 result_holders, service)  # fmt: skip
            s.inject(index, event, s.now)

        sim.call_at(sim.now + delay, finish)

    def _start_waiting(self, sim: Any, index: int) -> None:
        slots = self.settings.layout[index].slots
        if self.settings.max_batch == 1:
            while self.waiting[index] and len(self.running[index]) < slots:
                self._start(sim, self.waiting[index].pop(0))
            return
        while self.waiting[index] and self._slots_used(index) < slots:
            if self._delays():
                self._hold(sim, self.waiting[index].pop(0))
            else:
                self._start_batch(sim, self.waiting[index].pop(0))

    def _cancel(self, sim: Any, index: int, effect: CancelTask) -> None:
        for queue in (self.waiting[index], self.gathering[index], self.running[index]):
            for job in list(queue):
                if job.task_id == effect.task_id and job.attempt == effect.attempt:
                    if job.started and self._stolen_from(sim, index, job):
                        self.started_runs_stolen += 1
                    job.cancelled = True
                    queue.remove(job)
        self._start_waiting(sim, index)

    def _stolen_from(self, sim: Any, index: int, job: Job) -> bool:
        """Whether node ``index``'s table shows ``job``'s attempt handed to a thief."""
        entry = sim.nodes[index].tasks.table.get(job.task_id)
        return (
            entry is not None
            and is_steal(entry.state)
            and entry.state.attempt == job.attempt + 1
            and entry.state.reason.endswith(f" {sim.node_ids[index]}")
        )

    # --- reporting (delegated) ------------------------------------------------------------

    def on_sample(self, sim: Any, now: float) -> None:
        self.metrics_observer.on_sample(sim, now)

    def on_finish(self, sim: Any, now: float) -> None:
        self.metrics_observer.on_finish(sim, now)

    def invariants(self) -> dict[str, str]:
        return self.metrics_observer.invariants()

    def skipped(self) -> dict[str, str]:
        return self.metrics_observer.skipped()

    def metrics(self) -> dict[str, Any]:
        return self.metrics_observer.metrics()


def _task_config_mapping(config: TaskConfig) -> dict[str, object]:
    return {name: getattr(config, name) for name in TaskConfig.__dataclass_fields__}


def build(table: Mapping[str, Any], scenario: Any) -> TaskDriver:
    """Factory named in ``meshgpu.sim.scenario.EXTENSION_SECTIONS["tasks"]``."""
    return TaskDriver(TaskSimSettings.from_mapping(table, scenario.nodes))
