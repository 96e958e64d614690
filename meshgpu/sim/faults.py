"""Fault schedules: what goes wrong, when, to whom.

A schedule is a tuple of frozen fault records, each with ``at_s`` (virtual seconds from the
start). Faults that have a natural end take ``until_s``, and the runner schedules the
reversal itself with the *same* targets (so ``crash`` of one random node with ``until_s``
restarts that very node):

=============  =================================================  ====================
kind           effect                                             reversal (until_s)
=============  =================================================  ====================
``crash``      the node stops; its queued events are discarded    ``restart``
``restart``    a crashed node starts again with the same id       --
``leave``      the node is asked to leave gracefully, then stops  --
``partition``  nodes split into groups that cannot reach          ``heal``
               each other
``heal``       one group again                                    --
``network``    link parameters change (loss, latency, ...)        the old values
``slow``       the node handles received datagrams late           normal speed
=============  =================================================  ====================

Targets are :class:`NodeSelector` values: explicit indices, ranges, ``"all"``, or
``"leader"`` (the node most up nodes name as leader when the fault fires), optionally
narrowed to ``count`` nodes chosen at random (from the schedule's own random stream) among
the eligible ones.

:func:`schedule_to_toml` writes a schedule back as scenario TOML, which is what a failing
property test prints so the run can be reproduced with ``meshgpu simulate``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from meshgpu.errors import ConfigError

SelectorItem: TypeAlias = int | str
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")


@dataclass(frozen=True, slots=True)
class NodeSelector:
    """Which nodes a fault targets: indices, ``"a..b"`` ranges (b exclusive), ``"all"``,
    or ``"leader"``; then, if ``count`` is set, that many of them at random."""

    items: tuple[SelectorItem, ...] = ("all",)
    count: int | None = None

    def validate(self, node_count: int, where: str) -> None:
        """Raise ConfigError if an item is malformed or names a node that does not exist."""
        for item in self.items:
            for index in self._expand(item, node_count, where):
                if not 0 <= index < node_count:
                    raise ConfigError(
                        f"{where} names node {index}, but the scenario has {node_count} nodes "
                        f"(indices 0..{node_count - 1})"
                    )
        if self.count is not None and self.count < 1:
            raise ConfigError(f"{where}.count must be >= 1, got {self.count}")
        # A count over the nodes named ran as "all of them", and a crash of every node
        # was then reported as detection "not checked: every crash hit an unsettled mesh".
        named = len(self.expand(node_count)) + self.uses_leader()
        if self.count is not None and self.count > named:
            raise ConfigError(
                f"{where}.count is {self.count}, but the selector names {named} of the "
                f"scenario's {node_count} nodes; lower count or name more nodes"
            )

    def uses_leader(self) -> bool:
        return "leader" in self.items

    def expand(self, node_count: int, leader: int | None = None) -> list[int]:
        """The sorted candidate indices (before ``count`` narrows them)."""
        chosen: set[int] = set()
        for item in self.items:
            if item == "leader":
                if leader is not None:
                    chosen.add(leader)
                continue
            chosen.update(self._expand(item, node_count, "selector"))
        return sorted(i for i in chosen if 0 <= i < node_count)

    @staticmethod
    def _expand(item: SelectorItem, node_count: int, where: str) -> range | list[int]:
        if isinstance(item, bool):
            raise ConfigError(f"{where}: {item!r} is not a node index")
        if isinstance(item, int):
            return [item]
        if item == "all":
            return range(node_count)
        if item == "leader":
            return []
        match = _RANGE.match(item)
        if match is None:
            raise ConfigError(
                f"{where}: node selector {item!r} is not an index, 'a..b', 'all' or 'leader'"
            )
        return range(int(match.group(1)), int(match.group(2)))

    def to_toml(self) -> str:
        items = ", ".join(str(i) if isinstance(i, int) else f'"{i}"' for i in self.items)
        text = f"nodes = [{items}]"
        if self.count is not None:
            text += f", count = {self.count}"
        return text


@dataclass(frozen=True, slots=True)
class Crash:
    """Node(s) stop abruptly (kill -9); restarted at ``until_s`` if set."""

    at_s: float
    nodes: NodeSelector
    until_s: float | None = None
    keep_incarnation: bool = True
    kind: str = field(default="crash", init=False)


@dataclass(frozen=True, slots=True)
class Restart:
    """Crashed node(s) start again with the same id; incarnation kept if persisted."""

    at_s: float
    nodes: NodeSelector
    keep_incarnation: bool = True
    kind: str = field(default="restart", init=False)


@dataclass(frozen=True, slots=True)
class Leave:
    """Node(s) are asked to leave gracefully, then stop ``linger_s`` later."""

    at_s: float
    nodes: NodeSelector
    linger_s: float = 1.0
    kind: str = field(default="leave", init=False)


@dataclass(frozen=True, slots=True)
class Partition:
    """Split the mesh: explicit ``groups`` of selectors, or ``fractions`` of the nodes in
    index order (e.g. ``[0.6, 0.4]`` splits 5 nodes 3/2). Healed at ``until_s`` if set."""

    at_s: float
    groups: tuple[NodeSelector, ...] = ()
    fractions: tuple[float, ...] = ()
    until_s: float | None = None
    kind: str = field(default="partition", init=False)

    def resolve(self, node_count: int) -> list[list[int]]:
        if self.groups:
            return [group.expand(node_count) for group in self.groups]
        groups: list[list[int]] = []
        start = 0
        total = sum(self.fractions)
        cumulative = 0.0
        for fraction in self.fractions:
            cumulative += fraction
            end = round(node_count * cumulative / total)
            groups.append(list(range(start, end)))
            start = end
        return groups


@dataclass(frozen=True, slots=True)
class Heal:
    """Remove every partition."""

    at_s: float
    kind: str = field(default="heal", init=False)


@dataclass(frozen=True, slots=True)
class NetworkChange:
    """Change link parameters (see :class:`meshgpu.sim.network.LinkParams`).

    With neither ``nodes`` nor ``sources``/``destinations`` the default of every link
    changes; with ``nodes``, every link touching those nodes; with ``sources`` and/or
    ``destinations``, those directed links. Reverted at ``until_s`` if set.
    """

    at_s: float
    changes: tuple[tuple[str, float | str], ...]
    nodes: NodeSelector | None = None
    sources: NodeSelector | None = None
    destinations: NodeSelector | None = None
    until_s: float | None = None
    kind: str = field(default="network", init=False)


@dataclass(frozen=True, slots=True)
class Slow:
    """Node(s) handle every received datagram ``delay_s`` (+ uniform ``delay_jitter_s``)
    late, in arrival order, as a CPU-starved process does; timers fire ``tick_delay_s``
    late. The case Lifeguard was made for. Back to normal at ``until_s`` if set."""

    at_s: float
    nodes: NodeSelector
    delay_s: float = 0.5
    delay_jitter_s: float = 0.0
    tick_delay_s: float = 0.0
    until_s: float | None = None
    kind: str = field(default="slow", init=False)


Fault: TypeAlias = Crash | Restart | Leave | Partition | Heal | NetworkChange | Slow


@dataclass(frozen=True, slots=True)
class Reversal:
    """The end of a fault that had ``until_s``: observers see it like any other fault.

    ``undo`` puts the world back (restart the crashed targets, heal, restore links, end
    slowness); the runner calls it at ``at_s``. Never written in scenario files.
    """

    at_s: float
    fault: Fault
    targets: tuple[int, ...]
    undo: Callable[[Any], None] = field(compare=False, repr=False)
    kind: str = field(default="end", init=False)


FAULT_KINDS: dict[str, type] = {
    "crash": Crash,
    "restart": Restart,
    "leave": Leave,
    "partition": Partition,
    "heal": Heal,
    "network": NetworkChange,
    "slow": Slow,
}


def fault_to_toml(fault: Fault) -> str:
    """One ``[[fault]]`` table that :mod:`meshgpu.sim.scenario` parses back to ``fault``."""
    lines = ["[[fault]]", f'kind = "{fault.kind}"', f"at_s = {fault.at_s!r}"]
    if isinstance(fault, Crash | Restart | Leave | Slow):
        lines.append(fault.nodes.to_toml().replace(", count", "\ncount"))
    if isinstance(fault, Crash | Restart) and not fault.keep_incarnation:
        lines.append("keep_incarnation = false")
    if isinstance(fault, Leave):
        lines.append(f"linger_s = {fault.linger_s!r}")
    if isinstance(fault, Partition):
        if fault.groups:
            groups = ", ".join(g.to_toml().removeprefix("nodes = ") for g in fault.groups)
            lines.append(f"groups = [{groups}]")
        else:
            lines.append(f"fractions = {list(fault.fractions)!r}")
    if isinstance(fault, NetworkChange):
        for key, value in fault.changes:
            lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value!r}")
        for name, selector in (
            ("nodes", fault.nodes),
            ("from", fault.sources),
            ("to", fault.destinations),
        ):
            if selector is not None:
                lines.append(selector.to_toml().replace("nodes =", f"{name} =", 1))
    if isinstance(fault, Slow):
        lines.append(f"delay_s = {fault.delay_s!r}")
        lines.append(f"delay_jitter_s = {fault.delay_jitter_s!r}")
        lines.append(f"tick_delay_s = {fault.tick_delay_s!r}")
    until = getattr(fault, "until_s", None)
    if until is not None:
        lines.append(f"until_s = {until!r}")
    return "\n".join(lines)


def schedule_to_toml(faults: tuple[Fault, ...] | list[Fault]) -> str:
    """The whole schedule as ``[[fault]]`` tables, in time order."""
    return "\n\n".join(fault_to_toml(f) for f in sorted(faults, key=lambda f: f.at_s))
