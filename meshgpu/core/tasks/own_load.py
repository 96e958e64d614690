"""This node's own load vector: the driver's measurements plus what the task queue knows.

The driver reports utilisation, memory, capabilities and its capacity (``active_tasks +
free_slots``) with ``LoadChanged``; the task queue fills in the fields only it knows
(tasks running here, free slots, overflow queue, per-model execution time) and hands the
result to the load gossip, at most once per ``load_publish_interval_s`` (each publication
is a gossip update every node must decode, so a busy worker must not publish per task).
"""

from __future__ import annotations

import math
from dataclasses import replace

from meshgpu.core.load import LoadVector
from meshgpu.core.tasks.config import TaskConfig


class OwnLoad:
    """What goes into this node's gossiped :class:`LoadVector`."""

    def __init__(self, config: TaskConfig) -> None:
        self.config = config
        self.driver_load = LoadVector()
        self.reported = False
        self.latency: dict[str, float] = {}
        self.dirty = False
        self.published_at = -math.inf

    def set_driver_load(self, load: LoadVector) -> None:
        self.driver_load = load
        self.reported = True
        self.dirty = True

    def learn(self, model: str, run_s: float) -> None:
        """EWMA of this node's execution time for ``model`` (published for ``latency``)."""
        previous = self.latency.get(model)
        alpha = self.config.adaptive_alpha
        self.latency[model] = run_s if previous is None else previous + alpha * (run_s - previous)
        self.dirty = True

    def capacity(self) -> int:
        """How many tasks this node runs at once (driver's figure, else the config's)."""
        if self.reported:
            return self.driver_load.active_tasks + self.driver_load.free_slots
        return self.config.slots

    def due(self) -> float:
        """Earliest time the next publication may happen."""
        return self.published_at + self.config.load_publish_interval_s

    def publish(self, running: int, now: float) -> LoadVector:
        """The vector to gossip now, with ``running`` tasks here; marks it published."""
        capacity = self.capacity()
        self.dirty = False
        self.published_at = now
        return replace(
            self.driver_load,
            active_tasks=running,
            free_slots=max(0, capacity - running),
            queue_length=max(0, running - capacity),
            latency_estimates=tuple(sorted(self.latency.items())),
        )
