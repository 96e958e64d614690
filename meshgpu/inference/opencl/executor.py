"""OpenCLSession: run an ONNX model on one OpenCL device.

Construction does every check before touching the device (unsupported operators, broken
graph, weights larger than the device's memory), folds the constants that do not depend on
input shapes, and, when every input dimension is fixed, builds the plan at once so weights
are uploaded and kernels compiled before the first ``run``. Plans are cached per input-shape
signature. ``run`` uploads the feeds, enqueues every launch on the plan's command queue, and
downloads only the graph outputs.

On PoCL's threaded CPU device a plan may run on the device's in-thread twin instead
(:func:`meshgpu.inference.devices.inline_companion`): every launch there costs a function
call, where the threaded device wakes its worker threads for each one. Which of the two runs
a plan is measured after the plan's second run (:meth:`OpenCLSession._decide`), unless that
run was slow enough to rule the companion out.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import pyopencl as cl

from meshgpu.errors import DeviceError, InputError, ModelError, UnsupportedOperatorError
from meshgpu.inference.devices import inline_companion
from meshgpu.inference.opencl import (  # noqa: F401  (importing registers the lowerings)
    dtypes,
    lower_conv,
    lower_conv_transpose,
    lower_einsum,
    lower_elementwise,
    lower_indexing,
    lower_linear,
    lower_matmul,
    lower_normalization,
    lower_resize,
    lower_tensor,
    lower_window,
    programs,
    tuning,
)
from meshgpu.inference.opencl.graph import Graph, read_graph
from meshgpu.inference.opencl.patterns import fuse_patterns
from meshgpu.inference.opencl.plan import Plan, build_plan
from meshgpu.inference.opencl.tensors import DeviceTensor

logger = logging.getLogger("meshgpu.inference")

#: Accepted feed signatures remembered per session (a bound: symbolic batch sizes vary).
_ACCEPTED_SIGNATURES = 64

#: A plan whose run takes longer than this on the threaded device is not tried inline: its
#: kernels, not its launches, take the time, and the inline device has one thread. A run's
#: cost is the lesser of its wall time and the CPU time the process spent on it (all
#: threads): on a quiet machine the wall time (two workers make the CPU time twice it), on a
#: busy one the CPU time, since there every launch's wake-up of PoCL's workers waits for the
#: scheduler and the wall time measures the machine's load (at load average 20-29 on the
#: 2-core Zen 3 VM BERT's 30 launches took 12 ms of wall and 1.3 ms of CPU: by wall alone
#: the plan was never tried inline and ran 55x onnxruntime's time).
INLINE_TRY_MS = 15.0

#: The second run of a plan (``run``'s own; the first also pays for compiling or loading
#: each kernel's PoCL specialisation) beyond which the plan is not measured at all: a large
#: model must not pay for timing runs it would lose anyway.
INLINE_FIRST_RUN_MS = 4 * INLINE_TRY_MS

#: The run of a plan after which its device is chosen (1-based).
INLINE_DECIDING_RUN = 2

#: Alternating timed runs of each device when choosing where a plan runs: as many as fit
#: in about ``INLINE_BUDGET_MS`` of the threaded device's time, within these bounds (a busy
#: machine's scheduler moves single runs by several times; the median of many holds).
INLINE_ROUNDS = (5, 25)
INLINE_BUDGET_MS = 100.0


_ZERO_BYTE = np.zeros(1, np.uint8)


@dataclass
class _Target:
    """A device the session's plans run on: its command queue and its weight uploads."""

    device: cl.Device
    queue: cl.CommandQueue
    weights: dict[Any, cl.Buffer] = field(default_factory=dict)

    @classmethod
    def on(cls, device: cl.Device) -> _Target:
        return cls(device, cl.CommandQueue(programs.context_for(device)))


def _run_plan(plan: Plan, queue: cl.CommandQueue) -> None:
    """One run of ``plan`` on ``queue`` on zero feeds, waited for (plan-time measurements).

    The feeds are written each time as ``run`` writes them: an input's buffer is reused for
    other tensors once the input is read, and a stale index would read out of bounds."""
    for storage in plan.input_storages.values():
        if storage.nbytes:
            buffer = plan.buffers[storage.slot]
            cl.enqueue_fill_buffer(queue, buffer, _ZERO_BYTE, 0, storage.nbytes)
    for launch in plan.launches:
        assert launch.kernel is not None
        cl.enqueue_nd_range_kernel(queue, launch.kernel, launch.global_size, launch.local_size)
    queue.finish()


def _device_outputs(plan: Plan, queue: cl.CommandQueue) -> list[np.ndarray]:
    results = []
    for value in plan.outputs.values():
        if isinstance(value, DeviceTensor) and _count(value.shape):
            array = np.empty(value.shape, dtype=value.dtype)
            cl.enqueue_copy(queue, array, plan.buffers[value.storage.slot])
            results.append(array)
    return results


def _count(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _static_constants(graph: Graph) -> dict[str, np.ndarray]:
    """Fold every node that depends on initializers and constants only (no input shapes)."""
    from meshgpu.inference.opencl.folding import fold_node

    values = dict(graph.constants)
    for node in graph.nodes:
        names = [n for n in node.inputs if n]
        if node.op in ("Shape", "Size") or not all(n in values for n in names):
            continue
        results = fold_node(node, [values[n] if n else None for n in node.inputs])
        for name, value in zip(node.outputs, results, strict=False):
            if name:
                values[name] = value
    return values


class OpenCLSession:
    """An ONNX model prepared for one OpenCL device.

    ``inputs`` maps each runtime input (graph inputs that are not initializers) to its
    declared shape (symbolic dimensions as strings) and dtype; ``outputs`` lists the graph
    outputs. ``peak_device_bytes`` is the device memory the session holds after the last
    run: weights plus the activation buffers of the plans built so far (weights counted once
    per device: a plan tried on the inline companion uploads its own copy, in the same host
    memory on PoCL).
    """

    def __init__(
        self, model: onnx.ModelProto, device: cl.Device | None = None, *, inline: bool = True
    ) -> None:
        """``inline=False`` keeps every plan on ``device`` (tests of the threaded device)."""
        self._graph = read_graph(model)
        self.inputs: dict[str, tuple[tuple[int | str, ...], np.dtype[Any]]] = dict(
            self._graph.inputs
        )
        self.outputs: list[str] = list(self._graph.outputs)
        for name, (_, dtype) in self.inputs.items():
            if not dtypes.is_device_type(dtype):
                raise UnsupportedOperatorError(
                    f"input {name!r} has dtype {dtype}, which the OpenCL backend does not hold "
                    "on a device (use backend='onnxruntime')"
                )
        try:
            self._static = _static_constants(self._graph)
        except (ValueError, IndexError, TypeError, KeyError) as error:
            raise ModelError(f"the model's constants cannot be evaluated: {error}") from error
        self._graph = fuse_patterns(self._graph, self._static)
        self._device = device if device is not None else programs.default_device()
        weight_bytes = sum(v.size * 4 for v in self._static.values() if v.dtype.kind == "f")
        capacity = int(self._device.global_mem_size)
        if weight_bytes > capacity:
            raise DeviceError(
                f"the model's weights need {weight_bytes} bytes but {self._device.name} has "
                f"{capacity} bytes of global memory; use a larger device or onnxruntime"
            )
        self._target = _Target.on(self._device)
        self._inline_device = inline_companion(self._device) if inline else None
        self._inline: _Target | None = None  # created when a plan is first tried there
        self._plans: dict[tuple[Any, ...], Plan] = {}
        #: Plans whose device is not chosen yet, and how often each has run (:meth:`_decide`).
        self._undecided: dict[tuple[Any, ...], int] = {}
        self._lock = threading.Lock()
        self._accepted: set[tuple[tuple[str, tuple[int, ...], np.dtype[Any]], ...]] = set()
        self.peak_device_bytes = 0
        static_shapes = {
            name: shape
            for name, (shape, _) in self.inputs.items()
            if all(isinstance(d, int) for d in shape)
        }
        if len(static_shapes) == len(self.inputs) and not self._graph.host_inputs:
            self._plan({n: tuple(int(d) for d in s) for n, s in static_shapes.items()})

    @property
    def device(self) -> cl.Device:
        return self._device

    def plan_device(self, feeds: dict[str, np.ndarray]) -> cl.Device:
        """The device that runs these feeds' plan: ``device`` or its inline companion."""
        with self._lock:
            return self._plan_for(self._check_feeds(feeds)).device

    def _plan_for(self, checked: dict[str, np.ndarray]) -> Plan:
        host = self._graph.host_inputs
        return self._plan(
            {name: tuple(a.shape) for name, a in checked.items() if name not in host},
            {name: a for name, a in checked.items() if name in host},
        )

    def _queue(self, plan: Plan) -> cl.CommandQueue:
        """The command queue of the device ``plan`` was built for."""
        if self._inline is not None and plan.device == self._inline.device:
            return self._inline.queue
        return self._target.queue

    @staticmethod
    def _signature(
        shapes: dict[str, tuple[int, ...]], host_feeds: dict[str, np.ndarray]
    ) -> tuple[Any, ...]:
        return tuple(sorted(shapes.items())) + tuple(
            (name, str(array.dtype), array.shape, array.tobytes())
            for name, array in sorted(host_feeds.items())
        )

    def _plan(
        self, shapes: dict[str, tuple[int, ...]], host_feeds: dict[str, np.ndarray] | None = None
    ) -> Plan:
        """The plan for these input shapes (and values of the host inputs), built once on
        the session's device; after its first run it may move to the inline companion
        (:meth:`_decide`)."""
        host_feeds = host_feeds or {}
        signature = self._signature(shapes, host_feeds)
        plan = self._plans.get(signature)
        if plan is None:
            if host_feeds and len(self._plans) >= _ACCEPTED_SIGNATURES:
                self._plans.clear()  # value-specialised plans: keep the cache bounded
                self._undecided.clear()
            plan = build_plan(
                self._graph,
                self._static,
                shapes,
                self._device,
                self._target.weights,
                host_feeds,
            )
            self._plans[signature] = plan
            if self._inline_device is not None:
                self._undecided[signature] = 0
            self._count_memory()
        return plan

    def _count_memory(self) -> None:
        targets = [self._target] + ([self._inline] if self._inline else [])
        weights = sum(b.size for t in targets for b in t.weights.values())
        activations = max(p.activation_bytes for p in self._plans.values())
        self.peak_device_bytes = max(self.peak_device_bytes, weights + activations)

    def _decide(self, checked: dict[str, np.ndarray], run_ms: float) -> None:
        """Where the plan of ``checked`` runs from now on, once its ``INLINE_DECIDING_RUN``th
        run cost ``run_ms`` (the lesser of wall and CPU time, see ``INLINE_TRY_MS``).
        Invoked by ``run`` (under the session's lock) while plans are undecided: judging by
        runs that callers make anyway costs a large model nothing."""
        host = self._graph.host_inputs
        shapes = {name: tuple(a.shape) for name, a in checked.items() if name not in host}
        host_feeds = {name: a for name, a in checked.items() if name in host}
        signature = self._signature(shapes, host_feeds)
        runs = self._undecided.get(signature)
        if runs is None:
            return
        if runs + 1 < INLINE_DECIDING_RUN:
            self._undecided[signature] = runs + 1
            return
        del self._undecided[signature]
        plan = self._plans.get(signature)
        if plan is None or run_ms > INLINE_FIRST_RUN_MS:
            return
        self._plans[signature] = self._placed(plan, shapes, host_feeds)
        self._count_memory()

    def _placed(
        self, plan: Plan, shapes: dict[str, tuple[int, ...]], host_feeds: dict[str, np.ndarray]
    ) -> Plan:
        """``plan`` on the session's device, or the same plan built for the inline companion
        when that runs it faster.

        Invoked once per new plan, after its second run. Both run on zero feeds, in turns;
        the companion is tried only for a plan that costs under ``INLINE_TRY_MS`` on the
        threaded device (wall or CPU time, whichever is less), and kept only when its outputs
        are bit-identical to the threaded device's (the same compiler builds both, and a
        tuned work split does not change any sum's order, so a difference is a driver fault;
        the threaded device is the one the probe checked). The choice holds for the plan's
        life: it reflects the machine's load when the plan was first used.
        """
        queue = self._target.queue
        if self._inline_device is None:
            return plan
        try:
            (threaded_ms,) = tuning.alternating_medians_ms([lambda: _run_plan(plan, queue)], 3)
            cost_ms = threaded_ms
            if cost_ms > INLINE_TRY_MS:  # slow, or waiting for a busy machine's cores?
                (cost_ms,) = tuning.alternating_medians_ms(
                    [lambda: _run_plan(plan, queue)], 3, clock=time.process_time
                )
        except cl.Error as error:
            raise DeviceError(f"the OpenCL device failed while planning: {error}") from error
        if cost_ms > INLINE_TRY_MS:
            return plan
        try:
            if self._inline is None:
                self._inline = _Target.on(self._inline_device)
            inline = self._inline
            inline_plan = build_plan(
                self._graph, self._static, shapes, inline.device, inline.weights, host_feeds
            )
            _run_plan(plan, queue)
            _run_plan(inline_plan, inline.queue)
            expected = _device_outputs(plan, queue)
            found = _device_outputs(inline_plan, inline.queue)
            if not all(
                np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
                for a, b in zip(expected, found, strict=True)
            ):
                logger.warning(
                    "%s and %s disagree on a plan's outputs; it stays on %s",
                    inline.device.name,
                    self._device.name,
                    self._device.name,
                )
                return plan
            fewest, most = INLINE_ROUNDS
            rounds = min(most, max(fewest, int(INLINE_BUDGET_MS / max(threaded_ms, 1e-3))))
            threaded_ms, inline_ms = tuning.alternating_medians_ms(
                [lambda: _run_plan(plan, queue), lambda: _run_plan(inline_plan, inline.queue)],
                rounds,
            )
        except (cl.Error, DeviceError) as error:  # the companion is an optimisation only
            logger.warning(
                "%s failed while planning (%s); the plan stays on %s",
                self._inline_device.name,
                error,
                self._device.name,
            )
            return plan
        return inline_plan if inline_ms < threaded_ms else plan

    def plan_statistics(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
        """Launch count and activation bytes with and without liveness reuse (for docs)."""
        plan = self._plan(shapes)
        targets = [self._target] + ([self._inline] if self._inline else [])
        return {
            "launches": len(plan.launches),
            "activation_bytes": plan.activation_bytes,
            "activation_bytes_without_reuse": plan.activation_bytes_without_reuse,
            "weight_bytes": sum(b.size for t in targets for b in t.weights.values()),
        }

    def _check_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feeds as contiguous arrays of their declared types, or :class:`InputError`
        naming the input.

        A feed set whose (name, shape, dtype) signature was accepted before skips the
        per-input checks (one dict lookup): ``run`` is called per request, and on a small
        model like digits the checks cost as much as a kernel launch.
        """
        try:
            signature = tuple((name, array.shape, array.dtype) for name, array in feeds.items())
        except AttributeError:
            signature = None  # not all numpy arrays: take the checking path
        if signature is not None and signature in self._accepted:
            return {name: np.require(array, requirements="C") for name, array in feeds.items()}
        checked: dict[str, np.ndarray] = {}
        for name, (shape, dtype) in self.inputs.items():
            if name not in feeds:
                raise InputError(
                    f"missing input {name!r}: expected shape {shape} of {np.dtype(dtype).name}"
                )
            array = np.asarray(feeds[name])
            if array.dtype != dtype:
                raise InputError(
                    f"input {name!r} has dtype {array.dtype.name}, expected {np.dtype(dtype).name}"
                )
            if len(array.shape) != len(shape) or any(
                isinstance(d, int) and d != a for d, a in zip(shape, array.shape, strict=True)
            ):
                raise InputError(f"input {name!r} has shape {array.shape}, expected {shape}")
            checked[name] = np.require(array, requirements="C")
        unknown = set(feeds) - set(self.inputs)
        if unknown:
            raise InputError(
                f"unknown inputs {sorted(unknown)}; the model's inputs are {sorted(self.inputs)}"
            )
        if signature is not None and len(self._accepted) < _ACCEPTED_SIGNATURES:
            self._accepted.add(signature)
        return checked

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on ``feeds``; returns every graph output as a numpy array."""
        checked = self._check_feeds(feeds)
        with self._lock:
            host = self._graph.host_inputs
            plan = self._plan_for(checked)
            started = time.perf_counter()
            # Only while the plan's device is undecided: reading the process's CPU clock
            # while other threads run (onnxruntime's spinning pool beside it) took BERT's
            # inline run from 0.7 to 12-47 ms when it was read on every run.
            cpu_started = time.process_time() if self._undecided else 0.0
            buffers = plan.buffers
            queue = self._queue(plan)
            try:
                for name, array in checked.items():
                    if array.size and name not in host:
                        storage = plan.input_storages[name]
                        cl.enqueue_copy(queue, buffers[storage.slot], array, is_blocking=False)
                for launch in plan.launches:
                    assert launch.kernel is not None  # bound when the plan was finished
                    cl.enqueue_nd_range_kernel(
                        queue, launch.kernel, launch.global_size, launch.local_size
                    )
                # Reads are queued behind the launches on the one in-order queue; the last
                # read blocks, which also waits for everything before it, so no finish():
                # every wait is a wake-up of PoCL's threads, the dominant fixed cost.
                results: dict[str, np.ndarray] = {}
                pending = [
                    (name, value)
                    for name, value in plan.outputs.items()
                    if isinstance(value, DeviceTensor) and _count(value.shape)
                ]
                for name, value in plan.outputs.items():
                    if isinstance(value, DeviceTensor):
                        results[name] = np.empty(value.shape, dtype=value.dtype)
                    else:
                        results[name] = np.array(value)
                for index, (name, value) in enumerate(pending):
                    cl.enqueue_copy(
                        queue,
                        results[name],
                        buffers[value.storage.slot],
                        is_blocking=index == len(pending) - 1,
                    )
                if not pending:
                    queue.finish()
            except cl.Error as error:
                raise DeviceError(f"the OpenCL device failed while running: {error}") from error
            if self._undecided:
                wall_ms = (time.perf_counter() - started) * 1000.0
                cpu_ms = (time.process_time() - cpu_started) * 1000.0
                self._decide(checked, min(wall_ms, cpu_ms))
        return {name: results[name] for name in self.outputs}
