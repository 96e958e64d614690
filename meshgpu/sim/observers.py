"""The hook interface through which checkers and extensions watch (and drive) a run.

A :class:`Observer` is told about everything that happens in a simulation: nodes coming
up and going down, faults, the non-datagram effects nodes return (``MemberChanged``,
``LeaderChanged``, and any effect type added later, such as task effects), periodic
samples, and the end of the run. Every hook is a no-op here; subclasses override what
they need. The runner only calls hooks a subclass actually overrides, so an observer
that needs no per-effect work costs nothing per effect.

Invariant checkers are observers that report :meth:`Observer.invariants`; metrics
collectors report :meth:`Observer.metrics`; extensions (workloads, device profiles, task
invariants) may also act on the run through the :class:`meshgpu.sim.runner.Simulation`
they receive: ``sim.call_at(t, fn)`` to run code at a virtual time, ``sim.inject(index,
event, t)`` to feed a core event to a node, ``sim.nodes[index]`` to read a node's state.
They must not mutate nodes directly and must draw randomness only from
``sim.random_stream(purpose)``, or determinism (invariant 10) is lost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshgpu.sim.faults import Fault, Reversal
    from meshgpu.sim.runner import Simulation


class Observer:
    """Base class of checkers and extensions; override the hooks you need."""

    name = "observer"
    effect_types: tuple[type, ...] | None = None
    """The effect types :meth:`on_effect` wants (None: all). Declaring them spares the
    runner a call per effect of other types, which matters at 1,000 nodes."""

    def on_start(self, sim: Simulation) -> None:
        """Before the first event; every node is up and none has been bootstrapped yet."""

    def on_node_up(self, sim: Simulation, index: int, now: float) -> None:
        """Node ``index`` (re)started at ``now`` (``sim.lives[index]`` says which life)."""

    def on_node_down(self, sim: Simulation, index: int, now: float, reason: str) -> None:
        """Node ``index`` stopped at ``now``; ``reason`` is ``"crash"`` or ``"leave"``."""

    def on_fault(
        self, sim: Simulation, fault: Fault | Reversal, targets: list[int], now: float
    ) -> None:
        """``fault`` was applied to ``targets`` (already in effect when this is called)."""

    def on_effect(self, sim: Simulation, index: int, effect: Any, now: float) -> None:
        """Node ``index`` returned ``effect`` (every effect except ``SendDatagram``)."""

    def on_sample(self, sim: Simulation, now: float) -> None:
        """Called every ``sample_interval_s`` of virtual time."""

    def on_finish(self, sim: Simulation, now: float) -> None:
        """After the last event of the run."""

    def invariants(self) -> dict[str, str]:
        """Invariant name -> ``"ok"`` or the text of the first violation."""
        return {}

    def metrics(self) -> dict[str, Any]:
        """JSON-ready numbers this observer measured, merged into the report."""
        return {}


def overrides(observer: Observer, hook: str) -> bool:
    """Whether ``observer``'s class replaces the no-op ``hook`` of :class:`Observer`."""
    return getattr(type(observer), hook) is not getattr(Observer, hook)
