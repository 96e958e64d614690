"""The nodes a simulation drives: what it needs of one, how it builds them, their names.

A simulation drives the real core (:class:`meshgpu.core.node.Node`, built by
:func:`core_node_factory`) unless a scenario extension passes its own ``NodeFactory``
(to wrap or configure nodes, e.g. with device profiles); anything that honours
:class:`SimulatedNode` will do. Node ``i`` of ``n`` is named :func:`node_id_for` and
listens at :func:`address_for`: stable, sortable, one private /24 per 250 nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from meshgpu.core.effects import Effect
from meshgpu.core.events import Event
from meshgpu.core.types import Address, NodeId
from meshgpu.sim.scenario import Scenario, mesh_config_for


class SimulatedNode(Protocol):
    """What the simulator needs of a node: the Node API contract's driver half."""

    node_id: NodeId

    @property
    def incarnation(self) -> int: ...

    def handle(self, event: Event, now: float) -> list[Effect]: ...

    def next_deadline(self) -> float: ...

    def live_members(self) -> list[NodeId]: ...

    def leader(self) -> NodeId | None: ...

    @property
    def view(self) -> int: ...


NodeFactory = Callable[[NodeId, Address, Any, float, int], SimulatedNode]
"""``factory(node_id, address, rng, now, incarnation) -> node``."""


def node_id_for(index: int, node_count: int) -> NodeId:
    """Stable, sortable ids: ``n-0000`` ... in index order."""
    return f"n-{index:0{max(4, len(str(node_count - 1)))}d}"


def address_for(index: int) -> Address:
    """A private-LAN address per node (one /24 per 250 nodes), gossip port 7946."""
    return (f"10.0.{index // 250}.{index % 250 + 1}", 7946)


DECODED_HANDOVER = True
"""Whether simulated nodes keep the decoded form of what they send for the receiver
(:func:`core_node`). False: every receiver decodes the bytes, the daemon's wire path;
``tests/sim/test_wire_path.py`` runs scenarios so and gets the same traces."""


def core_node(
    node_id: NodeId, address: Address, config: Any, rng: Any, now: float, incarnation: int
) -> Any:
    """A real core node as the simulator runs it: it keeps the decoded form of each
    datagram it sends (``NodeContext.keep_decoded``), which the runner hands to the
    receiver with the bytes, so that the receiver need not decode them. The bytes are
    made and accounted all the same (sizes, the MTU and piggyback limits, the trace's
    lengths and checksums); only the work of decoding what the same process encoded is
    saved. ``tests/sim/test_decoded_datagrams.py`` checks that every such envelope
    equals the decoded bytes, and ``tests/sim/test_wire_path.py`` that whole runs without
    it (:data:`DECODED_HANDOVER` off) give the same traces."""
    from meshgpu.core.node import Node

    node = Node(node_id, address, config, rng, now, incarnation)
    node.context.keep_decoded = DECODED_HANDOVER
    return node


def core_node_factory(scenario: Scenario) -> NodeFactory:
    """The factory of real core nodes configured as ``scenario`` says."""
    config = mesh_config_for(scenario)

    def build(node_id: NodeId, address: Address, rng: Any, now: float, incarnation: int) -> Any:
        return core_node(node_id, address, config, rng, now, incarnation)

    return build
