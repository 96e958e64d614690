"""One connection of the client to one daemon, and the record of a failover.

A :class:`Link` lives as long as its TCP connection: it remembers what that peer has
been asked (results streams, uploaded models) so that a new link to another peer starts
clean and asks again, and it uploads to that peer what a submission needs there (the
model once, inputs larger than one request in ranges). :class:`Signal` is the client's wake-up bell.
"""

from __future__ import annotations

import functools
import logging
import secrets
from dataclasses import dataclass, field

import trio

from meshgpu.client.models import ModelBlob
from meshgpu.client.peers import Candidate
from meshgpu.daemon.blobs import TensorBlob
from meshgpu.daemon.rpc import RpcConnection
from meshgpu.daemon.transfers import HashingReader, memory_reader, push

logger = logging.getLogger("meshgpu.client")

UPLOAD_CHUNK_BYTES = 16 << 20
"""Model upload chunk (frames may be up to 64 MiB)."""


class Signal:
    """Wakes every waiter when something changed (an Event replaced after each fire)."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()


@dataclass
class Link:
    """One live connection to one daemon."""

    rpc: RpcConnection
    candidate: Candidate
    node_id: str
    models: set[str] = field(default_factory=set)
    upload_locks: dict[str, trio.Lock] = field(default_factory=dict)
    requested: set[str] = field(default_factory=set)
    broken: trio.Event = field(default_factory=trio.Event)
    why: str = ""
    nursery: trio.Nursery | None = None

    def fail(self, why: str) -> None:
        if not self.broken.is_set():
            self.why = why
            self.broken.set()

    async def upload_inputs(self, tensors: TensorBlob, chunk_bytes: int, *, replicas: int) -> str:
        """Send inputs larger than one request to this link's peer in ranges (put_inputs;
        transfers.push: a window of ranges in flight, each sent from the arrays' own
        memory); returns their digest. The first upload of ``tensors`` names itself by a
        fresh ``upload`` id and hashes each range while the ones before it travel (the
        digest goes with the last range); once the digest is known (a retry, a resubmit
        of the same inputs) the upload is named by it, and a peer that holds equal
        inputs already says so after the first range. ``replicas``: the copies the task
        will want, which the peer makes as the ranges arrive (docs/daemon.md, "Relayed
        uploads")."""
        digest = tensors.known_digest()
        if digest is not None:
            await push(
                functools.partial(self.rpc.call, "put_inputs", digest=digest, replicas=replicas),
                memory_reader(tensors),
                tensors.size,
                digest,
                chunk_bytes,
            )
            return digest
        reader = HashingReader(memory_reader(tensors))
        await push(
            functools.partial(
                self.rpc.call, "put_inputs", upload=secrets.token_hex(16), replicas=replicas
            ),
            reader,
            tensors.size,
            reader.hexdigest,
            chunk_bytes,
        )
        tensors.note_digest(reader.hexdigest())
        return reader.hexdigest()

    async def ensure_model(self, blob: ModelBlob) -> None:
        """Upload ``blob`` to this link's peer unless it has it (once per link and model)."""
        if blob.digest in self.models:
            return
        lock = self.upload_locks.setdefault(blob.digest, trio.Lock())
        async with lock:
            if blob.digest in self.models:
                return
            if not (await self.rpc.call("has_model", digest=blob.digest))["has"]:
                chunks = range(0, len(blob.data), UPLOAD_CHUNK_BYTES)
                for start in chunks:
                    end = start + UPLOAD_CHUNK_BYTES
                    await self.rpc.call(
                        "put_model",
                        digest=blob.digest,
                        data=blob.data[start:end],
                        more=end < len(blob.data),
                    )
                logger.info(
                    "uploaded model %s (%s) to %s", blob.name, blob.digest[:12], self.node_id
                )
            self.models.add(blob.digest)


@dataclass(frozen=True)
class Failover:
    """The client lost ``from_node`` and resumed on ``to_node`` after ``seconds``."""

    from_node: str
    to_node: str
    why: str
    seconds: float
