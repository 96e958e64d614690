"""Retry policies: how long to wait before a failed attempt runs again, and when to stop.

A policy is data carried in the task spec, so every leader that ever owns the task applies
the same rule. Only *transient* failures (device error, lost worker, timeout) are retried;
a permanent error (bad model, bad input) fails the task at once (see ``state.py``).

Back-off with jitter follows the "full jitter" advice of the AWS architecture blog
("Exponential Backoff And Jitter", 2015): spreading retries at random keeps a burst of
failures from coming back as a synchronized burst of retries. Randomness is injected.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from meshgpu.errors import TaskError


class BackoffKind(enum.Enum):
    """Shape of the delay as a function of the number of failures so far."""

    FIXED = "fixed"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Delay before retry number ``n`` (``n`` = failures so far, from 1) and the attempt cap.

    * fixed: ``base_s``
    * linear: ``base_s * n``
    * exponential: ``base_s * 2 ** (n - 1)``

    each capped at ``max_s``; with ``jitter`` in (0, 1] the delay is drawn uniformly from
    ``[delay * (1 - jitter), delay]``. ``max_attempts`` counts executions that failed: after
    that many transient failures the task is FAILED with the last reason.
    """

    kind: BackoffKind = BackoffKind.EXPONENTIAL
    base_s: float = 0.1
    max_s: float = 5.0
    max_attempts: int = 4
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise TaskError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.base_s < 0 or self.max_s < 0:
            raise TaskError("retry delays must not be negative")
        if not 0.0 <= self.jitter <= 1.0:
            raise TaskError(f"retry jitter must be within [0, 1], got {self.jitter}")

    def exhausted(self, failures: int) -> bool:
        """True once ``failures`` transient failures mean the task must give up."""
        return failures >= self.max_attempts

    def delay(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait before the next attempt after ``failures`` failures (>= 1)."""
        n = max(1, failures)
        if self.kind is BackoffKind.FIXED:
            delay = self.base_s
        elif self.kind is BackoffKind.LINEAR:
            delay = self.base_s * n
        else:
            # Cap the exponent so a large failure count cannot overflow a float.
            delay = self.base_s * 2.0 ** min(n - 1, 60)
        delay = min(delay, self.max_s)
        if self.jitter > 0.0:
            delay = rng.uniform(delay * (1.0 - self.jitter), delay)
        return delay
