"""The model catalog: name -> (sha256 of the ONNX bytes, version), the same on every node.

A last-writer-wins register per name. Each change (``CatalogChange``: a name set to a
digest, or removed) is stamped with a Lamport clock and this node's id, applied here and
gossiped as a :class:`CatalogUpdate` (piggybacked like loads; every node that learns
something newer gossips it on). A node keeps, for each name, the update with the highest
``(clock, origin)``; a removal is an update too (a tombstone, kept), so a removal and a
concurrent add are ordered the same way everywhere. The whole catalog travels with every
push-pull exchange (``anti_entropy_updates``), so a node that joins later or missed the
gossip catches up. An empty catalog adds nothing to any datagram.

The version of a name counts the digests it has named: setting a new digest makes it the
version after the one this node holds; setting the same digest again changes nothing,
unless its batching settings differ (then the update keeps the version).

A name may carry the model's dynamic batching settings (Triton's ``max_batch_size`` and
``max_queue_delay_microseconds``: :class:`Batching`), chosen by ``meshgpu models add
--max-batch N --max-delay-ms F``. They travel as a sixth field of the update, written only
when set, so a catalog without them keeps its bytes; workers read them by model digest
(docs/task-queue.md, "Dynamic batching on the worker").

Only names and digests travel here; the bytes go through the content-addressed model
store of the daemons (fetched from a member that holds them when first used).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from meshgpu.core.component import Component, NodeContext
from meshgpu.core.messages import (
    MAX_INT,
    Envelope,
    Message,
    expect_int,
    expect_list,
    expect_str,
    register_message,
)
from meshgpu.core.types import Address, NodeId
from meshgpu.errors import DecodeError

MAX_NAME_LENGTH = 64
DIGEST_LENGTH = 64
_HEX = frozenset("0123456789abcdef")


def check_name(name: str) -> str:
    """``name`` if it can name a model (the protocol's URLs carry it), else ValueError."""
    if not name or len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"a model name has 1 to {MAX_NAME_LENGTH} characters, got {name!r}")
    if not all(c.isalnum() or c in "-_." for c in name) or name[0] == ".":
        raise ValueError(f"model name {name!r}: letters, digits, '-', '_' and '.' only (not first)")
    return name


def _is_digest(text: str) -> bool:
    return len(text) == DIGEST_LENGTH and set(text) <= _HEX


MAX_BATCH_SIZE = 1024
"""Largest ``max_batch`` a catalog entry takes (rows of the first dimension in one run)."""
MAX_DELAY_US = 10_000_000
"""Longest batching delay a catalog entry takes (10 s; Triton's delays are microseconds)."""


@dataclass(frozen=True, slots=True)
class Batching:
    """A model's dynamic batching settings: at most ``max_batch`` rows of the first
    dimension in one device run (1: batching off), waiting at most ``max_delay_us``
    microseconds for more tasks when a batch is not full."""

    max_batch: int
    max_delay_us: int

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= MAX_BATCH_SIZE:
            raise ValueError(f"max_batch is 1 to {MAX_BATCH_SIZE}, got {self.max_batch}")
        if not 0 <= self.max_delay_us <= MAX_DELAY_US:
            raise ValueError(f"max_delay_us is 0 to {MAX_DELAY_US} (10 s), got {self.max_delay_us}")

    def to_fields(self) -> list[int]:
        return [self.max_batch, self.max_delay_us]

    @classmethod
    def from_fields(cls, fields: object) -> Batching:
        pair = expect_list(fields, "catalog batching", 2)
        return cls(
            expect_int(pair[0], "max_batch", 1, MAX_BATCH_SIZE),
            expect_int(pair[1], "max_delay_us", 0, MAX_DELAY_US),
        )


@register_message
@dataclass(frozen=True, slots=True)
class CatalogUpdate:
    """Piggybacked: ``name`` names ``digest`` at ``version`` ("" digest: removed), as set
    at Lamport ``clock`` by ``origin``; ``batching``: the model's batching settings when
    they were set (None: the worker's default for the model's graph)."""

    TAG: ClassVar[int] = 48
    name: str
    digest: str
    version: int
    clock: int
    origin: NodeId
    batching: Batching | None = None

    @property
    def removed(self) -> bool:
        return not self.digest

    def stamp(self) -> tuple[int, str]:
        return (self.clock, self.origin)

    def to_fields(self) -> list[Any]:
        fields: list[Any] = [self.name, self.digest, self.version, self.clock, self.origin]
        if self.batching is not None:
            fields.append(self.batching.to_fields())
        return fields

    @classmethod
    def from_fields(cls, fields: list[Any]) -> CatalogUpdate:
        expect_list(fields, "CatalogUpdate")
        if len(fields) not in (5, 6):
            raise DecodeError("malformed message: CatalogUpdate must be a list of 5 or 6 items")
        name = expect_str(fields[0], "model name", MAX_NAME_LENGTH)
        try:
            check_name(name)
        except ValueError as error:
            raise DecodeError(str(error)) from None
        digest = fields[1]
        if digest != "" and not (isinstance(digest, str) and _is_digest(digest)):
            raise DecodeError("a catalog digest is 64 lowercase hex digits or empty")
        return cls(
            name,
            digest,
            expect_int(fields[2], "model version", 0, MAX_INT),
            expect_int(fields[3], "catalog clock", 0, MAX_INT),
            expect_str(fields[4], "catalog origin"),
            Batching.from_fields(fields[5]) if len(fields) == 6 else None,
        )


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One name of the catalog as a node serves it."""

    digest: str
    version: int
    batching: Batching | None = None


class Catalog(Component):
    """This node's replica of the model catalog."""

    update_types = (CatalogUpdate,)

    def __init__(self, context: NodeContext) -> None:
        self.context = context
        self.clock = 0
        self.updates: dict[str, CatalogUpdate] = {}
        """The winning update of every name ever set (removals included)."""

    def entries(self) -> dict[str, CatalogEntry]:
        """The names in the catalog now (removed ones left out), sorted."""
        return {
            name: CatalogEntry(update.digest, update.version, update.batching)
            for name, update in sorted(self.updates.items())
            if not update.removed
        }

    def change(self, name: str, digest: str | None, batching: Batching | None = None) -> bool:
        """Set ``name`` to ``digest`` (None: remove it) with ``batching`` from here; False
        if nothing changed (the same digest and settings again, or removing a name not
        there)."""
        current = self.updates.get(name)
        new_digest = digest or ""
        if not new_digest:
            batching = None
        if current is None and not new_digest:
            return False
        if current is not None and current.digest == new_digest:
            if current.batching == batching or current.removed:
                return False
            version = current.version  # the same model, other batching settings
        elif current is None:
            version = 1
        elif new_digest:
            version = current.version + 1
        else:
            version = current.version  # a removal keeps the last version it removes
        self.clock += 1
        update = CatalogUpdate(
            name, new_digest, version, self.clock, self.context.node_id, batching
        )
        self._apply(update)
        self.context.count("catalog_changes")
        return True

    def restore(self, updates: tuple[CatalogUpdate, ...]) -> None:
        """Keep the updates this node held before a restart (its data dir's copy) where
        they are newer than what it holds now, and gossip them on."""
        for update in updates:
            self._apply(update)

    def _apply(self, update: CatalogUpdate) -> bool:
        """Keep ``update`` if it is newer than what we hold for its name (and gossip it
        on); True if it was."""
        if update.clock > self.clock:
            self.clock = update.clock
        current = self.updates.get(update.name)
        if current is not None and current.stamp() >= update.stamp():
            return False
        self.updates[update.name] = update
        self.context.broadcast(("catalog", update.name), update)
        return True

    def on_update(self, envelope: Envelope, update: Message, source: Address, now: float) -> None:
        if isinstance(update, CatalogUpdate) and self._apply(update):
            self.context.count("catalog_updates_applied")

    def anti_entropy_updates(self) -> list[Message]:
        return list(self.updates.values())
