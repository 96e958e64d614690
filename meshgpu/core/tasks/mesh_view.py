"""What the task queue reads from its node, and the adapter that reads it.

The task component needs the membership (who is live, at which address), the view and its
leader, the gossiped loads, and a way to publish its own load. :class:`MeshView` is that
contract as a protocol, so the component can be driven by a stub in unit tests and never
imports :mod:`meshgpu.core.node` (which creates the component: an import cycle).
:class:`NodeMeshView` adapts the real node to it by duck typing.
"""

from __future__ import annotations

from typing import Any, Protocol

from meshgpu.core.load import LoadVector
from meshgpu.core.membership import MemberInfo
from meshgpu.core.types import NodeId


class MeshView(Protocol):
    """What the task queue reads from its node (:class:`meshgpu.core.node.Node`)."""

    @property
    def view(self) -> int: ...

    def leader(self) -> NodeId | None: ...

    def live_members(self) -> list[NodeId]: ...

    def members(self) -> dict[NodeId, MemberInfo]: ...

    def loads(self) -> dict[NodeId, LoadVector]: ...

    def publish_load(self, load: LoadVector) -> None: ...


class NodeMeshView:
    """Adapts a :class:`meshgpu.core.node.Node` to :class:`MeshView` (no import cycle:
    the node is only duck-typed)."""

    def __init__(self, node: Any) -> None:
        self._node = node

    @property
    def view(self) -> int:
        view: int = self._node.view
        return view

    def leader(self) -> NodeId | None:
        leader: NodeId | None = self._node.leader()
        return leader

    def live_members(self) -> list[NodeId]:
        live: list[NodeId] = self._node.live_members()
        return live

    def members(self) -> dict[NodeId, MemberInfo]:
        members: dict[NodeId, MemberInfo] = self._node.table.members
        return members

    def loads(self) -> dict[NodeId, LoadVector]:
        loads: dict[NodeId, LoadVector] = self._node.loads()
        return loads

    def publish_load(self, load: LoadVector) -> None:
        self._node.load_gossip.set_own(load)
