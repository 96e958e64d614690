"""The trio client against in-process fake peers (the daemon's real ApiServer with
scripted handlers): model upload by digest, exactly-once delivery, failover with
results collected by task id on the next peer."""

from __future__ import annotations

import functools
import itertools
import struct
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from meshgpu.client import AsyncClient
from meshgpu.daemon.api import ApiServer, Responder
from meshgpu.daemon.auth import VERSION, Authenticator, Channel, envelope, handshake
from meshgpu.daemon.payloads import canonical_tensor_bytes, decode_tensors, encode_tensors
from meshgpu.errors import (
    ClientError,
    ConfigError,
    DiskFullError,
    IncompatibleDaemonError,
    IncompatiblePeerError,
    MeshError,
    RequestFailedError,
    TaskFailedError,
)

MODEL = b"not really onnx, the fake mesh does not parse it"


class FakeMesh:
    """Shared task state behind several fake peers; tasks finish when ``release``d."""

    def __init__(self) -> None:
        self.models: dict[str, set[str]] = {}
        self.uploads: list[str] = []
        self.inputs: dict[str, np.ndarray] = {}
        self.finished: dict[str, dict[str, Any]] = {}
        self.collected: list[str] = []
        self.changed = trio.Event()
        self.sequence = itertools.count(1)
        self.repeat_outcomes = False
        self.direct = False
        """Answer submits as a daemon's direct run would (the result in the answer)."""
        self.hold_direct: trio.Event | None = None
        """When set, a direct run on p1 waits for this (to kill p1 mid-run)."""
        self.direct_started = trio.Event()
        """Set when p1 begins a held direct run."""
        self.full: set[str] = set()
        """Peers whose disk is full: they refuse every submission."""
        self.submissions: list[tuple[str, Any]] = []
        """(peer, submission id) of every submit received."""
        self.die_after_accepting: set[str] = set()
        """Peers that accept a submit, then die before answering it."""
        self.storing: dict[str, bytes] = {}
        """Large results being stored, by task: announced to a ``results`` stream that
        asks ``early``, and served by ``get_result``."""
        self.result_calls: list[tuple[str, int, bool]] = []
        self.asked_attempts: list[int | None] = []
        """The attempt every ``get_result`` named (None: none)."""
        self.attempts: dict[str, int] = {}
        """The attempt whose result is being stored, by task (when a test names one)."""
        """(task, offset, early) of every ``get_result``."""

    def store_early(self, task_id: str, y: np.ndarray, attempt: int | None = None) -> bytes:
        """The task's result ``y`` (larger than the stream carries) starts to be stored."""
        blob = canonical_tensor_bytes({"y": y})
        self.storing[task_id] = blob
        if attempt is not None:
            self.attempts[task_id] = attempt
        self.changed.set()
        self.changed = trio.Event()
        return blob

    def release_large(self, task_id: str, fail: str | None = None) -> None:
        """The task stored (``done`` with the result's size) or failed to."""
        self.finished[task_id] = {
            "task_id": task_id,
            "state": "failed" if fail else "done",
            "reason": fail,
            "worker": "fake",
            "outputs": None,
            **({} if fail else {"result_bytes": len(self.storing[task_id])}),
            **({"attempt": self.attempts[task_id]} if task_id in self.attempts else {}),
        }
        self.changed.set()
        self.changed = trio.Event()

    def release(self, task_id: str, fail: str | None = None) -> None:
        x = self.inputs[task_id]
        self.finished[task_id] = {
            "task_id": task_id,
            "state": "failed" if fail else "done",
            "reason": fail,
            "worker": "fake",
            "outputs": None if fail else encode_tensors({"y": x * 2}),
        }
        self.changed.set()
        self.changed = trio.Event()


class FakePeer:
    def __init__(self, mesh: FakeMesh, node_id: str) -> None:
        self.mesh = mesh
        self.node_id = node_id
        self.port = 0
        self.scope = trio.CancelScope()
        self.mesh.models[node_id] = set()

    def handlers(self) -> dict[str, Any]:
        mesh, me = self.mesh, self.node_id

        async def ping(request: dict[str, Any], responder: Responder) -> dict[str, Any]:
            return {"node_id": me}

        async def status(request: dict[str, Any], responder: Responder) -> dict[str, Any]:
            members = [
                {"node_id": p.node_id, "address": ["127.0.0.1", p.port], "state": "alive"}
                for p in PEERS
            ]
            return {"node": {"node_id": me, "mesh": "m"}, "members": members, "leader": me}

        async def has_model(request: dict[str, Any], responder: Responder) -> dict[str, Any]:
            return {"has": request["digest"] in mesh.models[me]}

        async def put_model(request: dict[str, Any], responder: Responder) -> dict[str, Any]:
            mesh.models[me].add(request["digest"])
            mesh.uploads.append(me)
            return {"digest": request["digest"], "stored": True}

        async def submit(request: dict[str, Any], responder: Responder) -> dict[str, Any]:
            assert request["model_digest"] in mesh.models[me]
            if me in mesh.full:
                raise DiskFullError(f"disk full on {me}: cannot store the inputs")
            task_id = f"{me}/{next(mesh.sequence)}"
            mesh.inputs[task_id] = decode_tensors(request["inputs"])["x"]
            mesh.submissions.append((me, request.get("submission")))
            if me in mesh.die_after_accepting:
                self.scope.cancel()
                await trio.sleep_forever()
            if mesh.direct and request.get("direct", True):
                if me == "p1" and mesh.hold_direct is not None:
                    mesh.direct_started.set()
                    await mesh.hold_direct.wait()
                mesh.release(task_id)
                return {**mesh.finished[task_id], "direct": True, "copies": 0, "replicas": 0}
            return {"task_id": task_id, "copies": 2, "replicas": 2}

        async def results(request: dict[str, Any], responder: Responder) -> dict[str, Any]:
            wanted = set(request["task_ids"])
            announced: set[tuple[str, int | None]] = set()
            while wanted:
                if request.get("early"):
                    for task_id in sorted(wanted & set(mesh.storing)):
                        attempt = mesh.attempts.get(task_id)
                        if task_id not in mesh.finished and (task_id, attempt) not in announced:
                            announced.add((task_id, attempt))
                            size = len(mesh.storing[task_id])
                            message = {"task_id": task_id, "state": "storing", "result_bytes": size}
                            if attempt is not None:
                                message["attempt"] = attempt
                            await responder.partial(message)
                for task_id in sorted(wanted & set(mesh.finished)):
                    await responder.partial(mesh.finished[task_id])
                    if mesh.repeat_outcomes:
                        await responder.partial(mesh.finished[task_id])
                    wanted.discard(task_id)
                if wanted:
                    await mesh.changed.wait()
            return {"task_id": None}

        async def get_result(request: dict[str, Any], responder: Responder) -> dict[str, Any]:
            task_id, offset = request["task_id"], request["offset"]
            mesh.result_calls.append((task_id, offset, bool(request.get("early"))))
            mesh.asked_attempts.append(request.get("attempt"))
            blob = mesh.storing[task_id]
            return {"data": blob[offset : offset + request["length"]], "size": len(blob)}

        async def collected(request: dict[str, Any], responder: Responder) -> dict[str, Any]:
            mesh.collected.extend(request["task_ids"])
            return {"collected": len(request["task_ids"])}

        return {
            "ping": ping,
            "status": status,
            "has_model": has_model,
            "put_model": put_model,
            "submit": submit,
            "results": results,
            "get_result": get_result,
            "collected": collected,
        }

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        server = ApiServer(self.handlers(), Authenticator(None, self.node_id), {})
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        with self.scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, server.serve, listeners)
                task_status.started()
                await trio.sleep_forever()


PEERS: list[FakePeer] = []


@pytest.fixture
async def fake_mesh(nursery: trio.Nursery) -> tuple[FakeMesh, list[FakePeer]]:
    mesh = FakeMesh()
    PEERS[:] = [FakePeer(mesh, "p1"), FakePeer(mesh, "p2")]
    for peer in PEERS:
        await nursery.start(peer.serve)
    return mesh, list(PEERS)


async def test_submit_uploads_the_model_once_and_delivers_the_result(fake_mesh) -> None:
    mesh, peers = fake_mesh
    async with AsyncClient(f"127.0.0.1:{peers[0].port}", environ={}) as client:
        first = await client.submit(MODEL, {"x": np.arange(3, dtype=np.float32)})
        second = await client.submit(MODEL, {"x": np.ones(2, np.float32)})
        assert mesh.uploads == ["p1"]
        mesh.release(first.task_id)
        mesh.release(second.task_id, fail="InputError: input 'x' has the wrong shape")
        outputs = await first.result(timeout=10)
        np.testing.assert_array_equal(outputs["y"], [0, 2, 4])
        with pytest.raises(TaskFailedError, match="wrong shape"):
            await second.result(timeout=10)
        outputs["y"][0] = 7  # the caller owns writable copies
    assert sorted(mesh.collected) == sorted([first.task_id, second.task_id])


async def test_a_result_fetched_while_stored_is_delivered_only_once_done(fake_mesh) -> None:
    """The entry says the result is being stored: the client fetches it then, but the
    handle resolves, and the mesh is told the client has it, only once the task is
    done; the result is not fetched a second time."""
    mesh, peers = fake_mesh
    async with AsyncClient(
        f"127.0.0.1:{peers[0].port}", environ={}, max_frame_bytes=1 << 20
    ) as client:
        handle = await client.submit(MODEL, {"x": np.ones(2, np.float32)})
        y = np.arange(200_000, dtype=np.float32)  # 800 KB: several ranges
        blob = mesh.store_early(handle.task_id, y)
        with trio.fail_after(10):
            while len(mesh.result_calls) < -(-len(blob) // client.chunk_bytes):
                await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()
        assert all(early for _, _, early in mesh.result_calls)
        assert not handle.done() and mesh.collected == []  # fetched, not delivered
        calls = len(mesh.result_calls)
        mesh.release_large(handle.task_id)
        outputs = await handle.result(timeout=10)
        np.testing.assert_array_equal(outputs["y"], y)
        assert len(mesh.result_calls) == calls  # delivered from the early fetch
    assert mesh.collected == [handle.task_id]


async def test_an_older_attempts_early_result_is_not_delivered_for_a_newer_one(
    fake_mesh,
) -> None:
    """Attempt 1's result was fetched whole while it was stored, then its worker died and
    attempt 2 (a nondeterministic model: other bytes of the same size) is the one done:
    the client delivers attempt 2's bytes, the durable ones, not attempt 1's."""
    mesh, peers = fake_mesh
    async with AsyncClient(
        f"127.0.0.1:{peers[0].port}", environ={}, max_frame_bytes=1 << 20
    ) as client:
        handle = await client.submit(MODEL, {"x": np.ones(2, np.float32)})
        first = mesh.store_early(handle.task_id, np.zeros(200_000, np.float32), attempt=1)
        with trio.fail_after(10):
            while len(mesh.result_calls) < -(-len(first) // client.chunk_bytes):
                await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()
        # Each early range named its attempt: the entry answers none of another's.
        assert set(mesh.asked_attempts) == {1}
        y = np.arange(200_000, dtype=np.float32)
        mesh.store_early(handle.task_id, y, attempt=2)
        mesh.release_large(handle.task_id)
        outputs = await handle.result(timeout=10)
        np.testing.assert_array_equal(outputs["y"], y)


async def test_a_result_fetched_while_stored_is_never_delivered_if_storing_fails(
    fake_mesh,
) -> None:
    mesh, peers = fake_mesh
    async with AsyncClient(
        f"127.0.0.1:{peers[0].port}", environ={}, max_frame_bytes=1 << 20
    ) as client:
        handle = await client.submit(MODEL, {"x": np.ones(2, np.float32)})
        blob = mesh.store_early(handle.task_id, np.arange(200_000, dtype=np.float32))
        with trio.fail_after(10):
            while len(mesh.result_calls) < -(-len(blob) // client.chunk_bytes):
                await trio.sleep(0.01)
        mesh.release_large(handle.task_id, fail="the result could not be stored on any node")
        with pytest.raises(TaskFailedError, match="could not be stored"):
            await handle.result(timeout=10)


async def test_a_direct_answer_is_a_done_handle_with_nothing_to_collect(fake_mesh) -> None:
    mesh, peers = fake_mesh
    mesh.direct = True
    async with AsyncClient(f"127.0.0.1:{peers[0].port}", environ={}) as client:
        handle = await client.submit(MODEL, {"x": np.arange(3, dtype=np.float32)})
        assert handle.done() and handle.copies == 0
        np.testing.assert_array_equal((await handle.result(timeout=1))["y"], [0, 2, 4])
        table = await client.submit(MODEL, {"x": np.ones(1, np.float32)}, direct=False)
        assert not table.done() and table.copies == 2
        mesh.release(table.task_id)
        await table.result(timeout=10)
    assert mesh.collected == [table.task_id]  # the direct run was never in the table


async def test_attaching_a_direct_runs_id_is_a_clear_failure_sent_nowhere(fake_mesh) -> None:
    _, peers = fake_mesh
    async with AsyncClient(f"127.0.0.1:{peers[0].port}", environ={}) as client:
        handle = client.attach("p1/direct-0a1b2c-7")
        with pytest.raises(TaskFailedError, match="direct=False"):
            await handle.result(timeout=1)  # resolved at once: the fake never hears of it


async def test_entry_killed_during_a_direct_run_the_task_runs_on_the_next_peer(
    fake_mesh, nursery
) -> None:
    mesh, peers = fake_mesh
    mesh.direct = True
    mesh.hold_direct = trio.Event()  # never set: p1 dies mid-run
    async with AsyncClient(f"127.0.0.1:{peers[0].port}", environ={}) as client:

        async def kill_p1_once_it_runs() -> None:
            await mesh.direct_started.wait()
            peers[0].scope.cancel()

        nursery.start_soon(kill_p1_once_it_runs)
        with trio.fail_after(30):
            handle = await client.submit(MODEL, {"x": np.full(2, 3, np.float32)})
        assert handle.task_id.startswith("p2/") and handle.done()
        np.testing.assert_array_equal((await handle.result(timeout=1))["y"], [6, 6])


async def test_an_outcome_sent_twice_is_delivered_once(fake_mesh) -> None:
    mesh, peers = fake_mesh
    mesh.repeat_outcomes = True
    async with AsyncClient(f"127.0.0.1:{peers[0].port}", environ={}) as client:
        inputs = [{"x": np.full(1, i, np.float32)} for i in range(5)]
        seen = []

        async def release_all() -> None:
            while len(mesh.inputs) < 5:
                await trio.sleep(0.01)
            for task_id in list(mesh.inputs):
                mesh.release(task_id)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(release_all)
            async for item in client.map(MODEL, inputs):
                seen.append((item.index, float(item.outputs["y"][0])))
        assert sorted(seen) == [(i, 2.0 * i) for i in range(5)]
        assert client.duplicates >= 1


async def test_client_fails_over_and_collects_results_by_task_id(fake_mesh) -> None:
    mesh, peers = fake_mesh
    async with AsyncClient(
        f"127.0.0.1:{peers[0].port}", environ={}, status_interval=0.05
    ) as client:
        await client.status()  # learn the members
        handles = [await client.submit(MODEL, {"x": np.full(1, i, np.float32)}) for i in range(4)]
        assert client.peer is not None and client.peer[0] == "p1"
        peers[0].scope.cancel()  # the entry peer dies with the results pending
        for handle in handles:
            mesh.release(handle.task_id)
        values = [float((await h.result(timeout=10))["y"][0]) for h in handles]
        assert values == [0.0, 2.0, 4.0, 6.0]
        assert [(f.from_node, f.to_node) for f in client.failovers] == [("p1", "p2")]
        late = await client.submit(MODEL, {"x": np.ones(1, np.float32)})
        assert late.task_id.startswith("p2/")
        assert mesh.uploads == ["p1", "p2"]  # the new peer lacked the model


async def test_a_submit_resent_after_a_broken_link_carries_the_same_submission_id(
    fake_mesh,
) -> None:
    """The entry node accepted the task and died before answering: the resend to the
    next peer names the same submission, so a node that saw it answers with its id."""
    mesh, peers = fake_mesh
    mesh.die_after_accepting.add("p1")
    async with AsyncClient(
        f"127.0.0.1:{peers[0].port}", environ={}, status_interval=0.05
    ) as client:
        await client.status()
        with trio.fail_after(30):
            handle = await client.submit(MODEL, {"x": np.ones(1, np.float32)}, direct=False)
        assert handle.task_id.startswith("p2/")
    (first_peer, first), (second_peer, second) = mesh.submissions
    assert (first_peer, second_peer) == ("p1", "p2")
    assert isinstance(first, str) and first == second


async def test_no_peer_answering_is_a_clear_error() -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ClientError, match=r"no meshgpu daemon answered.*meshgpu join"):
        async with AsyncClient(f"127.0.0.1:{port}", environ={}, connect_timeout=1):
            pass


@pytest.mark.parametrize("peer", [7946, ["127.0.0.1:7946", 7946]])
def test_a_peer_that_is_no_address_is_refused_naming_the_forms(peer: object) -> None:
    # A bare port was "TypeError: 'int' object is not iterable".
    with pytest.raises(ConfigError, match=r"peer .*7946 must be 'HOST:PORT'"):
        AsyncClient(peer, environ={})  # type: ignore[arg-type]


async def test_a_daemon_of_the_previous_protocol_version_is_a_clear_error_naming_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A daemon of protocol version 2 (whose put_inputs wants the digest on every range)
    refuses this client's first frame with the refusal every version sends; the client
    stops at once with one error naming both versions, not "no daemon answered"."""
    old = Authenticator(None, "old-node", mesh="default")

    async def old_daemon(stream: trio.SocketStream) -> None:
        frame = b""
        while len(frame) < 4 or len(frame) < 4 + struct.unpack("!I", frame[:4])[0]:
            frame += await stream.receive_some(65536)
        frame = frame[4:]
        with monkeypatch.context() as patch:  # this node speaks version 2 (no await inside)
            patch.setattr(envelope, "VERSION", 2)
            patch.setattr(handshake, "VERSION", 2)
            with pytest.raises(IncompatiblePeerError) as refused:
                old.open(frame, Channel.FRAME)
            refusal = old.refusal(Channel.FRAME, refused.value)
        await stream.send_all(struct.pack("!I", len(refusal)) + refusal)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, old_daemon, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(IncompatibleDaemonError) as told:
            async with AsyncClient(f"127.0.0.1:{port}", environ={}, connect_timeout=5):
                pass
        nursery.cancel_scope.cancel()
    message = str(told.value)
    assert f"127.0.0.1:{port}" in message and "no meshgpu daemon answered" not in message
    assert "protocol version 2" in message and f"protocol version {VERSION}" in message
    assert VERSION == 3  # put_inputs by ``upload`` id is version 3


async def test_leaving_map_early_while_other_outcomes_arrive_keeps_the_client_serving(
    fake_mesh,
) -> None:
    """The consumer stops at the first failure while the other tasks' outcomes are
    arriving in the same burst: their deliveries find the channel closed, and that must
    neither crash the client's loop nor be swallowed as a lost task (it is the caller's
    choice to stop)."""
    mesh, peers = fake_mesh
    async with AsyncClient(f"127.0.0.1:{peers[0].port}", environ={}) as client:
        for _ in range(5):
            first = len(mesh.inputs)
            inputs = [{"x": np.full(1, i, np.float32)} for i in range(8)]

            async def release_all(first: int = first) -> None:
                while len(mesh.inputs) < first + 8:
                    await trio.sleep(0.005)
                task_ids = list(mesh.inputs)[first:]
                mesh.release(task_ids[0], fail="ValueError: negative")
                for task_id in task_ids[1:]:
                    mesh.release(task_id)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(release_all)
                with pytest.raises(TaskFailedError, match="negative"):
                    async for _item in client.map(MODEL, inputs, window=8):
                        pass
            await trio.sleep(0.05)  # let the late deliveries land on the closed channel
        handle = await client.submit(MODEL, {"x": np.ones(1, np.float32)})
        mesh.release(handle.task_id)
        assert float((await handle.result(timeout=10))["y"][0]) == 2.0


async def test_a_peer_with_a_full_disk_is_left_for_one_that_has_room(fake_mesh) -> None:
    mesh, peers = fake_mesh
    mesh.full = {"p1"}
    async with AsyncClient(f"127.0.0.1:{peers[0].port}", environ={}) as client:
        await client.status()  # learn the members
        one = await client.submit(MODEL, {"x": np.ones(1, np.float32)}, direct=False)
        many = await client.submit_many(MODEL, [{"x": np.full(1, i, np.float32)} for i in range(3)])
        assert one.task_id.startswith("p2/")
        assert all(not isinstance(h, MeshError) and h.task_id.startswith("p2/") for h in many)
        for handle in [one, *many]:
            mesh.release(handle.task_id)
            await handle.result(timeout=10)


async def test_when_every_peer_is_full_the_refusal_is_the_answer(fake_mesh) -> None:
    mesh, peers = fake_mesh
    mesh.full = {"p1", "p2"}
    async with AsyncClient(f"127.0.0.1:{peers[0].port}", environ={}) as client:
        await client.status()
        with trio.fail_after(30), pytest.raises(RequestFailedError, match="disk full"):
            await client.submit(MODEL, {"x": np.ones(1, np.float32)}, direct=False)
        (refused,) = await client.submit_many(MODEL, [{"x": np.ones(1, np.float32)}])
        assert isinstance(refused, MeshError) and "disk full" in str(refused)


async def test_a_map_left_early_acknowledges_only_what_its_consumer_took(fake_mesh) -> None:
    """Results that arrived but were never taken stay in the mesh (not acknowledged) and
    are listed, with their labels, by ``uncollected``, for `meshgpu collect`."""
    mesh, peers = fake_mesh
    async with AsyncClient(f"127.0.0.1:{peers[0].port}", environ={}) as client:
        inputs = [{"x": np.full(1, i, np.float32)} for i in range(6)]

        async def release_all() -> None:
            while len(mesh.inputs) < 6:
                await trio.sleep(0.005)
            for task_id in list(mesh.inputs):
                mesh.release(task_id)

        taken = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(release_all)
            async for item in client.map(MODEL, inputs, window=6, label=lambda i: f"in-{i}"):
                taken.append(item.task_id)
                if len(taken) == 2:
                    break
    assert sorted(mesh.collected) == sorted(taken)
    left = dict(client.uncollected())
    assert set(left) == set(mesh.inputs) - set(taken)
    assert all(label.startswith("in-") for label in left.values())


async def test_a_client_cancelled_while_flushing_still_closes_its_tasks(fake_mesh) -> None:
    """A cancellation that reaches ``async with`` while it flushes acknowledgements must
    not leave the client's nursery, and its tasks, running (trio then failed at exit:
    "Nursery stack corrupted", a TrioInternalError)."""
    _, peers = fake_mesh
    with trio.CancelScope() as scope:
        async with AsyncClient(f"127.0.0.1:{peers[0].port}", environ={}) as client:
            client._to_ack.add("p1/999")  # something to flush
            scope.cancel()
    assert client._nursery is not None and not client._nursery.child_tasks


async def test_a_client_used_outside_its_async_with_says_so_instead_of_waiting(
    fake_mesh,
) -> None:
    mesh, peers = fake_mesh
    client = AsyncClient(f"127.0.0.1:{peers[0].port}", environ={})
    with trio.fail_after(5):  # each waited for ever for a connection nobody made
        with pytest.raises(ClientError, match="not entered: use it inside `async with"):
            await client.submit(MODEL, {"x": np.ones(1, np.float32)})
        with pytest.raises(ClientError, match="not entered"):
            await client.status()
        with pytest.raises(ClientError, match="not entered"):
            async for _ in client.map(MODEL, [{"x": np.ones(1, np.float32)}]):
                pass
    async with client:
        handle = await client.submit(MODEL, {"x": np.ones(1, np.float32)})
    with trio.fail_after(5):
        with pytest.raises(ClientError, match="client is closed"):
            await client.status()
        with pytest.raises(ClientError, match=f"attach.*meshgpu collect {handle.task_id}"):
            await handle.result()
    async with client:  # entered again, it works again
        mesh.release(handle.task_id)
        again = client.attach(handle.task_id)
        assert (await again.result(timeout=10))["y"].tolist() == [2.0]


def test_an_async_client_under_asyncio_is_a_clear_error_naming_the_blocking_client() -> None:
    import asyncio

    async def main() -> None:
        async with AsyncClient("127.0.0.1:9", environ={}):
            pass

    with pytest.raises(ClientError, match=r"runs under trio.*meshgpu\.Client"):
        asyncio.run(main())


@pytest.mark.parametrize("window", [0, -1, 2.5, True])
async def test_a_map_window_that_is_not_a_count_is_refused_naming_it(fake_mesh, window) -> None:
    _, peers = fake_mesh
    async with AsyncClient(f"127.0.0.1:{peers[0].port}", environ={}) as client:
        with trio.fail_after(5):  # 0 waited for ever for room in the window
            with pytest.raises(ConfigError, match=f"window is .* >= 1, got {window!r}"):
                async for _ in client.map(MODEL, [{"x": np.ones(1, np.float32)}], window=window):
                    pass
        # -1 and 2.5 broke the client's nursery: it still serves
        handle = await client.submit(MODEL, {"x": np.ones(1, np.float32)})
        assert handle.task_id


async def test_an_http_port_given_as_the_peer_is_named_as_such(nursery: trio.Nursery) -> None:
    """A daemon's HTTP port (8000) given for its API port (7946): the answer's "HTTP" read
    as a frame length was "peer announced a 1213486160-byte frame"."""

    async def http_server(stream: trio.SocketStream) -> None:
        with trio.move_on_after(5):
            await stream.receive_some(4096)
            await stream.send_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, http_server, 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    with pytest.raises(ClientError, match=r"answers in HTTP: it is a daemon's HTTP port"):
        async with AsyncClient(f"127.0.0.1:{port}", environ={}, connect_timeout=2):
            pass


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"deadline": 5}, TypeError, "unexpected keyword argument 'deadline'.* deadline_s"),
        ({"acknowledge": False}, TypeError, "unexpected keyword argument 'acknowledge'"),
        ({"replicas": 0}, ConfigError, "replicas is"),
        ({"deadline_s": -1}, ConfigError, "deadline_s is"),
    ],
)
async def test_a_map_option_submit_many_does_not_take_is_refused_and_the_client_serves(
    fake_mesh, options, error, match
) -> None:
    """An unknown keyword raised TypeError in the client's nursery: the client closed,
    the loop got trio.Cancelled and close() an exception group."""
    _, peers = fake_mesh
    async with AsyncClient(f"127.0.0.1:{peers[0].port}", environ={}) as client:
        with trio.fail_after(5), pytest.raises(error, match=match):
            async for _ in client.map(MODEL, [{"x": np.ones(1, np.float32)}], **options):
                pass
        handle = await client.submit(MODEL, {"x": np.ones(1, np.float32)})
        assert handle.task_id
