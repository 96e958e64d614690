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
    latency_s: float | None
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
        if estimate.latency_s is None:
            estimate.latency_s = latency_s
        else:
            estimate.latency_s += self._alpha * (latency_s - estimate.latency_s)
        estimate.failure_rate += self._alpha * (0.0 - estimate.failure_rate)
        estimate.samples += 1

    def observe_failure(self, worker: NodeId, model: str) -> None:
        """An attempt of ``model`` on ``worker`` failed, timed out, or died with it. Only the
        failure rate learns: how long a failure took says nothing about a success."""
        estimate = self._estimates.get((worker, model))
        if estimate is None:
            self._estimates[(worker, model)] = _Estimate(None, 1.0, 0)
            return
        estimate.failure_rate += self._alpha * (1.0 - estimate.failure_rate)

    def latency(self, worker: NodeId, model: str) -> float | None:
        """Learned latency, or None before the first observation."""
        estimate = self._estimates.get((worker, model))
        return None if estimate is None else estimate.latency_s

    def samples(self, worker: NodeId, model: str) -> int:
        """How many successful observations the latency estimate rests on."""
        estimate = self._estimates.get((worker, model))
        return 0 if estimate is None else estimate.samples

    def failure_rate(self, worker: NodeId, model: str) -> float:
        """Learned failure rate in [0, 1]; 0 before any observation."""
        estimate = self._estimates.get((worker, model))
        return 0.0 if estimate is None else estimate.failure_rate

    def known(self) -> dict[tuple[NodeId, str], tuple[float | None, float, int]]:
        """Every estimate as ``(latency_s, failure_rate, samples)`` (for status and tests)."""
        return {
            key: (e.latency_s, e.failure_rate, e.samples)
            for key, e in sorted(self._estimates.items())
        }
