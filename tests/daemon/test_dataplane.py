"""The data plane as a part (daemon/dataplane.py): its effects with fakes for the node,
the peers and the executor, on trio's mock clock. The real-socket paths stay in
test_tasks_e2e.py and test_leaving.py."""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from meshgpu.core import effects as fx
from meshgpu.core.events import PayloadFetchFailed, PayloadStored, TaskFinished, TaskStarted
from meshgpu.core.tasks import TaskId, TaskSpec
from meshgpu.daemon.dataplane import INPUTS
from meshgpu.daemon.payloads import canonical_tensor_bytes, tensors_from_bytes
from meshgpu.daemon.results import RESULT, task_key
from tests.daemon.fakes import FakePeers, Plane, data_plane

TASK = TaskId("o", 1)
MODEL = b"not really onnx: the fake executor never reads it"
MODEL_DIGEST = hashlib.sha256(MODEL).hexdigest()
INPUT = canonical_tensor_bytes({"x": np.arange(4, dtype=np.float32)})
INPUT_DIGEST = hashlib.sha256(INPUT).hexdigest()
SPEC = TaskSpec(MODEL_DIGEST, INPUT_DIGEST, (("x", (4,)),))


def run_task(attempt: int = 1, holders: tuple[str, ...] = ()) -> fx.RunTask:
    return fx.RunTask(TASK, attempt, SPEC, holders)


def finished(fakes: Plane) -> list[TaskFinished]:
    return [event for event in fakes.fed if isinstance(event, TaskFinished)]


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Mock time that jumps once nothing moved for 50 ms of real time: the stores write
    in worker threads, and a jump while a thread runs would fire the timeouts and the
    sweep before it returns (``clock`` jumps at once)."""
    return trio.testing.MockClock(autojump_threshold=0.05)


async def settle() -> None:
    """Let every task the plane started run until it blocks."""
    await trio.testing.wait_all_tasks_blocked()


@pytest.fixture
async def lone(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A worker alone in its mesh, holding the model and the task's inputs."""
    fakes = data_plane(tmp_path, live=["w"])
    fakes.models.put(MODEL, MODEL_DIGEST)
    fakes.payloads.put_bytes(INPUT_DIGEST, INPUTS, INPUT)
    async with trio.open_nursery() as nursery:
        # No sweep: the worker's copy of a task no table holds would go at the first.
        await nursery.start(functools.partial(fakes.plane.run, sweep_interval=math.inf))
        yield fakes
        nursery.cancel_scope.cancel()


async def test_a_run_reports_ok_with_its_result_kept_here(lone: Plane, clock) -> None:
    lone.plane.execute(run_task())
    await lone.plane.wait_idle()
    (event,) = finished(lone)
    assert event.outcome == "ok" and event.result_holders == ("w",)
    data, size, attempt = await lone.plane.result_range(TASK, (), 0, 1 << 20)
    assert size == len(data) and attempt == event.attempt
    np.testing.assert_array_equal(tensors_from_bytes(data)["y"], np.arange(4) * 2)
    assert lone.plane.completed == 1 and not lone.plane.running


async def test_a_run_reports_its_start_when_it_takes_a_slot(lone: Plane, clock) -> None:
    """Work stealing: the core learns an attempt is on the device before it runs, and
    learns nothing of an attempt cancelled while it waited for a slot."""
    lone.executor.hold = trio.Event()
    lone.plane.execute(run_task(attempt=1))
    await settle()
    assert not [e for e in lone.fed if isinstance(e, TaskStarted)]  # prefetched: waiting
    lone.plane.execute(fx.CancelTask(TASK, 1))
    lone.plane.execute(run_task(attempt=2))
    await settle()
    lone.executor.hold.set()
    await lone.plane.wait_idle()
    kinds = [(type(e).__name__, e.attempt) for e in lone.fed]
    assert kinds == [("TaskStarted", 2), ("TaskFinished", 2)]


async def test_the_same_attempt_twice_runs_once(lone: Plane, clock) -> None:
    lone.plane.execute(run_task())
    lone.plane.execute(run_task())
    await lone.plane.wait_idle()
    assert lone.executor.runs == 1 and len(finished(lone)) == 1


async def test_a_failed_run_is_reported_not_raised(lone: Plane, clock) -> None:
    lone.executor.fail = OSError("the device went away")
    lone.plane.execute(run_task())
    await lone.plane.wait_idle()
    (event,) = finished(lone)
    assert event.outcome == "transient_error" and "device went away" in event.reason
    assert lone.plane.failed == 1


@pytest.mark.parametrize(("live", "why"), [(["w", "o"], "o:"), (["w"], "no live holder")])
async def test_a_run_whose_inputs_no_holder_serves_reports_them_unavailable(
    tmp_path: Path, clock, live: list[str], why: str
) -> None:
    """Not a failed attempt (``transient_error``) but ``inputs_unavailable``: the task
    waits for a holder (a restarting one is not live for a while) instead of spending its
    retry budget (docs/task-queue.md, "Waiting for the inputs")."""
    fakes = data_plane(tmp_path, live=live)
    fakes.models.put(MODEL, MODEL_DIGEST)
    async with trio.open_nursery() as nursery:
        await nursery.start(fakes.plane.run)
        fakes.plane.execute(run_task(holders=("o",)))
        await fakes.plane.wait_idle()
        nursery.cancel_scope.cancel()
    (event,) = finished(fakes)
    assert event.outcome == "inputs_unavailable"
    assert "unavailable" in event.reason and why in event.reason
    assert fakes.executor.runs == 0


async def test_a_cancelled_attempt_waiting_for_a_slot_ends_silently(lone: Plane, clock) -> None:
    lone.executor.hold = trio.Event()
    lone.plane.execute(run_task())
    await settle()
    assert lone.plane.running
    lone.plane.execute(fx.CancelTask(TASK, 1))
    await lone.plane.wait_idle()
    assert finished(lone) == [] and lone.executor.runs == 0


async def test_leaving_hands_back_waiting_attempts_and_holds_new_ones(lone: Plane, clock) -> None:
    lone.executor.hold = trio.Event()
    lone.plane.execute(run_task(attempt=1))
    await settle()
    lone.leaving[0] = True
    assert lone.plane.hand_back_waiting() == [(TASK, 1)]
    lone.plane.execute(run_task(attempt=2))  # assigned while leaving: never started
    await lone.plane.wait_idle()
    assert finished(lone) == []  # the leave reports them, not the plane
    assert lone.plane.hand_back() == [(TASK, 2)]
    assert lone.executor.runs == 0


async def test_hold_requests_of_one_source_share_one_request(tmp_path: Path, clock) -> None:
    blobs = {f"{n}": canonical_tensor_bytes({"x": np.full(2, n, np.float32)}) for n in range(3)}
    by_digest = {hashlib.sha256(b).hexdigest(): b for b in blobs.values()}

    async def answer(node: str, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        assert op == "get_inputs"
        return {"blobs": {d: by_digest[d] for d in fields["digests"]}}

    fakes = data_plane(tmp_path, live=["w", "o"], peers=FakePeers(answer))
    async with trio.open_nursery() as nursery:
        await nursery.start(fakes.plane.run)
        for n, digest in enumerate(by_digest):
            fakes.plane.execute(fx.FetchPayload(TaskId("o", n), digest, ("o",)))
        await fakes.fed.until(3)
        nursery.cancel_scope.cancel()
    assert [op for _, op, _ in fakes.peers.calls] == ["get_inputs"]  # one for the burst
    assert sorted(e.task_id.sequence for e in fakes.fed if isinstance(e, PayloadStored)) == [
        0,
        1,
        2,
    ]
    assert all(fakes.payloads.has(digest, INPUTS) for digest in by_digest)


async def test_a_hold_request_no_source_answers_is_reported_failed(tmp_path: Path, clock) -> None:
    fakes = data_plane(tmp_path, live=["w", "o"])
    async with trio.open_nursery() as nursery:
        await nursery.start(fakes.plane.run)
        fakes.plane.execute(fx.FetchPayload(TASK, INPUT_DIGEST, ("o",)))
        await fakes.fed.until(1)
        nursery.cancel_scope.cancel()
    (event,) = fakes.fed
    assert isinstance(event, PayloadFetchFailed) and "unreachable" in event.reason
    assert not fakes.payloads.has(INPUT_DIGEST, INPUTS)


async def test_dropping_keeps_inputs_another_task_or_a_submission_refers_to(
    lone: Plane, clock
) -> None:
    other = TaskId("o", 2)
    lone.plane.note_inputs(TASK, INPUT_DIGEST)
    lone.plane.note_inputs(other, INPUT_DIGEST)
    lone.payloads.put_bytes(task_key(TASK), RESULT, b"result")
    lone.plane.execute(fx.DropPayload(TASK, INPUT_DIGEST))
    assert not lone.payloads.has(task_key(TASK), RESULT)
    assert lone.payloads.has(INPUT_DIGEST, INPUTS)  # the other task still refers to them
    lone.plane.submitting[INPUT_DIGEST] += 1
    lone.plane.execute(fx.DropPayload(other, INPUT_DIGEST))
    assert lone.payloads.has(INPUT_DIGEST, INPUTS)  # a submission holds them
    del lone.plane.submitting[INPUT_DIGEST]
    lone.plane.note_inputs(other, INPUT_DIGEST)
    lone.plane.execute(fx.DropPayload(other, INPUT_DIGEST))
    assert not lone.payloads.has(INPUT_DIGEST, INPUTS)


async def test_effects_before_the_plane_runs_are_a_wiring_error(tmp_path: Path) -> None:
    fakes = data_plane(tmp_path)
    with pytest.raises(AssertionError, match="must be started"):
        fakes.plane.execute(run_task())


async def test_the_workers_copies_of_tasks_no_table_holds_are_swept(tmp_path: Path, clock) -> None:
    fakes = data_plane(tmp_path)
    fakes.payloads.put_bytes(task_key(TASK), RESULT, b"result")
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(fakes.plane.run, sweep_interval=30.0))
        await trio.sleep(29)
        assert fakes.payloads.has(task_key(TASK), RESULT)
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert not fakes.payloads.has(task_key(TASK), RESULT)
    assert fakes.counted == ["result_copies_swept"]


async def test_a_result_held_elsewhere_is_read_range_by_range(tmp_path: Path, clock) -> None:
    """``obtain_result`` (the entry node's relay, a group's result) asks a live result
    holder for one range after another; a holder that is not live is not asked."""
    blob = bytes(range(256)) * 4096  # 1 MiB: several ranges of the smallest chunk

    async def answer(node: str, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        assert op == "get_result" and fields["task_id"] == str(TASK)
        start = fields["offset"]
        return {"data": blob[start : start + fields["length"]], "size": len(blob)}

    fakes = data_plane(tmp_path, live=["w", "h"], peers=FakePeers(answer), max_frame_bytes=1)
    assert await fakes.plane.obtain_result(TASK, ("gone", "h")) == blob
    asked = [node for node, _, _ in fakes.peers.calls]
    assert set(asked) == {"h"} and len(asked) == -(-len(blob) // fakes.plane.chunk) > 1


async def test_inputs_no_task_refers_to_expire_once_old_enough(lone: Plane) -> None:
    """An upload never submitted (no task here refers to its digest, no submission holds
    it) is deleted once ``inputs_expiry_s`` old, and only then; inputs a task or a
    submission refers to stay whatever their age."""
    import os
    import time

    plane, payloads = lone.plane, lone.payloads
    referred = hashlib.sha256(b"referred").hexdigest()
    submitting = hashlib.sha256(b"submitting").hexdigest()
    for digest in (referred, submitting):
        payloads.put_bytes(digest, INPUTS, INPUT)
    plane.note_inputs(TASK, referred)
    plane.submitting[submitting] += 1
    written = time.time()
    for digest in (INPUT_DIGEST, referred, submitting):
        os.utime(payloads.path(digest, INPUTS), (written, written))
    assert plane.expire_inputs(now=written + plane.inputs_expiry_s - 1) == 0
    assert payloads.has(INPUT_DIGEST, INPUTS)
    assert plane.expire_inputs(now=written + plane.inputs_expiry_s + 1) == 1
    assert not payloads.has(INPUT_DIGEST, INPUTS)
    assert payloads.has(referred, INPUTS) and payloads.has(submitting, INPUTS)
    assert lone.counted == ["inputs_expired"]


async def test_the_sweep_expires_unsubmitted_inputs(tmp_path: Path, clock) -> None:
    fakes = data_plane(tmp_path)
    fakes.payloads.put_bytes(INPUT_DIGEST, INPUTS, INPUT)
    fakes.plane.inputs_expiry_s = 0.0
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(fakes.plane.run, sweep_interval=30.0))
        await trio.sleep(29)
        assert fakes.payloads.has(INPUT_DIGEST, INPUTS)
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert not fakes.payloads.has(INPUT_DIGEST, INPUTS)
    assert fakes.counted == ["inputs_expired"]
