"""Labels and placement: required and preferred labels in specs and loads (wire forms that
keep old bytes), the binpack and spread strategies, and the leader failing at once a task
whose required labels no live node carries."""

from __future__ import annotations

import pytest

from meshgpu.core.effects import TaskResolved
from meshgpu.core.events import LoadChanged, SubmitTask
from meshgpu.core.load import DeviceCapabilities, LoadUpdate, LoadVector
from meshgpu.core.messages import encode_item
from meshgpu.core.tasks import DeviceRequirements, Resolution, TaskId, TaskSpec
from meshgpu.core.tasks.scheduler import QueuedTask, plan_round
from meshgpu.core.tasks.spec import parse_labels
from meshgpu.core.tasks.strategies import SelectionContext, WorkerView, binpack, spread
from meshgpu.core.tasks.wire import spec_from_wire, spec_to_wire
from meshgpu.errors import TaskError
from tests.core.tasks.test_component import effects, settled, submit

GPU = (("gpu", "a100"),)


def view(name: str, **kw: object) -> WorkerView:
    defaults: dict[str, object] = {"capacity": 4}
    defaults.update(kw)
    return WorkerView(name, **defaults)  # type: ignore[arg-type]


def test_parse_labels_sorts_and_rejects_bad_items() -> None:
    assert parse_labels(["room=b12", "gpu=a100", "gpu=a100"]) == (("gpu", "a100"), ("room", "b12"))
    assert parse_labels({"gpu": "a100"}) == GPU
    for bad in (["gpu"], ["=x"], ["gpu="], ["k=" + "v" * 65]):
        with pytest.raises(TaskError, match="KEY=VALUE"):
            parse_labels(bad)


def test_spec_without_labels_keeps_its_bytes_and_with_labels_round_trips() -> None:
    plain = TaskSpec("m", "i")
    assert spec_to_wire(plain)[4] == [None, 0, False]
    labelled = TaskSpec(
        "m", "i", requirements=DeviceRequirements(require=GPU, prefer=(("r", "1"),))
    )
    assert spec_from_wire(spec_to_wire(labelled)) == labelled
    assert spec_from_wire(spec_to_wire(plain)) == plain


def test_load_labels_are_encoded_only_when_set_and_round_trip() -> None:
    plain = LoadVector(version=3, free_slots=2)
    assert len(plain.to_fields()) == 11
    labelled = LoadVector(version=3, free_slots=2, labels=GPU)
    assert len(labelled.to_fields()) == 14
    assert LoadVector.from_fields(labelled.to_fields()) == labelled
    assert LoadVector.from_fields(plain.to_fields()) == plain
    assert (
        len(encode_item(LoadUpdate("n1", labelled)))
        < len(encode_item(LoadUpdate("n1", plain))) + 40
    )


def test_required_labels_are_hard_for_every_strategy() -> None:
    spec = TaskSpec("m", "i", requirements=DeviceRequirements(require=GPU))
    workers = [view("a"), view("b", labels=(*GPU, ("room", "b12")))]
    for name in (
        "round_robin",
        "least_loaded",
        "device_match",
        "latency",
        "adaptive",
        "binpack",
        "spread",
    ):
        task = QueuedTask(TaskId("o", 1), spec)
        plan = plan_round([task], workers, name, SelectionContext())
        assert [a.worker for a in plan] == ["b"], name
    assert (
        plan_round([QueuedTask(TaskId("o", 1), spec)], workers[:1], "spread", SelectionContext())
        == []
    )


def test_preferred_labels_win_while_free_and_fall_back_when_full() -> None:
    spec = TaskSpec("m", "i", requirements=DeviceRequirements(prefer=GPU))
    tasks = [QueuedTask(TaskId("o", n), spec) for n in range(3)]
    workers = [view("a"), view("b"), view("z", capacity=2, labels=GPU)]
    plan = plan_round(tasks, workers, "round_robin", SelectionContext())
    assert [a.worker for a in plan][:2] == ["z", "z"]
    assert plan[2].worker in ("a", "b")


def test_a_task_with_large_inputs_goes_to_a_holder_while_one_has_a_slot() -> None:
    """The idle worker "c" would win on load, but a holder reads 16 MiB of inputs from
    its own disk where "c" would pull them first; small inputs place as before."""
    large = TaskSpec("m", "i", input_shapes=(("x", (4096, 1024)),))
    small = TaskSpec("m", "i", input_shapes=(("x", (4095, 1024)),))
    workers = [view("a", in_flight=2), view("b", in_flight=1), view("c")]
    holders = frozenset({"a", "b"})
    for name in ("least_loaded", "round_robin", "spread", "device_match", "binpack"):
        queued = [QueuedTask(TaskId("o", 1), large, holders=holders)]
        (placed,) = plan_round(queued, workers, name, SelectionContext())
        assert placed.worker in holders, name
    queued = [QueuedTask(TaskId("o", 1), large, holders=holders)]
    assert [a.worker for a in plan_round(queued, workers, "least_loaded", SelectionContext())] == [
        "b"
    ]
    queued = [QueuedTask(TaskId("o", 1), small, holders=holders)]
    assert [a.worker for a in plan_round(queued, workers, "least_loaded", SelectionContext())] == [
        "c"
    ]
    failed_on_b = [QueuedTask(TaskId("o", 1), large, avoid="b", holders=holders)]
    assert [
        a.worker for a in plan_round(failed_on_b, workers, "least_loaded", SelectionContext())
    ] == ["a"]
    full = [view("a", in_flight=4), view("b", in_flight=4), view("c")]
    queued = [QueuedTask(TaskId("o", 1), large, holders=holders)]
    assert [a.worker for a in plan_round(queued, full, "least_loaded", SelectionContext())] == ["c"]


def test_a_task_with_large_inputs_goes_to_its_origin_first_among_the_holders() -> None:
    """The origin received the upload and keeps its arrays warm: it takes the task while
    it has a slot, though the other holder "b" is less loaded; full, or the worker the
    task failed on, it leaves the task to the other holders as before."""
    large = TaskSpec("m", "i", input_shapes=(("x", (4096, 1024)),))
    holders = frozenset({"o", "b"})
    workers = [view("o", in_flight=3), view("b"), view("c")]
    for name in ("least_loaded", "round_robin", "spread", "device_match", "binpack"):
        queued = [QueuedTask(TaskId("o", 1), large, holders=holders)]
        (placed,) = plan_round(queued, workers, name, SelectionContext())
        assert placed.worker == "o", name
    full = [view("o", in_flight=4), view("b", in_flight=1), view("c")]
    queued = [QueuedTask(TaskId("o", 1), large, holders=holders)]
    assert [a.worker for a in plan_round(queued, full, "least_loaded", SelectionContext())] == ["b"]
    failed_on_o = [QueuedTask(TaskId("o", 1), large, avoid="o", holders=holders)]
    assert [
        a.worker for a in plan_round(failed_on_o, workers, "least_loaded", SelectionContext())
    ] == ["b"]
    not_held = [QueuedTask(TaskId("o", 1), large, holders=frozenset({"b", "c"}))]
    assert plan_round(not_held, workers, "least_loaded", SelectionContext())[0].worker in "bc"


def test_binpack_fills_the_busiest_worker_first() -> None:
    workers = [view("a"), view("b", in_flight=2), view("c", in_flight=1)]
    assert binpack(TaskSpec("m", "i"), workers, SelectionContext()) == "b"
    workers = [view("a"), view("b", in_flight=4), view("c")]
    assert binpack(TaskSpec("m", "i"), workers, SelectionContext()) == "a"  # b full: lowest id
    tasks = [QueuedTask(TaskId("o", n), TaskSpec("m", f"i{n}")) for n in range(6)]
    plan = plan_round(tasks, [view(n) for n in "abcd"], "binpack", SelectionContext())
    assert [a.worker for a in plan] == list("aaaabb")


def test_spread_levels_the_work() -> None:
    workers = [view("a", in_flight=1), view("b", in_flight=3), view("c", in_flight=0)]
    assert spread(TaskSpec("m", "i"), workers, SelectionContext()) == "c"
    tasks = [QueuedTask(TaskId("o", n), TaskSpec("m", f"i{n}")) for n in range(8)]
    plan = plan_round(tasks, [view(n) for n in "abcd"], "spread", SelectionContext())
    assert sorted(sum(1 for a in plan if a.worker == n) for n in "abcd") == [2, 2, 2, 2]


def test_a_task_no_live_node_can_satisfy_fails_at_once_naming_the_labels() -> None:
    h = settled(3)
    for node in h.nodes:
        labels = GPU if node == "n002" else ()
        h.deliver_event(
            node,
            LoadChanged(
                LoadVector(free_slots=2, capabilities=DeviceCapabilities(("gpu",)), labels=labels)
            ),
        )
    h.run_until(h.now + 1.0)
    ok = submit(h, "n000", TaskSpec("m", "i1", requirements=DeviceRequirements(require=GPU)), "ok")
    h.run_until(h.now + 0.5)
    entry = h.nodes["n000"].tasks.table.get(ok)
    assert entry is not None and entry.state.worker == "n002"
    bad = submit(
        h,
        "n000",
        TaskSpec("m", "i2", requirements=DeviceRequirements(require=(("gpu", "h100"),))),
        "bad",
    )
    h.run_until(h.now + 0.5)
    (resolved,) = [r for r in effects(h, TaskResolved) if r.task_id == bad]
    assert resolved.state is Resolution.FAILED
    assert resolved.reason == "no live node carries the required labels gpu=h100"
    assert SubmitTask  # the harness submits through SubmitTask events
