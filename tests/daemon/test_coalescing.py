"""Coalescing at the entry node (daemon/coalescing.py): concurrent single submissions of
one lane become one task group while an entry of the lane is in flight; a lone one goes
alone; each member keeps its own id and outcome; a bad input fails alone."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from meshgpu.core.coalescing import MAX_COALESCED, Lane, lane_of
from meshgpu.core.tasks import TaskSpec
from meshgpu.daemon.auth import Authenticator
from meshgpu.daemon.coalescing import Coalescer
from meshgpu.daemon.groups import group_of
from meshgpu.daemon.payloads import decode_tensors, encode_tensors
from meshgpu.daemon.rpc import open_rpc
from meshgpu.daemon.runtime import Daemon
from meshgpu.errors import TaskError
from tests.daemon.test_runtime import DIGEST, MODEL, MODELS, settings

PIXELS = np.load(MODELS / "digits_test.npz")["pixels"][:16]


class _Table:
    """Fake feeds: each entry is acknowledged when the test releases it."""

    def __init__(self) -> None:
        self.entries: list[int] = []  # members per entry fed
        self.release = trio.Event()
        self.refuse = False

    async def one(self, request: Any, tensors: Mapping[str, Any], label: Any, sub: Any) -> dict:
        self.entries.append(1)
        await self.release.wait()
        if self.refuse:
            raise TaskError("task refused: full")
        return {"task_id": f"n-a/{len(self.entries)}", "copies": 1, "replicas": 2}

    async def group(self, request: Any, members: Sequence[Mapping[str, Any]], label: Any) -> dict:
        self.entries.append(len(members))
        await self.release.wait()
        if self.refuse:
            raise TaskError("task refused: full")
        return {"task_id": f"n-a/{len(self.entries)}", "copies": 1, "replicas": 2}


def _tensors(width: int = 4) -> dict[str, np.ndarray]:
    return {"x": np.zeros((1, width), np.float32)}


def _lane(width: int = 4) -> Lane:
    """The lane the daemon computes for ``_tensors(width)`` of model ``m``."""
    spec = TaskSpec(model_digest="m", input_digest="-", input_shapes=(("x", (1, width)),))
    return lane_of(spec, {"x": np.dtype(np.float32).str})


async def _started(nursery: trio.Nursery, table: _Table) -> Coalescer:
    coalescer = Coalescer(table.one, table.group)
    await nursery.start(coalescer.run)
    return coalescer


async def test_a_lone_submission_goes_alone_and_later_ones_wait_for_it() -> None:
    table = _Table()
    answers: dict[int, dict] = {}
    async with trio.open_nursery() as nursery:
        coalescer = await _started(nursery, table)

        async def submit(index: int, width: int = 4) -> None:
            answers[index] = await coalescer.submit(
                _lane(width),
                {"model_digest": "m"},
                _tensors(width),
                None,
                f"s{index}",
                lambda: f"d{index}",
            )

        nursery.start_soon(submit, 0)
        await trio.testing.wait_all_tasks_blocked()
        assert table.entries == [1]  # alone, at once
        for index in range(1, 6):
            nursery.start_soon(submit, index)
        nursery.start_soon(submit, 6, 8)  # another shape: another lane, alone at once
        await trio.testing.wait_all_tasks_blocked()
        assert table.entries == [1, 1]
        table.release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(table.entries) == [1, 1, 5]
        nursery.cancel_scope.cancel()
    assert "group" not in answers[0] and "group" not in answers[6]
    members = [answers[i] for i in range(1, 6)]
    assert len({m["task_id"] for m in members}) == 5
    assert {group_of(m["task_id"]) for m in members} == {members[0]["group"]}
    assert all(m["members"] == 5 for m in members)


async def test_a_full_lane_sends_at_once_and_a_resend_gets_the_same_member() -> None:
    table = _Table()
    answers: list[tuple[str, dict]] = []
    async with trio.open_nursery() as nursery:
        coalescer = await _started(nursery, table)

        async def submit(sub: str, digest: str = "d") -> None:
            answer = await coalescer.submit(
                _lane(), {"model_digest": "m"}, _tensors(), None, sub, lambda: digest
            )
            answers.append((sub, answer))

        nursery.start_soon(submit, "first")
        await trio.testing.wait_all_tasks_blocked()
        for index in range(MAX_COALESCED):
            nursery.start_soon(submit, f"s{index}")
        await trio.testing.wait_all_tasks_blocked()
        assert table.entries == [1, MAX_COALESCED]  # full: sent without waiting
        nursery.start_soon(submit, "s3")  # a resend of a waiting member
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(Exception, match="other inputs"):
            await coalescer.submit(
                _lane(), {"model_digest": "m"}, _tensors(), None, "s3", lambda: "other"
            )
        table.release.set()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    resent = [answer for sub, answer in answers if sub == "s3"]
    assert len(resent) == 2 and resent[0] == resent[1] and "group" in resent[0]
    assert len({answer["task_id"] for _, answer in answers}) == 1 + MAX_COALESCED


async def test_a_refused_group_fails_each_member_and_a_cancelled_waiter_leaves() -> None:
    table = _Table()
    table.refuse = True
    errors: list[Exception] = []
    async with trio.open_nursery() as nursery:
        coalescer = await _started(nursery, table)

        async def submit() -> None:
            try:
                await coalescer.submit(
                    _lane(), {"model_digest": "m"}, _tensors(), None, None, lambda: ""
                )
            except TaskError as error:
                errors.append(error)

        nursery.start_soon(submit)
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.01):  # a caller that goes away while waiting
            await coalescer.submit(
                _lane(), {"model_digest": "m"}, _tensors(), None, None, lambda: ""
            )
        for _ in range(3):
            nursery.start_soon(submit)
        await trio.testing.wait_all_tasks_blocked()
        table.release.set()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert table.entries == [1, 3] and len(errors) == 4


@pytest.fixture
async def solo(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(Daemon(settings(tmp_path / "solo")).run)
        yield daemon
        daemon.request_stop()


async def test_concurrent_submissions_coalesce_and_each_gets_its_own_outcome(solo) -> None:
    """Through a real daemon: 16 callers at once, one with a wrong shape. Every good one
    gets its own row's answer; the bad one fails alone with the input named; the group's
    entry is collected once every member was."""
    from meshgpu import inference

    expected = inference.load(MODEL, backend="onnxruntime").run({"pixels": PIXELS})
    outcomes: dict[int, dict] = {}
    answers: dict[int, dict] = {}

    async def caller(index: int) -> None:
        pixels = np.zeros((1, 63), np.float32) if index == 5 else PIXELS[index : index + 1]
        async with open_rpc(solo.address, Authenticator(None, f"c{index}")) as rpc:
            answer = await rpc.call(
                "submit",
                model_digest=DIGEST,
                inputs=encode_tensors({"pixels": pixels}),
                direct=False,
                submission=f"sub-{index}",
            )
            answers[index] = answer
            async for outcome in rpc.stream("results", task_ids=[answer["task_id"]]):
                if outcome["task_id"] is not None:
                    outcomes[index] = outcome
            await rpc.call("collected", task_ids=[answer["task_id"]])

    async with open_rpc(solo.address, Authenticator(None, "setup")) as rpc:
        await rpc.call("put_model", digest=DIGEST, data=MODEL)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for index in range(len(PIXELS)):
                nursery.start_soon(caller, index)
    coalescer = solo.handlers.submissions.coalescer
    assert coalescer.groups >= 1 and coalescer.coalesced >= 2
    assert any("group" in answer for answer in answers.values())
    assert len({answer["task_id"] for answer in answers.values()}) == len(PIXELS)
    assert outcomes[5]["state"] == "failed" and "pixels" in outcomes[5]["reason"]
    for index, outcome in outcomes.items():
        if index == 5:
            continue
        assert outcome["state"] == "done", outcome
        got = decode_tensors(outcome["outputs"])["probabilities"]
        np.testing.assert_allclose(got[0], expected["probabilities"][index], rtol=1e-5)
    with trio.fail_after(30):  # every entry delivered: the table empties
        while len(solo.node.tasks.table):
            await trio.sleep(0.1)
