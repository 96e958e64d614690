"""Tasks through real daemons: results equal local onnxruntime, nothing is lost when the
leader or the entry node is killed mid-stream, and a restarted node resumes its journal."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import trio

from meshgpu.daemon.auth import Authenticator
from meshgpu.daemon.payloads import decode_tensors, encode_tensors
from meshgpu.daemon.rpc import open_rpc
from meshgpu.errors import ClientError
from tests.daemon.meshprocs import MeshProcess, call, launch_node, start_node, start_together

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODELS = Path(__file__).parents[2] / "meshgpu" / "inference" / "models"
MODEL = (MODELS / "digits.onnx").read_bytes()
DIGEST = hashlib.sha256(MODEL).hexdigest()
WAIT_S = 60.0


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    from meshgpu import inference

    pixels = np.load(MODELS / "digits_test.npz")["pixels"][:40]
    session = inference.load(MODEL, backend="onnxruntime")
    return pixels, session.run({"pixels": pixels})


def start_mesh(root: Path, count: int = 3) -> list[MeshProcess]:
    first = start_node(root / "n0", "--name", "n0")
    seed = ("--peer", f"127.0.0.1:{first.port}")
    others = [launch_node(root / f"n{i}", "--name", f"n{i}", *seed) for i in range(1, count)]
    return [first, *start_together(others)]


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[list[MeshProcess]]:
    nodes = start_mesh(tmp_path)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


async def ready(nodes: list[MeshProcess]) -> None:
    for node in nodes:
        await call(node, None, "wait", alive=len(nodes), timeout=WAIT_S)


async def submit_all(node: MeshProcess, pixels: np.ndarray) -> list[str]:
    async with open_rpc(node.address, Authenticator(None, "client-test")) as rpc:
        if not (await rpc.call("has_model", digest=DIGEST))["has"]:
            await rpc.call("put_model", digest=DIGEST, data=MODEL)
        ids = []
        for row in pixels:
            reply = await rpc.call(
                "submit",
                model_digest=DIGEST,
                inputs=encode_tensors({"pixels": row[None, :]}),
                direct=False,
            )
            assert reply["copies"] >= 1
            ids.append(reply["task_id"])
        return ids


async def collect(
    nodes: list[MeshProcess],
    ids: list[str],
    on_progress=None,  # type: ignore[no-untyped-def]
    timeout: float = WAIT_S * 2,
) -> dict[str, dict]:
    """Results by task id, failing over to the next node when one stops answering."""
    outcomes: dict[str, dict] = {}
    candidates = list(nodes)
    with trio.fail_after(timeout):
        while len(outcomes) < len(ids):
            node = candidates[0]
            try:
                async with open_rpc(node.address, Authenticator(None, "client-test")) as rpc:
                    missing = [t for t in ids if t not in outcomes]
                    async for outcome in rpc.stream("results", task_ids=missing):
                        if outcome["task_id"] is None:
                            break
                        assert outcome["task_id"] not in outcomes, "delivered twice"
                        if outcome["state"] == "unavailable":
                            continue  # done, but no result holder answered: ask again
                        outcomes[outcome["task_id"]] = outcome
                        if on_progress is not None:
                            await on_progress(len(outcomes))
                    await rpc.call("collected", task_ids=list(outcomes))
            except ClientError:
                candidates = candidates[1:] + candidates[:1]
                candidates = [c for c in candidates if c.process.poll() is None]
    return outcomes


def check(outcomes: dict[str, dict], ids: list[str], reference: dict[str, np.ndarray]) -> None:
    expected = reference["probabilities"]
    for index, task_id in enumerate(ids):
        outcome = outcomes[task_id]
        assert outcome["state"] == "done", outcome
        got = decode_tensors(outcome["outputs"])["probabilities"]
        np.testing.assert_allclose(got[0], expected[index], rtol=1e-5, atol=1e-6)


async def test_tasks_through_the_mesh_equal_local_onnxruntime(mesh, reference) -> None:
    pixels, expected = reference
    await ready(mesh)
    ids = await submit_all(mesh[1], pixels)
    outcomes = await collect([mesh[1]], ids)
    check(outcomes, ids, expected)
    workers = {outcome["worker"] for outcome in outcomes.values()}
    assert workers <= {"n0", "n1", "n2"} and workers


async def test_killing_the_leader_mid_stream_loses_nothing(mesh, reference) -> None:
    pixels, expected = reference
    await ready(mesh)
    entry = mesh[0]
    status = await call(entry, None, "status")
    leader = next(node for node in mesh if node.node_id == status["leader"])
    ids = await submit_all(entry if entry is not leader else mesh[1], pixels)
    killed = trio.Event()

    async def kill_at_a_third(done: int) -> None:
        if done >= len(ids) // 3 and not killed.is_set():
            leader.kill()
            killed.set()

    survivors = [node for node in mesh if node is not leader]
    order = [entry if entry is not leader else mesh[1], *survivors]
    outcomes = await collect(order, ids, on_progress=kill_at_a_third)
    assert killed.is_set()
    check(outcomes, ids, expected)


async def test_killing_the_entry_node_client_collects_elsewhere(mesh, reference) -> None:
    pixels, expected = reference
    await ready(mesh)
    entry = mesh[2]
    ids = await submit_all(entry, pixels[:20])
    entry.kill()
    outcomes = await collect(mesh[:2], ids, timeout=15.0)
    check(outcomes, ids, {"probabilities": expected["probabilities"][:20]})


async def test_restarted_node_rejoins_with_its_journal(mesh, reference) -> None:
    pixels, _ = reference
    await ready(mesh)
    ids = await submit_all(mesh[0], pixels[:10])
    victim = mesh[2]
    incarnation = (await call(victim, None, "status"))["node"]["incarnation"]
    journal = victim.data_dir / "journal" / "journal.log"
    assert journal.stat().st_size > 0
    victim.kill()
    restarted = start_node(victim.data_dir, "--peer", f"127.0.0.1:{mesh[0].port}")
    mesh[2] = restarted
    assert restarted.node_id == victim.node_id
    status = await call(restarted, None, "wait", alive=3, timeout=WAIT_S)
    assert status["node"]["incarnation"] > incarnation
    assert sum(status["tasks"].values()) > 0  # the journal came back
    outcomes = await collect(mesh[:2], ids)
    assert all(outcome["state"] == "done" for outcome in outcomes.values())


async def test_sigterm_leaves_gracefully_and_loses_nothing(mesh, reference) -> None:
    pixels, expected = reference
    await ready(mesh)
    ids = await submit_all(mesh[0], pixels)
    leaver = mesh[2]
    exit_codes: list[int] = []

    async def stop_at_a_third(done: int) -> None:
        if done >= len(ids) // 3 and not exit_codes:
            exit_codes.append(await trio.to_thread.run_sync(leaver.stop))

    outcomes = await collect(mesh[:2], ids, on_progress=stop_at_a_third)
    assert exit_codes == [0]
    check(outcomes, ids, expected)
    status = await call(mesh[0], None, "status")
    gone = next(m for m in status["members"] if m["node_id"] == leaver.node_id)
    assert gone["state"] == "left", gone
    assert gone["reason"]  # says why (e.g. "leave requested")
    remembered = next(g for g in status["gone"] if g["node_id"] == leaver.node_id)
    assert remembered["state"] == "left" and remembered["at"] > 0
