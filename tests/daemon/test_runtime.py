"""One daemon in-process: the API's answers and errors, and a task through a lone node."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from meshgpu.daemon.auth import Authenticator
from meshgpu.daemon.framing import FrameStream
from meshgpu.daemon.payloads import decode_tensors, encode_tensors
from meshgpu.daemon.rpc import RpcConnection, open_rpc
from meshgpu.daemon.runtime import Daemon
from meshgpu.daemon.settings import DaemonSettings
from meshgpu.errors import ClientError, DataDirLockedError, RequestFailedError

MODELS = Path(__file__).parents[2] / "meshgpu" / "inference" / "models"
MODEL = (MODELS / "digits.onnx").read_bytes()
DIGEST = hashlib.sha256(MODEL).hexdigest()


def settings(data_dir: Path) -> DaemonSettings:
    return DaemonSettings(
        data_dir=data_dir,
        bind="127.0.0.1",
        port=0,
        mdns=False,
        backend="onnxruntime",
        name="solo",
        drain_timeout=5.0,
    )


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with trio.open_nursery() as nursery:
        running: Daemon = await nursery.start(Daemon(settings(tmp_path / "solo")).run)
        yield running
        running.request_stop()


@pytest.fixture
async def rpc(daemon: Daemon) -> AsyncIterator[RpcConnection]:
    async with open_rpc(daemon.address, Authenticator(None, "client-test")) as connection:
        yield connection


async def test_status_of_a_lone_node(rpc: RpcConnection) -> None:
    status = await rpc.call("status")
    assert status["node"]["node_id"] == "solo"
    assert status["leader"] == "solo"
    assert [(m["node_id"], m["state"]) for m in status["members"]] == [("solo", "alive")]
    assert status["node"]["keyed"] is False and status["queue_length"] == 0


async def test_unknown_op_and_bad_fields_are_answered_not_fatal(rpc: RpcConnection) -> None:
    with pytest.raises(RequestFailedError, match="unknown op") as error:
        await rpc.call("launch_missiles")
    assert error.value.kind == "RemoteProtocolError"
    with pytest.raises(RequestFailedError, match="digest") as error:
        await rpc.call("has_model", digest="../../etc/passwd")
    with pytest.raises(RequestFailedError, match="put_model"):
        await rpc.call("submit", model_digest=DIGEST, inputs={})
    await rpc.call("put_model", digest=DIGEST, data=MODEL)
    with pytest.raises(RequestFailedError, match="needs 256 bytes") as error:
        await rpc.call(
            "submit",
            model_digest=DIGEST,
            inputs={"pixels": {"dtype": "<f4", "shape": [1, 64], "data": b"x"}},
        )
    assert error.value.kind == "DecodeError"
    pixels = encode_tensors({"pixels": np.zeros((1, 64), dtype=np.float32)})
    with pytest.raises(RequestFailedError, match="malformed field"):
        await rpc.call("submit", model_digest=DIGEST, inputs=pixels, replicas="two")
    with pytest.raises(RequestFailedError, match="priority"):
        await rpc.call("submit", model_digest=DIGEST, inputs=pixels, priority="urgent")
    assert (await rpc.call("ping"))["node_id"] == "solo"  # the connection still serves


async def test_model_upload_is_verified(rpc: RpcConnection) -> None:
    with pytest.raises(RequestFailedError, match="hashes to") as error:
        await rpc.call("put_model", digest=hashlib.sha256(b"other").hexdigest(), data=MODEL)
    assert error.value.kind == "DigestMismatchError"
    half = len(MODEL) // 2
    partial = await rpc.call("put_model", digest=DIGEST, data=MODEL[:half], more=True)
    assert partial["received"] == half
    assert (await rpc.call("put_model", digest=DIGEST, data=MODEL[half:]))["stored"]
    assert (await rpc.call("has_model", digest=DIGEST))["has"]


async def test_request_without_id_closes_only_that_connection(daemon: Daemon) -> None:
    stream = await trio.open_tcp_stream(*daemon.address)
    frames = FrameStream(stream, Authenticator(None, "rude-client"))
    await frames.send({"op": "status"})
    reply = await frames.receive()
    assert reply["ok"] is False and "integer 'id'" in reply["error"]
    assert await frames.receive() is None  # closed by the daemon
    async with open_rpc(daemon.address, Authenticator(None, "client-test")) as rpc:
        status = await rpc.call("status")
    assert status["counters"]["daemon"]["frames_rejected"] == 1


async def test_truncated_frame_is_counted(daemon: Daemon) -> None:
    stream = await trio.open_tcp_stream(*daemon.address)
    async with stream:
        await stream.send_all(struct.pack("!I", 100) + b"\x00" * 10)
    async with open_rpc(daemon.address, Authenticator(None, "client-test")) as rpc:
        await rpc.call("wait", counter=["daemon", "frames_rejected", 1], timeout=10)


async def run_one(rpc: RpcConnection, inputs: dict[str, np.ndarray], digest: str = DIGEST):
    reply = await rpc.call(
        "submit", model_digest=digest, inputs=encode_tensors(inputs), direct=False
    )
    assert reply["copies"] == 1 and reply["replicas"] == 2  # a lone node holds the only copy
    outcomes = [o async for o in rpc.stream("results", task_ids=[reply["task_id"]])]
    assert outcomes[-1]["task_id"] is None
    await rpc.call("collected", task_ids=[reply["task_id"]])
    return outcomes[0]


async def test_a_task_runs_on_a_lone_node(rpc: RpcConnection) -> None:
    from meshgpu import inference

    await rpc.call("put_model", digest=DIGEST, data=MODEL)
    pixels = np.load(MODELS / "digits_test.npz")["pixels"][:3]
    outcome = await run_one(rpc, {"pixels": pixels})
    assert outcome["state"] == "done" and outcome["worker"] == "solo"
    expected = inference.load(MODEL, backend="onnxruntime").run({"pixels": pixels})
    got = decode_tensors(outcome["outputs"])
    np.testing.assert_allclose(got["probabilities"], expected["probabilities"], rtol=1e-6)


async def test_wrong_input_shape_fails_the_task_with_the_reason(rpc: RpcConnection) -> None:
    await rpc.call("put_model", digest=DIGEST, data=MODEL)
    outcome = await run_one(rpc, {"pixels": np.zeros((1, 63), dtype=np.float32)})
    assert outcome["state"] == "failed"
    assert "pixels" in outcome["reason"] and outcome["outputs"] is None


async def test_malformed_model_fails_the_task_with_the_reason(rpc: RpcConnection) -> None:
    garbage = b"this is not an onnx model" * 10
    digest = hashlib.sha256(garbage).hexdigest()
    await rpc.call("put_model", digest=digest, data=garbage)
    outcome = await run_one(rpc, {"pixels": np.zeros((1, 64), dtype=np.float32)}, digest)
    assert outcome["state"] == "failed" and "Model" in outcome["reason"]
    assert (await rpc.call("ping"))["node_id"] == "solo"


async def test_second_daemon_on_the_same_dir_is_refused(daemon: Daemon) -> None:
    with pytest.raises(DataDirLockedError, match="another meshgpu daemon"):
        await Daemon(settings(daemon.settings.data_dir)).run()


async def test_results_for_an_unknown_task_end_at_the_timeout(rpc: RpcConnection) -> None:
    responses = [r async for r in rpc.stream("results", task_ids=["nobody/1"], timeout=0.2)]
    assert responses == [
        {
            "id": responses[0]["id"],
            "task_id": None,
            "pending": ["nobody/1"],
            "ok": True,
            "more": False,
        }
    ]


async def test_a_datagram_from_a_twin_stops_a_newcomer(tmp_path: Path) -> None:
    from meshgpu.daemon.auth import Channel
    from meshgpu.errors import DuplicateIdentityError

    daemon = Daemon(settings(tmp_path / "newcomer"))
    refused: list[DuplicateIdentityError] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            twin = Authenticator(None, "solo", mesh="default").new_session(
                Channel.DATAGRAM
            )  # same id
            with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as udp:
                await udp.sendto(twin.seal(b"gossip"), daemon.address)
            with trio.fail_after(10):
                await daemon._stop.wait()
    except* DuplicateIdentityError as group:
        refused.extend(group.exceptions)  # type: ignore[arg-type]
    # This "twin" is a bare socket: it does not answer ping with its data dir's token,
    # so both possible causes are named.
    assert len(refused) == 1 and "127.0.0.1" in str(refused[0])
    assert "either this data dir" in str(refused[0]) and "of its own" in str(refused[0])
    # The twin stopped without gossiping a leave in the real owner's name.
    assert daemon.member_history.get("solo", {}).get("state") != "left"


async def test_a_twin_found_while_starting_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newcomer that meets its twin while it starts (the seed said so, or the twin's
    gossip came in) goes no further: no mDNS registration, no HTTP port, no keyring
    exchange to start and then stop again. On a loaded machine each of those took
    seconds of the refused process's life (zeroconf's import, register and goodbye)."""
    from meshgpu.daemon.peer_finding import PeerFinder
    from meshgpu.errors import DuplicateIdentityError

    daemon = Daemon(settings(tmp_path / "newcomer"))
    real_run = PeerFinder.run
    found: list[str] = []

    async def run_meeting_a_twin(finder: PeerFinder, *, task_status: trio.TaskStatus[None]) -> None:
        daemon.request_stop(DuplicateIdentityError("node id solo is already used"))
        await real_run(finder, task_status=task_status)

    monkeypatch.setattr(PeerFinder, "run", run_meeting_a_twin)
    monkeypatch.setattr(PeerFinder, "find", lambda finder, mdns=None: found.append("find"))
    with trio.fail_after(20), pytest.raises(DuplicateIdentityError, match="already used"):
        await daemon.run()
    assert found == []
    assert not daemon.ready.is_set()


async def test_an_established_node_counts_a_twin_and_keeps_serving(tmp_path: Path) -> None:
    from dataclasses import replace

    from meshgpu.daemon.auth import Channel

    established = replace(settings(tmp_path / "old"), duplicate_grace=0.0)
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(Daemon(established).run)
        twin = Authenticator(None, "solo", mesh="default").new_session(Channel.DATAGRAM)
        with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as udp:
            await udp.sendto(twin.seal(b"gossip"), daemon.address)
        async with open_rpc(daemon.address, Authenticator(None, "client-test")) as rpc:
            status = await rpc.call("wait", counter=["daemon", "datagrams_received", 1], timeout=10)
        assert not daemon._stop.is_set()
        assert status["duplicate_identity"]["sightings"] == 1
        assert status["counters"]["daemon"]["duplicate_identity"] == 1
        daemon.request_stop()


async def test_a_full_disk_stops_the_node_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from meshgpu.daemon import journal as journal_module
    from meshgpu.errors import DiskFullError

    def disk_full(descriptor: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    daemon = Daemon(settings(tmp_path / "full"))
    stopped: list[DiskFullError] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            monkeypatch.setattr(journal_module, "_write_all", disk_full)
            async with open_rpc(daemon.address, Authenticator(None, "client-test")) as rpc:
                await rpc.call("put_model", digest=DIGEST, data=MODEL)
                pixels = encode_tensors({"pixels": np.zeros((1, 64), dtype=np.float32)})
                with pytest.raises(ClientError):  # the node stopped before answering
                    with trio.fail_after(20):
                        await rpc.call("submit", model_digest=DIGEST, inputs=pixels)
    except* DiskFullError as group:
        stopped.extend(group.exceptions)  # type: ignore[arg-type]
    assert len(stopped) == 1 and "disk full" in str(stopped[0])
    assert daemon.handlers.submissions.submitted == 0  # nothing was acknowledged


async def test_connection_pool_reuses_one_connection_and_reconnects(daemon: Daemon) -> None:
    from meshgpu.daemon.rpc import ConnectionPool

    async def connections() -> int:
        return int(daemon.counters.get("api_connections", 0))

    async with trio.open_nursery() as nursery:
        pool = ConnectionPool(Authenticator(None, "pool-test"))
        await nursery.start(pool.run)
        before = await connections()
        for _ in range(3):
            assert (await pool.call(daemon.address, "ping", timeout=10))["node_id"] == "solo"
        with pytest.raises(RequestFailedError, match="unknown op"):
            await pool.call(daemon.address, "nonsense", timeout=10)
        assert (await pool.call(daemon.address, "ping", timeout=10))["node_id"] == "solo"
        assert await connections() == before + 1  # one connection carried all five
        link = pool._links[daemon.address]
        await link.frames.stream.aclose()  # the connection dies under the pool
        assert (await pool.call(daemon.address, "ping", timeout=10))["node_id"] == "solo"
        assert await connections() == before + 2
        nursery.cancel_scope.cancel()


async def test_a_raised_incarnation_is_on_disk_while_running(daemon: Daemon) -> None:
    """Regression: the incarnation was written at start and at a clean stop only, so a
    node SIGKILLed after refuting a suspicion came back below what the mesh knew."""
    from meshgpu.core.events import Tick
    from meshgpu.daemon.identity import IdentityStore

    started = daemon.node.incarnation
    daemon.node.swim.table._refute(started + 1, trio.current_time())  # someone suspects us
    daemon.feed(Tick())
    raised = daemon.node.incarnation
    assert raised == started + 2
    store = IdentityStore(daemon.settings.data_dir)
    on_disk = store.load()
    assert on_disk is not None and on_disk.incarnation >= raised  # no clean stop needed
    # What a restart after SIGKILL would read: above anything the mesh has seen.
    assert store.start().incarnation > raised


async def test_refutations_within_the_reserve_write_nothing(daemon: Daemon) -> None:
    """Regression: every refutation wrote identity.json with an fsync on the event loop,
    and a node refutes when it was suspected, typically while a GiB's copies keep its
    disk busy: the write held the loop past the next probes. The stored incarnation is
    reserved ahead, so only a refutation past the block writes, and what is on disk
    stays at or above every incarnation announced."""
    from meshgpu.daemon.identity import INCARNATION_RESERVE, IdentityStore

    store = IdentityStore(daemon.settings.data_dir)
    writes: list[int] = []
    save = daemon.identity_store.save

    def counting(identity: Any) -> None:
        writes.append(identity.incarnation)
        save(identity)

    daemon.identity_store.save = counting  # type: ignore[method-assign]
    started = daemon.node.incarnation
    for step in range(1, INCARNATION_RESERVE + 1):
        assert daemon._save_incarnation(started + step)
        on_disk = store.load()
        assert on_disk is not None and on_disk.incarnation >= started + step
    assert writes == []  # the start reserved these
    assert daemon._save_incarnation(started + INCARNATION_RESERVE + 1)
    assert writes == [started + 2 * INCARNATION_RESERVE + 1]
    assert store.start().incarnation > started + INCARNATION_RESERVE + 1


def test_the_inference_stack_is_loaded_before_the_node_joins(tmp_path: Path) -> None:
    """Regression: onnxruntime was first imported inside the first task's worker thread,
    holding the GIL long enough to starve the loop into false suspicions. A fresh
    interpreter (this one has imported everything already) starts a daemon, and
    onnxruntime must be loaded by the time it serves, before any task."""
    import subprocess
    import sys

    program = f"""
import sys, trio
from pathlib import Path
from meshgpu.daemon.runtime import Daemon
from meshgpu.daemon.settings import DaemonSettings

async def main():
    settings = DaemonSettings(data_dir=Path({str(tmp_path / "fresh")!r}), bind="127.0.0.1",
                              port=0, mdns=False, backend="onnxruntime", name="fresh")
    async with trio.open_nursery() as nursery:
        daemon = await nursery.start(Daemon(settings).run)
        print("onnxruntime" in sys.modules, flush=True)
        daemon.request_stop()

trio.run(main)
"""
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True", done.stdout + done.stderr


async def test_inputs_of_a_task_accepted_after_its_request_was_cancelled_stay_referenced(
    daemon: Daemon, rpc: RpcConnection
) -> None:
    """The submitter gave up (its request cancelled) before the core accepted the task:
    the task is in the table all the same, and its inputs must stay referenced, or a
    DropPayload of another task with identical inputs would delete them."""
    from meshgpu.core.events import SubmitTask
    from meshgpu.core.tasks import TaskSpec
    from meshgpu.daemon.dataplane import INPUTS
    from meshgpu.daemon.payloads import canonical_tensor_bytes

    await rpc.call("put_model", digest=DIGEST, data=MODEL)
    blob = canonical_tensor_bytes({"pixels": np.zeros((1, 64), dtype=np.float32)})
    digest = hashlib.sha256(blob).hexdigest()
    await daemon.dataplane.store(digest, INPUTS, blob, wait=False)
    daemon.feed(SubmitTask("a-client-that-left", TaskSpec(DIGEST, digest, replicas=1)))
    with trio.fail_after(20):
        while not daemon.dataplane.input_refs.get(digest):
            await trio.sleep(0.01)
    (task_id,) = daemon.dataplane.input_refs[digest]
    assert task_id.origin == "solo"


async def test_asking_again_for_a_delivered_outcome_is_answered_not_left_waiting(
    rpc: RpcConnection,
) -> None:
    """Collected but not yet garbage-collected: the entry is still in the table, marked
    delivered. A second ``results`` for it is answered at once with the reason."""
    await rpc.call("put_model", digest=DIGEST, data=MODEL)
    reply = await rpc.call(
        "submit",
        model_digest=DIGEST,
        inputs=encode_tensors({"pixels": np.zeros((1, 64), dtype=np.float32)}),
        direct=False,
    )
    first = [o async for o in rpc.stream("results", task_ids=[reply["task_id"]])]
    assert first[0]["state"] == "done"
    await rpc.call("collected", task_ids=[reply["task_id"]])
    again = [o async for o in rpc.stream("results", task_ids=[reply["task_id"]], timeout=10)]
    assert again[0]["state"] == "collected" and "already delivered" in again[0]["reason"]
    assert again[-1]["task_id"] is None and again[-1]["pending"] == []


async def test_an_advertised_address_is_gossiped_and_the_bound_one_kept_for_this_machine(
    tmp_path: Path,
) -> None:
    """--advertise HOST:PORT (a port forward's outside end): the node's member address and
    status say it; the address it listens on stays what local clients use."""
    forwarded = replace(settings(tmp_path / "behind-nat"), advertise="127.0.0.1:17946")
    async with trio.open_nursery() as nursery:
        running: Daemon = await nursery.start(Daemon(forwarded).run)
        try:
            assert running.address == ("127.0.0.1", 17946)
            host, port = running.listen_address
            assert host == "127.0.0.1" and port not in (0, 17946)
            assert running.node.members()[running.node_id].address == ("127.0.0.1", 17946)
            async with open_rpc(running.listen_address, Authenticator(None, "c")) as rpc:
                status = await rpc.call("status")
            assert status["node"]["address"] == ["127.0.0.1", 17946]
        finally:
            running.request_stop()


async def test_an_advertised_host_without_a_port_keeps_the_bound_port(tmp_path: Path) -> None:
    named = replace(settings(tmp_path / "named"), advertise="127.0.0.2")
    async with trio.open_nursery() as nursery:
        running: Daemon = await nursery.start(Daemon(named).run)
        try:
            assert running.address == ("127.0.0.2", running.listen_address[1])
        finally:
            running.request_stop()
