"""A graceful stop returns once the node's running tasks are finished or handed back,
not after the whole grace period (``drain_timeout``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import trio

from meshgpu.client import AsyncClient
from meshgpu.daemon.runtime import Daemon
from tests.cli_user.test_preflight import two_input_model
from tests.daemon.test_runtime import settings

GRACE_S = 600.0
"""Far longer than the test may take: returning at all proves the drain ended early."""
WAIT_S = 60.0


async def test_a_leave_with_queued_tasks_ends_when_the_device_run_ends(tmp_path: Path) -> None:
    model = two_input_model(tmp_path / "pair.onnx")
    slow = dataclasses.replace(
        settings(tmp_path / "solo"), device="synthetic:1000", slots=1, drain_timeout=GRACE_S
    )
    daemon = Daemon(slow)
    stopped = trio.Event()

    async def run(task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
        await daemon.run(task_status=task_status)
        stopped.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(run)
        async with AsyncClient(("127.0.0.1", daemon.address[1]), environ={}) as client:
            for index in range(6):  # --no-wait tasks: queued on the mesh, nobody waits
                inputs = {"a": np.full((2, 3), index, np.float32), "b": np.ones((2, 3), "f4")}
                await client.submit(model, inputs, watch=False, replicas=1)
        with trio.fail_after(WAIT_S):
            # No event says "a run started"; the condition is checked at each checkpoint.
            while not daemon.dataplane.running:
                await trio.sleep(0.01)
        finished_before = daemon.dataplane.completed
        daemon.request_stop()
        with trio.fail_after(WAIT_S):
            await stopped.wait()
    # Only what was on the device (one slot) finished during the drain: nothing queued
    # was started after the leave began (it used to run five more, then wait out the
    # grace period, because a new assignment hid the end of the drain from it).
    assert daemon.dataplane.completed - finished_before <= 1
    assert daemon.stopped_because is None
