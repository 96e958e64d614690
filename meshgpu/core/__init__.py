"""The sans-IO mesh core: membership (SWIM + Lifeguard), load gossip, the rotating leader.

Drive a :class:`Node` with events and the current time; execute the effects it returns.
Public names are re-exported here; the modules behind them may change freely.
"""

from meshgpu.core.component import Component, NodeContext
from meshgpu.core.config import MeshConfig
from meshgpu.core.effects import Effect
from meshgpu.core.events import Event
from meshgpu.core.leader import leader_for_view, leader_score
from meshgpu.core.load import DeviceCapabilities, LoadUpdate, LoadVector
from meshgpu.core.membership import MemberInfo, MemberState
from meshgpu.core.messages import (
    PROTOCOL_VERSION,
    Envelope,
    Message,
    decode,
    encode,
    register_message,
)
from meshgpu.core.node import Node
from meshgpu.core.suspicion import suspicion_timeout
from meshgpu.core.types import Address, NodeId

__all__ = [
    "PROTOCOL_VERSION",
    "Address",
    "Component",
    "DeviceCapabilities",
    "Effect",
    "Envelope",
    "Event",
    "LoadUpdate",
    "LoadVector",
    "MemberInfo",
    "MemberState",
    "MeshConfig",
    "Message",
    "Node",
    "NodeContext",
    "NodeId",
    "decode",
    "encode",
    "leader_for_view",
    "leader_score",
    "register_message",
    "suspicion_timeout",
]
