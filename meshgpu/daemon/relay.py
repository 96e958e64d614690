"""A large upload relayed to the next holders as it arrives (docs/daemon.md, "Relayed
uploads").

A client's inputs larger than one range come to its entry node as ``put_inputs``
ranges, and the task they belong to is acknowledged only once ``replicas`` nodes hold a
checked, durable copy. Received first and then fetched again by a second holder, a GiB
was written, hashed and synced twice in sequence (and a third time when the second
holder's fetch outlasted the origin's patience and it asked one more node). Now the
entry node passes each range on, as soon as it wrote it itself, to ``replicas - 1``
other live members chosen at random, with the same ranged ``put_inputs`` a client
sends: the copies are written, hashed and synced at the same time, each receiver checks
the whole payload against its digest (the digest is the inputs' name) and its layout
before it installs it, and the entry node answers the client's last range once every
relay ended. The submission that follows names those nodes (``SubmitTask.copies_at``),
and the origin asks them first to hold the task: they answer from their own disk.

The relay is an optimisation the guarantees do not rest on: a relayed copy is an
ordinary stored payload, and a task counts a node as a holder only once that node
journaled the task after a hold request, exactly as before. A relay that fails (its
target dies, its disk is full, the range window stalls past the transfer timeout)
stops quietly and leaves the replication to the hold requests; an upload that fails
stops its relays (the target drops the unfinished copy as it drops any sender's).
Rejected: the holders pulling from the entry node while the upload is still arriving
(the core names the holders only at the submit, after the upload); the client sending
to every holder itself (the client knows one node of the mesh, and pays its uplink
``replicas`` times); acknowledging the client's last range before the relays end (the
submit would race the relayed copy and fetch the payload a second time).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import trio

from meshgpu.core.types import NodeId
from meshgpu.daemon.auth.envelope import Buffer
from meshgpu.daemon.transfers import PutCall, push
from meshgpu.errors import MeshError

logger = logging.getLogger("meshgpu.daemon")

REMEMBERED = 1024
"""Uploads whose relayed copies an entry node remembers for the submits that name them."""

OpenLink = Callable[[NodeId], AbstractAsyncContextManager[PutCall]]
"""Opens requests to a node on a connection of their own (``transfer_link``)."""


@dataclass
class _Target:
    node_id: NodeId
    ranges: trio.MemorySendChannel[tuple[int, Buffer, str | None]]
    done: trio.Event = field(default_factory=trio.Event)
    stored: bool = False


class InputRelay:
    """One upload's ranges passed on to other nodes, in order, as they are written
    here. :meth:`feed` each range after writing it, then :meth:`finish` (the nodes that
    stored the payload) or :meth:`abort`."""

    def __init__(self, targets: list[_Target]) -> None:
        self._targets = targets

    async def feed(self, offset: int, data: Buffer, sha256: str | None = None) -> None:
        """Hand one range (the next in order; the last with the digest the sender said)
        to every relay still going; waits while a relay has its window of ranges
        unanswered (memory stays bounded)."""
        for target in self._targets:
            # A relay that ended (failed, or its target held the payload already) takes none.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await target.ranges.send((offset, data, sha256))

    async def finish(self) -> tuple[NodeId, ...]:
        """Wait for every relay to end; the nodes that confirmed a stored copy."""
        for target in self._targets:
            target.ranges.close()
        for target in self._targets:
            await target.done.wait()
        return tuple(target.node_id for target in self._targets if target.stored)

    def abort(self) -> None:
        """The upload failed: stop every relay (no further range comes)."""
        for target in self._targets:
            target.ranges.close()


class Relays:
    """Starts the relays of an entry node's uploads and remembers, per input digest, the
    nodes that took a relayed copy (for the submit that follows)."""

    def __init__(
        self,
        node_id: NodeId,
        live_members: Callable[[], Sequence[NodeId]],
        open_link: OpenLink,
        chunk: Callable[[], int],
        shuffle: Callable[[list[NodeId]], None],
    ) -> None:
        self.node_id = node_id
        self._live_members = live_members
        self._open_link = open_link
        self._chunk = chunk
        self._shuffle = shuffle
        self._copies: OrderedDict[str, tuple[NodeId, ...]] = OrderedDict()
        self.nursery: trio.Nursery | None = None
        """Where the relays run (the data plane's nursery: they outlive one request)."""

    def start(self, name: str, size: int, copies: int, *, named: bool = True) -> InputRelay | None:
        """Relays of an upload of ``size`` bytes to ``copies - 1`` live members; None when
        there is nobody to relay to (or no nursery yet). ``name``: the inputs' digest, or
        (``named`` false) the name of an upload whose digest comes with its last range,
        relayed under a fresh upload id of its own."""
        others = [n for n in self._live_members() if n != self.node_id]
        if copies < 2 or not others or self.nursery is None:
            return None
        self._shuffle(others)
        targets = []
        for node_id in others[: copies - 1]:
            send, receive = trio.open_memory_channel[tuple[int, Buffer, str | None]](0)
            target = _Target(node_id, send)
            targets.append(target)
            self.nursery.start_soon(self._relay, target, receive, name, size, named)
        return InputRelay(targets)

    def note(self, digest: str, nodes: tuple[NodeId, ...]) -> None:
        """``nodes`` hold a relayed copy of inputs ``digest``."""
        self._copies[digest] = nodes
        self._copies.move_to_end(digest)
        while len(self._copies) > REMEMBERED:
            self._copies.popitem(last=False)

    def copies_of(self, digest: str) -> tuple[NodeId, ...]:
        """The nodes a relay gave a copy of inputs ``digest`` (none if not relayed)."""
        return self._copies.get(digest, ())

    async def _relay(
        self,
        target: _Target,
        ranges: trio.MemoryReceiveChannel[tuple[int, Buffer, str | None]],
        name: str,
        size: int,
        named: bool,
    ) -> None:
        claimed: list[str] = [name] if named else []

        async def read(offset: int, length: int) -> Buffer:
            try:
                at, data, sha256 = await ranges.receive()
            except trio.EndOfChannel:
                raise MeshError("the upload ended before its last range") from None
            if at != offset:
                raise MeshError(f"range at {at} relayed where {offset} was next")
            if sha256 is not None and not named:
                claimed.append(sha256)
            return data

        def digest() -> str:
            if not claimed:
                raise MeshError("the upload's last range came without its digest")
            return claimed[0]

        what: dict[str, object] = {"digest": name} if named else {"upload": secrets.token_hex(16)}
        what["relayed"] = True  # no warm copy there: the task runs at the entry node
        try:
            with ranges:
                async with self._open_link(target.node_id) as request:
                    answer = await push(
                        functools.partial(request, "put_inputs", **what),
                        read,
                        size,
                        digest,
                        self._chunk(),
                    )
                target.stored = bool(answer.get("stored"))
        except Exception as error:  # a relay never fails the upload: the hold requests remain
            if not isinstance(error, MeshError | OSError | trio.TooSlowError):
                logger.exception("unexpected error relaying inputs %s", name[:12])
            logger.info(
                "relaying inputs %s to %s stopped (%s); the hold requests replicate them",
                name[:12],
                target.node_id,
                error or type(error).__name__,
            )
        finally:
            target.done.set()
