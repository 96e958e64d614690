"""This node's own load vector: the driver's measurements plus what the task queue knows.

The driver reports utilisation, memory, capabilities and its capacity (``active_tasks +
free_slots``) with ``LoadChanged``; the task queue fills in the fields only it knows
(tasks running here, free slots, overflow queue, per-model execution time) and hands the
result to the load gossip. A change of what the leader plans with (capacity,
capabilities, device memory) is published at once; routine changes (tasks started or
finished, utilisation, latency estimates) at most once per :meth:`OwnLoad.interval`,
which grows with the mesh (a model's first latency estimate goes at once too: clients
size task groups by it): each publication is a gossip update that every node decodes
about ``retransmit_multiplier * log10(n)`` times, so a busy worker must not publish per
task, and a large mesh must not publish per node as often as a small one.
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
        self.urgent = False
        """Set by a change the leader plans with: publish without waiting for the interval."""
        self.published_at = -math.inf

    def set_driver_load(self, load: LoadVector) -> None:
        old = self.driver_load
        if (
            not self.reported
            or self.capacity_of(load) != self.capacity()
            or load.capabilities != old.capabilities
            or load.memory_total != old.memory_total
            or load.labels != old.labels
        ):
            self.urgent = True
        self.driver_load = load
        self.reported = True
        self.dirty = True

    def learn(self, model: str, run_s: float) -> None:
        """EWMA of this node's execution time for ``model`` (published for ``latency``)."""
        previous = self.latency.pop(model, None)  # re-inserted: the dict is by recency
        alpha = self.config.adaptive_alpha
        self.latency[model] = run_s if previous is None else previous + alpha * (run_s - previous)
        self.dirty = True
        if previous is None:
            # The first estimate of a model: clients size task groups by it and hold a
            # map's first fill back until one is published (client/batches.py).
            self.urgent = True

    def capacity(self) -> int:
        """How many tasks this node runs at once (driver's figure, else the config's)."""
        if self.reported:
            return self.capacity_of(self.driver_load)
        return self.config.slots

    @staticmethod
    def capacity_of(load: LoadVector) -> int:
        return load.active_tasks + load.free_slots

    def interval(self, live_members: int) -> float:
        """Least time between two routine publications in a mesh of ``live_members``."""
        config = self.config
        return config.load_publish_interval_s * max(1.0, live_members / config.load_publish_members)

    def due(self, live_members: int) -> float:
        """Earliest time the next publication may happen (at once when urgent)."""
        if self.urgent:
            return -math.inf
        return self.published_at + self.interval(live_members)

    def publish(self, running: int, now: float) -> LoadVector:
        """The vector to gossip now, with ``running`` tasks here; marks it published."""
        capacity = self.capacity()
        self.dirty = self.urgent = False
        self.published_at = now
        return replace(
            self.driver_load,
            active_tasks=running,
            free_slots=max(0, capacity - running),
            queue_length=max(0, running - capacity),
            # Most recently run first: a vector too large for its gossip item is trimmed
            # from the end (core/load.py), which must drop the models run longest ago,
            # never the one a client is waiting to see a first latency of.
            latency_estimates=tuple(reversed(self.latency.items())),
        )
