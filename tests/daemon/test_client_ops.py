"""The TCP API's ops as parts (daemon/handlers.py, daemon/peer_ops.py) and the status report
(daemon/status.py), with fakes for the data plane, the status and the node, on trio's
mock clock. Real sockets: test_runtime.py, test_tasks_e2e.py."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import trio

from meshgpu.core import effects as fx
from meshgpu.core.config import MeshConfig
from meshgpu.core.events import ResultCollected, ResultRequested
from meshgpu.core.node import Node
from meshgpu.core.tasks import Resolution, TaskId
from meshgpu.daemon.auth import Authenticator
from meshgpu.daemon.batching import BatchCounts
from meshgpu.daemon.dataplane import INPUTS
from meshgpu.daemon.handlers import ClientHandlers
from meshgpu.daemon.identity import DuplicateIdentityGuard
from meshgpu.daemon.modelstore import ModelStore
from meshgpu.daemon.payloads import PayloadStore, canonical_tensor_bytes
from meshgpu.daemon.peer_ops import PeerOps
from meshgpu.daemon.results import RESULT, task_key
from meshgpu.daemon.settings import DaemonSettings
from meshgpu.daemon.status import StatusReport
from meshgpu.errors import DecodeError, MeshError, StorageError, TaskError
from tests.daemon.fakes import Fed

TASK = TaskId("o", 4)
RESULT_BYTES = canonical_tensor_bytes({"y": np.arange(3, dtype=np.float32)})


@dataclass
class Results:
    """The data plane's results: ``held`` by task, else unavailable."""

    held: dict[TaskId, bytes] = field(default_factory=dict)
    stored: dict[Any, bytes] = field(default_factory=dict)
    chunk: int = 1 << 20

    async def store_result(self, key: Any, data: bytes, attempt: int | None) -> None:
        self.stored[key] = data

    async def result_head(
        self, task_id: TaskId, holders: Any, attempt: int | None = None
    ) -> tuple[bytes | None, int]:
        if task_id not in self.held:
            raise MeshError(f"result of {task_id} unavailable: no live result holder")
        return self.held[task_id], len(self.held[task_id])

    async def result_range(
        self, task_id: TaskId, holders: Any, offset: int, length: int, *, attempt: Any = None
    ) -> tuple[bytes, int, int | None]:
        data = self.held[task_id]
        return data[offset : offset + length], len(data), attempt

    async def obtain_result(self, task_id: TaskId, holders: Any, attempt: Any = None) -> bytes:
        return self.held[task_id]


@dataclass
class Status:
    """The status report as the ops read it: a generation that tests move."""

    generation: int = 0
    entries: dict[TaskId, Any] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        return {"generation": self.generation, "members": [], "counters": {}}

    def task_rows(self, state: str | None = None) -> list[dict[str, Any]]:
        return [{"task_id": str(t), "state": state} for t in self.entries]

    def entry(self, task_id: TaskId) -> Any:
        return self.entries.get(task_id)

    def task_reason(self, task_id: TaskId, reason: str) -> str:
        return reason

    def worker_of(self, task_id: TaskId) -> str | None:
        return "w"

    def attempt_of(self, task_id: TaskId) -> int | None:
        return 1


@dataclass
class Responder:
    peer: str | None = "peer"
    sent: list[dict[str, Any]] = field(default_factory=list)

    async def partial(self, fields: dict[str, Any]) -> None:
        self.sent.append(fields)

    async def partials(self, many: list[dict[str, Any]]) -> None:
        self.sent.extend(many)


@dataclass
class Ops:
    handlers: ClientHandlers
    peer_ops: PeerOps
    results: Results
    status: Status
    payloads: PayloadStore
    models: ModelStore
    fed: Fed
    changed: list[trio.Event]

    def change(self) -> None:
        """Something observable changed: a new generation, the waiters woken."""
        self.status.generation += 1
        self.changed[0].set()
        self.changed[0] = trio.Event()


def ops(tmp_path: Path) -> Ops:
    results, status, fed = Results(), Status(), Fed()
    payloads = PayloadStore(tmp_path / "payloads")
    models = ModelStore(tmp_path / "models", 1 << 30)
    changed = [trio.Event()]
    members = {
        "p": SimpleNamespace(
            address=("10.0.0.2", 7), state=SimpleNamespace(value="alive"), incarnation=3
        )
    }
    handlers = ClientHandlers(
        "n1",
        "token",
        status=status,  # type: ignore[arg-type]
        submissions=None,  # type: ignore[arg-type]  (test_submissions.py)
        results=results,
        payloads=payloads,
        models=models,
        catalog=None,  # type: ignore[arg-type]  (test_catalog.py)
        members=lambda: members,  # type: ignore[arg-type,return-value]
        changed=lambda: changed[0],
        feed=fed,
    )
    peer_ops = PeerOps(
        "n1",
        payloads=payloads,
        models=models,
        results=results,
        resolved=handlers.resolved.get,
        task_entry=status.entry,
    )
    return Ops(handlers, peer_ops, results, status, payloads, models, fed, changed)


def resolved(task_id: TaskId = TASK, state: Resolution = Resolution.DONE) -> fx.TaskResolved:
    return fx.TaskResolved(task_id, state, "" if state is Resolution.DONE else "boom", ("h",))


async def test_ping_and_member_answer_from_what_the_wiring_handed(tmp_path: Path) -> None:
    o = ops(tmp_path)
    assert await o.handlers.op_ping({}, Responder()) == {"node_id": "n1", "dir_token": "token"}
    known = await o.handlers.op_member({"node_id": "p"}, Responder())
    assert known == {"known": True, "address": ["10.0.0.2", 7], "state": "alive", "incarnation": 3}
    assert await o.handlers.op_member({"node_id": "q"}, Responder()) == {"known": False}


async def test_wait_answers_after_the_next_change(tmp_path: Path, autojump_clock) -> None:
    o = ops(tmp_path)
    answers: list[dict[str, Any]] = []

    async def waiter() -> None:
        answers.append(await o.handlers.op_wait({"after_generation": 0}, Responder()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(5)
        assert answers == []
        o.change()
    assert answers == [{"generation": 1, "members": [], "counters": {}}]


async def test_wait_fails_loudly_after_its_timeout(tmp_path: Path, autojump_clock) -> None:
    o = ops(tmp_path)
    with pytest.raises(TaskError, match="within 2"):
        await o.handlers.op_wait({"after_generation": 0, "timeout": 2}, Responder())


async def test_results_stream_each_task_as_it_resolves(tmp_path: Path, autojump_clock) -> None:
    o = ops(tmp_path)
    other = TaskId("o", 5)
    o.results.held[TASK] = RESULT_BYTES
    responder = Responder()
    final: list[dict[str, Any]] = []

    async def client() -> None:
        final.append(await o.handlers.op_results({"task_ids": [str(TASK), str(other)]}, responder))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        await o.fed.until(2)
        assert set(o.fed) == {ResultRequested(TASK), ResultRequested(other)}
        o.handlers.execute(resolved(TASK))
        await trio.testing.wait_all_tasks_blocked()
        assert [m["task_id"] for m in responder.sent] == [str(TASK)]
        o.handlers.execute(resolved(other, Resolution.FAILED))
    done, failed = responder.sent
    assert done["state"] == "done" and done["outputs"]["y"] is not None
    assert failed["state"] == "failed" and failed["reason"] == "boom"
    assert final == [{"task_id": None, "pending": []}]


async def test_a_done_task_whose_result_is_unreachable_is_unavailable(
    tmp_path: Path, autojump_clock
) -> None:
    o = ops(tmp_path)
    answer = await o.handlers.outcome(resolved(TASK), include=True)
    assert answer["state"] == "unavailable" and "cannot be fetched now" in answer["reason"]


async def test_results_give_up_after_their_timeout_naming_the_pending(
    tmp_path: Path, autojump_clock
) -> None:
    o = ops(tmp_path)
    answer = await o.handlers.op_results({"task_ids": [str(TASK)], "timeout": 3}, Responder())
    assert answer == {"task_id": None, "pending": [str(TASK)]}


@pytest.mark.parametrize("timeout", [float("nan"), "3", -1, True, [3]])
async def test_a_timeout_that_is_no_count_of_seconds_is_refused_naming_it(
    tmp_path: Path, timeout: Any
) -> None:
    """NaN raised ValueError in trio's deadline (answered "internal error", counted as a
    bug), and "3" in ``float()``; each is a DecodeError the client reads as a refusal."""
    o = ops(tmp_path)
    with pytest.raises(DecodeError, match="'timeout' is a number of seconds >= 0, got "):
        await o.handlers.op_results({"task_ids": [str(TASK)], "timeout": timeout}, Responder())
    assert list(o.fed) == []  # refused before anything was asked of the core
    with pytest.raises(DecodeError, match="'timeout' is a number of seconds >= 0"):
        await o.handlers.op_wait({"after_generation": 0, "timeout": timeout}, Responder())


async def test_collected_forgets_the_outcome_and_tells_the_core(tmp_path: Path) -> None:
    o = ops(tmp_path)
    o.handlers.execute(resolved(TASK))
    assert await o.handlers.op_collected({"task_ids": [str(TASK)]}, Responder()) == {"collected": 1}
    assert TASK not in o.handlers.resolved and list(o.fed) == [ResultCollected(TASK)]


async def test_a_pushed_result_is_checked_and_stored(tmp_path: Path) -> None:
    o = ops(tmp_path)
    request = {"task_id": str(TASK), "data": RESULT_BYTES}
    assert await o.peer_ops.op_put_result(request, Responder()) == {"stored": True}
    assert o.results.stored == {task_key(TASK): RESULT_BYTES}
    with pytest.raises(MeshError):
        await o.peer_ops.op_put_result({"task_id": str(TASK), "data": b"junk"}, Responder())


async def test_inputs_are_served_whole_in_batches_and_missing_ones_say_so(
    tmp_path: Path,
) -> None:
    o = ops(tmp_path)
    blob = canonical_tensor_bytes({"x": np.ones(2, np.float32)})
    digest = hashlib.sha256(blob).hexdigest()
    o.payloads.put_bytes(digest, INPUTS, blob)
    whole = await o.peer_ops.op_get_inputs({"digest": digest}, Responder())
    assert whole == {"data": blob, "size": len(blob)}
    missing = "0" * 64
    with pytest.raises(StorageError, match="not on node n1"):
        await o.peer_ops.op_get_inputs({"digest": missing}, Responder())
    assert not o.payloads.has(task_key(TASK), RESULT)


async def test_a_model_upload_in_chunks_lands_in_the_store(tmp_path: Path) -> None:
    o = ops(tmp_path)
    model = bytes(range(256)) * 10
    digest = hashlib.sha256(model).hexdigest()
    first = await o.handlers.op_put_model(
        {"digest": digest, "data": model[:1000], "more": True}, Responder()
    )
    assert first == {"digest": digest, "received": 1000}
    assert not o.models.has(digest)
    last = await o.handlers.op_put_model({"digest": digest, "data": model[1000:]}, Responder())
    assert last == {"digest": digest, "stored": True}
    assert (await o.handlers.op_has_model({"digest": digest}, Responder())) == {"has": True}


def test_status_reads_the_parts_it_was_handed(tmp_path: Path) -> None:
    node = Node("n1", ("10.0.0.1", 7), MeshConfig(), random.Random(1), 0.0)
    guard = DuplicateIdentityGuard("n1", 0.0)
    work = SimpleNamespace(running={(TASK, 1): None}, completed=4, failed=1)
    history = {"gone": {"node_id": "gone", "state": "left", "reason": "leave requested"}}
    state = {"leaving": False, "generation": 7}
    report = StatusReport(
        "n1",
        node,
        DaemonSettings(name="n1", data_dir=tmp_path),
        address=("10.0.0.1", 7),
        work=work,  # type: ignore[arg-type]
        executor=SimpleNamespace(  # type: ignore[arg-type]
            fallback_models={"abc": "no kernel"}, batch_counts=BatchCounts()
        ),
        counters={"direct_runs": 2},
        authenticator=Authenticator(None, "n1"),
        guard=guard,
        member_history=history,
        leaving=lambda: state["leaving"],
        generation=lambda: state["generation"],
        usable_devices=lambda: ("onnxruntime:cpu",),
        mdns_counters=lambda: {"sightings": 3},
        http=lambda: None,
    )
    status = trio.run(_snapshot, report)
    assert status["node"]["running"] == 1
    assert status["node"]["attempts"] == {"ok": 4, "failed": 1}
    assert status["node"]["fallback_models"] == {"abc": "no kernel"}
    assert status["node"]["usable_devices"] == ["onnxruntime:cpu"]
    assert status["node"]["leaving"] is False and status["generation"] == 7
    assert status["counters"]["daemon"] == {"direct_runs": 2}
    assert status["counters"]["mdns"] == {"sightings": 3}
    assert status["gone"] == [history["gone"]]
    assert [m["node_id"] for m in status["members"]] == ["n1"]
    assert status["tasks"] == {} and report.task_rows() == []
    state["leaving"] = True
    assert trio.run(_snapshot, report)["node"]["leaving"] is True


async def _snapshot(report: StatusReport) -> dict[str, Any]:
    return report.snapshot()  # reads trio's clock: inside a run
