"""Crashes under load with real daemons: SIGKILL of the leader mid-stream, of a worker
mid-task (then restarted on its data dir: it rejoins and finishes its journal), and of
the client's own entry node; every task still ends with the right answer, once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import trio

from meshgpu.client import AsyncClient, AsyncTaskHandle
from meshgpu.client.localmesh import LocalMesh, LocalNode
from tests.integration.conftest import WAIT_S, start_mesh

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COUNT = 60


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[LocalMesh]:
    """A fresh mesh per test: each test kills a node, and a restarted node's rejoining is
    the subject of one test only, not the precondition of the next."""
    started = start_mesh(tmp_path)
    try:
        yield started
    finally:
        started.close()


@contextmanager
def within(seconds: float, step: str) -> Iterator[None]:
    """``trio.fail_after`` that says which step of the test was too slow."""
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        raise AssertionError(f"{step}: not done within {seconds} s") from None


def node_named(mesh: LocalMesh, name: str) -> LocalNode:
    return next(node for node in mesh.nodes if node.name == name)


async def stream_and_kill(
    client: AsyncClient, pixels: np.ndarray, count: int, kill_after: int, victim
) -> dict[int, np.ndarray]:
    """Map ``count`` single-sample tasks; call ``victim()`` (which kills) after
    ``kill_after`` results; returns the outputs by index, asserting each comes once."""
    seen: dict[int, np.ndarray] = {}
    with trio.fail_after(WAIT_S * 2):
        inputs = ({"pixels": pixels[i : i + 1]} for i in range(count))
        async for item in client.map("digits", inputs, window=24):
            assert item.index not in seen, "delivered twice"
            seen[item.index] = item.outputs["probabilities"][0]
            if len(seen) == kill_after:
                await victim()
    return seen


def check(seen: dict[int, np.ndarray], expected: np.ndarray, count: int) -> None:
    assert sorted(seen) == list(range(count))
    for index, probabilities in seen.items():
        np.testing.assert_allclose(probabilities, expected[index], rtol=1e-5, atol=1e-6)


async def test_leader_killed_mid_stream_loses_nothing(mesh: LocalMesh, digits) -> None:
    pixels, _, expected = digits
    async with AsyncClient(mesh.nodes[0].peer, environ={}) as probe:
        leader = node_named(mesh, (await probe.status())["leader"])
    entry = next(node for node in mesh.nodes if node is not leader)
    async with AsyncClient(entry.peer, environ={}) as client:

        async def kill_leader() -> None:
            leader.kill()

        seen = await stream_and_kill(client, pixels, 60, 20, kill_leader)
        assert not leader.running
        assert client.failovers == []  # the entry node lived: no reconnection needed
        status = await client.status()
        gone = next(m for m in status["members"] if m["node_id"] == leader.name)
        assert gone["state"] in ("suspect", "dead")
    check(seen, expected, 60)


async def test_worker_killed_mid_task_restarts_and_finishes_its_journal(
    mesh: LocalMesh, digits
) -> None:
    pixels, _, expected = digits
    entry = mesh.nodes[0]
    async with AsyncClient(entry.peer, environ={}) as client:
        handles: dict[int, AsyncTaskHandle] = {}
        submitted = trio.Event()

        async def submit_all() -> None:
            async def one(index: int) -> None:
                row = pixels[index : index + 1]
                # replicas=3: every node journals every task, the victim included
                handles[index] = await client.submit(
                    "digits", {"pixels": row}, replicas=3, direct=False
                )

            async with trio.open_nursery() as submitting:  # the client pipelines them
                for index in range(COUNT):
                    submitting.start_soon(one, index)
            submitted.set()

        victim: LocalNode | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit_all)
            with within(WAIT_S, "catching a worker with an assignment"):
                while victim is None:
                    rows = await client.tasks(state="assigned")
                    busy = [  # running a task it also holds (journaled)
                        r["worker"]
                        for r in rows
                        if r["worker"] not in (None, entry.name) and r["worker"] in r["holders"]
                    ]
                    if busy:
                        victim = node_named(mesh, busy[0])
                    elif submitted.is_set() and all(h.done() for h in handles.values()):
                        pytest.fail("every task finished before a worker was caught mid-task")
                incarnation = (await client.call("status"))["members"]
                before = next(m["incarnation"] for m in incarnation if m["node_id"] == victim.name)
                victim.kill()
        journal = Path(victim.data_dir) / "journal"
        sizes = {path.name: path.stat().st_size for path in journal.iterdir()}
        assert any(sizes.values()), f"{victim.name} journal empty: {sizes}, rows {rows}"
        await trio.to_thread.run_sync(mesh.restart, victim)
        async with AsyncClient(victim.peer, environ={}) as direct:
            with within(WAIT_S, "the restarted node seeing the mesh"):
                status = await direct.call("wait", alive=3, timeout=WAIT_S)
        assert status["node"]["node_id"] == victim.name
        assert sum(status["tasks"].values()) > 0  # its journal came back
        with within(WAIT_S, "the mesh taking the restarted node back"):
            while True:
                status = await client.status()
                seen = next(m for m in status["members"] if m["node_id"] == victim.name)
                if seen["state"] == "alive" and seen["incarnation"] > before:
                    break
                await client.call("wait", after_generation=status["generation"], timeout=WAIT_S)
        assert sorted(handles) == list(range(COUNT))
        for index, handle in handles.items():
            with within(WAIT_S, f"result {index}"):
                outputs = await handle.result()
            np.testing.assert_allclose(
                outputs["probabilities"][0], expected[index], rtol=1e-5, atol=1e-6
            )


async def test_entry_node_killed_client_reconnects_and_collects_everything(
    mesh: LocalMesh, digits
) -> None:
    pixels, _, expected = digits
    entry = mesh.nodes[2]
    async with AsyncClient(entry.peer, environ={}, status_interval=0.5) as client:
        await client.status()

        async def kill_entry() -> None:
            entry.kill()

        seen = await stream_and_kill(client, pixels, 60, 15, kill_entry)
        assert [f.from_node for f in client.failovers] == [entry.name]
        assert client.peer is not None and client.peer[0] != entry.name
    check(seen, expected, 60)
