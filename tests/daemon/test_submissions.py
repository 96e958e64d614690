"""Submissions as a part (daemon/submissions.py) and the direct-run decision
(daemon/direct.py), with fakes for the data plane's inputs, the executor and the core,
on trio's mock clock. Real sockets: test_direct.py, test_resend.py."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from meshgpu.core import effects as fx
from meshgpu.core.events import SubmitTask
from meshgpu.core.load import DeviceCapabilities
from meshgpu.core.tasks import DeviceRequirements, TaskId
from meshgpu.daemon.dataplane import INPUTS
from meshgpu.daemon.direct import DIRECT_RUN_S, DIRECT_WAITING_PER_SLOT, DirectRuns
from meshgpu.daemon.modelstore import ModelStore
from meshgpu.daemon.payloads import (
    PayloadStore,
    canonical_tensor_bytes,
    decode_tensors,
    encode_tensors,
)
from meshgpu.daemon.submissions import Submissions
from meshgpu.errors import DecodeError, PermanentTaskError, TaskError
from tests.daemon.fakes import Fed

MODEL = b"a model the fake executor never reads"
DIGEST = hashlib.sha256(MODEL).hexdigest()
X = np.arange(4, dtype=np.float32)


@dataclass
class Inputs:
    """The data plane's side of submissions: stores in memory, counts the holds."""

    submitting: Counter[str] = field(default_factory=Counter)
    stored: dict[str, bytes] = field(default_factory=dict)
    noted: list[tuple[TaskId, str]] = field(default_factory=list)

    relayed: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def note_inputs(self, task_id: TaskId, input_digest: str) -> None:
        self.noted.append((task_id, input_digest))

    def relayed_copies(self, input_digest: str) -> tuple[str, ...]:
        return self.relayed.get(input_digest, ())

    async def store(self, key: Any, kind: str, data: bytes, *, wait: bool) -> None:
        self.stored[key] = data


@dataclass
class Executor:
    """What direct runs ask of the executor; runs double ``x``."""

    expected: float | None = DIRECT_RUN_S / 2
    fail: BaseException | None = None
    active: int = 0
    slots: int = 1
    gate: trio.Event | None = None
    """When set, every run waits for it (runs in flight at once)."""

    def expected_run_s(self, digest: str, tensors: Any) -> float | None:
        return self.expected

    async def run(self, digest: str, path: Path, tensors: Any, on_slot: Any = None) -> Any:
        self.active += 1
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.fail is not None:
                raise self.fail
            return {"y": np.asarray(tensors["x"]) * 2}, 0.001
        finally:
            self.active -= 1


@dataclass
class Mesh:
    """One node's submissions over fakes, and the world they see."""

    submissions: Submissions
    direct: DirectRuns
    inputs: Inputs
    executor: Executor
    fed: Fed
    counted: list[str]
    state: dict[str, Any]


def mesh(tmp_path: Path) -> Mesh:
    models = ModelStore(tmp_path / "models", 1 << 30)
    models.put(MODEL, DIGEST)
    payloads = PayloadStore(tmp_path / "payloads")
    inputs, executor, fed, counted = Inputs(), Executor(), Fed(), []
    state: dict[str, Any] = {
        "leaving": False,
        "busy": False,
        "queue": 0,
        "capabilities": DeviceCapabilities(device_types=("cpu",), memory_total=1 << 30),
        "entries": {},
    }
    direct = DirectRuns(
        "n1",
        executor,  # type: ignore[arg-type]
        models,
        labels=(("room", "lab1"),),
        chunk=1 << 20,
        leaving=lambda: state["leaving"],
        busy=lambda: state["busy"],
        capabilities=lambda: state["capabilities"],
        queue_length=lambda: state["queue"],
        count=counted.append,
    )
    submissions = Submissions(
        "n1",
        inputs,
        payloads,
        models,
        direct,
        task_entry=state["entries"].get,
        feed=fed,
        count=counted.append,
        leaving=lambda: state["leaving"],
    )
    return Mesh(submissions, direct, inputs, executor, fed, counted, state)


def request(x: np.ndarray = X, **fields: Any) -> dict[str, Any]:
    return {"model_digest": DIGEST, "inputs": encode_tensors({"x": x}), **fields}


FIRST = TaskId("n1", 1)


async def answered(m: Mesh, count: int = 1, task_id: TaskId = FIRST) -> SubmitTask:
    """Play the core: answer the ``count``-th SubmitTask fed with an acceptance."""
    await m.fed.until(count)
    submit = m.fed[count - 1]
    assert isinstance(submit, SubmitTask)
    m.submissions.answer(fx.TaskAccepted(submit.client_ref, task_id, 2, 2))
    return submit


async def test_an_idle_node_runs_a_tiny_task_at_once(tmp_path: Path, autojump_clock) -> None:
    m = mesh(tmp_path)
    answer = await m.submissions.submit(request())
    assert answer["direct"] is True and answer["state"] == "done" and answer["worker"] == "n1"
    np.testing.assert_array_equal(decode_tensors(answer["outputs"])["y"], X * 2)
    assert list(m.fed) == [] and m.counted == ["direct_runs"]


@pytest.mark.parametrize(
    ("world", "fields"),
    [
        ({"busy": True}, {}),  # a task of the table runs here
        ({"queue": 1}, {}),  # the core's queue is not empty
        ({}, {"direct": False}),  # the client wants the table
        ({}, {"prefer": ["room=lab1"]}),  # a preference: the leader decides
        ({}, {"device_type": "gpu"}),  # a requirement this node misses
        ({}, {"deadline_s": DIRECT_RUN_S / 4}),  # a deadline the expected run would miss
    ],
)
async def test_anything_but_an_idle_capable_node_goes_to_the_table(
    tmp_path: Path, autojump_clock, world: dict[str, Any], fields: dict[str, Any]
) -> None:
    m = mesh(tmp_path)
    m.state.update(world)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(answered, m)
        answer = await m.submissions.submit(request(**fields))
    assert answer == {"task_id": "n1/1", "copies": 2, "replicas": 2}
    assert m.executor.fail is None and "direct_runs" not in m.counted


async def test_a_slow_or_cold_model_goes_to_the_table(tmp_path: Path, autojump_clock) -> None:
    m = mesh(tmp_path)
    tensors = {"x": X}
    requirements = DeviceRequirements()
    m.executor.expected = None  # never run here
    assert not m.direct.allowed(request(), requirements, tensors)
    m.executor.expected = DIRECT_RUN_S * 2
    assert not m.direct.allowed(request(), requirements, tensors)
    m.executor.expected = DIRECT_RUN_S / 2
    assert m.direct.allowed(request(), requirements, tensors)


async def test_a_deadline_shorter_than_the_expected_run_goes_to_the_table(
    tmp_path: Path, autojump_clock
) -> None:
    """A direct run is never expired: a task that may miss its deadline goes to the
    table, whose leader fails it with the deadline named (an HTTP timeout of 1 us was
    run directly and answered 200)."""
    m = mesh(tmp_path)
    tensors = {"x": X}
    requirements = DeviceRequirements()
    m.executor.expected = DIRECT_RUN_S / 2
    assert m.direct.allowed(request(), requirements, tensors, DIRECT_RUN_S)
    assert not m.direct.allowed(request(), requirements, tensors, DIRECT_RUN_S / 4)


async def concurrent_answers(m: Mesh, count: int) -> list[dict[str, Any]]:
    """``count`` submissions at once while every direct run waits at the gate: the ones
    that went to the table are answered by the core (ids n1/1, n1/2, ...) and then the
    gate opens. The answers in arrival order."""
    m.executor.gate = gate = trio.Event()
    answers: list[dict[str, Any]] = [{}] * count

    async def client(index: int) -> None:
        answers[index] = await m.submissions.submit(request(x=X + index))

    async with trio.open_nursery() as nursery:
        for index in range(count):
            nursery.start_soon(client, index)
            await trio.testing.wait_all_tasks_blocked()
        for fed in range(len(m.fed)):
            await answered(m, fed + 1, TaskId("n1", fed + 1))
        gate.set()
    return answers


async def test_a_few_concurrent_callers_all_run_directly(tmp_path: Path, autojump_clock) -> None:
    """Direct runs under way do not close the path: later callers wait for the slot
    behind them, each answered with its own outputs, and nothing enters the table."""
    m = mesh(tmp_path)
    m.executor.expected = DIRECT_RUN_S / 100
    answers = await concurrent_answers(m, 8)
    assert all(answer.get("direct") is True for answer in answers)
    for index, answer in enumerate(answers):
        y = decode_tensors(answer["outputs"])["y"]
        np.testing.assert_array_equal(y, (X + index) * 2)
    assert list(m.fed) == [] and m.counted == ["direct_runs"] * 8
    assert len({answer["task_id"] for answer in answers}) == 8
    assert m.direct.in_flight == 0


async def test_direct_runs_stop_at_the_waiting_bound(tmp_path: Path, autojump_clock) -> None:
    m = mesh(tmp_path)
    m.executor.expected = DIRECT_RUN_S / 1000
    m.executor.slots = 2
    bound = 2 * (1 + DIRECT_WAITING_PER_SLOT)
    answers = await concurrent_answers(m, bound + 2)
    assert [answer.get("direct", False) for answer in answers] == [True] * bound + [False] * 2
    assert [answer["task_id"] for answer in answers[bound:]] == ["n1/1", "n1/2"]


async def test_direct_runs_stop_when_the_wait_would_outlast_a_direct_run(
    tmp_path: Path, autojump_clock
) -> None:
    """Expected 0.4 of DIRECT_RUN_S, one slot: the second caller waits for one run (0.8
    in all), the third would wait for two (1.2): the table."""
    m = mesh(tmp_path)
    m.executor.expected = DIRECT_RUN_S * 0.4
    answers = await concurrent_answers(m, 3)
    assert [answer.get("direct", False) for answer in answers] == [True, True, False]


async def test_a_table_run_on_the_executor_closes_the_direct_path(
    tmp_path: Path, autojump_clock
) -> None:
    """A run that is not a direct run holds a slot here (a task of the table): callers
    go to the table even though direct runs are also in flight."""
    m = mesh(tmp_path)
    m.executor.expected = DIRECT_RUN_S / 100
    tensors, requirements = {"x": X}, DeviceRequirements()
    m.executor.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(m.submissions.submit, request())
        await trio.testing.wait_all_tasks_blocked()
        assert m.direct.in_flight == 1 and m.direct.allowed(request(), requirements, tensors)
        m.executor.active += 1  # as the table's run would
        assert not m.direct.allowed(request(), requirements, tensors)
        m.executor.active -= 1
        m.state["busy"] = True  # an attempt of the table fetching inputs here
        assert not m.direct.allowed(request(), requirements, tensors)
        m.executor.gate.set()
    assert m.direct.in_flight == 0


async def test_a_transient_direct_failure_falls_back_to_the_table(
    tmp_path: Path, autojump_clock
) -> None:
    m = mesh(tmp_path)
    m.executor.fail = OSError("device lost")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(answered, m)
        answer = await m.submissions.submit(request())
    assert answer["task_id"] == "n1/1"
    assert m.direct.fallbacks == 1 and "direct_fallbacks" in m.counted


async def test_a_permanent_direct_failure_is_the_answer(tmp_path: Path, autojump_clock) -> None:
    m = mesh(tmp_path)
    m.executor.fail = PermanentTaskError("wrong input shape")
    answer = await m.submissions.submit(request())
    assert answer["state"] == "failed" and "wrong input shape" in answer["reason"]
    assert list(m.fed) == []


async def test_inputs_are_held_until_the_core_answers(tmp_path: Path, autojump_clock) -> None:
    m = mesh(tmp_path)
    m.state["busy"] = True
    answers: list[dict[str, Any]] = []

    async def client() -> None:
        answers.append(await m.submissions.submit(request()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        await m.fed.until(1)
        (digest,) = m.inputs.submitting  # held while the core has not answered
        assert m.inputs.submitting[digest] == 1 and digest in m.inputs.stored
        await answered(m)
    assert not m.inputs.submitting  # released by the answer
    assert answers == [{"task_id": "n1/1", "copies": 2, "replicas": 2}]


async def test_a_resend_gets_the_first_answer_and_other_inputs_are_refused(
    tmp_path: Path, autojump_clock
) -> None:
    m = mesh(tmp_path)
    m.state["busy"] = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(answered, m)
        first = await m.submissions.submit(request(submission="s-1"))
    again = await m.submissions.submit(request(submission="s-1"))
    assert again == first and len(m.fed) == 1  # not submitted twice
    assert m.submissions.resends == 1 and "submissions_resent" in m.counted
    with pytest.raises(DecodeError, match="other inputs"):
        await m.submissions.submit(request(x=X + 1, submission="s-1"))


async def test_one_record_answers_resends_and_settles_a_group_members_id_alone_is_new(
    tmp_path: Path, autojump_clock
) -> None:
    """A task's submission id is remembered once (``_tasks_of``): a resend of an ordinary
    task and of a group (its members' ids joined) get their first answers, ``settle``
    finds both, and a group member's id sent alone is a task of its own, not a resend of
    the group (nor refused as the group's id with other inputs)."""
    m = mesh(tmp_path)
    m.state["busy"] = True
    members = [{"inputs": encode_tensors({"x": X + i}), "submission": f"g{i}"} for i in range(2)]
    batch = {"model_digest": DIGEST, "tasks": members, "group": 2}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(answered, m)
        first = await m.submissions.submit(request(submission="s-1"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(answered, m, 2, TaskId("n1", 2))
        group = await m.submissions.submit_batch(batch)
    assert await m.submissions.submit(request(submission="s-1")) == first
    assert await m.submissions.submit_batch(batch) == group
    assert len(m.fed) == 2 and m.submissions.resends == 2
    settled = await m.submissions.settle(["s-1", "g1"], 0.0)
    assert settled["results"] == [
        {"task_id": "n1/1"},
        {"task_id": group["results"][1]["task_id"], "group": "n1/2", "members": 2},
    ]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(answered, m, 3, TaskId("n1", 3))
        alone = await m.submissions.submit(request(x=X + 1, submission="g1"))
    assert alone["task_id"] == "n1/3" and len(m.fed) == 3


async def test_an_unanswered_submission_times_out_and_keeps_its_hold(
    tmp_path: Path, autojump_clock
) -> None:
    m = mesh(tmp_path)
    m.state["busy"] = True
    with pytest.raises(TaskError, match="did not acknowledge"):
        await m.submissions.submit(request())
    assert sum(m.inputs.submitting.values()) == 1  # the core's late answer releases it


async def test_a_leaving_node_or_a_missing_model_refuses(tmp_path: Path, autojump_clock) -> None:
    m = mesh(tmp_path)
    with pytest.raises(TaskError, match="upload it first"):
        await m.submissions.submit({**request(), "model_digest": "0" * 64})
    m.state["leaving"] = True
    with pytest.raises(TaskError, match="leaving"):
        await m.submissions.submit(request())
    assert list(m.fed) == []


async def test_an_accepted_task_notes_its_inputs_from_the_table(
    tmp_path: Path, autojump_clock
) -> None:
    m = mesh(tmp_path)
    task_id = TaskId("n1", 9)
    m.state["entries"][task_id] = SimpleNamespace(spec=SimpleNamespace(input_digest="d" * 64))
    m.submissions.answer(fx.TaskAccepted("c-unknown", task_id, 2, 2))
    assert m.inputs.noted == [(task_id, "d" * 64)]


async def test_a_submit_of_relayed_inputs_names_the_nodes_that_hold_copies(
    tmp_path: Path,
) -> None:
    """Inputs uploaded in ranges and relayed to n2 as they arrived (relay.py): the core is
    told n2 holds a copy, so its replication asks n2 first. (The real clock: the stored
    layout is read in a thread, which an autojump clock would jump past.)"""
    m = mesh(tmp_path)
    data = canonical_tensor_bytes({"x": X})
    digest = hashlib.sha256(data).hexdigest()
    m.submissions.payloads.put_bytes(digest, INPUTS, data)
    other_data = canonical_tensor_bytes({"x": X + 1})
    other = hashlib.sha256(other_data).hexdigest()
    m.submissions.payloads.put_bytes(other, INPUTS, other_data)
    m.inputs.relayed[digest] = ("n2",)
    async with trio.open_nursery() as nursery:
        for uploaded in (digest, other):
            nursery.start_soon(
                m.submissions.submit, {"model_digest": DIGEST, "input_digest": uploaded}
            )
        relayed, plain = await answered(m, 1), await answered(m, 2, TaskId("n1", 2))
    by_digest = {submit.spec.input_digest: submit for submit in (relayed, plain)}
    assert by_digest[digest].copies_at == ("n2",)
    assert by_digest[other].copies_at == ()


@pytest.mark.parametrize(
    ("field", "value"),
    [("replicas", 2.7), ("replicas", True), ("replicas", "3"), ("min_memory", 2.5e9 + 0.5)],
)
async def test_an_integer_field_that_is_not_a_whole_number_is_refused(
    tmp_path: Path, autojump_clock, field: str, value: Any
) -> None:
    """The raw TCP API took ``replicas: 2.7`` as 2 (``int()``) where the client and the
    HTTP port refuse it; a whole float (``4e9``) is the integer it names."""
    m = mesh(tmp_path)
    with pytest.raises(DecodeError, match=f"{field} is .*an integer, got {value!r}"):
        await m.submissions.submit(request(**{field: value}))
    assert list(m.fed) == []
    m.state["busy"] = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(answered, m)
        await m.submissions.submit(request(replicas=3.0, min_memory=4e3))
    (submit,) = m.fed
    assert isinstance(submit, SubmitTask)
    assert (submit.spec.replicas, submit.spec.requirements.min_memory) == (3, 4000)


@pytest.mark.parametrize(("field", "value"), [("replicas", 1e30), ("min_memory", 2.0**64)])
async def test_a_whole_number_past_what_msgpack_carries_is_refused(
    tmp_path: Path, autojump_clock, field: str, value: float
) -> None:
    """``replicas: 1e30`` is a whole number, but no msgpack integer: the task's spec
    could not be journaled (the Persist failed, OverflowError) nor sent to a peer."""
    import re

    m = mesh(tmp_path)
    with pytest.raises(DecodeError, match=f"{field} is .*got {re.escape(repr(value))}"):
        with trio.move_on_after(5):
            await m.submissions.submit(request(**{field: value}))
    assert list(m.fed) == []
