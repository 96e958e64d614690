"""Lifeguard's two local timing refinements: shrinking suspicion timeouts and local health.

Dogan et al., "Lifeguard: Local Health Awareness for More Accurate Failure Detection"
(2018), as implemented in HashiCorp memberlist (``suspicion.go``, ``awareness.go``).

* A suspicion starts with a long timeout (``max``) that shrinks towards ``min`` as
  independent confirmations (suspicions of the same member by other nodes) arrive:
  ``timeout = max(min, max - (max - min) * log(C + 1) / log(K + 1))``. A real failure is
  seen by many nodes and declared fast; a false one (seen by one slow or unlucky node)
  lasts long enough for the member to refute it.
* A node's health score rises when it sees evidence that it is itself slow (a probe where
  even the relays' nacks did not arrive, having to refute a suspicion of itself) and falls
  with each successful probe; its own probe interval and timeouts are multiplied by
  ``1 + score``, so an overloaded node stops accusing healthy peers.
"""

from __future__ import annotations

import math

from meshgpu.core.types import NodeId


def suspicion_timeout(confirmations: int, expected: int, minimum: float, maximum: float) -> float:
    """Lifeguard's timeout after ``confirmations`` of ``expected`` independent confirmations."""
    if expected < 1 or maximum <= minimum:
        return minimum
    fraction = math.log(confirmations + 1) / math.log(expected + 1)
    return max(minimum, maximum - (maximum - minimum) * fraction)


class Suspicion:
    """One member's suspicion: when it started, who confirmed it, when it expires."""

    __slots__ = ("accusers", "expected", "incarnation", "maximum", "minimum", "started")

    def __init__(
        self,
        accuser: NodeId,
        incarnation: int,
        started: float,
        expected: int,
        minimum: float,
        maximum: float,
    ) -> None:
        self.accusers: dict[NodeId, None] = {accuser: None}
        self.incarnation = incarnation
        self.started = started
        self.expected = expected
        self.minimum = minimum
        self.maximum = maximum

    @property
    def confirmations(self) -> int:
        """Independent confirmations beyond the first accuser."""
        return len(self.accusers) - 1

    def confirm(self, accuser: NodeId) -> bool:
        """Count ``accuser``; True if it was new and still shortens the timeout (then it is
        worth re-gossiping, as memberlist does; later ones change nothing)."""
        if accuser in self.accusers or self.confirmations >= self.expected:
            return False
        self.accusers[accuser] = None
        return True

    def confirm_fully(self) -> bool:
        """Another node declared the member dead: shrink to the minimum timeout at once.
        True if that moved the deadline."""
        if self.confirmations >= self.expected and self.maximum <= self.minimum:
            return False
        self.maximum = self.minimum
        return True

    def deadline(self) -> float:
        """When the member is declared dead unless it refutes first."""
        timeout = suspicion_timeout(self.confirmations, self.expected, self.minimum, self.maximum)
        return self.started + timeout


class LocalHealth:
    """Lifeguard's local health multiplier: a score in ``[0, maximum]``."""

    __slots__ = ("maximum", "score")

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.score = 0

    def apply(self, delta: int) -> None:
        """Raise (evidence we are slow) or lower (a probe succeeded) the score, clamped."""
        self.score = min(self.maximum, max(0, self.score + delta))

    def scale(self, duration: float) -> float:
        """``duration`` stretched by our own health: ``duration * (1 + score)``."""
        return duration * (1 + self.score)
