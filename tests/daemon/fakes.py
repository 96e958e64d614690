"""Fakes of a data plane's neighbours for unit tests of the daemon's parts: the node's
member list, the peer connections, the executor; the stores are real ones in a
temporary directory (they are plain files)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import trio

from meshgpu.core.tasks import TaskEntry, TaskId
from meshgpu.daemon.dataplane import DataPlane
from meshgpu.daemon.modelstore import ModelStore
from meshgpu.daemon.payloads import PayloadStore


class Fed(list[Any]):
    """The events a part fed, in order; ``until`` waits for the n-th."""

    def __init__(self) -> None:
        super().__init__()
        self._grew = trio.Event()

    def __call__(self, event: Any) -> None:
        self.append(event)
        self._grew.set()
        self._grew = trio.Event()

    async def until(self, count: int, within: float = 60.0) -> None:
        with trio.fail_after(within):
            while len(self) < count:
                await self._grew.wait()


class FakeNode:
    """Members by id, each at address ``(id, 1)``; ``live`` are held live."""

    def __init__(self, live: list[str]) -> None:
        self.live = list(live)

    def members(self) -> dict[str, Any]:
        return {n: SimpleNamespace(address=(n, 1), incarnation=0) for n in self.live}

    def live_members(self) -> list[str]:
        return list(self.live)


Answer = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass
class FakePeers:
    """Peer requests by node (the address's host): ``answer(node, op, fields)``."""

    answer: Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]] | None = None
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    async def call(
        self, address: tuple[str, int], op: str, *, timeout: float, **fields: Any
    ) -> dict[str, Any]:
        self.calls.append((address[0], op, fields))
        if self.answer is None:
            raise OSError(f"{address[0]} is unreachable")
        return await self.answer(address[0], op, fields)

    @asynccontextmanager
    async def dedicated(
        self, address: tuple[str, int], *, timeout: float
    ) -> AsyncIterator[Callable[..., Awaitable[dict[str, Any]]]]:
        """The connection of one large transfer: its requests go to ``answer`` too."""

        async def call(op: str, **fields: Any) -> dict[str, Any]:
            return await self.call(address, op, timeout=timeout, **fields)

        yield call


@dataclass
class FakeExecutor:
    """Runs a model by doubling every input; ``hold`` keeps each run before its slot
    until set, ``fail`` makes every run raise it."""

    hold: trio.Event | None = None
    fail: BaseException | None = None
    runs: int = 0
    slots: int = 1
    active: int = 0

    async def run(
        self,
        digest: str,
        model_path: Path,
        tensors: dict[str, np.ndarray],
        on_slot: Callable[[], None] | None = None,
    ) -> tuple[dict[str, np.ndarray], float]:
        if self.hold is not None:
            await self.hold.wait()
        if on_slot is not None:
            on_slot()
        self.runs += 1
        if self.fail is not None:
            raise self.fail
        return {"y": np.asarray(tensors["x"]) * 2}, 0.001


@dataclass
class Plane:
    """A data plane over fakes, and what it fed and counted."""

    plane: DataPlane
    node: FakeNode
    peers: FakePeers
    executor: FakeExecutor
    payloads: PayloadStore
    models: ModelStore
    entries: dict[TaskId, TaskEntry]
    fed: Fed
    counted: list[str]
    leaving: list[bool]


def data_plane(
    directory: Path,
    *,
    node_id: str = "w",
    live: list[str] | None = None,
    peers: FakePeers | None = None,
    executor: FakeExecutor | None = None,
    max_frame_bytes: int = 1 << 20,
) -> Plane:
    node = FakeNode(live if live is not None else [node_id])
    peers = peers or FakePeers()
    executor = executor or FakeExecutor()
    payloads = PayloadStore(directory / "payloads")
    models = ModelStore(directory / "models", 1 << 30)
    entries: dict[TaskId, TaskEntry] = {}
    fed = Fed()
    counted: list[str] = []
    leaving = [False]

    async def durable(seq: int) -> None:
        return None

    plane = DataPlane(
        node_id,
        node,
        peers,  # type: ignore[arg-type]
        payloads,
        models,
        executor,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]  (model fetches go through open_rpc: not faked)
        max_frame_bytes=max_frame_bytes,
        task_entry=entries.get,
        feed=fed,
        count=counted.append,
        write_payload=lambda key, kind, data, attempt: None,
        durable=durable,
        leaving=lambda: leaving[0],
    )
    return Plane(plane, node, peers, executor, payloads, models, entries, fed, counted, leaving)
