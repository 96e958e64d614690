"""The simulated network: per-link latency, loss, duplication, reordering and partitions.

The model is a switched LAN seen from the datagram's point of view. Each directed link
``(source, destination)`` has :class:`LinkParams`; a datagram sent on it is

1. dropped if source and destination are in different partition groups (a partition
   cuts links at send time; datagrams already in flight still arrive, as they would from
   a switch buffer),
2. dropped with probability ``loss``,
3. delayed by ``latency_s`` plus a jitter draw (``none``, ``uniform`` on ``[0, jitter_s]``,
   ``exponential`` with mean ``jitter_s``, or ``lognormal`` with median ``jitter_s`` and
   shape ``jitter_sigma``: the long right tail real networks show),
4. with probability ``reorder``, delayed by a further uniform draw on ``[0, reorder_s]``,
   so it may overtake or be overtaken by its neighbours,
5. with probability ``duplicate``, sent twice (the copy gets its own latency draw).

Parameters are looked up per link: a per-link override, else a per-node override on the
source, else one on the destination, else the network default. Faults change these tables
(see :mod:`meshgpu.sim.faults`); each draw comes from its own stream
(:mod:`meshgpu.sim.randomness`).

Rejected alternative: a bandwidth/queueing model. Gossip datagrams are small and a lab LAN
is not bandwidth-bound for membership traffic; what breaks failure detectors is delay,
loss and slow receivers, which are modelled here and in the runner.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields, replace
from typing import Any

from meshgpu.errors import ConfigError

JITTER_KINDS = ("none", "uniform", "exponential", "lognormal")


@dataclass(frozen=True, slots=True)
class LinkParams:
    """How one directed link treats datagrams. All times in virtual seconds."""

    latency_s: float = 0.0002
    """Fixed one-way delay (a LAN switch hop is ~0.1-0.5 ms)."""
    jitter: str = "lognormal"
    """Distribution of the extra delay: none, uniform, exponential or lognormal."""
    jitter_s: float = 0.0001
    """Scale of the jitter: max (uniform), mean (exponential) or median (lognormal)."""
    jitter_sigma: float = 0.5
    """Shape of the lognormal jitter; 0.5 gives a modest tail, 1.0 a heavy one."""
    loss: float = 0.0
    """Probability that a datagram is dropped."""
    duplicate: float = 0.0
    """Probability that a datagram is delivered twice."""
    reorder: float = 0.0
    """Probability that a datagram gets an extra uniform delay on [0, reorder_s]."""
    reorder_s: float = 0.005
    """The largest extra delay of a reordered datagram."""

    def __post_init__(self) -> None:
        if self.jitter not in JITTER_KINDS:
            raise ConfigError(
                f"jitter must be one of {', '.join(JITTER_KINDS)}, not {self.jitter!r}"
            )
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} is a probability in [0, 1], got {value!r}")
        for name in ("latency_s", "jitter_s", "jitter_sigma", "reorder_s"):
            value = getattr(self, name)
            if not (value >= 0.0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")

    def updated(self, changes: dict[str, Any], where: str) -> LinkParams:
        """A copy with ``changes`` applied; unknown keys are a ConfigError naming ``where``."""
        known = {f.name for f in fields(self)}
        for key, value in changes.items():
            if key not in known:
                raise ConfigError(
                    f"unknown link parameter {key!r} in {where}; known: {', '.join(sorted(known))}"
                )
            expected = str if key == "jitter" else (int, float)
            if isinstance(value, bool) or not isinstance(value, expected):
                raise ConfigError(f"{where}.{key} has the wrong type: {value!r}")
        converted: dict[str, Any] = {
            k: (v if k == "jitter" else float(v)) for k, v in changes.items()
        }
        return replace(self, **converted)


LINK_PARAMETER_NAMES = tuple(f.name for f in fields(LinkParams))


class Network:
    """Link tables, the partition layout, and the draws that decide a datagram's fate.

    Node endpoints are indices ``0..n-1``. :meth:`transmit` returns the delivery delays
    of a datagram (empty when it is lost, two entries when duplicated).
    """

    def __init__(
        self, node_count: int, default: LinkParams, seed_streams: dict[str, random.Random]
    ):
        self.node_count = node_count
        self.default = default
        self.link_overrides: dict[tuple[int, int], LinkParams] = {}
        self.node_overrides: dict[int, LinkParams] = {}
        self.group_of: list[int] = [0] * node_count
        self._latency = seed_streams["latency"]
        self._loss = seed_streams["loss"]
        self._duplicate = seed_streams["duplicate"]
        self._reorder = seed_streams["reorder"]
        self.counters: dict[str, int] = {
            "sent": 0,
            "lost": 0,
            "partitioned": 0,
            "duplicated": 0,
            "reordered": 0,
        }

    # -- partitions -------------------------------------------------------------------

    def set_partition(self, groups: list[list[int]]) -> None:
        """Split the nodes into ``groups``; nodes not named form one more group together."""
        group_of = [len(groups)] * self.node_count
        for number, members in enumerate(groups):
            for index in members:
                group_of[index] = number
        self.group_of = group_of

    def heal(self) -> None:
        """Remove every partition: all nodes can reach each other again."""
        self.group_of = [0] * self.node_count

    @property
    def partitioned(self) -> bool:
        """True when some pair of nodes cannot reach each other."""
        first = self.group_of[0] if self.group_of else 0
        return any(g != first for g in self.group_of)

    def connected(self, a: int, b: int) -> bool:
        """Whether a datagram from ``a`` can reach ``b`` under the current partition."""
        return self.group_of[a] == self.group_of[b]

    # -- link parameters --------------------------------------------------------------

    def params(self, source: int, destination: int) -> LinkParams:
        """The parameters of the directed link ``source -> destination``."""
        if self.link_overrides:
            found = self.link_overrides.get((source, destination))
            if found is not None:
                return found
        if self.node_overrides:
            found = self.node_overrides.get(source) or self.node_overrides.get(destination)
            if found is not None:
                return found
        return self.default

    # -- the fate of one datagram -------------------------------------------------------

    def transmit(self, source: int, destination: int) -> tuple[float, ...]:
        """Delays after which copies of a datagram arrive; ``()`` when it is dropped."""
        counters = self.counters
        counters["sent"] += 1
        if self.group_of[source] != self.group_of[destination]:
            counters["partitioned"] += 1
            return ()
        if self.link_overrides or self.node_overrides:
            link = self.params(source, destination)
        else:
            link = self.default
        if link.loss and self._loss.random() < link.loss:
            counters["lost"] += 1
            return ()
        if link.jitter == "lognormal" and not link.reorder:
            # _delay inlined for the common link: the same draws, the same arithmetic,
            # and random.Random.gauss(0.0, 1.0) inlined too (CPython's Box-Muller: two
            # uniform draws give two normal deviates, the second kept in gauss_next for
            # the next call), so the stream sees exactly the calls gauss would make.
            latency: Any = self._latency  # gauss_next is CPython's, not in the stubs
            z = latency.gauss_next
            latency.gauss_next = None
            if z is None:
                x2pi = latency.random() * math.tau
                g2rad = math.sqrt(-2.0 * math.log(1.0 - latency.random()))
                z = math.cos(x2pi) * g2rad
                latency.gauss_next = math.sin(x2pi) * g2rad
            first = link.latency_s + link.jitter_s * math.exp(link.jitter_sigma * (0.0 + z))
        else:
            first = self._delay(link)
        if link.duplicate and self._duplicate.random() < link.duplicate:
            counters["duplicated"] += 1
            return (first, self._delay(link))
        return (first,)

    def _delay(self, link: LinkParams) -> float:
        delay = link.latency_s
        jitter = link.jitter
        if jitter == "lognormal":
            delay += link.jitter_s * math.exp(link.jitter_sigma * self._latency.gauss(0.0, 1.0))
        elif jitter == "uniform":
            delay += link.jitter_s * self._latency.random()
        elif jitter == "exponential" and link.jitter_s > 0.0:
            delay += self._latency.expovariate(1.0 / link.jitter_s)
        if link.reorder and self._reorder.random() < link.reorder:
            self.counters["reordered"] += 1
            delay += link.reorder_s * self._reorder.random()
        return delay
