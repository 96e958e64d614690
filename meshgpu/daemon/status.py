"""What a daemon says about itself: the ``status`` and ``tasks`` answers, and its load.

Everything here reads the node (members, leader, view, loads, task table) and the
daemon's own counters; nothing changes state. The shapes are documented in
docs/client-api.md and are what ``meshgpu status --json`` prints.

:class:`StatusReport` is the part: status reads most of what a daemon observes, so the
wiring hands it each of those things by name (the node, the settings, the work counts of
the data plane, the counters, callables for what changes while the daemon runs);
:class:`LoadMeter` turns the executor's counters into the load vector.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sized
from typing import TYPE_CHECKING, Any, Protocol

import trio

from meshgpu.core.load import (
    DEVICE_LABEL_LENGTH,
    FALLBACK_DIGEST_LENGTH,
    MAX_REPORTED_DEVICES,
    DeviceCapabilities,
    LoadVector,
)
from meshgpu.core.tasks import TaskEntry, TaskId, TaskTable
from meshgpu.core.types import Address, NodeId
from meshgpu.daemon.synthetic import is_synthetic

if TYPE_CHECKING:
    from meshgpu.core.node import Node
    from meshgpu.daemon.auth import Authenticator
    from meshgpu.daemon.batching import BatchCounts
    from meshgpu.daemon.identity import DuplicateIdentityGuard
    from meshgpu.daemon.settings import DaemonSettings

QUEUED_PHASES = ("pending", "retrying")


def task_table(node: object) -> TaskTable | None:
    """The node's task table (None if the node runs without the task component)."""
    tasks = getattr(node, "tasks", None)
    table = getattr(tasks, "table", None)
    return table if isinstance(table, TaskTable) else None


def task_entry(node: object, task_id: TaskId) -> TaskEntry | None:
    """The entry of ``task_id`` in the node's task table, None if it holds none."""
    table = task_table(node)
    return None if table is None else table.get(task_id)


TaskLookup = Callable[[TaskId], "TaskEntry | None"]
"""The entry of a task in this node's table, or None (``functools.partial(task_entry,
node)``): what the parts that read the table are handed."""


DEADLINE_REASON = "deadline exceeded"
"""The reason the core gives a task it expires (core/tasks/state.py ``expire``)."""


def explained_reason(reason: str, deadline_s: float | None) -> str:
    """A failure reason as the user reads it: an expired task names its deadline (the
    core's reason does not, and it travels in every gossiped state, traces included)."""
    if reason == DEADLINE_REASON and deadline_s is not None:
        return (
            f"deadline exceeded: not done within {deadline_s:g} s of its submission "
            "(--deadline, deadline_s, or the HTTP request's timeout parameter)"
        )
    return reason


class WorkCounts(Protocol):
    """What status and the load read of the data plane: the attempts running here and
    how many ended well or badly."""

    @property
    def running(self) -> Sized: ...

    @property
    def completed(self) -> int: ...

    @property
    def failed(self) -> int: ...


class FallbackCounts(Protocol):
    """What status reads of the executor: the models that fell back to onnxruntime, and
    its device runs against the tasks they ran (dynamic batching, batching.py)."""

    @property
    def fallback_models(self) -> Mapping[str, Any]: ...

    @property
    def batch_counts(self) -> BatchCounts: ...


def _load_fields(load: LoadVector | None) -> dict[str, Any] | None:
    if load is None:
        return None
    return {
        "version": load.version,
        "active_tasks": load.active_tasks,
        "free_slots": load.free_slots,
        "queue_length": load.queue_length,
        "utilisation": load.utilisation,
        "memory_used": load.memory_used,
        "memory_total": load.memory_total,
        "devices": list(load.capabilities.device_types),
        "fp16": load.capabilities.fp16,
        "latency": dict(load.latency_estimates),
        "usable_devices": list(load.usable_devices),
        "fallback_models": list(load.fallback_models),
        "labels": {key: value for key, value in load.labels},
    }


def http_address(server: Any) -> dict[str, Any] | None:
    """Where an HTTP server listens (for ``status``), None without one or before it binds."""
    if server is None or server.port is None:
        return None
    return {"bind": server.host, "port": server.port, "tls": server.tls}


class StatusReport:
    """The ``status`` and ``tasks`` answers of one daemon; invoked by the API ops, the
    HTTP port and the ``wait`` op, each time they answer."""

    def __init__(
        self,
        node_id: NodeId,
        node: Node,
        settings: DaemonSettings,
        *,
        address: Address,
        work: WorkCounts,
        executor: FallbackCounts,
        counters: Mapping[str, int],
        authenticator: Authenticator,
        guard: DuplicateIdentityGuard,
        member_history: Mapping[NodeId, Mapping[str, Any]],
        leaving: Callable[[], bool],
        generation: Callable[[], int],
        usable_devices: Callable[[], tuple[str, ...]],
        mdns_counters: Callable[[], Mapping[str, int]],
        http: Callable[[], dict[str, Any] | None],
        started_wall: float | None = None,
        refresh_counters: Callable[[], None] = lambda: None,
    ) -> None:
        self.node_id = node_id
        self.node = node
        self.settings = settings
        self.address = address
        self.work = work
        self.executor = executor
        self.counters = counters
        self.authenticator = authenticator
        self.guard = guard
        self.member_history = member_history
        self._leaving = leaving
        self._generation = generation
        self._usable_devices = usable_devices
        self._mdns_counters = mdns_counters
        self._http = http
        self.started_wall = time.time() if started_wall is None else started_wall
        self._refresh_counters = refresh_counters
        """Copies counts kept outside the process (the kernel's) into ``counters``."""

    def entry(self, task_id: TaskId) -> TaskEntry | None:
        return task_entry(self.node, task_id)

    def _entries(self) -> list[TaskEntry]:
        table = task_table(self.node)
        return [] if table is None else list(table)

    def task_reason(self, task_id: TaskId, reason: str) -> str:
        """:func:`explained_reason` for a task of this node's table."""
        entry = self.entry(task_id)
        return explained_reason(reason, None if entry is None else entry.spec.deadline_s)

    def worker_of(self, task_id: TaskId) -> str | None:
        entry = self.entry(task_id)
        return None if entry is None else entry.state.worker

    def attempt_of(self, task_id: TaskId) -> int | None:
        """The attempt of the task's state (for a done task: the one whose result is
        stored)."""
        entry = self.entry(task_id)
        return None if entry is None else entry.state.attempt

    def http_address(self) -> dict[str, Any] | None:
        return self._http()

    def snapshot(self) -> dict[str, Any]:
        """The ``status`` answer: this node, every member it knows, leader, queue, counters."""
        self._refresh_counters()
        node = self.node
        now = trio.current_time()
        loads = node.loads()
        members = []
        for info in sorted(node.members().values(), key=lambda i: i.node_id):
            state = info.state.value
            members.append(
                {
                    "node_id": info.node_id,
                    "address": list(info.address),
                    "state": state,
                    "incarnation": info.incarnation,
                    "since_s": round(max(0.0, now - info.state_since), 3),
                    "reason": info.reason,
                    "load": _load_fields(loads.get(info.node_id)),
                }
            )
        entries = self._entries()
        phases = Counter(entry.state.phase.value for entry in entries)
        settings = self.settings
        guard = self.guard
        keyring = self.authenticator.keyring
        primary = keyring.primary
        return {
            "node": {
                "node_id": self.node_id,
                "address": list(self.address),
                "mesh": settings.mesh,
                "incarnation": node.incarnation,
                "uptime_s": round(time.time() - self.started_wall, 3),
                "keyed": keyring.keyed,
                "key_fingerprint": primary.fingerprint if primary is not None else None,
                "keyring": keyring.summary(),
                "encrypt_verify_incoming": self.authenticator.verify_incoming,
                "encrypt_verify_outgoing": self.authenticator.verify_outgoing,
                "leaving": self._leaving(),
                "slots": settings.slots,
                "running": len(self.work.running),
                "attempts": {"ok": self.work.completed, "failed": self.work.failed},
                "data_dir": str(settings.data_dir),
                "backend": settings.backend,
                "usable_devices": list(self._usable_devices()),
                "fallback_models": dict(self.executor.fallback_models),
                # Device runs vs tasks they answered (dynamic batching, batching.py).
                "batching": self.executor.batch_counts.snapshot(),
                "http": self._http(),
            },
            "generation": self._generation(),
            "leader": node.leader(),
            "view": node.view,
            "members": members,
            "queue_length": sum(phases[p] for p in QUEUED_PHASES),
            "tasks": dict(sorted(phases.items())),
            "groups": {  # task groups among those entries (docs/task-queue.md, "Task groups")
                "entries": sum(1 for entry in entries if entry.spec.members != 1),
                "members": sum(entry.spec.members for entry in entries if entry.spec.members != 1),
            },
            "counters": {
                "node": dict(node.counters),
                "daemon": dict(self.counters),
                "auth": dict(self.authenticator.counters),
                "mdns": dict(self._mdns_counters()),
            },
            "gone": [
                dict(record)
                for _, record in sorted(self.member_history.items())
                if record["state"] in ("dead", "left")
            ]
            # Peers of another protocol version or mesh, or on a removed key: refused, with
            # both sides named.
            + [dict(record) for _, record in sorted(self.authenticator.refused.items())],
            "duplicate_identity": {
                "sightings": guard.sightings,
                "last_twin": list(guard.last_twin) if guard.last_twin else None,
            },
        }

    def task_rows(self, state: str | None = None) -> list[dict[str, Any]]:
        """The ``tasks`` answer: one row per task in this node's table, oldest id first."""
        rows = []
        for entry in sorted(self._entries(), key=lambda e: e.task_id):
            phase = entry.state.phase.value
            if state is not None and phase != state:
                continue
            rows.append(
                {
                    "task_id": str(entry.task_id),
                    "state": phase,
                    "attempt": entry.state.attempt,
                    "worker": entry.state.worker,
                    "reason": explained_reason(entry.state.reason, entry.spec.deadline_s),
                    "priority": entry.spec.priority.name.lower(),
                    "model_digest": entry.spec.model_digest,
                    "holders": sorted(entry.holders),
                    "result_holders": sorted(entry.result_holders),
                    "delivered": entry.delivered,
                    "members": entry.spec.members,
                    "label": entry.spec.label,
                }
            )
        return rows


def device_capabilities(backend: str, device: str | None) -> DeviceCapabilities:
    """What this node's usable devices offer (blocking: OpenCL enumeration and, for a
    device not judged yet, its probe; call in a thread)."""
    import os

    if backend == "onnxruntime" or is_synthetic(device):  # no OpenCL drivers to wake
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return DeviceCapabilities(device_types=("cpu",), fp16=False, memory_total=memory)
    found = _usable_devices(device)
    types = sorted({("gpu" if "GPU" in d.type else "cpu") for d in found})
    return DeviceCapabilities(
        device_types=tuple(types),
        fp16=any(d.fp16 for d in found),
        memory_total=max((d.global_memory_bytes for d in found), default=0),
    )


def usable_device_labels(backend: str, device: str | None) -> tuple[str, ...]:
    """``"<id> <name>"`` of each device this node may run on that passed its probe (for
    the load vector; blocking like :func:`device_capabilities`)."""
    if is_synthetic(device):
        return ()
    if backend == "onnxruntime":
        return ("onnxruntime:cpu",)
    labels = [
        d.id if d.backend == "onnxruntime" else f"{d.id} {d.name}" for d in _usable_devices(device)
    ]
    return tuple(label[:DEVICE_LABEL_LENGTH] for label in labels[:MAX_REPORTED_DEVICES])


def _usable_devices(device: str | None) -> list[Any]:
    from meshgpu import inference
    from meshgpu.inference import probe

    found = inference.devices()
    if device is not None:
        found = tuple(d for d in found if d.id == device) or found
    return [d for d in found if probe.verdict(d).usable]


class ExecutorLoad(Protocol):
    """What the load meter reads of the executor."""

    @property
    def busy_seconds(self) -> float: ...

    @property
    def slots(self) -> int: ...

    @property
    def capacity(self) -> int: ...

    @property
    def fallback_models(self) -> Mapping[str, Any]: ...


class LoadMeter:
    """Turns the executor's counters into the load vector the daemon reports."""

    def __init__(
        self,
        capabilities: DeviceCapabilities,
        usable_devices: tuple[str, ...] = (),
        labels: tuple[tuple[str, str], ...] = (),
        *,
        executor: ExecutorLoad,
        work: WorkCounts,
        queued: Callable[[], int],
        leaving: Callable[[], bool],
        direct_runs: Callable[[], int] = lambda: 0,
    ) -> None:
        self.capabilities = capabilities
        self.usable_devices = usable_devices
        self.labels = labels
        self.executor = executor
        self.work = work
        self._queued = queued
        self._leaving = leaving
        self._direct_runs = direct_runs
        """Direct runs under way here (direct.py): tasks that never enter the table, but
        hold the executor's slots as the table's do."""
        self._last_busy = 0.0
        self._last_time: float | None = None

    def measure(self) -> LoadVector:
        executor = self.executor
        now = trio.current_time()
        utilisation = 0.0
        if self._last_time is not None and now > self._last_time:
            busy = executor.busy_seconds - self._last_busy
            utilisation = busy / ((now - self._last_time) * executor.slots)
        self._last_busy, self._last_time = executor.busy_seconds, now
        # Direct runs count like the table's: a node busy with them has no free slot to
        # offer, and least-loaded balancing must see it busy (design.md, load vectors).
        running = len(self.work.running) + self._direct_runs()
        return LoadVector(
            active_tasks=running,
            # The capacity offered (active + free) includes the prefetch queue: an
            # assignment beyond the slots fetches its inputs and model while a slot is
            # busy and runs the moment it frees (execution.PREFETCH_PER_SLOT).
            # None while leaving: the leader must not assign to a node on its way out.
            free_slots=0 if self._leaving() else max(0, executor.capacity - running),
            queue_length=self._queued(),
            utilisation=round(min(1.0, max(0.0, utilisation)), 1),
            memory_used=0,
            memory_total=self.capabilities.memory_total,
            capabilities=self.capabilities,
            usable_devices=self.usable_devices,
            labels=self.labels,
            fallback_models=tuple(
                digest[:FALLBACK_DIGEST_LENGTH]
                for digest in list(executor.fallback_models)[:MAX_REPORTED_DEVICES]
            ),
        )


def queued_tasks(node: object) -> int:
    """Entries of the node's table waiting for a worker (pending or retrying)."""
    table = task_table(node)
    if table is None:
        return 0
    return sum(1 for e in table if e.state.phase.value in QUEUED_PHASES)


def core_queue_length(node: object) -> int:
    """The length of the core's queue, which holds exactly the table's pending and
    retrying entries (O(1), where scanning the table cost O(entries) on the loop for
    every tiny submit); 0 for a node without the task component."""
    queue = getattr(getattr(node, "tasks", None), "queue", None)
    return 0 if queue is None else len(queue)
