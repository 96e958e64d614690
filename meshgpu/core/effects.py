"""Effects: what :meth:`meshgpu.core.node.Node.handle` asks its driver to do.

Effects are frozen dataclasses, executed by the driver in the order returned.
Notifications (``MemberChanged``, ``LeaderChanged``) change nothing in the world; drivers
log them, the simulator's invariant checkers read them, ``meshgpu status`` shows them.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshgpu.core.types import Address, NodeId


@dataclass(frozen=True, slots=True)
class SendDatagram:
    """Send ``payload`` (an encoded message, already under the MTU) to ``destination``."""

    destination: Address
    payload: bytes


@dataclass(frozen=True, slots=True)
class MemberChanged:
    """This node's view of ``node_id`` changed state (alive, suspect, dead, left)."""

    node_id: NodeId
    address: Address
    state: str
    incarnation: int
    reason: str


@dataclass(frozen=True, slots=True)
class LeaderChanged:
    """This node now believes ``leader`` leads ``view``."""

    view: int
    leader: NodeId | None
