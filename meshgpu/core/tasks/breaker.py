"""A circuit breaker per worker: stop sending work to a worker that keeps failing.

The classic three states (Nygard, "Release It!", ch. 5), with the transitions as data:

    CLOSED --(failure_threshold consecutive failures)--> OPEN
    OPEN --(open_s elapsed)--> HALF_OPEN
    HALF_OPEN --(success)--> CLOSED
    HALF_OPEN --(failure)--> OPEN

In HALF_OPEN at most ``half_open_trials`` assignments are let through until one of them
reports. Every node keeps breakers from the outcomes it observes in the table, so a new
leader inherits a very similar picture without any hand-over message.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshgpu.core.types import NodeId


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerSignal(enum.Enum):
    FAILURE_THRESHOLD = "failure_threshold"
    COOLDOWN_ELAPSED = "cooldown_elapsed"
    SUCCESS = "success"
    FAILURE = "failure"


BREAKER_TRANSITIONS: dict[tuple[BreakerState, BreakerSignal], BreakerState] = {
    (BreakerState.CLOSED, BreakerSignal.FAILURE_THRESHOLD): BreakerState.OPEN,
    (BreakerState.OPEN, BreakerSignal.COOLDOWN_ELAPSED): BreakerState.HALF_OPEN,
    (BreakerState.HALF_OPEN, BreakerSignal.SUCCESS): BreakerState.CLOSED,
    (BreakerState.HALF_OPEN, BreakerSignal.FAILURE): BreakerState.OPEN,
}


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """Thresholds (from the task config)."""

    failure_threshold: int = 3
    open_s: float = 10.0
    half_open_trials: int = 1


class CircuitBreaker:
    """The breaker of one worker."""

    __slots__ = ("_consecutive_failures", "_opened_at", "_settings", "_trials", "state")

    def __init__(self, settings: BreakerSettings) -> None:
        self._settings = settings
        self.state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._opened_at = 0.0
        self._trials = 0

    def _move(self, signal: BreakerSignal, now: float) -> None:
        self.state = BREAKER_TRANSITIONS[(self.state, signal)]
        if self.state is BreakerState.OPEN:
            self._opened_at = now
        self._trials = 0

    def _refresh(self, now: float) -> None:
        if self.state is BreakerState.OPEN and now - self._opened_at >= self._settings.open_s:
            self._move(BreakerSignal.COOLDOWN_ELAPSED, now)

    def admits(self, now: float) -> bool:
        """May a new assignment go to this worker now?"""
        self._refresh(now)
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.HALF_OPEN:
            return self._trials < self._settings.half_open_trials
        return False

    def on_assigned(self, now: float) -> None:
        """An assignment went through (counts against the half-open trials)."""
        self._refresh(now)
        if self.state is BreakerState.HALF_OPEN:
            self._trials += 1

    def on_success(self, now: float) -> None:
        self._refresh(now)
        self._consecutive_failures = 0
        if self.state is BreakerState.HALF_OPEN:
            self._move(BreakerSignal.SUCCESS, now)

    def on_failure(self, now: float) -> None:
        self._refresh(now)
        self._consecutive_failures += 1
        if self.state is BreakerState.HALF_OPEN:
            self._move(BreakerSignal.FAILURE, now)
        elif (
            self.state is BreakerState.CLOSED
            and self._consecutive_failures >= self._settings.failure_threshold
        ):
            self._move(BreakerSignal.FAILURE_THRESHOLD, now)


class BreakerBoard:
    """All breakers of one node, by worker, created on first use."""

    __slots__ = ("_breakers", "_settings")

    def __init__(self, settings: BreakerSettings) -> None:
        self._settings = settings
        self._breakers: dict[NodeId, CircuitBreaker] = {}

    def __getitem__(self, worker: NodeId) -> CircuitBreaker:
        breaker = self._breakers.get(worker)
        if breaker is None:
            breaker = self._breakers[worker] = CircuitBreaker(self._settings)
        return breaker

    def states(self, now: float) -> dict[NodeId, BreakerState]:
        """Current state of every breaker that has seen an outcome."""
        for breaker in self._breakers.values():
            breaker.admits(now)
        return {worker: b.state for worker, b in sorted(self._breakers.items())}
