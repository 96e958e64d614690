"""A task's only holder restarts (with its data dir) while the task is queued: the task
waits for it instead of spending its retry budget on workers that find no live holder
(docs/task-queue.md, "Waiting for the inputs"). The simulator runs the same core as the
daemon; its driver reports "inputs_unavailable" as the daemon's does.

Before the rule, the attempts of the tasks that the leader assigned while the holder was
down ended "inputs unreachable on every holder" within a second (back-off from 0.05 s),
and four of the 300 failed "gave up after 5 failed attempts" although the holder came
back four seconds later with every input."""

from __future__ import annotations

from meshgpu.sim.report import run_scenario
from meshgpu.sim.scenario import parse_scenario

SCENARIO = """
[scenario]
name = "tasks-holder-restarts"
nodes = 3
duration_s = 20
seed = 5

[tasks.workload]
rate_per_s = 0
replicas = 1
bursts = [{ at_s = 5.9, count = 300 }]

[[fault]]
kind = "crash"
at_s = 6
nodes = [0]
until_s = 10
"""


def test_tasks_held_by_a_restarting_node_wait_for_it_and_all_finish() -> None:
    report = run_scenario(parse_scenario(SCENARIO))
    assert all(text == "ok" for text in report.invariants.values()), report.invariants
    tasks = report.metrics["tasks"]
    assert tasks["failed_reasons"] == {}
    assert tasks["acknowledged"] == tasks["done"] == 300
