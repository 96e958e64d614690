"""The task queue's wire messages (tags 64-127 of the core registry).

* :class:`TaskUpdate` carries entry snapshots and tombstone intervals. Sent to every live
  member after a local change, and as the push half of the anti-entropy exchange
  (``reply=True``: answer with your own version of any of these entries you know more
  about).
* :class:`HoldRequest` asks a node to become a holder of a task (fetch its inputs).
* :class:`TaskDigest` / :class:`TaskWant`: the anti-entropy exchange (checksums of a slice
  of the table; the peer sends back what differs and asks for what it lacks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from meshgpu.core.messages import expect_bool, expect_int, expect_list, expect_str, register_message
from meshgpu.core.tasks.table import TaskEntry
from meshgpu.core.tasks.wire import entry_from_wire, entry_to_wire
from meshgpu.core.types import NodeId

CollectedRun = tuple[NodeId, int, int]


@register_message
@dataclass(frozen=True, slots=True)
class TaskUpdate:
    """Entries and tombstones from the sender's table.

    ``handover`` marks the last datagram of the sender's hand-over to the node it now
    believes leads (every open entry it holds or runs): from then on that leader counts
    the sender's busy slots from its table rather than from its gossiped load. Encoded as
    a fourth field only when set, so a three-field update still decodes."""

    TAG: ClassVar[int] = 64
    entries: tuple[TaskEntry, ...]
    collected: tuple[CollectedRun, ...] = ()
    reply: bool = False
    handover: bool = False

    def to_fields(self) -> list[Any]:
        fields = [
            [entry_to_wire(e) for e in self.entries],
            [[origin, low, high] for origin, low, high in self.collected],
            self.reply,
        ]
        if self.handover:
            fields.append(True)
        return fields

    @classmethod
    def from_fields(cls, fields: list[Any]) -> TaskUpdate:
        handover = False
        if type(fields) is list and len(fields) == 4:
            handover = expect_bool(fields[3], "handover")
            fields = fields[:3]
        expect_list(fields, "TaskUpdate", 3)
        entries = tuple(entry_from_wire(e) for e in expect_list(fields[0], "task entries"))
        runs: list[CollectedRun] = []
        for raw in expect_list(fields[1], "collected runs"):
            run = expect_list(raw, "collected run", 3)
            low = expect_int(run[1], "run low")
            high = expect_int(run[2], "run high", low)
            runs.append((expect_str(run[0], "run origin"), low, high))
        return cls(entries, tuple(runs), expect_bool(fields[2], "reply"), handover)


@register_message
@dataclass(frozen=True, slots=True)
class HoldRequest:
    """The origin asks the receiver to hold ``entry``'s task: fetch and keep its inputs."""

    TAG: ClassVar[int] = 65
    entry: TaskEntry

    def to_fields(self) -> list[Any]:
        return [entry_to_wire(self.entry)]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> HoldRequest:
        expect_list(fields, "HoldRequest", 1)
        return cls(entry_from_wire(fields[0]))


DigestItem = tuple[NodeId, int, int]


@register_message
@dataclass(frozen=True, slots=True)
class TaskDigest:
    """Anti-entropy: ``(origin, sequence, crc32 of the entry)`` for a slice of the sender's
    table, and its tombstones. The receiver answers with a ``TaskUpdate(reply=True)`` of its
    entries that differ and a ``TaskWant`` of the ids it lacks."""

    TAG: ClassVar[int] = 66
    items: tuple[DigestItem, ...]
    collected: tuple[CollectedRun, ...] = ()

    def to_fields(self) -> list[Any]:
        return [
            [[origin, sequence, crc] for origin, sequence, crc in self.items],
            [[origin, low, high] for origin, low, high in self.collected],
        ]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> TaskDigest:
        expect_list(fields, "TaskDigest", 2)
        items: list[DigestItem] = []
        for raw in expect_list(fields[0], "digest items"):
            item = expect_list(raw, "digest item", 3)
            items.append(
                (
                    expect_str(item[0], "digest origin"),
                    expect_int(item[1], "digest sequence"),
                    expect_int(item[2], "digest crc", 0, 2**32 - 1),
                )
            )
        return cls(tuple(items), _runs(fields[1]))


@register_message
@dataclass(frozen=True, slots=True)
class TaskWant:
    """Anti-entropy: send me these entries (ids as ``(origin, sequence)``)."""

    TAG: ClassVar[int] = 67
    ids: tuple[tuple[NodeId, int], ...]

    def to_fields(self) -> list[Any]:
        return [[[origin, sequence] for origin, sequence in self.ids]]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> TaskWant:
        expect_list(fields, "TaskWant", 1)
        ids = []
        for raw in expect_list(fields[0], "wanted ids"):
            pair = expect_list(raw, "wanted id", 2)
            ids.append((expect_str(pair[0], "wanted origin"), expect_int(pair[1], "wanted seq")))
        return cls(tuple(ids))


def _runs(raw_runs: object) -> tuple[CollectedRun, ...]:
    runs: list[CollectedRun] = []
    for raw in expect_list(raw_runs, "collected runs"):
        run = expect_list(raw, "collected run", 3)
        low = expect_int(run[1], "run low")
        high = expect_int(run[2], "run high", low)
        runs.append((expect_str(run[0], "run origin"), low, high))
    return tuple(runs)
