"""Dynamic batching on the worker: runs of one model concatenated along the first dimension.

A GPU does its best work on batches, and a worker often holds several tasks of one model at
once (a loaded mesh, a coalesced group, ``map``). Triton's dynamic batcher is the model:
runs of one model whose inputs share every dimension but the first wait in a queue; the
run that gets a device slot takes the oldest waiting runs, up to ``max_batch`` rows of the
first dimension, waiting at most ``max_delay`` for more while the batch is not full,
concatenates their feeds, runs the model once, and splits every output back by rows.

Rules (docs/task-queue.md, "Dynamic batching on the worker"):

* A model batches only when its graph says every runtime input and every output has a
  symbolic first dimension, the same one (:func:`batch_dimension`); the settings come from
  the catalog (``meshgpu models add --max-batch N --max-delay-ms F``), else
  :data:`DEFAULT_BATCHING` for such a graph. A fixed first dimension (a model exported for
  batch 1) never batches.
* A run batches with others only if its feeds agree on the row count of every input
  (:func:`rows_of`) and no more than ``max_batch`` rows; others run alone, as before.
* Runs join a batch only with runs of the same input names, dtypes and trailing shapes
  (:func:`signature`): one queue per (model, signature). A batch holds a power of two
  rows (or ``max_batch``), the rest waits for the next run: the OpenCL executor builds
  one plan per input shape, so batches of every size from 2 to 16 would build 15.
* The worker measures whether batching pays for a model on its device (the executor's
  ``RowSpeed``): a few runs alone first, then batches, compared per row; batches that are
  slower per row (a CPU OpenCL device may run 16 rows slower each than 16 runs of one)
  stop, and one batch is tried again every 64 runs alone.
* If a batched run fails (a bad input among the members, a device error) or its outputs
  do not have the batch's rows as first dimension, every member runs again alone, so a
  bad input fails its own task with its own error and never takes its batch-mates down;
  a model whose outputs are not batch-major is remembered and runs unbatched from then on.

Which waiting runs form a batch and how long a batch waits for more are the core's rules
(:mod:`meshgpu.core.batching`), shared with the simulator; the queues live here because
the core sees tasks, not tensors, and the worker is the one place that knows which runs
are waiting for the device at once.
Rejected: a background batching task per model (one more nursery to own, and an idle
task per model); here the run that takes a slot gathers its batch itself, and a run that
another run took is woken by cancelling its wait for a slot.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from meshgpu.core.batching import delay_left, pick_batch
from meshgpu.core.catalog import Batching

DEFAULT_BATCHING = Batching(max_batch=8, max_delay_us=0)
"""Settings of a model whose graph has a free batch dimension and whose catalog entry sets
none: up to 8 rows a run (Triton's auto-complete uses 4; a GPU's throughput keeps growing
past 8 for the models of a lab), and no delay, so a batch forms only from runs that were
waiting anyway: a lone task is never held back."""

Signature = tuple[tuple[str, str, tuple[int, ...]], ...]
"""(name, dtype, shape without the first dimension) of every feed, by name."""


def batch_dimension(proto: Any) -> bool:
    """True when ``proto`` (an ``onnx.ModelProto``) declares a free batch dimension: every
    runtime input and every output has rank >= 1 and the same symbolic first dimension (a
    ``dim_param``, or unnamed unknown ones). A fixed first dimension, a scalar, or
    outputs without shapes say nothing a batch could rely on."""
    weights = {init.name for init in proto.graph.initializer}
    values = [v for v in proto.graph.input if v.name not in weights]
    if not values or not proto.graph.output:
        return False
    names: set[str] = set()
    for value in [*values, *proto.graph.output]:
        tensor = value.type.tensor_type
        if not tensor.HasField("shape") or not tensor.shape.dim:
            return False
        first = tensor.shape.dim[0]
        if first.HasField("dim_value"):
            return False
        names.add(first.dim_param)
    return len(names) == 1


SIZE_ARGUMENTS: dict[str, tuple[int, ...]] = {
    "Tile": (1,),
    "Expand": (1,),
    "ConstantOfShape": (0,),
    "Range": (0, 1, 2),
    "Resize": (1, 2, 3),
    "Upsample": (1,),
    "Pad": (1,),
    "CenterCropPad": (1,),
    "TopK": (1,),
    "OneHot": (1,),
    "Slice": (1, 2, 3, 4),
    "MaxUnpool": (2,),
    "Col2Im": (1, 2),
    "DFT": (1,),
    "STFT": (1, 3),
    "HannWindow": (0,),
    "HammingWindow": (0,),
    "BlackmanWindow": (0,),
    "MelWeightMatrix": (0, 1),
    "AffineGrid": (1,),
}
"""Operators and the positions of their inputs whose *values* set the output's size
(``Reshape``'s shape is not among them: it keeps the element count)."""

VALUE_SIZED = frozenset(
    {"NonZero", "Compress", "Unique", "NonMaxSuppression", "StringSplit", "ImageDecoder"}
)
"""Operators whose output size follows from the values of their inputs, not their shapes."""

SUBGRAPHS = frozenset({"Loop", "If", "Scan", "SequenceMap"})
"""Operators that run a subgraph: its iterations, its branch or its own operators may size
the output, and a subgraph reads outer values that are not among the node's inputs."""

SHAPE_ONLY = frozenset({"Shape", "Size"})
"""Operators whose outputs depend on their input's shape alone, never on its values."""


def outputs_sized_by_inputs(proto: Any) -> bool:
    """True when the size of every output of ``proto`` (an ``onnx.ModelProto``) follows
    from its runtime inputs' shapes. False when a size is read from the inputs' *values*:
    ``Tile``'s repeats, ``Expand``'s shape, ``Slice``'s bounds, ... computed
    from a runtime input other than through ``Shape``/``Size``; ``NonZero``'s count;
    and any model with a subgraph (``Loop``, ``If``, ``Scan``). A run of such a
    model cannot be expected to be as fast as a recent one of the same input bytes (the
    next may be a GiB: execution.py's inline rule, direct.py's admission).

    Read from the graph's data flow, not from the declared output shapes: exporters name
    an output's batch dimension apart from the input's (``torch.onnx.export``'s
    ``dynamic_axes``: ``input_dynamic_axes_1`` and ``output_dynamic_axes_1``) or leave it
    unknown, and an ordinary model must keep its direct and inline runs."""
    weights = {init.name for init in proto.graph.initializer}
    by_values = {value.name for value in proto.graph.input if value.name not in weights}
    for node in proto.graph.node:  # a valid graph lists its nodes in topological order
        if node.op_type in SUBGRAPHS:
            return False
        if node.op_type in SHAPE_ONLY:
            continue
        fed = [name in by_values for name in node.input]
        if not any(fed):
            continue
        sizes = SIZE_ARGUMENTS.get(node.op_type, ())
        if node.op_type in VALUE_SIZED or any(i < len(fed) and fed[i] for i in sizes):
            return False
        by_values.update(node.output)
    return True


def rows_of(feeds: Mapping[str, Any]) -> int | None:
    """The rows every feed has in its first dimension; None when a feed is not a numpy
    array with one, or the feeds disagree (such a run cannot join a batch)."""
    rows: int | None = None
    for array in feeds.values():
        shape = getattr(array, "shape", None)
        if not shape:
            return None
        if rows is None:
            rows = int(shape[0])
        elif shape[0] != rows:
            return None
    return rows or None


def signature(feeds: Mapping[str, Any]) -> Signature:
    """What two runs must share to be concatenated: names, dtypes, trailing shapes."""
    return tuple(
        (name, str(array.dtype), tuple(int(d) for d in array.shape[1:]))
        for name, array in sorted(feeds.items())
    )


def concatenate(members: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One feed map holding every member's rows, in order."""
    if len(members) == 1:
        return dict(members[0])
    return {name: np.concatenate([m[name] for m in members]) for name in members[0]}


def split(
    outputs: Mapping[str, np.ndarray], rows: Sequence[int]
) -> list[dict[str, np.ndarray]] | None:
    """``outputs`` of a batched run cut back into each member's rows; None when an output
    does not have the batch's rows as its first dimension (a model that mixes samples, or
    whose first output dimension means something else)."""
    total = sum(rows)
    for array in outputs.values():
        shape = getattr(array, "shape", ())
        if not shape or shape[0] != total:
            return None
    if len(rows) == 1:
        return [dict(outputs)]
    parts: list[dict[str, np.ndarray]] = [{} for _ in rows]
    for name, array in outputs.items():
        start = 0
        for index, count in enumerate(rows):
            # A copy: a view would keep the whole batch's output alive with each result.
            parts[index][name] = np.array(array[start : start + count])
            start += count
    return parts


@dataclass(eq=False)
class Request:
    """One run waiting in a batch queue."""

    feeds: Mapping[str, np.ndarray]
    rows: int
    waiter: Waiter
    taken: bool = False
    outputs: dict[str, np.ndarray] | None = None
    error: Exception | None = None
    run_s: float = 0.0
    """This run's share of its batch's time."""


@dataclass(eq=False)
class Waiter:
    """The caller of one ``run`` or ``run_many``: its requests, the wait for a slot that a
    batch taking all of them cancels, and the event set when they are all answered."""

    on_slot: Callable[[], None] | None
    requests: list[Request] = field(default_factory=list)
    slot_wait: trio.CancelScope | None = None
    finished: trio.Event = field(default_factory=trio.Event)
    open_requests: int = 0

    def taken(self, request: Request) -> None:
        """``request`` joined a batch (on the device now: no longer cancellable)."""
        request.taken = True
        if all(r.taken for r in self.requests):
            if self.on_slot is not None:
                self.on_slot()
                self.on_slot = None
            if self.slot_wait is not None:
                self.slot_wait.cancel()  # no need for a slot of its own any more

    def answered(self) -> None:
        self.open_requests -= 1
        if self.open_requests == 0:
            self.finished.set()


class BatchQueue:
    """The runs of one (model, signature) waiting for the device."""

    def __init__(self, batching: Batching) -> None:
        self.batching = batching
        self.waiting: deque[Request] = deque()
        self._arrived = trio.Event()

    def add(self, requests: Sequence[Request]) -> None:
        self.waiting.extend(requests)
        self._arrived.set()
        self._arrived = trio.Event()

    def remove_untaken(self, requests: Sequence[Request]) -> None:
        """Take a cancelled caller's runs out of the queue (those no batch took yet)."""
        for request in requests:
            if not request.taken:
                with contextlib.suppress(ValueError):
                    self.waiting.remove(request)

    def _waiting_rows(self) -> int:
        return sum(request.rows for request in self.waiting)

    async def gather(self) -> list[Request]:
        """The next batch by the core's rules (:mod:`meshgpu.core.batching`): when fewer
        than ``max_batch`` rows wait, wait up to ``max_delay`` (from now, the moment the
        batch had a slot) for more; then the oldest run and every later one that fits,
        cut back to a power of two rows (the OpenCL executor plans per input shape).
        Every run returned is marked taken."""
        batching = self.batching
        slot_at = trio.current_time()
        while left := delay_left(self._waiting_rows(), batching, slot_at, trio.current_time()):
            with trio.move_on_after(left):
                await self._arrived.wait()
        waiting = list(self.waiting)
        chosen = pick_batch(
            [request.rows for request in waiting], batching.max_batch, powers_of_two=True
        )
        batch = [waiting[index] for index in chosen]
        taken = set(chosen)
        self.waiting = deque(request for index, request in enumerate(waiting) if index not in taken)
        for request in batch:
            request.waiter.taken(request)
        return batch


@dataclass
class BatchCounts:
    """What the metrics show of batching: Triton's execution and inference counts."""

    executions: int = 0
    """Device runs (a batch of 8 tasks counts once)."""
    tasks: int = 0
    """Tasks (or group members) those runs answered; tasks / executions is the average batch."""
    batched_runs: int = 0
    """Runs that held more than one task."""
    batch_fallbacks: int = 0
    """Batches that failed or whose outputs were not batch-major, so each member ran alone."""
    per_model: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Model digest -> (executions, inferences: rows of the first dimension, as Triton's
    ``nv_inference_count`` counts a request of batch N as N)."""

    def count(self, digest: str, tasks: int, rows: int) -> None:
        """One device run of ``tasks`` runs holding ``rows`` rows in all."""
        self.executions += 1
        self.tasks += tasks
        if tasks > 1:
            self.batched_runs += 1
        executions, inferences = self.per_model.get(digest, (0, 0))
        self.per_model[digest] = (executions + 1, inferences + rows)

    @property
    def average_batch(self) -> float:
        """Tasks per device run."""
        return self.tasks / self.executions if self.executions else math.nan

    def snapshot(self) -> dict[str, float | int]:
        """The numbers ``meshgpu status`` shows."""
        return {
            "executions": self.executions,
            "tasks": self.tasks,
            "batched_runs": self.batched_runs,
            "batch_fallbacks": self.batch_fallbacks,
            "average_batch": round(self.average_batch, 3) if self.executions else 0.0,
        }
