"""What the adaptive strategy learns: latency and failure rate per (worker, model).

Every node observes the table: when it sees a task ASSIGNED to a worker and later sees it
DONE (or failed) it learns how long that worker took for that model, end to end (inputs,
model fetch, queueing on the device, execution, result push), which is what a client waits
for. Exponentially weighted moving averages (EWMA) forget old behaviour at rate ``alpha``,
so a worker that slows down (thermal throttling, a co-tenant) is noticed within a few
tasks. Observations come from merges every node sees, so a new leader starts warm.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshgpu.core.types import NodeId


@dataclass(slots=True)
class _Estimate:
    latency_s: float
    failure_rate: float
    samples: int


class LatencyModel:
    """EWMA latency and failure rate per (worker, model digest)."""

    __slots__ = ("_alpha", "_estimates")

    def __init__(self, alpha: float = 0.2) -> None:
        self._alpha = alpha
        self._estimates: dict[tuple[NodeId, str], _Estimate] = {}

    def observe_success(self, worker: NodeId, model: str, latency_s: float) -> None:
        """``worker`` finished a task of ``model`` ``latency_s`` after it was assigned."""
        estimate = self._estimates.get((worker, model))
        if estimate is None:
            self._estimates[(worker, model)] = _Estimate(latency_s, 0.0, 1)
            return
        estimate.latency_s += self._alpha * (latency_s - estimate.latency_s)
        estimate.failure_rate += self._alpha * (0.0 - estimate.failure_rate)
        estimate.samples += 1

    def observe_failure(self, worker: NodeId, model: str, latency_s: float) -> None:
        """An attempt of ``model`` on ``worker`` failed (or timed out) after ``latency_s``."""
        estimate = self._estimates.get((worker, model))
        if estimate is None:
            self._estimates[(worker, model)] = _Estimate(latency_s, 1.0, 1)
            return
        estimate.failure_rate += self._alpha * (1.0 - estimate.failure_rate)
        estimate.samples += 1

    def latency(self, worker: NodeId, model: str) -> float | None:
        """Learned latency, or None before the first observation."""
        estimate = self._estimates.get((worker, model))
        return None if estimate is None else estimate.latency_s

    def failure_rate(self, worker: NodeId, model: str) -> float:
        """Learned failure rate in [0, 1]; 0 before any observation."""
        estimate = self._estimates.get((worker, model))
        return 0.0 if estimate is None else estimate.failure_rate

    def known(self) -> dict[tuple[NodeId, str], tuple[float, float, int]]:
        """Every estimate as ``(latency_s, failure_rate, samples)`` (for status and tests)."""
        return {
            key: (e.latency_s, e.failure_rate, e.samples)
            for key, e in sorted(self._estimates.items())
        }
