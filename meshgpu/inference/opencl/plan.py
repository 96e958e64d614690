"""Build an execution plan for one input-shape signature.

A plan is the list of kernel launches for a graph at fixed input shapes, with every device
buffer already assigned. Building it walks the graph in topological order; a node whose
inputs are all known on the host is folded with numpy (:mod:`.folding`), any other node is
*lowered* to kernel launches by the function registered for its operator
(:mod:`.lower_linear`, :mod:`.lower_tensor`). Lowering functions may absorb the nodes that
follow (BatchNormalization, per-channel Mul/Add, activations, residual Add into a Conv).

Tensors, views and how storages share buffers: :mod:`.tensors`; the registry of lowering
functions and kernel-argument helpers: :mod:`.registry`; weight uploads: :mod:`.weights`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyopencl as cl

from meshgpu.errors import DeviceError, ModelError, UnsupportedOperatorError
from meshgpu.inference.opencl import dtypes, programs, tuning
from meshgpu.inference.opencl.folding import fold_node
from meshgpu.inference.opencl.graph import Graph, Node
from meshgpu.inference.opencl.registry import LOWERINGS, TYPED_OPERATORS
from meshgpu.inference.opencl.tensors import (
    FLOAT_BYTES,
    VIEW_OPERATORS,
    DeviceTensor,
    KernelArg,
    Storage,
    View,
    assign_slots,
    contiguous_strides,
    element_count,
)
from meshgpu.inference.opencl.weights import WeightUploads

ELEMENTWISE_GROUP = 8


@dataclass
class Launch:
    """One kernel launch with its arguments; storages are bound to buffers after allocation."""

    program: cl.Program
    kernel_name: str
    global_size: tuple[int, ...]
    local_size: tuple[int, ...]
    args: list[KernelArg]
    node: str
    kernel: cl.Kernel | None = None
    #: Other ways to launch it, one of which :mod:`.tuning` picks for this device.
    variants: list[tuning.Variant] | None = None
    #: The shape the tuning choice is kept under (with the kernel and the device).
    tuning_shape: tuple[int, ...] = ()
    #: The first variant is the lowering's own choice, kept unless clearly beaten.
    prefer_first_variant: bool = False


@dataclass
class Plan:
    """Everything :meth:`OpenCLSession.run` needs for one input-shape signature."""

    launches: list[Launch]
    input_storages: dict[str, Storage]
    outputs: dict[str, DeviceTensor | np.ndarray]
    buffers: list[cl.Buffer]
    activation_bytes: int
    activation_bytes_without_reuse: int
    #: Constants computed while planning (from input shapes), uploaded for this plan only;
    #: held here because a kernel argument does not keep its buffer alive.
    constants: list[cl.Buffer]
    #: The device whose context holds the buffers and kernels.
    device: cl.Device


class PlanBuilder(WeightUploads):
    """The state lowering functions work on while a plan is built.

    ``weights`` is the session's cache of uploaded constants, keyed by what was derived from
    which initializer, so a second plan (another input shape) uploads nothing again.
    """

    def __init__(
        self,
        graph: Graph,
        static_constants: dict[str, np.ndarray],
        input_shapes: dict[str, tuple[int, ...]],
        device: cl.Device,
        weights: dict[Any, cl.Buffer],
        *,
        dry: bool = False,
        placements: dict[str, tuple[str, tuple[int, ...], int]] | None = None,
        host_feeds: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.graph = graph
        #: A dry builder only infers shapes and fusion decisions: no uploads, no compiles.
        self.dry = dry
        #: tensor -> (concat output, concat shape, channel offset) for producers that write
        #: straight into their slice of a channel concatenation.
        self.placements = placements or {}
        self.placed: dict[str, tuple[int, ...]] = {}
        self.slice_writers: set[str] = set()
        self._node_index = {id(node): index for index, node in enumerate(graph.nodes)}
        self._bound_constants: dict[Storage, cl.Buffer | None] = {}
        self._queue: cl.CommandQueue | None = None
        self._pack_kernel: cl.Kernel | None = None
        #: (source buffer, offsets buffer, source array) of packings queued but not waited on.
        self._pending: list[tuple[cl.Buffer, cl.Buffer, np.ndarray]] = []
        self.device = device
        self.context = programs.context_for(device)
        self.weights = weights
        self.static = static_constants
        self.values: dict[str, np.ndarray] = dict(static_constants)
        self.values.update(host_feeds or {})
        self.tensors: dict[str, DeviceTensor] = {}
        #: Tensors left as strided views for a product to read (see :class:`View`).
        self.views: dict[str, View] = {}
        self.launches: list[Launch] = []
        self.absorbed: set[int] = set()
        self.consumers: dict[str, list[Node]] = {}
        for node in graph.nodes:
            for name in node.inputs:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = set(graph.outputs)
        # A device tensor that is another times a constant scalar, left unscaled because its
        # only reader (a Gemm) applies the factor through alpha: name -> factor.
        self.operand_scales: dict[str, float] = {}
        # A device tensor left as its producer's input because its only reader (a depthwise
        # Conv) applies the producer's activation itself: name -> (expression in x, alpha,
        # beta) (lower_depthwise.defers).
        self.deferred_activations: dict[str, tuple[str, float, float]] = {}
        self.fp64 = "cl_khr_fp64" in (device.extensions or "")
        self._constant_tensors: dict[tuple[str, np.dtype[Any]], DeviceTensor] = {}
        self._plan_constants: list[cl.Buffer] = []
        self.input_storages: dict[str, Storage] = {}
        for name, shape in input_shapes.items():
            dtype = np.dtype(graph.inputs[name][1]) if name in graph.inputs else dtypes.FLOAT32
            storage = Storage(
                max(FLOAT_BYTES, element_count(shape) * dtype.itemsize), f"input {name}"
            )
            storage.first = -1
            self.input_storages[name] = storage
            self.tensors[name] = DeviceTensor(storage, shape, dtype)

    # -- queries ------------------------------------------------------------------------
    def is_host(self, name: str) -> bool:
        return name in self.values

    def host(self, name: str) -> np.ndarray:
        return self.values[name]

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self.values:
            return tuple(int(d) for d in self.values[name].shape)
        if name in self.placed:
            return self.placed[name]
        if name in self.views:
            return self.views[name].shape
        return self.tensors[name].shape

    def dtype(self, name: str) -> np.dtype[Any]:
        """Element type of a host value or device tensor."""
        if name in self.values:
            return np.asarray(self.values[name]).dtype
        if name in self.placed:
            return dtypes.FLOAT32  # written into a concatenation by a float kernel
        if name in self.views:
            return self.views[name].dtype
        return self.tensors[name].dtype

    def tensor(self, node: Node, name: str, dtype: Any = None) -> DeviceTensor:
        """The device tensor ``name``; host constants are uploaded on demand, as ``dtype``
        when given, else in their own type for a typed operator and as float32 for the
        others (whose kernels are float32)."""
        if name in self.tensors:
            return self.tensors[name]
        if name in self.views:
            return self._materialize(node, name)
        if name in self.values:
            value = np.asarray(self.values[name])
            if dtype is None:
                dtype = value.dtype if node.op in TYPED_OPERATORS else dtypes.FLOAT32
            dtype = np.dtype(dtype)
            if not dtypes.is_device_type(dtype):
                raise UnsupportedOperatorError(
                    f"the OpenCL backend cannot run {node.describe()}: constant {name!r} is "
                    f"{dtypes.type_name(dtype)}, which is not a device type"
                )
            cached = self._constant_tensors.get((name, dtype))
            if cached is not None:
                return cached
            array = np.ascontiguousarray(value, dtype=dtype)
            storage = Storage(max(FLOAT_BYTES, array.nbytes), f"constant {name}")
            buffer: cl.Buffer | None
            if name in self.static:
                buffer = self.weight(("raw", name, dtype.str), lambda: array, dtype)
            else:
                buffer = None if self.dry else self._upload(array)
                if buffer is not None:
                    self._plan_constants.append(buffer)
            tensor = DeviceTensor(storage, tuple(array.shape), dtype)
            self._bound_constants[storage] = buffer
            self._constant_tensors[(name, dtype)] = tensor
            return tensor
        raise ModelError(f"{node.describe()} reads {name!r} before it is computed")

    def strided(self, node: Node, name: str) -> View:
        """``name`` as a strided view: its view, or a device tensor (a host constant is
        uploaded) read with contiguous strides."""
        view = self.views.get(name)
        if view is not None:
            return view
        tensor = self.tensor(node, name)
        return View(tensor.storage, tensor.shape, contiguous_strides(tensor.shape), 0, tensor.dtype)

    def _materialize(self, node: Node, name: str) -> DeviceTensor:
        """A contiguous copy of the view ``name``, made for a reader that needs one."""
        from meshgpu.inference.opencl.lower_tensor import strided_copy

        view = self.views.pop(name)
        tensor = self.new_tensor(name, view.shape, view.dtype)
        strided_copy(
            self,
            node,
            view.storage,
            tensor.storage,
            view.shape,
            view.strides,
            contiguous_strides(view.shape),
            view.offset,
            0,
            dtype=view.dtype,
        )
        return tensor

    def feeds_product(self, name: str) -> bool:
        """Whether every reader of ``name`` (a float tensor, not a graph output) is a
        MatMul, a view operator whose outputs feed products in turn, or a Mul by a constant
        scalar that a MatMul alone reads (the product folds the factor into alpha): then
        ``name`` can stay a strided view."""
        readers = self.consumers.get(name, [])
        if not readers or name in self.graph_outputs:
            return False
        for consumer in readers:
            if consumer.op in ("MatMul", "Shape", "Size"):  # Shape reads no element
                continue
            if consumer.op == "Mul" and self.scalar_factor(consumer, name) is not None:
                after = self.sole_consumer(consumer.outputs[0])
                if after is not None and after.op == "MatMul":
                    continue
                return False
            if consumer.op not in VIEW_OPERATORS or consumer.inputs[0] != name:
                return False
            if consumer.op == "Gather" and not self._scalar_index(consumer):
                return False
            if not all(out and self.feeds_product(out) for out in consumer.outputs):
                return False
        return True

    def scalar_factor(self, node: Node, name: str) -> float | None:
        """For a two-input Mul of ``name`` by a one-element float constant: the factor."""
        if len(node.inputs) != 2 or node.inputs.count(name) != 1:
            return None
        other = node.inputs[1] if node.inputs[0] == name else node.inputs[0]
        if not self.is_host(other):
            return None
        factor = np.asarray(self.host(other))
        if factor.size != 1 or factor.dtype.kind != "f":
            return None
        return float(factor.reshape(()))

    def _scalar_index(self, node: Node) -> bool:
        return (
            len(node.inputs) > 1
            and self.is_host(node.inputs[1])
            and np.asarray(self.host(node.inputs[1])).ndim == 0
        )

    def sole_consumer(self, name: str) -> Node | None:
        """The only node reading ``name`` when it is not a graph output, else None."""
        readers = self.consumers.get(name, [])
        if len(readers) != 1 or name in self.graph_outputs:
            return None
        return readers[0]

    def sole_reader(self, name: str, ops: Collection[str]) -> Node | None:
        """The only node reading ``name`` (not a graph output) when it is one of ``ops``,
        reads ``name`` as its first input and has a named output, else None: a node a
        kernel writing ``name`` can absorb."""
        consumer = self.sole_consumer(name)
        if (
            consumer is None
            or consumer.op not in ops
            or consumer.inputs[0] != name
            or not consumer.outputs
            or not consumer.outputs[0]
        ):
            return None
        return consumer

    # -- production ---------------------------------------------------------------------
    def new_tensor(
        self, name: str, shape: Sequence[int], dtype: Any = dtypes.FLOAT32
    ) -> DeviceTensor:
        shape = tuple(int(d) for d in shape)
        dtype = np.dtype(dtype)
        if dtype == np.float64 and not self.fp64:
            raise UnsupportedOperatorError(
                f"tensor {name!r} is float64 and {self.device.name} has no cl_khr_fp64"
            )
        storage = Storage(max(FLOAT_BYTES, element_count(shape) * dtype.itemsize), name)
        tensor = DeviceTensor(storage, shape, dtype)
        self.tensors[name] = tensor
        return tensor

    def alias(self, name: str, source: DeviceTensor, shape: Sequence[int]) -> None:
        self.tensors[name] = DeviceTensor(
            source.storage, tuple(int(d) for d in shape), source.dtype
        )

    def workspace(self, nbytes: int, label: str) -> Storage:
        return Storage(max(FLOAT_BYTES, nbytes), label)

    def reserve_reads(self, tensor: DeviceTensor, nbytes: int) -> bool:
        """Let a kernel read ``nbytes`` from the start of ``tensor``'s storage, past the
        tensor's end if need be (vector loads whose surplus lanes are dropped): the storage
        grows to that size. False for uploaded constants, whose buffers are already made."""
        if tensor.storage in self._bound_constants:
            return False
        tensor.storage.nbytes = max(tensor.storage.nbytes, nbytes)
        return True

    def launch(
        self,
        node: Node,
        source: str,
        kernel_name: str,
        args: Iterable[KernelArg],
        *,
        total: int | None = None,
        grid: tuple[int, ...] | None = None,
        local: tuple[int, ...] | None = None,
        per_item: int = 1,
        variants: list[tuning.Variant] | None = None,
        tuning_shape: tuple[int, ...] = (),
        prefer_first_variant: bool = False,
    ) -> None:
        """Queue a launch over ``total`` work-items (each handling ``per_item`` elements) in
        ``local``-sized groups (default 8), or over an explicit ``grid``."""
        if grid is None:
            assert total is not None
            if total <= 0:
                return
            items = -(-total // per_item)
            group = local[0] if local else ELEMENTWISE_GROUP
            grid = (-(-items // group) * group,)
            local = (group,)
        if any(g <= 0 for g in grid) or self.dry:
            return
        program = programs.program_for(self.device, source)
        self.launches.append(
            Launch(
                program,
                kernel_name,
                grid,
                local or (1,) * len(grid),
                list(args),
                node.name,
                variants=variants if variants and len(variants) > 1 else None,
                tuning_shape=tuning_shape,
                prefer_first_variant=prefer_first_variant,
            )
        )

    # -- the walk -----------------------------------------------------------------------
    def slice_target(self, name: str, shape: tuple[int, ...]) -> tuple[DeviceTensor, int] | None:
        """For a placed tensor: (concat tensor, channel offset) to write into, else None."""
        placement = self.placements.get(name)
        if placement is None:
            return None
        concat_name, concat_shape, offset = placement
        target = self.tensors.get(concat_name) or self.new_tensor(concat_name, concat_shape)
        self.placed[name] = shape
        return target, offset

    def walk(self) -> None:
        """Fold or lower every node in order (the shared part of dry and real builds)."""
        for index, node in enumerate(self.graph.nodes):
            if index in self.absorbed:
                continue
            self.current_index = index
            known = [name for name in node.inputs if name]
            if (
                node.op in ("Shape", "Size")
                or all(self.is_host(name) for name in known)
                or (node.op == "CastLike" and self.is_host(node.inputs[0]))
            ):
                self._fold(node)
                continue
            lowering = LOWERINGS.get(node.op)
            if lowering is None:
                raise UnsupportedOperatorError(
                    f"the OpenCL backend cannot run {node.describe()} on device tensors"
                )
            if node.op not in TYPED_OPERATORS:
                for name in known:
                    if name in self.tensors and self.tensors[name].dtype != dtypes.FLOAT32:
                        raise UnsupportedOperatorError(
                            f"the OpenCL backend cannot run {node.describe()}: it reads "
                            f"{name!r} of type {dtypes.type_name(self.tensors[name].dtype)} "
                            "and runs on float32 device tensors only"
                        )
            try:
                lowering(self, node)
            except (ValueError, IndexError, KeyError) as error:
                raise ModelError(f"{node.describe()} cannot be planned: {error}") from error

    def build(self) -> Plan:
        try:
            self.walk()
        finally:
            self._wait_for_packing()
        return self._finish()

    def absorb(self, node: Node) -> None:
        """Mark a later node as computed by the current launch (fusion)."""
        self.absorbed.add(self._node_index[id(node)])

    def _fold(self, node: Node) -> None:
        if node.op in ("Shape", "Size"):
            # a zero-strided stand-in: only its shape is read
            shape = self.shape(node.inputs[0])
            values: list[np.ndarray | None] = [np.broadcast_to(np.zeros((), np.uint8), shape)]
        elif node.op == "CastLike":  # only the type of the second input is read
            like = np.zeros(0, self.dtype(node.inputs[1]))
            values = [self.values[node.inputs[0]], like]
        else:
            values = [self.values[name] if name else None for name in node.inputs]
        try:
            results = fold_node(node, values)
        except (ValueError, IndexError, TypeError) as error:
            raise ModelError(f"{node.describe()} cannot be evaluated: {error}") from error
        for name, value in zip(node.outputs, results, strict=False):
            if name:
                self.values[name] = value

    def _finish(self) -> Plan:
        outputs: dict[str, DeviceTensor | np.ndarray] = {}
        end = len(self.launches)
        for name in self.graph.outputs:
            if name in self.tensors and name not in self.values:
                tensor = self.tensors[name]
                tensor.storage.last = end
                outputs[name] = tensor
            elif name in self.values:
                outputs[name] = self.values[name]
            else:
                raise ModelError(f"graph output {name!r} was never computed")
        for index, launch in enumerate(self.launches):
            for arg in launch.args:
                if isinstance(arg, Storage) and arg not in self._bound_constants:
                    arg.first = min(arg.first, index)
                    arg.last = max(arg.last, index)
        for storage in self.input_storages.values():
            storage.first = -1
            storage.last = max(storage.last, -1)
        storages = {
            arg
            for launch in self.launches
            for arg in launch.args
            if isinstance(arg, Storage) and arg not in self._bound_constants
        }
        storages |= set(self.input_storages.values())
        storages |= {t.storage for t in outputs.values() if isinstance(t, DeviceTensor)}
        slot_sizes = assign_slots(sorted(storages, key=lambda s: (s.first, s.label)))
        try:
            buffers = [
                cl.Buffer(self.context, cl.mem_flags.READ_WRITE, size) for size in slot_sizes
            ]
        except cl.Error as error:
            raise DeviceError(
                f"could not allocate {sum(slot_sizes)} bytes of activations on "
                f"{self.device.name}: {error}"
            ) from error
        for launch in self.launches:
            resolved = [self._resolve(arg, buffers) for arg in launch.args]
            kernel = cl.Kernel(launch.program, launch.kernel_name)
            # set_arg one by one: set_args would generate (and disk-cache) an invoker per
            # kernel object, which costs more than the whole plan at session start.
            for position, value in enumerate(resolved):
                kernel.set_arg(position, value)
            launch.kernel = kernel
        self._tune(buffers)
        return Plan(
            launches=self.launches,
            input_storages=self.input_storages,
            outputs=outputs,
            buffers=buffers,
            activation_bytes=sum(slot_sizes),
            activation_bytes_without_reuse=sum(s.nbytes for s in storages),
            constants=self._plan_constants,
            device=self.device,
        )

    def _tune(self, buffers: list[cl.Buffer]) -> None:
        """Pick each offered launch variant (:mod:`.tuning`); a search runs on the plan's
        own buffers, zeroed first so that no stale value slows the arithmetic down."""
        tunable = [launch for launch in self.launches if launch.variants]
        if not tunable:
            return
        zeroed = False
        for launch in tunable:
            assert launch.kernel is not None and launch.variants is not None
            if not zeroed and not tuning.is_cached(
                self.device, launch.kernel_name, launch.tuning_shape, launch.variants
            ):
                queue = self._setup_queue()
                for buffer in buffers:
                    cl.enqueue_fill_buffer(queue, buffer, np.zeros(1, np.uint8), 0, buffer.size)
                queue.finish()
                zeroed = True
            chosen = tuning.choose(
                self.device,
                self.context,
                launch.kernel,
                launch.kernel_name,
                launch.tuning_shape,
                launch.variants,
                launch.local_size,
                prefer_first=launch.prefer_first_variant,
            )
            launch.global_size = chosen.grid

    def _resolve(self, arg: KernelArg, buffers: list[cl.Buffer]) -> Any:
        if isinstance(arg, Storage):
            bound = self._bound_constants.get(arg)
            return bound if bound is not None else buffers[arg.slot]
        return arg


def build_plan(
    graph: Graph,
    static_constants: dict[str, np.ndarray],
    input_shapes: dict[str, tuple[int, ...]],
    device: cl.Device,
    weights: dict[Any, cl.Buffer],
    host_feeds: dict[str, np.ndarray] | None = None,
) -> Plan:
    """Dry walk for shapes, choose concat placements, then the real build."""
    dry = PlanBuilder(
        graph, static_constants, input_shapes, device, weights, dry=True, host_feeds=host_feeds
    )
    dry.walk()
    shapes = {name: tensor.shape for name, tensor in dry.tensors.items()}
    placements: dict[str, tuple[str, tuple[int, ...], int]] = {}
    for index, node in enumerate(graph.nodes):
        if node.op != "Concat" or index in dry.absorbed or node.outputs[0] not in shapes:
            continue
        names = [n for n in node.inputs if n]
        out_shape = shapes[node.outputs[0]]
        axis = int(node.attrs.get("axis", 1))
        if len(out_shape) != 4 or axis not in (1, -3) or len(set(names)) != len(names):
            continue
        offset = 0
        for name in names:
            if (
                name in dry.slice_writers
                and dry.sole_consumer(name) is node
                and name not in dry.input_storages
            ):
                placements[name] = (node.outputs[0], out_shape, offset)
            offset += dry.shape(name)[1]
    real = PlanBuilder(
        graph,
        static_constants,
        input_shapes,
        device,
        weights,
        placements=placements,
        host_feeds=host_feeds,
    )
    return real.build()
