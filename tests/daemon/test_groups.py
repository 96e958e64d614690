"""Task groups on the daemon side, without processes: member ids, packing by input
signature, the group payload encodings, the executor's one-hop run of the members (a
member's permanent error fails it alone, a transient error fails the group) and the
per-member answers built from a group's result."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from meshgpu.core.tasks import TaskId
from meshgpu.daemon.execution import Executor, _CachedSession
from meshgpu.daemon.groups import MemberId, group_of, member_answers, pack, parse_task_ref
from meshgpu.daemon.payloads import (
    canonical_group_bytes,
    canonical_tensor_bytes,
    check_result_bytes,
    decode_tensors,
    group_from_bytes,
    group_result_bytes,
    group_result_from_bytes,
)
from meshgpu.errors import DecodeError, InferenceError, InputError


def test_member_ids_parse_back_and_plain_ids_keep_working() -> None:
    member = MemberId(TaskId("n-1a/42", 7), 3)
    assert str(member) == "n-1a/42/7:3"
    assert parse_task_ref(str(member)) == member
    assert parse_task_ref("n-1/42") == TaskId("n-1", 42)
    assert group_of("n-1/42:3") == "n-1/42" and group_of("n-1/42") is None
    assert group_of("n-1/42:\u00b2") is None  # "²" is a digit to isdigit, not to int
    for bad in ["n-1/x:3", "42:3", ":3", "n-1/42:", 5, "n-1/42:-1", "n-1/42:\u00b2"]:
        with pytest.raises(DecodeError):
            parse_task_ref(bad)


def test_packing_keeps_equal_signatures_together_in_order() -> None:
    a = {"x": np.zeros((1, 4), np.float32)}
    b = {"x": np.zeros((2, 4), np.float32)}
    c = {"x": np.zeros((1, 4), np.float64)}
    d = {"x": np.zeros((1, 4), np.float32), "y": np.zeros(1, np.float32)}
    tasks = [(0, a), (1, b), (2, a), (3, c), (4, a), (5, a), (6, d), (7, b)]
    groups = [[index for index, _ in group] for group in pack(tasks, 3)]
    assert groups == [[0, 2, 4], [1, 7], [3], [5], [6]]
    assert [[i for i, _ in g] for g in pack(tasks, 1)] == [[i] for i in range(8)]


def test_group_payloads_round_trip_and_garbage_is_refused() -> None:
    members = [{"b": np.arange(3.0), "a": np.ones((2, 2), np.int32)} for _ in range(3)]
    blob = canonical_group_bytes(members)
    decoded = group_from_bytes(blob)
    assert len(decoded) == 3
    for got in decoded:
        assert sorted(got) == ["a", "b"]
        np.testing.assert_array_equal(got["b"], np.arange(3.0))
    result = group_result_bytes([{"y": np.arange(2.0)}, "InputError: bad", {"y": np.zeros(2)}])
    check_result_bytes(result)
    check_result_bytes(canonical_tensor_bytes({"y": np.zeros(2)}))
    entries = group_result_from_bytes(result)
    assert entries[1] == {"error": "InputError: bad"}
    np.testing.assert_array_equal(decode_tensors(entries[0]["outputs"])["y"], np.arange(2.0))
    for garbage in [b"\xc1", canonical_tensor_bytes({}), group_result_bytes([])]:
        with pytest.raises(DecodeError):
            group_from_bytes(garbage)
    with pytest.raises(DecodeError):
        check_result_bytes(b"\x91\x81\xa1z\x01")  # [{"z": 1}]: neither outputs nor error


class _Session:
    """Doubles each input; a negative first element is a permanent input error, a NaN
    a transient failure; records the thread of each run."""

    backend = "onnxruntime"

    def __init__(self) -> None:
        self.threads: list[int] = []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.append(threading.get_ident())
        x = feeds["x"]
        if np.isnan(x.flat[0]):
            raise InferenceError("the device went away")
        if x.flat[0] < 0:
            raise InputError("negative input")
        return {"y": x * 2}


def _executor(session: _Session) -> Executor:
    executor = Executor(1)
    executor._sessions["m"] = _CachedSession(session, None)
    return executor


async def test_run_many_runs_every_member_in_one_hop_and_fails_a_member_alone() -> None:
    session = _Session()
    executor = _executor(session)
    members = [{"x": np.full(2, float(v))} for v in (1, -1, 3)]
    outcomes, elapsed = await executor.run_many("m", None, members)  # type: ignore[arg-type]
    assert isinstance(outcomes[1], str) and "negative input" in outcomes[1]
    np.testing.assert_array_equal(outcomes[0]["y"], [2.0, 2.0])  # type: ignore[index]
    np.testing.assert_array_equal(outcomes[2]["y"], [6.0, 6.0])  # type: ignore[index]
    assert len(set(session.threads)) == 1 and session.threads[0] != threading.get_ident()
    assert elapsed >= 0 and executor.active == 0


async def test_a_transient_member_failure_fails_the_whole_group() -> None:
    executor = _executor(_Session())
    members = [{"x": np.full(2, v)} for v in (1.0, float("nan"), 3.0)]
    with pytest.raises(InferenceError):
        await executor.run_many("m", None, members)  # type: ignore[arg-type]
    assert executor.active == 0


def test_member_answers_come_from_the_group_result() -> None:
    group_id = TaskId("n-1", 9)
    results = group_result_from_bytes(
        group_result_bytes([{"y": np.arange(2.0)}, "InputError: negative input"])
    )
    base = {"task_id": str(group_id), "state": "done", "reason": "", "worker": "w", "outputs": None}
    members = [MemberId(group_id, 0), MemberId(group_id, 1), MemberId(group_id, 5)]
    answers = member_answers(base, results, members, include=True)
    assert [a["task_id"] for a in answers] == ["n-1/9:0", "n-1/9:1", "n-1/9:5"]
    assert answers[0]["state"] == "done" and answers[0]["worker"] == "w"
    np.testing.assert_array_equal(decode_tensors(answers[0]["outputs"])["y"], np.arange(2.0))
    assert answers[1]["state"] == "failed" and "negative input" in answers[1]["reason"]
    assert answers[2]["state"] == "failed" and "no member 5" in answers[2]["reason"]
    assert member_answers(base, results, members[:1], include=False)[0]["outputs"] is None
    failed = {**base, "state": "failed", "reason": "model rejected"}
    assert all(
        a["state"] == "failed" and a["reason"] == "model rejected"
        for a in member_answers(failed, None, members, include=True)
    )
