"""PoCL's in-thread device as the threaded CPU device's companion for small plans.

Which device runs a plan is measured when the plan is built, so these tests replace the
measurement to pin each branch of the choice; the outputs must not depend on it.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from meshgpu.inference.devices import devices, inline_companion

cl = pytest.importorskip("pyopencl")

from meshgpu.inference.opencl import executor  # noqa: E402
from meshgpu.inference.opencl.executor import OpenCLSession  # noqa: E402


def _pocl_pair() -> tuple[object, object] | None:
    for platform in cl.get_platforms():
        for device in platform.get_devices():
            companion = inline_companion(device)
            if companion is not None:
                return device, companion
    return None


needs_pair = pytest.mark.skipif(
    _pocl_pair() is None, reason="no PoCL threaded CPU device with its basic twin here"
)


def _layer_model() -> onnx.ModelProto:
    """A small product, bias and Softmax: a plan of few tiny launches."""
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((24, 16)).astype(np.float32)
    bias = rng.standard_normal(16).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["y"]),
            helper.make_node("Add", ["y", "b"], ["z"]),
            helper.make_node("Softmax", ["z"], ["p"], axis=-1),
        ],
        "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 24])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def _feeds(rows: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(rows).standard_normal((rows, 24)).astype(np.float32)}


def _measured(monkeypatch: pytest.MonkeyPatch, *medians: list[float]) -> list[int]:
    """Make plan-time measurements return ``medians`` in turn (every run counts as fast, and
    the first decides); returns the calls' run counts."""
    monkeypatch.setattr(executor, "INLINE_FIRST_RUN_MS", float("inf"))
    monkeypatch.setattr(executor, "INLINE_DECIDING_RUN", 1)
    answers = list(medians)
    calls: list[int] = []

    def fake(runs: list, rounds: int, clock: object = None) -> list[float]:
        for run in runs:
            run()  # still run them: the choice must leave working plans behind
        calls.append(len(runs))
        return answers.pop(0)

    monkeypatch.setattr(executor.tuning, "alternating_medians_ms", fake)
    return calls


@needs_pair
def test_the_twin_is_an_execution_mode_not_a_listed_device() -> None:
    threaded, inline = _pocl_pair()  # type: ignore[misc]
    assert threaded.name.split("-", 1)[1] == inline.name.split("-", 1)[1]
    assert inline_companion(inline) is None  # the twin has no twin of its own
    listed = {(d.platform_index, d.device_index) for d in devices() if d.backend == "opencl"}
    platforms = cl.get_platforms()
    for platform_index, platform in enumerate(platforms):
        for device_index, device in enumerate(platform.get_devices()):
            if device == inline:
                assert (platform_index, device_index) not in listed
            if device == threaded:
                assert (platform_index, device_index) in listed


@needs_pair
def test_a_plan_faster_inline_runs_there_with_the_same_outputs(monkeypatch) -> None:
    threaded, inline = _pocl_pair()  # type: ignore[misc]
    model = _layer_model()
    reference = OpenCLSession(model, device=threaded, inline=False).run(_feeds())
    calls = _measured(monkeypatch, [1.0], [1.0, 0.2])
    session = OpenCLSession(model, device=threaded)
    got = session.run(_feeds())
    assert calls == [1, 2]
    assert session.plan_device(_feeds(3)) == inline
    np.testing.assert_array_equal(got["p"], reference["p"])
    np.testing.assert_array_equal(session.run(_feeds())["p"], reference["p"])


@needs_pair
def test_a_plan_faster_threaded_stays_and_each_shape_chooses(monkeypatch) -> None:
    threaded, inline = _pocl_pair()  # type: ignore[misc]
    _measured(monkeypatch, [1.0], [0.2, 1.0], [1.0], [1.0, 0.2])
    session = OpenCLSession(_layer_model(), device=threaded)
    first = session.run(_feeds(3))["p"]
    second = session.run(_feeds(5))["p"]
    assert session.plan_device(_feeds(3)) == threaded
    assert session.plan_device(_feeds(5)) == inline
    assert first.shape == (3, 16) and second.shape == (5, 16)
    np.testing.assert_allclose(second.sum(axis=1), 1.0, rtol=1e-5)


@needs_pair
def test_the_second_run_decides_and_a_slow_one_measures_nothing(monkeypatch) -> None:
    threaded, _ = _pocl_pair()  # type: ignore[misc]
    calls = _measured(monkeypatch)
    monkeypatch.setattr(executor, "INLINE_DECIDING_RUN", 2)
    session = OpenCLSession(_layer_model(), device=threaded)
    assert session.plan_device(_feeds()) == threaded  # built, not yet run: undecided
    session.run(_feeds())
    assert calls == [] and session._undecided  # the first run pays for compiling
    monkeypatch.setattr(executor, "INLINE_FIRST_RUN_MS", 0.0)
    session.run(_feeds())
    session.run(_feeds())
    assert calls == []  # no timing runs for a plan whose second run was slow
    assert session._inline is None and not session._undecided
    assert session.plan_device(_feeds()) == threaded


@needs_pair
def test_a_slow_plan_is_not_tried_inline(monkeypatch) -> None:
    threaded, _ = _pocl_pair()  # type: ignore[misc]
    slow = executor.INLINE_TRY_MS + 1.0
    calls = _measured(monkeypatch, [slow], [slow])  # wall time, then CPU time
    session = OpenCLSession(_layer_model(), device=threaded)
    session.run(_feeds())
    assert calls == [1, 1]  # the threaded run alone was timed, by both clocks
    assert session._inline is None  # nothing built on the companion
    assert session.plan_device(_feeds(3)) == threaded


@needs_pair
def test_a_plan_slow_by_the_wall_clock_alone_is_tried_inline(monkeypatch) -> None:
    """On a busy machine the threaded device's wall time measures the scheduler; the CPU
    time the run took decides whether the plan is small enough to try inline."""
    threaded, inline = _pocl_pair()  # type: ignore[misc]
    calls = _measured(monkeypatch, [executor.INLINE_TRY_MS + 1.0], [1.0], [30.0, 0.5])
    session = OpenCLSession(_layer_model(), device=threaded)
    session.run(_feeds())
    assert calls == [1, 1, 2]
    assert session.plan_device(_feeds(3)) == inline


@needs_pair
def test_outputs_that_differ_keep_the_threaded_device(monkeypatch) -> None:
    threaded, inline = _pocl_pair()  # type: ignore[misc]
    calls = _measured(monkeypatch, [1.0], [1.0, 0.2])
    real = executor._device_outputs

    def skewed(plan, queue):
        outputs = real(plan, queue)
        return [o + 1 for o in outputs] if plan.device == inline else outputs

    monkeypatch.setattr(executor, "_device_outputs", skewed)
    session = OpenCLSession(_layer_model(), device=threaded)
    session.run(_feeds())
    assert calls == [1]  # not timed against a companion that disagreed
    assert session.plan_device(_feeds(3)) == threaded


def test_no_companion_without_pocl_or_when_asked(monkeypatch) -> None:
    from meshgpu.inference.opencl.programs import default_device

    device = default_device()
    session = OpenCLSession(_layer_model(), device=device, inline=False)
    session.run(_feeds())
    assert session.plan_device(_feeds(3)) == device
    assert session._inline_device is None


@needs_pair
def test_inline_plans_of_two_sessions_run_from_two_threads(monkeypatch) -> None:
    """The daemon runs sessions from worker threads: inline plans execute in the calling
    thread, so two at once must not disturb each other."""
    import threading

    threaded, inline = _pocl_pair()  # type: ignore[misc]
    model = _layer_model()
    reference = {
        rows: OpenCLSession(model, device=threaded, inline=False).run(_feeds(rows))["p"]
        for rows in (3, 5)
    }
    _measured(monkeypatch, [1.0], [1.0, 0.2], [1.0], [1.0, 0.2])
    sessions = {rows: OpenCLSession(model, device=threaded) for rows in (3, 5)}
    for rows, session in sessions.items():
        session.run(_feeds(rows))  # the first run decides (here)
        assert session.plan_device(_feeds(rows)) == inline
    failures: list[str] = []

    def work(rows: int) -> None:
        for _ in range(50):
            got = sessions[rows].run(_feeds(rows))["p"]
            if not np.array_equal(got, reference[rows]):
                failures.append(f"{rows} rows differ")

    workers = [threading.Thread(target=work, args=(rows,)) for rows in (3, 5)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []


@needs_pair
def test_a_companion_that_fails_to_plan_leaves_the_threaded_plan(monkeypatch, caplog) -> None:
    threaded, inline = _pocl_pair()  # type: ignore[misc]
    _measured(monkeypatch, [1.0])
    real = executor.build_plan

    def failing(graph, static, shapes, device, weights, host_feeds=None):
        if device == inline:
            raise cl.RuntimeError("clBuildProgram failed: BUILD_PROGRAM_FAILURE")
        return real(graph, static, shapes, device, weights, host_feeds)

    monkeypatch.setattr(executor, "build_plan", failing)
    session = OpenCLSession(_layer_model(), device=threaded)
    got = session.run(_feeds())["p"]
    assert session.plan_device(_feeds()) == threaded
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
    assert "failed while planning" in caplog.text
