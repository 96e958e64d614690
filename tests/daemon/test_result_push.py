"""Storing a result is part of finishing its task (dataplane.py, ``_push_result``): a
result no holder takes goes to another live member, and one no node takes fails the
attempt with every push's reason instead of being reported done."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from meshgpu.core.tasks import TaskId
from meshgpu.daemon.blobs import TensorBlob
from meshgpu.daemon.dataplane import DataPlane
from meshgpu.daemon.results import RESULT
from meshgpu.daemon.transfers import ResultSource, memory_reader
from meshgpu.errors import DiskFullError
from tests.daemon.fakes import data_plane

TASK = TaskId("o", 7)


@dataclass
class Peers:
    """Answers ``put_result`` ranges for the nodes in ``taking``; refuses the others."""

    taking: set[str]
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def call(
        self, address: tuple[str, int], op: str, *, timeout: float, **fields: Any
    ) -> dict[str, Any]:
        node = address[0]
        self.calls.append((node, fields))
        if node not in self.taking:
            raise DiskFullError(f"disk full on {node}")
        return {"stored": True} if not fields.get("more") else {"received": 1}

    @asynccontextmanager
    async def dedicated(
        self, address: tuple[str, int], *, timeout: float
    ) -> AsyncIterator[Callable[..., Awaitable[dict[str, Any]]]]:
        """The ranges of a large result, as ``call`` sees them (a connection of their own)."""

        async def call(op: str, **fields: Any) -> dict[str, Any]:
            return await self.call(address, op, timeout=timeout, **fields)

        yield call


def plane(peers: Peers, live: list[str]) -> DataPlane:
    directory = Path(tempfile.mkdtemp(prefix="meshgpu-push-"))
    fakes = data_plane(directory, live=live)
    fakes.plane.peers = peers  # type: ignore[assignment]
    return fakes.plane


def large_result() -> ResultSource:
    """A result of 2 MiB held in memory only (its spill failed): sent in ranges."""
    blob = TensorBlob({"y": np.arange(1 << 19, dtype=np.float32)})
    return ResultSource(blob.size, blob.digest(), memory_reader(blob), stored_here=False)


async def test_a_result_no_node_takes_fails_the_attempt_with_the_reasons(autojump_clock) -> None:
    peers = Peers(taking=set())
    holders, problems, _ = await plane(peers, ["w", "o", "h", "x"])._push_result(
        TASK, 1, large_result(), ["o", "h"]
    )
    assert holders == ()
    assert {node for node, _ in peers.calls} == {"o", "h", "x"}  # the holders, then x
    assert all("disk full" in problem for problem in problems)
    first_ranges = [fields for _, fields in peers.calls if fields["offset"] == 0]
    assert len(first_ranges) == 3 * 3  # three nodes, three rounds


async def test_a_result_no_holder_takes_goes_to_another_live_member(autojump_clock) -> None:
    peers = Peers(taking={"x"})
    holders, _, _ = await plane(peers, ["w", "o", "h", "x"])._push_result(
        TASK, 1, large_result(), ["o", "h"]
    )
    assert holders == ("x",)
    ranges = [fields for node, fields in peers.calls if node == "x"]
    assert [f["offset"] for f in ranges] == [
        0,
        262144,
        524288,
        786432,
        1048576,
        1310720,
        1572864,
        1835008,
        2097152,
    ]
    assert ranges[-1]["more"] is False and ranges[-1]["sha256"] == large_result().sha256


async def test_a_holder_that_takes_it_is_enough(autojump_clock) -> None:
    peers = Peers(taking={"h"})
    started = trio.current_time()
    holders, problems, _ = await plane(peers, ["w", "o", "h", "x"])._push_result(
        TASK, 1, large_result(), ["o", "h"]
    )
    assert holders == ("h",)
    assert [problem.split(":")[0] for problem in problems] == ["o"]
    assert "x" not in {node for node, _ in peers.calls}  # no extra copy needed
    assert trio.current_time() == started  # no second round


@dataclass
class LatePeers(Peers):
    """Refuses every ``put_result`` until ``refusals`` calls have been refused, then
    answers as :class:`Peers` does for the nodes in ``taking``."""

    refusals: int = 0

    async def call(
        self, address: tuple[str, int], op: str, *, timeout: float, **fields: Any
    ) -> dict[str, Any]:
        if self.refusals > 0:
            self.refusals -= 1
            self.calls.append((address[0], fields))
            raise DiskFullError(f"disk full on {address[0]}")
        return await super().call(address, op, timeout=timeout, **fields)


async def test_the_workers_own_copy_alone_is_retried_for_another(autojump_clock) -> None:
    """Every other node refuses the first round: the worker's copy is not the only one
    the task ends with while another live member takes one a round later."""
    peers = LatePeers(taking={"o", "h", "x"}, refusals=3)
    blob = TensorBlob({"y": np.arange(4, dtype=np.float32)})
    result = ResultSource(blob.size, blob.digest(), memory_reader(blob), stored_here=True)
    holders, _, _ = await plane(peers, ["w", "o", "h", "x"])._push_result(
        TASK, 1, result, ["o", "h"]
    )
    assert "w" in holders
    assert set(holders) - {"w"}, holders


async def test_a_lone_worker_keeps_its_own_copy(autojump_clock) -> None:
    peers = Peers(taking=set())
    blob = TensorBlob({"y": np.arange(4, dtype=np.float32)})
    result = ResultSource(blob.size, blob.digest(), memory_reader(blob), stored_here=True)
    started = trio.current_time()
    holders, _, _ = await plane(peers, ["w"])._push_result(TASK, 1, result, [])
    assert holders == ("w",)
    assert trio.current_time() == started  # nobody else to wait for


@dataclass
class WatchingPeers(Peers):
    """:class:`Peers` that also sets ``first_range`` when a push's first range arrives
    and notes whether the worker's own copy was stored by then."""

    first_range: threading.Event = field(default_factory=threading.Event)
    stored_at_first_range: list[bool] = field(default_factory=list)
    payloads: Any = None

    async def call(
        self, address: tuple[str, int], op: str, *, timeout: float, **fields: Any
    ) -> dict[str, Any]:
        if fields["offset"] == 0:
            self.stored_at_first_range.append(self.payloads.has(("o", 7), RESULT))
            self.first_range.set()
        return await super().call(address, op, timeout=timeout, **fields)


async def test_a_large_result_is_pushed_from_memory_while_the_workers_copy_is_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The holders' copies do not wait for the worker's own to be written and synced:
    the worker's spill here is held until a holder got its first range (it would wait
    for ever if the pushes came after it), and every push's last range carries the
    digest the spill computed."""
    fakes = data_plane(tmp_path, live=["w", "o", "h"])
    peers = WatchingPeers(taking={"o", "h"}, payloads=fakes.payloads)
    fakes.plane.peers = peers  # type: ignore[assignment]
    write_to = TensorBlob.write_to

    def held_write_to(self: TensorBlob, path: Path) -> str:
        assert peers.first_range.wait(30), "no push started while the spill was under way"
        return write_to(self, path)

    monkeypatch.setattr(TensorBlob, "write_to", held_write_to)
    outputs = {"y": np.arange(1 << 19, dtype=np.float32)}
    result = await fakes.plane._result_source(TASK, outputs, 1)
    # One holder other than the worker: the worker keeps a copy of its own.
    holders, problems, _ = await fakes.plane._push_result(TASK, 1, result, ["o"])
    assert holders == ("o", "w") and not problems
    assert peers.stored_at_first_range and not any(peers.stored_at_first_range)
    digest = TensorBlob(outputs).digest()
    assert fakes.payloads.has(("o", 7), RESULT)
    lasts = [fields for _, fields in peers.calls if not fields["more"]]
    assert len(lasts) == 1 and all(fields["sha256"] == digest for fields in lasts)


async def test_a_worker_no_holder_of_a_task_with_two_live_holders_keeps_no_copy(
    tmp_path: Path,
) -> None:
    """Two holders other than the worker take the result: the worker writes no third
    copy to the disks theirs go to, and still sends the digest with each last range."""
    fakes = data_plane(tmp_path, live=["w", "o", "h"])
    peers = Peers(taking={"o", "h"})
    fakes.plane.peers = peers  # type: ignore[assignment]
    outputs = {"y": np.arange(1 << 19, dtype=np.float32)}
    result = await fakes.plane._result_source(TASK, outputs, 1)
    holders, problems, _ = await fakes.plane._push_result(TASK, 1, result, ["o", "h"])
    assert holders == ("h", "o") and not problems
    assert not fakes.payloads.has(("o", 7), RESULT)
    lasts = [fields for _, fields in peers.calls if not fields["more"]]
    assert [fields["sha256"] for fields in lasts] == [TensorBlob(outputs).digest()] * 2


async def test_a_worker_that_is_one_of_three_holders_keeps_its_copy(tmp_path: Path) -> None:
    """replicas=3 and the worker is a holder (a large-input task runs at its origin): two
    other live holders take the result, and the worker keeps its copy as the third holder
    (the origin's copy is also the one the client's early fetch is answered from)."""
    fakes = data_plane(tmp_path, live=["w", "o", "h"])
    peers = Peers(taking={"o", "h"})
    fakes.plane.peers = peers  # type: ignore[assignment]
    outputs = {"y": np.arange(1 << 19, dtype=np.float32)}
    result = await fakes.plane._result_source(TASK, outputs, 1)
    holders, problems, _ = await fakes.plane._push_result(TASK, 1, result, ["w", "o", "h"])
    assert holders == ("h", "o", "w") and not problems
    assert fakes.payloads.has(("o", 7), RESULT)


async def test_a_worker_that_skipped_its_copy_writes_it_when_a_holder_refuses(
    tmp_path: Path,
) -> None:
    """One of the two holders refuses: the worker writes its own copy after all, so the
    result has the two copies it had when the worker always kept one."""
    fakes = data_plane(tmp_path, live=["w", "o", "h"])
    peers = Peers(taking={"o"})
    fakes.plane.peers = peers  # type: ignore[assignment]
    outputs = {"y": np.arange(1 << 19, dtype=np.float32)}
    result = await fakes.plane._result_source(TASK, outputs, 1)
    holders, problems, _ = await fakes.plane._push_result(TASK, 1, result, ["o", "h"])
    assert holders == ("o", "w")
    assert [problem.split(":")[0] for problem in problems] == ["h"]
    assert fakes.payloads.has(("o", 7), RESULT)
    assert fakes.payloads.read_range(("o", 7), RESULT, 0, 16) == TensorBlob(outputs).view(0, 16)


async def test_a_result_the_worker_cannot_keep_is_still_pushed_with_its_digest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fakes = data_plane(tmp_path, live=["w", "o", "h"])
    peers = Peers(taking={"o", "h"})
    fakes.plane.peers = peers  # type: ignore[assignment]

    def full_disk(self: TensorBlob, path: Path) -> str:
        raise DiskFullError("disk full on w")

    monkeypatch.setattr(TensorBlob, "write_to", full_disk)
    outputs = {"y": np.arange(1 << 19, dtype=np.float32)}
    result = await fakes.plane._result_source(TASK, outputs, 1)
    holders, _, _ = await fakes.plane._push_result(TASK, 1, result, ["o"])
    assert holders == ("o",)  # not the worker: its copy was never stored
    assert not fakes.payloads.has(("o", 7), RESULT)
    lasts = [fields for _, fields in peers.calls if not fields["more"]]
    assert [fields["sha256"] for fields in lasts] == [TensorBlob(outputs).digest()]


async def test_a_large_result_kept_here_is_announced_by_its_size_without_reading_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """results.result_head: a result larger than a range on this node's disk is announced
    by its file's size; none of it is read back (a large result's ``done``)."""
    fakes = data_plane(tmp_path, live=["w", "o", "h"])
    fakes.plane.peers = Peers(taking={"o", "h"})  # type: ignore[assignment]
    outputs = {"y": np.arange(1 << 19, dtype=np.float32)}
    result = await fakes.plane._result_source(TASK, outputs, 1)
    holders, _, _ = await fakes.plane._push_result(TASK, 1, result, ["w", "o", "h"])
    assert "w" in holders and fakes.payloads.has(("o", 7), RESULT)

    def no_reading(*args: Any) -> bytes:
        raise AssertionError("the result was read to learn its size")

    monkeypatch.setattr(fakes.payloads, "read_range", no_reading)
    data, size = await fakes.plane.result_head(TASK, ["w"], 1)
    assert data is None and size == TensorBlob(outputs).size
