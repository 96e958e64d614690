"""Load vectors: what each node reports about its capacity, gossiped with membership.

A node's load vector (active tasks, free slots, queue length, utilisation, memory,
device capabilities, per-model latency estimates) is versioned by a per-node counter the
node itself stamps; everywhere, a newer version replaces an older one and anything else is
ignored, so the gossip converges whatever order updates arrive in. Loads of dead or
departed members are dropped. The balancing functions read ``Node.loads()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from meshgpu.core.component import Component, NodeContext
from meshgpu.core.membership import LIVE_STATES, MemberInfo
from meshgpu.core.membership.wire import AntiEntropy
from meshgpu.core.messages import (
    Envelope,
    Message,
    encode_item,
    expect_bool,
    expect_float,
    expect_int,
    expect_list,
    expect_str,
    register_message,
)
from meshgpu.core.types import Address, NodeId

MAX_REPORTED_DEVICES = 4
"""At most this many usable devices and this many fallback models travel in a load."""
DEVICE_LABEL_LENGTH = 48
FALLBACK_DIGEST_LENGTH = 16
MAX_LABELS = 16
LABEL_LENGTH = 64
"""At most this many labels of this many characters per key or value travel in a load."""
"""Fallback models travel as digest prefixes: enough to name a model in ``status``."""

MAX_ENCODED_LOAD_BYTES = 600
"""A load update is trimmed (latency estimates dropped from the end) to fit this size, so
that one load never crowds membership updates out of a datagram."""


@dataclass(frozen=True, slots=True)
class DeviceCapabilities:
    """What a node's best device can do (for device-match balancing)."""

    device_types: tuple[str, ...] = ()
    fp16: bool = False
    memory_total: int = 0


@dataclass(frozen=True, slots=True)
class LoadVector:
    """One node's load; ``version`` is stamped by the node itself (newer wins)."""

    version: int = 0
    active_tasks: int = 0
    free_slots: int = 0
    queue_length: int = 0
    utilisation: float = 0.0
    memory_used: int = 0
    memory_total: int = 0
    capabilities: DeviceCapabilities = field(default_factory=DeviceCapabilities)
    latency_estimates: tuple[tuple[str, float], ...] = ()
    usable_devices: tuple[str, ...] = ()
    """The devices the node runs on that passed their probe (``"opencl:0 <name>"``,
    ``"onnxruntime:cpu"``); empty where nothing was probed (the simulator)."""
    fallback_models: tuple[str, ...] = ()
    """Digest prefixes of the models the node runs on onnxruntime because OpenCL cannot
    run them there (a device that failed its probe, kernels that failed to build)."""
    labels: tuple[tuple[str, str], ...] = ()
    """The node's ``(key, value)`` labels (``meshgpu join --label``), sorted, matched
    against tasks' ``require`` and ``prefer`` label pairs."""

    def to_fields(self) -> list[Any]:
        caps = self.capabilities
        fields = [
            self.version,
            self.active_tasks,
            self.free_slots,
            self.queue_length,
            self.utilisation,
            self.memory_used,
            self.memory_total,
            list(caps.device_types),
            caps.fp16,
            caps.memory_total,
            [[digest, seconds] for digest, seconds in self.latency_estimates],
        ]
        # Encoded only when present, so loads without them (the simulator's) keep their
        # exact bytes, and with them the reference trace hashes.
        if self.usable_devices or self.fallback_models or self.labels:
            fields += [list(self.usable_devices), list(self.fallback_models)]
        if self.labels:
            fields.append([list(pair) for pair in self.labels])
        return fields

    @classmethod
    def from_fields(cls, raw: object) -> LoadVector:
        fields = expect_list(raw, "load vector")
        if len(fields) not in (11, 13, 14):
            expect_list(raw, "load vector", 11)  # raises, naming the expected shape
        devices: tuple[str, ...] = ()
        fallback: tuple[str, ...] = ()
        labels: tuple[tuple[str, str], ...] = ()
        if len(fields) == 14:
            labels = tuple(
                (
                    expect_str(expect_list(pair, "label", 2)[0], "label key", LABEL_LENGTH),
                    expect_str(pair[1], "label value", LABEL_LENGTH),
                )
                for pair in expect_list(fields[13], "labels")[:MAX_LABELS]
            )
        if len(fields) >= 13:
            devices = tuple(
                expect_str(d, "usable device", DEVICE_LABEL_LENGTH)
                for d in expect_list(fields[11], "usable devices")[:MAX_REPORTED_DEVICES]
            )
            fallback = tuple(
                expect_str(m, "fallback model", FALLBACK_DIGEST_LENGTH)
                for m in expect_list(fields[12], "fallback models")[:MAX_REPORTED_DEVICES]
            )
        return cls(
            version=expect_int(fields[0], "load version"),
            active_tasks=expect_int(fields[1], "active tasks"),
            free_slots=expect_int(fields[2], "free slots"),
            queue_length=expect_int(fields[3], "queue length"),
            utilisation=expect_float(fields[4], "utilisation", 0.0, 1.0),
            memory_used=expect_int(fields[5], "memory used"),
            memory_total=expect_int(fields[6], "memory total"),
            capabilities=DeviceCapabilities(
                tuple(expect_str(t, "device type") for t in expect_list(fields[7], "device types")),
                expect_bool(fields[8], "fp16"),
                expect_int(fields[9], "device memory"),
            ),
            latency_estimates=tuple(
                (
                    expect_str(expect_list(pair, "latency estimate", 2)[0], "model digest", 128),
                    expect_float(pair[1], "latency seconds"),
                )
                for pair in expect_list(fields[10], "latency estimates")
            ),
            usable_devices=devices,
            fallback_models=fallback,
            labels=labels,
        )


@register_message
@dataclass(frozen=True, slots=True)
class LoadUpdate:
    """Piggybacked: ``node_id``'s load vector (at ``load.version``)."""

    TAG: ClassVar[int] = 32
    node_id: NodeId
    load: LoadVector

    def to_fields(self) -> list[Any]:
        return [self.node_id, self.load.to_fields()]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> LoadUpdate:
        expect_list(fields, "LoadUpdate", 2)
        return cls(expect_str(fields[0], "node id"), LoadVector.from_fields(fields[1]))


class LoadGossip(Component):
    """Keeps the newest load vector of every live member, and gossips our own."""

    update_types = (LoadUpdate,)

    def __init__(self, context: NodeContext, live: dict[NodeId, MemberInfo]) -> None:
        self.context = context
        self._members = live
        self.own = LoadVector()
        self._loads: dict[NodeId, LoadVector] = {context.node_id: self.own}

    def loads(self) -> dict[NodeId, LoadVector]:
        """Newest known load of every live member, ours included."""
        return dict(self._loads)

    def set_own(self, load: LoadVector) -> None:
        """Publish our new load (the version is ours to stamp: previous + 1)."""
        load = replace(load, version=self.own.version + 1)
        update = LoadUpdate(self.context.node_id, load)
        while len(encode_item(update)) > MAX_ENCODED_LOAD_BYTES and load.latency_estimates:
            load = replace(load, latency_estimates=load.latency_estimates[:-1])
            update = LoadUpdate(self.context.node_id, load)
            self.context.count("load_estimates_trimmed")
        self.own = load
        self._loads[self.context.node_id] = load
        self.context.broadcast(("load", self.context.node_id), update)

    def on_update(self, envelope: Envelope, update: Message, source: Address, now: float) -> None:
        if not isinstance(update, LoadUpdate):
            return
        node_id = update.node_id
        if node_id == self.context.node_id:
            return
        info = self._members.get(node_id)
        if info is None or info.state not in LIVE_STATES:
            return
        known = self._loads.get(node_id)
        if known is not None and known.version >= update.load.version:
            return
        self._loads[node_id] = update.load
        if not isinstance(envelope.body, AntiEntropy):
            self.context.broadcast(("load", node_id), update)

    def on_member_changed(self, info: MemberInfo, previous: MemberInfo | None) -> None:
        if info.state not in LIVE_STATES and info.node_id != self.context.node_id:
            self._loads.pop(info.node_id, None)
            self.context.update_queue.discard(("load", info.node_id))

    def on_members_joined(self, infos: list[MemberInfo]) -> None:
        pass  # on_member_changed does nothing for a live member

    def forget(self, node_id: NodeId) -> None:
        """A member was forgotten entirely."""
        self._loads.pop(node_id, None)

    def anti_entropy_updates(self) -> list[Message]:
        # Version 0 is "never reported": nothing worth sending.
        return [LoadUpdate(n, load) for n, load in self._loads.items() if load.version > 0]
