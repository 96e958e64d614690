"""What a daemon says about itself: the ``status`` and ``tasks`` answers, and its load.

Everything here reads the node (members, leader, view, loads, task table) and the
daemon's own counters; nothing changes state. The shapes are documented in
docs/client-api.md and are what ``meshgpu status --json`` prints.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import trio

from meshgpu.core.load import (
    DEVICE_LABEL_LENGTH,
    FALLBACK_DIGEST_LENGTH,
    MAX_REPORTED_DEVICES,
    DeviceCapabilities,
    LoadVector,
)
from meshgpu.core.tasks import TaskEntry, TaskId, TaskTable
from meshgpu.daemon.synthetic import is_synthetic

if TYPE_CHECKING:
    from meshgpu.daemon.runtime import Daemon

QUEUED_PHASES = ("pending", "retrying")


def task_table(daemon: Daemon) -> TaskTable | None:
    """The node's task table (None if the node runs without the task component)."""
    tasks = getattr(daemon.node, "tasks", None)
    table = getattr(tasks, "table", None)
    return table if isinstance(table, TaskTable) else None


DEADLINE_REASON = "deadline exceeded"
"""The reason the core gives a task it expires (core/tasks/state.py ``expire``)."""


def explained_reason(reason: str, deadline_s: float | None) -> str:
    """A failure reason as the user reads it: an expired task names its deadline (the
    core's reason does not, and it travels in every gossiped state, traces included)."""
    if reason == DEADLINE_REASON and deadline_s is not None:
        return (
            f"deadline exceeded: not done within {deadline_s:g} s of its submission "
            "(--deadline / deadline_s)"
        )
    return reason


def task_reason(daemon: Daemon, task_id: TaskId, reason: str) -> str:
    """:func:`explained_reason` for a task of this node's table."""
    table = task_table(daemon)
    entry = None if table is None else table.get(task_id)
    return explained_reason(reason, None if entry is None else entry.spec.deadline_s)


def _entries(daemon: Daemon) -> list[TaskEntry]:
    table = task_table(daemon)
    return [] if table is None else list(table)


def worker_of(daemon: Daemon, task_id: TaskId) -> str | None:
    table = task_table(daemon)
    entry = None if table is None else table.get(task_id)
    return None if entry is None else entry.state.worker


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


def http_address(daemon: Daemon) -> dict[str, Any] | None:
    """Where this node's HTTP port listens (for ``status``), None without one."""
    server = getattr(daemon, "http", None)
    if server is None or server.port is None:
        return None
    return {"bind": server.host, "port": server.port, "tls": server.tls}


def status_snapshot(daemon: Daemon) -> dict[str, Any]:
    """The ``status`` answer: this node, every member it knows, leader, queue, counters."""
    node = daemon.node
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
    entries = _entries(daemon)
    phases = Counter(entry.state.phase.value for entry in entries)
    settings = daemon.settings
    return {
        "node": {
            "node_id": daemon.node_id,
            "address": list(daemon.address),
            "mesh": settings.mesh,
            "incarnation": node.incarnation,
            "uptime_s": round(time.time() - daemon.started_wall, 3),
            "keyed": settings.key is not None,
            "key_fingerprint": settings.key.fingerprint if settings.key else None,
            "leaving": daemon.leaving,
            "slots": settings.slots,
            "running": len(daemon.dataplane.running),
            "attempts": {"ok": daemon.dataplane.completed, "failed": daemon.dataplane.failed},
            "data_dir": str(settings.data_dir),
            "backend": settings.backend,
            "usable_devices": list(daemon.usable_devices),
            "fallback_models": dict(daemon.executor.fallback_models),
            "http": http_address(daemon),
        },
        "generation": daemon.generation,
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
            "daemon": dict(daemon.counters),
            "auth": dict(daemon.authenticator.counters),
            "mdns": dict(getattr(daemon.peer_finder.discovery, "counters", {})),
        },
        "gone": [
            dict(record)
            for _, record in sorted(daemon.member_history.items())
            if record["state"] in ("dead", "left")
        ]
        # Peers of another protocol version or mesh: refused, with both sides named.
        + [dict(record) for _, record in sorted(daemon.authenticator.refused.items())],
        "duplicate_identity": {
            "sightings": daemon.guard.sightings,
            "last_twin": list(daemon.guard.last_twin) if daemon.guard.last_twin else None,
        },
    }


def task_rows(daemon: Daemon, state: str | None = None) -> list[dict[str, Any]]:
    """The ``tasks`` answer: one row per task in this node's table, oldest id first."""
    rows = []
    for entry in sorted(_entries(daemon), key=lambda e: e.task_id):
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


class LoadMeter:
    """Turns the executor's counters into the load vector the daemon reports."""

    def __init__(
        self,
        capabilities: DeviceCapabilities,
        usable_devices: tuple[str, ...] = (),
        labels: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.capabilities = capabilities
        self.usable_devices = usable_devices
        self.labels = labels
        self._last_busy = 0.0
        self._last_time: float | None = None

    def measure(self, daemon: Daemon) -> LoadVector:
        executor = daemon.executor
        now = trio.current_time()
        utilisation = 0.0
        if self._last_time is not None and now > self._last_time:
            busy = executor.busy_seconds - self._last_busy
            utilisation = busy / ((now - self._last_time) * executor.slots)
        self._last_busy, self._last_time = executor.busy_seconds, now
        queued = sum(1 for e in _entries(daemon) if e.state.phase.value in QUEUED_PHASES)
        return LoadVector(
            active_tasks=len(daemon.dataplane.running),
            # The capacity offered (active + free) includes the prefetch queue: an
            # assignment beyond the slots fetches its inputs and model while a slot is
            # busy and runs the moment it frees (execution.PREFETCH_PER_SLOT).
            # None while leaving: the leader must not assign to a node on its way out.
            free_slots=0
            if daemon.leaving
            else max(0, executor.capacity - len(daemon.dataplane.running)),
            queue_length=queued,
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
