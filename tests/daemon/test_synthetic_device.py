"""The synthetic device (``--device synthetic:MS``): parsing, runs, slots, capabilities."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing

from meshgpu.daemon import synthetic
from meshgpu.daemon.execution import Executor
from meshgpu.daemon.status import device_capabilities
from meshgpu.errors import DeviceError


@pytest.mark.parametrize(("device", "seconds"), [("synthetic:20", 0.02), ("synthetic:0", 0.0)])
def test_service_time_is_read_in_milliseconds(device: str, seconds: float) -> None:
    assert synthetic.is_synthetic(device)
    assert synthetic.service_seconds(device) == pytest.approx(seconds)


@pytest.mark.parametrize("device", ["synthetic:", "synthetic:abc", "synthetic:-1", "synthetic:nan"])
def test_malformed_service_time_is_refused_when_the_executor_is_built(device: str) -> None:
    with pytest.raises(DeviceError, match="synthetic:20"):
        Executor(1, device=device)


def test_other_devices_are_not_synthetic() -> None:
    assert not synthetic.is_synthetic(None)
    assert not synthetic.is_synthetic("opencl:0")


async def test_a_run_returns_its_inputs_without_reading_the_model(tmp_path: Path) -> None:
    executor = Executor(1, device="synthetic:0")
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    missing = tmp_path / "never-written.onnx"
    outputs, _ = await executor.run("digest", missing, feeds)
    assert list(outputs) == ["x"]
    np.testing.assert_array_equal(outputs["x"], feeds["x"])


async def test_runs_overlap_up_to_the_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two slots: both runs must be inside ``run`` at once (a per-session lock would
    serialise them and the barrier would break after its timeout)."""
    barrier = threading.Barrier(2, timeout=20)
    monkeypatch.setattr(synthetic.time, "sleep", lambda seconds: barrier.wait())
    executor = Executor(2, device="synthetic:5")
    finished: list[int] = []

    async def one(index: int) -> None:
        await executor.run("digest", Path("unused.onnx"), {"x": np.zeros(1)})
        finished.append(index)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 0)
        nursery.start_soon(one, 1)
    assert sorted(finished) == [0, 1]


def test_capabilities_do_not_wake_opencl(monkeypatch: pytest.MonkeyPatch) -> None:
    import meshgpu.inference

    def refuse() -> None:
        raise AssertionError("the synthetic device must not enumerate OpenCL devices")

    monkeypatch.setattr(meshgpu.inference, "devices", refuse)
    capabilities = device_capabilities("auto", "synthetic:20")
    assert capabilities.device_types == ("cpu",)


async def test_runs_are_logged_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "runs.log"
    monkeypatch.setenv(synthetic.RUN_LOG_VARIABLE, str(log))
    executor = Executor(1, device="synthetic:0")
    for index in (3.0, 4.0, 3.0):
        await executor.run("digest", Path("unused.onnx"), {"x": np.full((1, 2), index)})
    labels = [line.split()[0] for line in log.read_text().splitlines()]
    assert labels == ["3.0", "4.0", "3.0"]


async def test_a_prefetched_run_waits_for_a_slot_and_can_be_cancelled_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One slot, offered capacity two: the second run takes its slot (``on_slot``, which
    tells the data plane) only when the first ends, and cancelled before that it runs
    nothing."""
    release = threading.Event()

    def held(seconds: float) -> None:
        if not release.wait(20):
            raise AssertionError("never released")

    monkeypatch.setattr(synthetic.time, "sleep", held)
    executor = Executor(1, device="synthetic:5")
    assert executor.capacity == 2
    slots: list[int] = []
    ran: list[float] = []

    async def one(index: int, scope: trio.CancelScope) -> None:
        with scope:
            outputs, _ = await executor.run(
                "digest",
                Path("unused.onnx"),
                {"x": np.full(1, index)},
                on_slot=lambda: slots.append(index),
            )
            ran.append(float(outputs["x"][0]))

    await executor.session("digest", Path("unused.onnx"))  # loaded: runs go to the slot
    first, second = trio.CancelScope(), trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 0, first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(one, 1, second)
        await trio.testing.wait_all_tasks_blocked()
        assert slots == [0]  # the prefetched run waits for the one slot
        second.cancel()
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert slots == [0] and ran == [0.0]


async def test_a_fast_model_runs_on_the_loop_after_its_first_run_and_a_slow_one_goes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first run of a session goes to a worker thread; once a run took under
    ``INLINE_RUN_S`` the next runs on the loop's thread (no hop there and back); after a
    run that took longer the next goes to a thread again. The threshold is moved rather
    than the runs slowed, so no timing decides the outcome."""
    from meshgpu.daemon import execution

    threads: list[int] = []
    monkeypatch.setattr(
        synthetic.time, "sleep", lambda seconds: threads.append(threading.get_ident())
    )
    monkeypatch.setattr(execution, "INLINE_RUN_S", 60.0)  # every run counts as fast
    executor = Executor(1, device="synthetic:0")
    for _ in range(3):
        await executor.run("digest", Path("unused.onnx"), {"x": np.zeros(1)})
    monkeypatch.setattr(execution, "INLINE_RUN_S", 0.0)  # the last run counts as slow
    await executor.run("digest", Path("unused.onnx"), {"x": np.zeros(1)})
    loop_thread = threading.get_ident()
    assert threads[0] != loop_thread
    assert threads[1:3] == [loop_thread, loop_thread]
    assert threads[3] != loop_thread
    assert executor.inline_runs == 2


async def test_runs_with_other_tasks_on_the_node_stay_off_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two fast runs at once: both go to threads (were either on the loop, the barrier
    that needs both inside a run at the same time would break after its timeout)."""
    from meshgpu.daemon import execution

    barrier = threading.Barrier(2, timeout=20)
    monkeypatch.setattr(synthetic.time, "sleep", lambda seconds: barrier.wait())
    monkeypatch.setattr(execution, "INLINE_RUN_S", 60.0)
    executor = Executor(2, device="synthetic:0")
    await executor.session("digest", Path("unused.onnx"))
    executor._sessions["digest"].ran(0.0, 1)  # counts as fast

    async def one() -> None:
        await executor.run("digest", Path("unused.onnx"), {"x": np.zeros(1)})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one)
        nursery.start_soon(one)
    assert executor.inline_runs == 0


async def test_runs_of_inputs_numbered_from_the_hold_wait_until_it_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, hold = tmp_path / "runs.log", tmp_path / "hold"
    monkeypatch.setenv(synthetic.RUN_LOG_VARIABLE, str(log))
    monkeypatch.setenv(synthetic.HOLD_VARIABLE, str(hold))
    hold.write_text("3")
    executor = Executor(1, device="synthetic:5")
    ran = trio.Event()

    async def run(index: float) -> None:
        await executor.run("digest", Path("unused.onnx"), {"x": np.full((1, 2), index)})

    async def held() -> None:
        await run(3.0)
        ran.set()

    await run(1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(held)
        with trio.move_on_after(0.5):
            await ran.wait()
        assert not ran.is_set(), "the run of input 3 went past a hold from 3"
        hold.unlink()
        with trio.fail_after(20):
            await ran.wait()
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["1.0", "3.0"]


def test_a_hold_needs_runs_that_cannot_go_on_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(synthetic.HOLD_VARIABLE, "/nonexistent/hold")
    synthetic.SyntheticSession("synthetic:5")
    with pytest.raises(DeviceError, match="at least 1 ms"):
        synthetic.SyntheticSession("synthetic:0")
