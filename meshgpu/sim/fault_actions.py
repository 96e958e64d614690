"""Applying faults to a running simulation, and undoing those that end (``until_s``).

Kept apart from :mod:`meshgpu.sim.faults` (the schedule as data) so that the schedule can
be generated, printed and parsed without a simulation. Random target choices (``count``)
draw from the run's ``schedule`` stream, so they are part of the seed's determinism.

A reversal restores the state *from before its fault*: overlapping faults of the same
kind on the same links end in the order they were scheduled, and the last one to end
wins. ``heal`` (and a partition's ``until_s``) removes every partition.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meshgpu.sim.faults import (
    Crash,
    Fault,
    Heal,
    Leave,
    NetworkChange,
    NodeSelector,
    Partition,
    Restart,
    Reversal,
    Slow,
)
from meshgpu.sim.network import LinkParams

if TYPE_CHECKING:
    from meshgpu.sim.runner import Simulation


def apply_fault(sim: Simulation, fault: Fault | Reversal) -> list[int]:
    """Put ``fault`` into effect now; returns the node indices it touched."""
    if isinstance(fault, Reversal):
        fault.undo(sim)
        return list(fault.targets)
    if isinstance(fault, Crash):
        targets = choose(sim, fault.nodes, sim.up_indices())
        for index in targets:
            sim.stop_node(index, "crash")
        if fault.until_s is not None:
            keep = fault.keep_incarnation
            _reverse_at(sim, fault, fault.until_s, targets, lambda s: _restart(s, targets, keep))
        return targets
    if isinstance(fault, Restart):
        down = [i for i in range(sim.node_count) if not sim.up[i]]
        targets = choose(sim, fault.nodes, down)
        _restart(sim, targets, fault.keep_incarnation)
        return targets
    if isinstance(fault, Leave):
        targets = choose(sim, fault.nodes, sim.up_indices())
        for index in targets:
            sim.request_leave(index, fault.linger_s)
        return targets
    if isinstance(fault, Partition):
        groups = fault.resolve(sim.node_count)
        sim.network.set_partition(groups)
        touched = sorted(i for group in groups for i in group)
        if fault.until_s is not None:
            _reverse_at(sim, fault, fault.until_s, touched, lambda s: s.network.heal())
        return touched
    if isinstance(fault, Heal):
        sim.network.heal()
        return []
    if isinstance(fault, NetworkChange):
        return _change_links(sim, fault)
    return _slow_down(sim, fault)


def choose(sim: Simulation, selector: NodeSelector, eligible: list[int]) -> list[int]:
    """The selector's nodes among ``eligible``, narrowed at random to ``count``."""
    leader = sim.majority_leader() if selector.uses_leader() else None
    allowed = set(eligible)
    candidates = [i for i in selector.expand(sim.node_count, leader) if i in allowed]
    if selector.count is not None and selector.count < len(candidates):
        candidates = sorted(sim.schedule_random.sample(candidates, selector.count))
    return candidates


def _reverse_at(
    sim: Simulation,
    fault: Fault,
    time: float,
    targets: list[int],
    undo: Callable[[Simulation], None],
) -> None:
    sim.schedule_fault(Reversal(at_s=time, fault=fault, targets=tuple(targets), undo=undo))


def _restart(sim: Simulation, targets: list[int], keep_incarnation: bool) -> None:
    for index in targets:
        sim.restart_node(index, keep_incarnation)


def _slow_down(sim: Simulation, fault: Slow) -> list[int]:
    targets = choose(sim, fault.nodes, list(range(sim.node_count)))
    for index in targets:
        sim.slow[index] = fault

    def back_to_normal(s: Simulation) -> None:
        for index in targets:
            if s.slow[index] is fault:
                s.slow[index] = None

    if fault.until_s is not None:
        _reverse_at(sim, fault, fault.until_s, targets, back_to_normal)
    return targets


def _change_links(sim: Simulation, fault: NetworkChange) -> list[int]:
    network = sim.network
    changes = dict(fault.changes)
    where = f"network fault at {fault.at_s}s"
    everyone = list(range(sim.node_count))
    if fault.nodes is None and fault.sources is None and fault.destinations is None:
        previous_default = network.default
        network.default = previous_default.updated(changes, where)
        if fault.until_s is not None:

            def restore_default(s: Simulation) -> None:
                s.network.default = previous_default

            _reverse_at(sim, fault, fault.until_s, [], restore_default)
        return []
    if fault.nodes is not None:
        targets = choose(sim, fault.nodes, everyone)
        saved_nodes = {i: network.node_overrides.get(i) for i in targets}
        for index in targets:
            network.node_overrides[index] = (saved_nodes[index] or network.default).updated(
                changes, where
            )
        if fault.until_s is not None:

            def restore_nodes(s: Simulation) -> None:
                _restore(s.network.node_overrides, saved_nodes)

            _reverse_at(sim, fault, fault.until_s, targets, restore_nodes)
        return targets
    sources = choose(sim, fault.sources, everyone) if fault.sources else everyone
    destinations = choose(sim, fault.destinations, everyone) if fault.destinations else everyone
    pairs = [(s, d) for s in sources for d in destinations if s != d]
    saved_links = {pair: network.link_overrides.get(pair) for pair in pairs}
    for pair in pairs:
        current = saved_links[pair] or network.params(*pair)
        network.link_overrides[pair] = current.updated(changes, where)

    def restore_links(s: Simulation) -> None:
        _restore(s.network.link_overrides, saved_links)

    touched = sorted(set(sources) | set(destinations))
    if fault.until_s is not None:
        _reverse_at(sim, fault, fault.until_s, touched, restore_links)
    return touched


def _restore(table: dict[Any, LinkParams], saved: dict[Any, LinkParams | None]) -> None:
    for key, value in saved.items():
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
