"""Dynamic batching on the worker (daemon/batching.py, Executor): runs of one model that wait
for the device together become one concatenated run, split back per run; a run that cannot
batch runs alone; a bad input fails its own run only."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
import trio
from onnx import TensorProto, helper, numpy_helper

from meshgpu.core.catalog import Batching
from meshgpu.daemon.batching import (
    batch_dimension,
    outputs_sized_by_inputs,
    rows_of,
    signature,
    split,
)
from meshgpu.daemon.execution import BATCH_REPROBE_RUNS, Executor, RowSpeed, _CachedSession
from meshgpu.errors import InputError


class _Session:
    """y = 2x per row; rejects negative inputs; records the batch sizes it ran."""

    backend = "onnxruntime"

    def __init__(self, batch_major: bool = True) -> None:
        self.runs: list[int] = []
        self.batch_major = batch_major
        self.gate = threading.Event()
        self.gate.set()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.gate.wait(10)
        x = feeds["x"]
        self.runs.append(int(x.shape[0]))
        if (x < 0).any():
            raise InputError("negative input")
        if not self.batch_major:
            return {"y": (x * 2).sum(axis=0, keepdims=True)}
        return {"y": x * 2}


def _executor(session: _Session, batching: Batching | None = None, slots: int = 1) -> Executor:
    executor = Executor(slots, batching_for=lambda digest: batching)
    cached = _CachedSession(session, None, batch_axis=True)
    cached.row_speed = RowSpeed(single_s=1.0, singles=3)  # runs alone measured (slow)
    executor._sessions["m"] = cached
    return executor


async def _run_concurrently(executor: Executor, feeds: list[dict[str, np.ndarray]]) -> list:
    results: list = [None] * len(feeds)

    async def one(index: int) -> None:
        try:
            results[index] = (await executor.run("m", None, feeds[index]))[0]  # type: ignore[arg-type]
        except Exception as error:
            results[index] = error

    async with trio.open_nursery() as nursery:
        for index in range(len(feeds)):
            nursery.start_soon(one, index)
            await trio.sleep(0)
    return results


async def _blocked_first(executor: Executor, session: _Session, feeds: list) -> list:
    """Run ``feeds`` concurrently while the device is held by a first run, so the
    others queue behind it (as tasks arriving during a run do). The held run goes to a
    worker thread: a lone small run may otherwise run on the loop (the inline rule), where
    the closed gate would block the loop and every other run would then go alone."""
    executor._may_run_inline = lambda cached, expected_s: False  # type: ignore[method-assign]
    session.gate.clear()
    results: list = []
    ran_before = len(session.runs)

    async def release() -> None:
        while len(session.runs) == ran_before and executor.active < len(feeds):
            await trio.sleep(0.01)
        await trio.sleep(0.05)
        session.gate.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(release)
        results = await _run_concurrently(executor, feeds)
    return results


async def test_waiting_runs_of_one_model_become_one_run_and_split_back() -> None:
    session = _Session()
    executor = _executor(session, Batching(max_batch=8, max_delay_us=0))
    feeds = [{"x": np.full((1, 3), float(v), dtype=np.float32)} for v in range(1, 8)]
    results = await _blocked_first(executor, session, feeds)
    for value, result in zip(range(1, 8), results, strict=True):
        np.testing.assert_array_equal(result["y"], np.full((1, 3), 2.0 * value))
    # The first batch held the device (the first run, and any that queued before it took
    # its slot); what waited meanwhile ran in batches of a power of two rows.
    assert sum(session.runs) == 7 and len(session.runs) <= 4 and max(session.runs) >= 4
    assert all(rows & (rows - 1) == 0 for rows in session.runs), session.runs
    counts = executor.batch_counts
    runs = len(session.runs)
    assert (counts.executions, counts.tasks, counts.per_model["m"]) == (runs, 7, (runs, 7))
    assert executor.active == 0


async def test_a_batch_never_exceeds_max_batch_rows() -> None:
    session = _Session()
    executor = _executor(session, Batching(max_batch=4, max_delay_us=0))
    feeds = [{"x": np.ones((2, 3), dtype=np.float32)} for _ in range(5)]
    feeds.append({"x": np.ones((1, 3), dtype=np.float32)})
    results = await _blocked_first(executor, session, feeds)
    assert [r["y"].shape[0] for r in results] == [f["x"].shape[0] for f in feeds]
    assert max(session.runs) <= 4 and sum(session.runs) == 11


async def test_a_bad_input_fails_alone_and_its_batch_mates_succeed() -> None:
    session = _Session()
    executor = _executor(session, Batching(max_batch=8, max_delay_us=0))
    values = [1.0, 2.0, -1.0, 3.0]
    feeds = [{"x": np.full((1, 2), v, dtype=np.float32)} for v in values]
    results = await _blocked_first(executor, session, feeds)
    assert isinstance(results[2], InputError) and "negative input" in str(results[2])
    for index in (0, 1, 3):
        np.testing.assert_array_equal(results[index]["y"], np.full((1, 2), 2 * values[index]))


async def test_runs_of_other_trailing_shapes_do_not_join_a_batch() -> None:
    session = _Session()
    executor = _executor(session, Batching(max_batch=8, max_delay_us=0))
    feeds = [{"x": np.ones((1, 3 if i % 2 else 4), dtype=np.float32)} for i in range(6)]
    results = await _blocked_first(executor, session, feeds)
    assert [r["y"].shape for r in results] == [f["x"].shape for f in feeds]
    assert sum(session.runs) == 6 and len(session.runs) < 6


async def test_outputs_that_are_not_batch_major_make_the_model_run_alone() -> None:
    session = _Session(batch_major=False)
    executor = _executor(session, Batching(max_batch=8, max_delay_us=0))
    feeds = [{"x": np.full((1, 2), float(v), dtype=np.float32)} for v in (1, 2, 3)]
    results = await _blocked_first(executor, session, feeds)
    for value, result in zip((1, 2, 3), results, strict=True):
        np.testing.assert_array_equal(result["y"], np.full((1, 2), 2.0 * value))
    assert "m" in executor._unbatched
    session.runs.clear()
    await _blocked_first(executor, session, feeds)
    assert session.runs == [1, 1, 1]  # known now: never concatenated again


async def test_max_batch_one_or_a_fixed_batch_dimension_runs_alone() -> None:
    session = _Session()
    executor = _executor(session, Batching(max_batch=1, max_delay_us=0))
    feeds = [{"x": np.ones((1, 2), dtype=np.float32)} for _ in range(4)]
    await _blocked_first(executor, session, feeds)
    assert session.runs == [1, 1, 1, 1]
    session = _Session()
    executor = _executor(session, None)
    executor._sessions["m"].batch_axis = False
    await _blocked_first(executor, session, feeds)
    assert session.runs == [1, 1, 1, 1]


async def test_the_delay_waits_for_more_runs_when_the_batch_is_not_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    session = _Session()
    executor = _executor(session, Batching(max_batch=4, max_delay_us=50_000))
    feeds = [{"x": np.full((1, 2), float(v), dtype=np.float32)} for v in range(4)]
    results: list = [None] * 4

    async def one(index: int) -> None:
        results[index] = await executor.run("m", None, feeds[index])  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        for index in range(4):
            nursery.start_soon(one, index)
            await trio.sleep(0.01)  # arrivals 10 ms apart, inside the 50 ms delay
    assert session.runs == [4]


async def test_group_members_batch_and_a_bad_member_fails_alone() -> None:
    session = _Session()
    executor = _executor(session, Batching(max_batch=4, max_delay_us=0))
    members = [{"x": np.full((1, 2), v, dtype=np.float32)} for v in (1.0, -2.0, 3.0, 4.0, 5.0)]
    outcomes, _ = await executor.run_many("m", None, members)  # type: ignore[arg-type]
    assert isinstance(outcomes[1], str) and "negative input" in outcomes[1]
    np.testing.assert_array_equal(outcomes[4]["y"], np.full((1, 2), 10.0))  # type: ignore[index]
    assert max(session.runs) <= 4


async def test_a_cancelled_waiting_run_leaves_the_queue() -> None:
    session = _Session()
    executor = _executor(session, Batching(max_batch=8, max_delay_us=0))
    session.gate.clear()
    feeds = {"x": np.ones((1, 2), dtype=np.float32)}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(executor.run, "m", None, feeds)
        await trio.sleep(0.05)
        with trio.move_on_after(0.05):
            await executor.run("m", None, feeds)  # type: ignore[arg-type]
        queues = list(executor._queues.values())
        assert all(not queue.waiting for queue in queues)
        session.gate.set()
    assert session.runs == [1]
    assert executor._queues == {}  # idle queues are forgotten


async def test_runs_alone_are_measured_before_any_batch() -> None:
    session = _Session()
    executor = _executor(session, Batching(max_batch=8, max_delay_us=0))
    executor._sessions["m"].row_speed = RowSpeed()
    feeds = [{"x": np.ones((1, 2), dtype=np.float32)} for _ in range(4)]
    for one in feeds:  # one at a time: runs alone, the yardstick (the first builds plans)
        await executor.run("m", None, one)  # type: ignore[arg-type]
    assert executor._sessions["m"].row_speed.singles == 3
    await _blocked_first(executor, session, feeds * 2)
    assert len(session.runs) < 4 + 8  # now it batches


def test_batches_that_do_not_pay_stop_and_are_tried_again_later() -> None:
    speed = RowSpeed()
    assert not speed.may_batch()  # nothing measured: run alone first
    for _ in range(4):  # the first run of a size builds its plan: not a sample
        speed.alone(0.010)
    assert speed.may_batch() and speed.pays is None
    speed.batched(5.0, 16)  # the first batch of 16: a plan built, not a sample
    for _ in range(3):
        speed.batched(0.200, 16)  # 12.5 ms a row against 10 ms alone
    assert speed.pays is False and not speed.may_batch()
    for _ in range(BATCH_REPROBE_RUNS):
        speed.alone(0.010)
    assert speed.may_batch()  # one batch again, in case things changed
    speed.batched(0.040, 16)  # 2.5 ms a row: much faster now
    speed.batched(0.040, 16)
    assert speed.pays is True and speed.may_batch()


def _model(first_input: str | int, first_output: str | int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [first_input, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [first_output, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph)


def test_batch_dimension_reads_the_graph() -> None:
    assert batch_dimension(_model("N", "N"))
    assert not batch_dimension(_model(1, 1))  # exported for batch 1
    assert not batch_dimension(_model("N", 1))  # outputs not batch-major
    assert not batch_dimension(_model("N", "M"))  # another dimension


def _tile_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    repeats = helper.make_tensor_value_info("repeats", TensorProto.INT64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    node = helper.make_node("Tile", ["x", "repeats"], ["y"])
    graph = helper.make_graph([node], "tile", [x, repeats], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _graph(nodes: list, inputs: list, initializer: list | None = None) -> onnx.ModelProto:
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", inputs, [y], initializer=initializer or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_outputs_sized_by_inputs_reads_the_graph() -> None:
    assert outputs_sized_by_inputs(_model("N", "N"))
    assert outputs_sized_by_inputs(_model(1, 1))
    # Exporters name the output's batch dimension apart from the input's (torch's
    # dynamic_axes) or leave it unknown: an elementwise model is still sized by its input.
    assert outputs_sized_by_inputs(_model("input_dynamic_axes_1", "output_dynamic_axes_1"))
    unshaped = _model("N", "N")
    unshaped.graph.output[0].type.tensor_type.ClearField("shape")
    assert outputs_sized_by_inputs(unshaped)
    assert not outputs_sized_by_inputs(_tile_model())  # the repeats' values decide
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    repeats = numpy_helper.from_array(np.array([2, 1], np.int64), "repeats")
    tile = helper.make_node("Tile", ["x", "repeats"], ["y"])
    assert outputs_sized_by_inputs(_graph([tile], [x], [repeats]))  # a constant: fixed
    # A size computed from the input's shape is fixed by it; one from its values is not.
    by_shape = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Expand", ["x", "s"], ["y"]),
    ]
    assert outputs_sized_by_inputs(_graph(by_shape, [x]))
    by_values = [
        helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64),
        helper.make_node("ReduceMax", ["i"], ["m"], keepdims=0),
        helper.make_node("Reshape", ["m", "one"], ["k"]),
        helper.make_node("Expand", ["x", "k"], ["y"]),
    ]
    one = numpy_helper.from_array(np.array([1], np.int64), "one")
    assert not outputs_sized_by_inputs(_graph(by_values, [x], [one]))
    assert not outputs_sized_by_inputs(_graph([helper.make_node("NonZero", ["x"], ["y"])], [x]))
    branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["z"])], "b", [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
    )  # fmt: skip
    cond = numpy_helper.from_array(np.array(True), "c")
    choice = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
    assert not outputs_sized_by_inputs(_graph([choice], [x], [cond]))  # a subgraph


@pytest.mark.parametrize(
    ("op", "inputs", "sized_by"),
    [
        ("HannWindow", ["n"], "n"),  # the window's length is the input's value
        ("HammingWindow", ["n"], "n"),
        ("BlackmanWindow", ["n"], "n"),
        ("STFT", ["x", "n"], "n"),  # frame_step: the frames' count
        ("STFT", ["x", "", "", "n"], "n"),  # frame_length
        ("MelWeightMatrix", ["n", "k", "r", "lo", "hi"], "n"),
        ("MelWeightMatrix", ["k", "n", "r", "lo", "hi"], "n"),
        ("AffineGrid", ["x", "n"], "n"),  # the grid's N, (D,) H, W
        ("StringSplit", ["n"], "n"),  # as many columns as the most pieces
        ("ImageDecoder", ["n"], "n"),  # the image's height and width are in its bytes
    ],
)
def test_operators_that_read_a_size_from_an_input_value(
    op: str, inputs: list[str], sized_by: str
) -> None:
    """Every operator whose output's size an input's value sets, fed from the runtime
    inputs, makes a model not sized by its inputs' shapes (a few bytes in, a GiB out)."""
    fed = [helper.make_tensor_value_info(sized_by, TensorProto.INT64, [])]
    others = [
        numpy_helper.from_array(np.array(4, np.int64), name)
        for name in dict.fromkeys(inputs)
        if name and name != sized_by
    ]
    node = helper.make_node(op, inputs, ["y"])
    assert not outputs_sized_by_inputs(_graph([node], fed, others))
    assert outputs_sized_by_inputs(_graph([node], [], [*others, numpy_helper.from_array(
        np.array(4, np.int64), sized_by)]))  # fmt: skip


async def test_a_run_of_a_model_sized_by_values_is_never_expected_fast(tmp_path: Path) -> None:
    """A run of ``Tile`` on a few bytes says nothing of the next one on as few bytes: the
    next may be a GiB. It is never expected to be fast (so never inline, never direct)."""
    path = tmp_path / "tile.onnx"
    onnx.save(_tile_model(), str(path))
    executor = Executor(1, backend="onnxruntime")
    feeds = {"x": np.ones((1, 4), np.float32), "repeats": np.array([2, 1], np.int64)}
    outputs, _ = await executor.run("tile", path, feeds)
    assert outputs["y"].shape == (2, 4)
    assert executor.expected_run_s("tile", feeds) == float("inf")
    relu = tmp_path / "relu.onnx"
    onnx.save(_model("N", "N"), str(relu))
    await executor.run("relu", relu, {"x": np.ones((2, 3), np.float32)})
    expected = executor.expected_run_s("relu", {"x": np.ones((2, 3), np.float32)})
    assert expected is not None and expected < float("inf")


def test_rows_signature_and_split() -> None:
    a = {"x": np.ones((2, 3), np.float32), "z": np.ones((2,), np.int64)}
    assert rows_of(a) == 2
    assert rows_of({"x": np.ones((2, 3)), "z": np.ones((3,))}) is None
    assert rows_of({"x": np.float32(1)}) is None
    other = {"z": np.zeros((5,), np.int64), "x": np.zeros((5, 3), np.float32)}
    assert signature(a) == signature(other)
    assert split({"y": np.arange(5)}, [2, 3]) is not None
    assert split({"y": np.arange(4)}, [2, 3]) is None


def test_a_real_onnxruntime_session_batches(tmp_path: Path) -> None:
    """The graph check on a real file: a symbolic first dimension batches."""
    path = tmp_path / "relu.onnx"
    onnx.save(_model("N", "N"), str(path))
    executor = Executor(1, backend="onnxruntime")
    session, batch_axis = executor._load(path)
    assert batch_axis
    with pytest.raises(InputError):
        session.run({"x": np.ones((2, 4), np.float32)})
