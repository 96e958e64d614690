"""Which tasks the node a client submitted to may run itself, without the leader
(core/tasks/strategies.py ``may_run_at_entry``; the daemon's direct runs ask it)."""

from __future__ import annotations

from meshgpu.core.tasks import DeviceRequirements
from meshgpu.core.tasks.strategies import WorkerView, may_run_at_entry

GPU_NODE = WorkerView(
    "n1",
    capacity=1,
    memory_total=8 << 30,
    device_types=("gpu",),
    fp16=True,
    labels=(("room", "lab1"),),
)


def test_a_task_the_node_meets_may_run_there() -> None:
    assert may_run_at_entry(GPU_NODE, DeviceRequirements())
    assert may_run_at_entry(GPU_NODE, DeviceRequirements(device_type="gpu", fp16=True))
    assert may_run_at_entry(GPU_NODE, DeviceRequirements(require=(("room", "lab1"),)))


def test_a_hard_requirement_the_node_misses_goes_to_the_leader() -> None:
    assert not may_run_at_entry(GPU_NODE, DeviceRequirements(device_type="cpu"))
    assert not may_run_at_entry(GPU_NODE, DeviceRequirements(min_memory=16 << 30))
    assert not may_run_at_entry(GPU_NODE, DeviceRequirements(require=(("room", "lab2"),)))


def test_a_preference_goes_to_the_leader_even_when_the_node_has_the_label() -> None:
    """The leader sees every node's labels; the entry node only its own."""
    assert not may_run_at_entry(GPU_NODE, DeviceRequirements(prefer=(("room", "lab1"),)))
    assert not may_run_at_entry(GPU_NODE, DeviceRequirements(prefer=(("room", "lab2"),)))
