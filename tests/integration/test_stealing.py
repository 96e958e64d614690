"""Work stealing through real daemons (docs/task-queue.md, "Work stealing"): three
`meshgpu join` processes on loopback with stealing on, one of them a slow device. A burst
fills every node's slot and prefetch queue; the fast nodes drain theirs and sit idle
while a task waits behind the slow node's run, so the leader proposes it to an idle node
and the slow node hands it over. Every task is delivered exactly once with its own
output, and some were stolen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trio

from meshgpu.client import AsyncClient
from meshgpu.daemon.synthetic import RUN_LOG_VARIABLE
from tests.daemon.meshprocs import (
    Launched,
    MeshProcess,
    call,
    launch_node,
    start_together,
    until_listening,
)
from tests.integration.conftest import WAIT_S, affine_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLOW_MS = 3000
"""The slow node's run: long enough that its waiting task is stolen before it starts."""
FAST_MS = 20
TASKS = 16


async def stolen_counts(nodes: list[MeshProcess]) -> dict[str, int]:
    counts = {}
    for node in nodes:
        status = await call(node, None, "status")
        counts[node.node_id] = status["counters"]["node"].get("tasks_stolen", 0)
    return counts


async def test_idle_nodes_steal_waiting_tasks_and_each_is_delivered_once(tmp_path: Path) -> None:
    config = tmp_path / "mesh.toml"
    config.write_text('[mesh.tasks]\nwork_stealing = true\nstrategy = "least_loaded"\n')
    runs = tmp_path / "runs.log"
    env = {RUN_LOG_VARIABLE: str(runs)}

    def node(name: str, ms: int, *args: str) -> Launched:
        return launch_node(
            tmp_path / name,
            *("--name", name, "--device", f"synthetic:{ms}", "--slots", "1"),
            *("--config", str(config), *args),
            env=env,
        )

    nodes = [until_listening(node("slow", SLOW_MS))]
    try:
        seed = ("--peer", f"127.0.0.1:{nodes[0].port}")
        nodes += start_together([node("fast-a", FAST_MS, *seed), node("fast-b", FAST_MS, *seed)])
        for each in nodes:
            await call(each, None, "wait", alive=len(nodes), timeout=WAIT_S)
        inputs = [np.full((1, 4), float(i), np.float32) for i in range(TASKS)]
        async with AsyncClient(nodes[1].address, environ={}) as client:
            handles = await client.submit_many(affine_model(), [{"x": x} for x in inputs])
            assert all(not isinstance(h, Exception) for h in handles), handles
            outcomes = []
            with trio.fail_after(WAIT_S * 2):
                for handle in handles:
                    assert not isinstance(handle, Exception)
                    outcomes.append(await handle.wait(WAIT_S))
            assert client.duplicates == 0  # no task delivered twice
        assert len({outcome.task_id for outcome in outcomes}) == TASKS
        for index, outcome in enumerate(outcomes):
            assert outcome.state == "done", outcome
            assert outcome.outputs is not None
            np.testing.assert_array_equal(outcome.outputs["x"], inputs[index])  # echo
        stolen = await stolen_counts(nodes)
        assert stolen["slow"] >= 1, stolen  # the slow node handed waiting tasks over
        executed = sorted(float(v) for v in runs.read_text().split()[0::2])
        assert set(executed) == {float(i) for i in range(TASKS)}  # every task ran
    finally:
        for each in nodes:
            each.stop()
