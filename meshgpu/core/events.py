"""Events: what a driver feeds into :meth:`meshgpu.core.node.Node.handle`.

The core is sans-IO (as in h11): a driver (the trio daemon or the simulator) turns the
outside world into these frozen dataclasses and calls ``effects = node.handle(event, now)``.
``now`` is seconds on the driver's monotonic clock; the core never reads a clock itself.

Contract for drivers:

* Call ``node.handle(Tick(), now)`` whenever ``now >= node.next_deadline()``.
* Feed every received datagram as :class:`DatagramReceived`, even garbage: the core
  decodes, rejects and counts; it never raises on bad bytes.
* Execute the returned effects *in order* (a ``Persist`` before the ``SendDatagram`` that
  acknowledges it).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshgpu.core.types import Address, NodeId


@dataclass(frozen=True, slots=True)
class Tick:
    """A timer the node asked for (via ``next_deadline``) has come due."""


@dataclass(frozen=True, slots=True)
class DatagramReceived:
    """Raw bytes arrived on the gossip socket from ``source``."""

    source: Address
    payload: bytes


@dataclass(frozen=True, slots=True)
class PeerDiscovered:
    """mDNS or a static ``--peer`` seed says a meshgpu node may be listening at ``address``."""

    address: Address
    node_id: NodeId | None = None


@dataclass(frozen=True, slots=True)
class LeaveRequested:
    """The operator asked this node to leave the mesh gracefully."""
