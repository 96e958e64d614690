"""MatMul (and Gemm on a device activation) through the strided ``matmul_tiles`` kernel.

Both operands are read in place through strides (:class:`.plan.View`): Transpose, Split,
Slice and Reshape in front of a product cost no launch, and a device operand is not packed
first. Constant right-hand operands (weights) are packed into panels once per session, as
for ``gemm_8x8``. What follows the product is folded into the same launch while it can be:

- Mul or Div by a constant scalar (attention's 1/sqrt(d) scale) into ``alpha``;
- up to two Adds of tensors that broadcast to the output, constant or on the device (a
  bias, an attention mask, a residual), read through their own strides;
- one activation (Relu, LeakyRelu, Clip, Sigmoid, Tanh, Gelu);
- Softmax over the last axis (rows of at most ``MATMUL_SOFTMAX_COLUMNS``);
- a Transpose of the result, written through permuted output strides.

Batch dimensions (numpy broadcasting) are merged where every operand steps through them
contiguously; products needing more than two batch dimensions after that go to the packed
path of :mod:`.lower_linear`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from meshgpu.inference.opencl import dtypes, fusion
from meshgpu.inference.opencl.graph import Node
from meshgpu.inference.opencl.kernels.elementwise import FAST_EXP_SOURCE
from meshgpu.inference.opencl.kernels.matmul import (
    MATMUL_ALONG_K_DEFINE,
    MATMUL_COLUMN_BLOCKS,
    MATMUL_ROWS4_DEFINE,
    MATMUL_ROWS6_DEFINE,
    MATMUL_SOFTMAX_COLUMNS,
    MATMUL_SOURCE,
)
from meshgpu.inference.opencl.kernels.vectors import VECTOR_SOURCE
from meshgpu.inference.opencl.lower_tensor import collapse
from meshgpu.inference.opencl.plan import PlanBuilder
from meshgpu.inference.opencl.registry import f32, i32, lowers
from meshgpu.inference.opencl.tensors import (
    DeviceTensor,
    KernelArg,
    Storage,
    View,
    contiguous_strides,
)
from meshgpu.inference.opencl.tuning import Variant

SOURCE = VECTOR_SOURCE + FAST_EXP_SOURCE + MATMUL_SOURCE

#: Column blocks per work-item that tuning.py measures (with "all of them").
TUNED_COLUMN_BLOCKS = (1, 2, 4, 8, 16)

#: Activation codes of ``matmul_activation``: fusion.ACTIVATIONS plus the two Gelus.
GELU_CODES = {"none": 6, "tanh": 7}


@dataclass
class Operand:
    """A product operand: its buffer and the strides of (batch..., first, second) axes."""

    data: KernelArg
    offset: int
    batch: list[int]
    first: int
    second: int
    #: Stride between 8-column blocks of B (8 * second unless packed into panels).
    block: int = 0


@dataclass
class Addend:
    data: KernelArg
    #: Strides over (batch..., rows, cols) of the output, 0 where broadcast.
    strides: list[int]


@dataclass
class Tail:
    """What the product's launch computes after the sum."""

    output: str
    alpha: float = 1.0
    addends: list[Addend] = field(default_factory=list)
    activation: tuple[int, float, float] = (0, 0.0, 0.0)
    softmax: bool = False
    #: Output strides over (batch..., rows, cols); None for contiguous.
    out_strides: list[int] | None = None
    out_shape: tuple[int, ...] = ()
    #: The absorbed Transpose's permutation (out_strides is set with it).
    perm: tuple[int, ...] = ()
    #: A product with a tensor that broadcasts to the output (ConvNeXt's layer scale),
    #: applied before the addends (``multiplier_first``) or after the first one.
    multiplier: Addend | None = None
    multiplier_first: bool = False
    #: A Reshape was absorbed: out_shape is a new view of the contiguous result, so only
    #: same-shaped addends and activations may follow.
    reshaped: bool = False


@dataclass
class Prologue:
    """A LayerNormalization over the rows of A computed by the product's launch (the
    norm's output read by the product alone): its scale, bias and epsilon."""

    scale: KernelArg
    bias: KernelArg
    epsilon: float
    #: The nodes the product's launch computes besides itself (a Reshape between them).
    between: tuple[Node, ...] = ()


def _broadcast_view(view: View, out_shape: tuple[int, ...]) -> list[int] | None:
    """Strides reading ``view`` broadcast to ``out_shape``, None when it does not broadcast."""
    if len(view.shape) > len(out_shape):
        return None
    shift = len(out_shape) - len(view.shape)
    for size, want in zip(view.shape, out_shape[shift:], strict=True):
        if size not in (1, want):
            return None
    return [
        0 if size == 1 else stride
        for size, stride in zip(
            [1] * shift + list(view.shape), [0] * shift + list(view.strides), strict=True
        )
    ]


def _host_scalar(builder: PlanBuilder, name: str) -> float | None:
    if not builder.is_host(name):
        return None
    value = np.asarray(builder.host(name))
    if value.size != 1 or value.dtype.kind != "f":
        return None
    return float(value.reshape(-1)[0])


def collect_tail(
    builder: PlanBuilder,
    node: Node,
    output: str,
    out_shape: tuple[int, ...],
    fits: Callable[[list[int]], bool],
    *,
    addends: list[Addend] | None = None,
    allow_transpose: bool = True,
) -> Tail:
    """Follow the product's sole consumers while the launch can compute them (see module
    docstring). ``fits(strides)`` says whether one more strided operand keeps the batch
    dimensions mergeable."""
    tail = Tail(output, addends=list(addends or []), out_shape=out_shape)
    while True:
        consumer = builder.sole_consumer(tail.output)
        if consumer is None or not consumer.outputs or not consumer.outputs[0]:
            break
        current = tail.output
        others = [n for n in consumer.inputs if n and n != current]
        ready = len(others) == 1 and (
            builder.is_host(others[0]) or others[0] in builder.tensors or others[0] in builder.views
        )
        plain = (
            not tail.addends
            and tail.activation[0] == 0
            and not tail.softmax
            and tail.out_strides is None
        )
        fused = False
        scalar = (
            _host_scalar(builder, others[0])
            if consumer.op in ("Mul", "Div") and len(others) == 1
            else None
        )
        if (
            scalar is not None
            and plain
            and len(consumer.inputs) == 2
            and (consumer.op == "Mul" or consumer.inputs[0] == current)
        ):
            if consumer.op == "Mul" or scalar != 0.0:
                tail.alpha *= scalar if consumer.op == "Mul" else 1.0 / scalar
                fused = True
        elif (
            consumer.op == "Mul"
            and tail.multiplier is None
            and len(tail.addends) < 2
            and tail.activation[0] == 0
            and not tail.softmax
            and not tail.reshaped
            and len(consumer.inputs) == 2
            and ready
            and builder.dtype(others[0]) == dtypes.FLOAT32
        ):
            strides, data = _tail_operand(builder, consumer, others[0], tail)
            if strides is not None and fits(strides):
                tail.multiplier = Addend(data, strides)
                tail.multiplier_first = not tail.addends
                fused = True
        elif (
            consumer.op == "Reshape"
            and consumer.inputs[0] == current
            and tail.out_strides is None
            and not tail.softmax
            and consumer.outputs[0] not in builder.placements
        ):
            shape = _reshaped(builder, consumer, tail.out_shape)
            if shape is not None:
                tail.out_shape = shape
                tail.reshaped = tail.reshaped or shape != out_shape
                fused = True
        elif (
            consumer.op == "Add"
            and tail.reshaped
            and len(tail.addends) < 2
            and tail.activation[0] == 0
            and len(consumer.inputs) == 2
            and ready
            and builder.dtype(others[0]) == dtypes.FLOAT32
            and builder.shape(others[0]) == tail.out_shape
            and others[0] not in builder.views
        ):
            tensor = builder.tensor(consumer, others[0])
            tail.addends.append(Addend(tensor.storage, list(contiguous_strides(out_shape))))
            fused = True
        elif (
            consumer.op == "Add"
            and not tail.reshaped
            and len(tail.addends) < 2
            and tail.activation[0] == 0
            and not tail.softmax
            and len(consumer.inputs) == 2
            and ready
            and builder.dtype(others[0]) == dtypes.FLOAT32
        ):
            strides, data = _tail_operand(builder, consumer, others[0], tail)
            if strides is not None and fits(strides):
                tail.addends.append(Addend(data, strides))
                fused = True
        elif (
            consumer.op in fusion.ACTIVATIONS
            and consumer.inputs[0] == current
            and tail.activation[0] == 0
            and not tail.softmax
            and tail.out_strides is None
            and fusion.activation_expression(builder, consumer) is not None
        ):
            tail.activation = fusion.activation_code(builder, consumer)
            fused = True
        elif (
            consumer.op == "Gelu"
            and tail.activation[0] == 0
            and not tail.softmax
            and tail.out_strides is None
            and str(consumer.attrs.get("approximate", "none")) in GELU_CODES
        ):
            tail.activation = (GELU_CODES[str(consumer.attrs.get("approximate", "none"))], 0, 0)
            fused = True
        elif (
            consumer.op == "Softmax"
            and not tail.reshaped
            and len(out_shape) >= 1
            and tail.activation[0] == 0
            and not tail.softmax
            and tail.out_strides is None
            and out_shape[-1] <= MATMUL_SOFTMAX_COLUMNS
            and builder.placements.get(consumer.outputs[0]) is None
        ):
            rank = len(out_shape)
            axis = int(consumer.attrs.get("axis", 1 if consumer.opset < 13 else -1))
            axis = axis + rank if axis < 0 else axis
            if axis == rank - 1:
                tail.softmax = True
                fused = True
        elif (
            consumer.op == "Transpose"
            and allow_transpose
            and tail.out_strides is None
            and not tail.reshaped
        ):
            rank = len(out_shape)
            perm = [int(p) for p in consumer.attrs.get("perm", list(range(rank - 1, -1, -1)))]
            transposed = tuple(out_shape[p] for p in perm)
            target = contiguous_strides(transposed)
            strides = [0] * rank
            for position, axis in enumerate(perm):
                strides[axis] = target[position]
            if fits(strides):
                tail.out_strides = strides
                tail.out_shape = transposed
                tail.perm = tuple(perm)
                fused = True
        if not fused:
            break
        builder.absorb(consumer)
        tail.output = consumer.outputs[0]
    return tail


def _broadcast_operand(
    builder: PlanBuilder, node: Node, name: str, out_shape: tuple[int, ...]
) -> tuple[list[int] | None, KernelArg]:
    """``name`` read broadcast to ``out_shape``: (strides, buffer), or (None, None) when it
    does not broadcast there or sits at an offset in its storage."""
    if len(builder.shape(name)) > len(out_shape):
        return None, None
    try:
        if tuple(np.broadcast_shapes(builder.shape(name), out_shape)) != out_shape:
            return None, None
    except ValueError:
        return None, None
    view = builder.views.get(name) or builder.strided(node, name)
    if view.offset:
        return None, None  # an offset operand: not worth a kernel argument
    return _broadcast_view(view, out_shape), view.storage


def _tail_operand(
    builder: PlanBuilder, node: Node, name: str, tail: Tail
) -> tuple[list[int] | None, KernelArg]:
    """An operand of a node in the tail, broadcast to the tail's current shape, with its
    strides over the product's own axes (permuted back through an absorbed Transpose)."""
    strides, data = _broadcast_operand(builder, node, name, tail.out_shape)
    if strides is None or not tail.perm:
        return strides, data
    original = [0] * len(tail.perm)
    for position, axis in enumerate(tail.perm):
        original[axis] = strides[position]
    return original, data


def _reshaped(builder: PlanBuilder, node: Node, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The output shape of a Reshape of a ``shape`` tensor, None when not constant."""
    if node.opset < 5 or len(node.inputs) < 2 or not builder.is_host(node.inputs[1]):
        return None
    requested = [int(d) for d in np.asarray(builder.host(node.inputs[1])).reshape(-1)]
    allow_zero = int(node.attrs.get("allowzero", 0))
    result = [shape[i] if d == 0 and not allow_zero else d for i, d in enumerate(requested)]
    total = int(np.prod(shape, dtype=np.int64))
    if result.count(-1) == 1:
        known = int(np.prod([d for d in result if d != -1], dtype=np.int64))
        if known == 0:
            return None
        result[result.index(-1)] = total // known
    if any(d < 0 for d in result) or int(np.prod(result, dtype=np.int64)) != total:
        return None
    return tuple(result)


def _mergeable(batch_shape: tuple[int, ...], stride_sets: list[list[int]]) -> bool:
    dims, _ = collapse(batch_shape, *stride_sets)
    return len(dims) <= 2


def _two_batch_dims(
    batch_shape: tuple[int, ...], stride_sets: list[list[int]]
) -> tuple[list[int], list[list[int]]]:
    dims, sets = collapse(batch_shape, *stride_sets)
    while len(dims) < 2:
        dims.insert(0, 1)
        sets = [[0, *s] for s in sets]
    return dims, sets


def matmul_launch(
    builder: PlanBuilder,
    node: Node,
    a: Operand,
    b: Operand,
    tail: Tail,
    *,
    batch_shape: tuple[int, ...],
    rows: int,
    cols: int,
    depth: int,
    full_out: tuple[int, ...],
    squeeze: tuple[int, ...],
    norm: Prologue | None = None,
) -> None:
    """Queue ``matmul_tiles`` writing ``tail.output``. ``full_out`` is (batch..., rows, cols);
    ``squeeze`` the axes of it that the graph's output shape leaves out (1-D operands);
    ``norm`` a LayerNormalization of A's rows to apply first."""
    output = builder.new_tensor(tail.output, tail.out_shape)
    if tail.out_strides is None:
        out_strides = list(contiguous_strides(full_out))
    else:
        out_strides = list(tail.out_strides)
        for axis in squeeze:
            out_strides.insert(axis, 0)

    def full(strides: list[int]) -> list[int]:
        result = list(strides)
        for axis in squeeze:
            result.insert(axis, 0)
        return result

    addends = [full(addend.strides) for addend in tail.addends]
    nb = len(batch_shape)
    zeros = [0] * (nb + 2)
    d_full = addends[0] if addends else zeros
    r_full = addends[1] if len(addends) > 1 else zeros
    m_full = full(tail.multiplier.strides) if tail.multiplier is not None else zeros
    sets = [a.batch, b.batch, out_strides[:nb], d_full[:nb], r_full[:nb], m_full[:nb]]
    dims, merged = _two_batch_dims(batch_shape, sets)
    a_b, b_b, c_b, d_b, r_b, m_b = merged
    d, r, m = d_full[nb:], r_full[nb:], m_full[nb:]
    # Batch dimensions that only repeat the row pattern (B shared, A, C and the addends
    # stepping by whole matrices) become rows: [65, 1, 96] x [96, 288] is one 65-row
    # product, not 65 products of one row in tiles of eight.
    a_si, c_si, d_si, r_si, m_si = a.first, out_strides[nb], d[0], r[0], m[0]
    while dims[1] > 1 and b_b[1] == 0:
        if rows == 1:  # one row: its stride is free to be the batch stride
            a_si, c_si, d_si, r_si, m_si = a_b[1], c_b[1], d_b[1], r_b[1], m_b[1]
        elif not (
            a_b[1] == rows * a_si
            and c_b[1] == rows * c_si
            and d_b[1] == rows * d_si
            and r_b[1] == rows * r_si
            and m_b[1] == rows * m_si
        ):
            break
        rows *= dims[1]
        dims = [1, dims[0]]
        a_b, b_b, c_b, d_b, r_b, m_b = ([0, x[0]] for x in (a_b, b_b, c_b, d_b, r_b, m_b))
    # Whatever batch dimension is left with B shared (a transposed output, ConvNeXt's 2x2
    # images) is folded into the rows when the rows do not fill 8-row tiles on their own.
    fold = 0
    if dims[1] > 1 and b_b[1] == 0 and rows % 8:
        fold, rows = rows, rows * dims[1]
        dims = [dims[0], 1]
    code, act_a, act_b = tail.activation
    blocks = -(-cols // 8)
    per_item = blocks if tail.softmax else min(MATMUL_COLUMN_BLOCKS, blocks)
    tile_rows = _tile_rows(
        rows,
        cols,
        paired=b.second == 1,
        columns_out=c_si == 1 and out_strides[nb + 1] != 1 and not fold,
        rows_along_k=norm is not None and a_si == 1 and not fold,
    )
    grid_rows, batches = -(-rows // tile_rows), dims[0] * dims[1]
    scratch: KernelArg = None
    if norm is not None:  # a tile of normalised rows per work-item, the most there can be
        scratch = builder.workspace(
            grid_rows * blocks * batches * tile_rows * depth * 4, f"{node.name} normalised rows"
        )
    builder.launch(
        node,
        (MATMUL_ALONG_K_DEFINE if b.first == 1 and b.second != 1 else "")
        + {8: SOURCE, 6: MATMUL_ROWS6_DEFINE + SOURCE, 4: MATMUL_ROWS4_DEFINE + SOURCE}[tile_rows],
        "matmul_tiles",
        [
            a.data,
            b.data,
            output.storage,
            tail.addends[0].data if tail.addends else None,
            tail.addends[1].data if len(tail.addends) > 1 else None,
            i32(rows),
            i32(cols),
            i32(depth),
            i32(dims[1]),
            i32(a.offset),
            i32(a_b[0]),
            i32(a_b[1]),
            i32(a_si),
            i32(a.second),
            i32(b.offset),
            i32(b_b[0]),
            i32(b_b[1]),
            i32(b.block or 8 * b.second),
            i32(b.first),
            i32(b.second),
            i32(0),
            i32(c_b[0]),
            i32(c_b[1]),
            i32(c_si),
            i32(out_strides[nb + 1]),
            i32(d_b[0]),
            i32(d_b[1]),
            i32(d_si),
            i32(d[1]),
            i32(r_b[0]),
            i32(r_b[1]),
            i32(r_si),
            i32(r[1]),
            f32(tail.alpha),
            i32(len(tail.addends) > 0),
            i32(len(tail.addends) > 1),
            i32(code),
            f32(act_a),
            f32(act_b),
            i32(tail.softmax),
            i32(per_item),
            tail.multiplier.data if tail.multiplier is not None else None,
            i32(m_b[0]),
            i32(m_b[1]),
            i32(m_si),
            i32(m[1]),
            i32(tail.multiplier is not None),
            i32(tail.multiplier_first),
            i32(fold),
            scratch,
            norm.scale if norm is not None else None,
            norm.bias if norm is not None else None,
            i32(norm is not None),
            i32(norm is not None and norm.bias is not None),
            f32(norm.epsilon if norm is not None else 0.0),
        ],
        grid=(grid_rows, -(-blocks // per_item), batches),
        local=(1, 1, 1),
        # how many column blocks a work-item takes is measured per device (tuning.py)
        variants=None if tail.softmax else _variants(blocks, grid_rows, batches, 40),
        tuning_shape=(batches, rows, cols, depth, int(code), tile_rows),
    )


def _tile_rows(rows: int, cols: int, *, paired: bool, columns_out: bool, rows_along_k: bool) -> int:
    """Rows of ``matmul_tiles``' register tile: 6 (with 16 columns at a time, the shape
    ``conv_gemm6`` has) where B's columns are contiguous and there are 16 of them, unless
    the output is stored by columns or the LayerNorm prologue reads 8 rows as lanes (both
    8-row forms), or 6-row tiles would compute more than 15% more rows than 8-row ones
    (8 rows: 12 for 8); 4 for products of at most 4 rows; else 8."""
    if rows <= 4:
        return 4
    if (
        paired
        and cols >= 16
        and not columns_out
        and not rows_along_k
        and -(-rows // 6) * 6 <= 1.15 * (-(-rows // 8) * 8)
    ):
        return 6
    return 8


def _variants(blocks: int, grid_rows: int, batches: int, position: int) -> list[Variant]:
    """Column blocks per work-item to choose from: powers of two up to all of them."""
    result: dict[int, Variant] = {}
    for per_item in (*TUNED_COLUMN_BLOCKS, blocks):
        per_item = min(per_item, blocks)
        groups = -(-blocks // per_item)
        result.setdefault(groups, Variant((grid_rows, groups, batches), position, per_item))
    return list(result.values())


#: Multiply-adds above which a right-hand operand whose columns are not contiguous (K^T
#: in attention) is packed into panels first: below it the kernel's gather of eight
#: strided columns per k step costs less than the packing launch (ViT's 65-token heads:
#: 121 us gathered, 38 us packed plus 5 us packing; GPT-2's 16-token heads at batch 8,
#: 2^17 multiply-adds, cost the same device time either way, and packing two more launches).
PACK_MACS = 1 << 18


def _packed_operand(
    builder: PlanBuilder,
    node: Node,
    operand: Operand,
    full: tuple[int, ...],
    full_out: tuple[int, ...],
    depth: int,
    cols: int,
) -> Operand:
    """``operand`` (B, element (k, j) at k*first + j*second) packed into panels, one set per
    batch index of B's own batch dimensions."""
    from meshgpu.inference.opencl.lower_linear import pack_device

    nb = len(full_out) - 2
    own = [1] * (nb - (len(full) - 2)) + list(full[:-2])
    offsets = [
        operand.offset + sum(i * s for i, s in zip(index, operand.batch, strict=True))
        for index in np.ndindex(*own)
    ]
    assert isinstance(operand.data, Storage)
    packed = pack_device(
        builder,
        node,
        DeviceTensor(operand.data, tuple(full)),
        offsets,
        cols,
        depth,
        operand.second,
        operand.first,
    )
    panel = -(-cols // 8) * 8 * depth
    steps = contiguous_strides(own)
    batch = [0 if size == 1 else step * panel for size, step in zip(own, steps, strict=True)]
    return Operand(packed, 0, batch, 8, 1, 8 * depth)


def _operand(
    builder: PlanBuilder,
    node: Node,
    name: str,
    full: tuple[int, ...],
    vector_axis: int | None,
    view: View | None = None,
) -> Operand:
    """A device (or uploaded constant) operand read through strides (``view`` if given);
    ``full`` is its shape with a 1-D operand promoted (``vector_axis``: where the 1 was
    inserted)."""
    view = view or builder.strided(node, name)
    strides = list(view.strides)
    if vector_axis is not None:
        strides.insert(vector_axis, 0)
    shape = list(full)
    strides = [0 if size == 1 else stride for size, stride in zip(shape, strides, strict=True)]
    return Operand(view.storage, view.offset, strides[:-2], strides[-2], strides[-1])


@lowers("MatMul")
def lower_matmul(builder: PlanBuilder, node: Node) -> None:
    """numpy.matmul semantics: 1-D promotion and broadcast batch dimensions."""
    from meshgpu.inference.opencl import lower_linear

    if not _lower_product(builder, node, node.inputs[0]):
        lower_linear.lower_matmul_packed(builder, node)


def lower_normalized_product(
    builder: PlanBuilder, norm_node: Node, scale: KernelArg, bias: KernelArg
) -> bool:
    """Lower a LayerNormalization over the last axis together with the MatMul (or Gemm)
    that alone reads it, maybe through a Reshape that keeps the last axis, by constant 2-D
    weights (ConvNeXt's and GPT-2's norms before a Linear): one launch instead of two.
    False (nothing done) when they do not fit that."""
    from meshgpu.inference.opencl import lower_linear

    a_name = norm_node.inputs[0]
    a_shape = builder.shape(a_name)
    read = norm_node.outputs[0]
    product = builder.sole_consumer(read)
    view: View | None = None
    between: tuple[Node, ...] = ()
    if (
        product is not None
        and product.op == "Reshape"
        and product.inputs[0] == read
        and product.outputs[0]
        and a_name not in builder.views
        and not builder.is_host(a_name)
    ):
        shape = _reshaped(builder, product, tuple(a_shape))
        if shape is None or len(shape) < 2 or shape[-1] != a_shape[-1]:
            return False
        tensor = builder.tensor(norm_node, a_name)
        view = View(tensor.storage, shape, contiguous_strides(shape), 0, tensor.dtype)
        between, read, a_shape = (product,), product.outputs[0], shape
        product = builder.sole_consumer(read)
    if (
        product is None
        or product.op not in ("MatMul", "Gemm")
        or product.inputs[0] != read
        or product.inputs[1] == read
        or scale is None
    ):
        return False
    b_name = product.inputs[1]
    b_shape = builder.shape(b_name)
    if (
        len(a_shape) < 2
        or len(b_shape) != 2
        or not builder.is_host(b_name)
        or builder.dtype(a_name) != dtypes.FLOAT32
        or builder.dtype(b_name) != dtypes.FLOAT32
    ):
        return False
    norm = Prologue(scale, bias, float(norm_node.attrs.get("epsilon", 1e-5)), between)
    if product.op == "MatMul":
        return a_shape[-1] == b_shape[0] and _lower_product(builder, product, a_name, norm, view)
    # Gemm: only where lower_gemm takes the strided product (not gemm_rows, not transA)
    trans_b = int(product.attrs.get("transB", 0))
    depth, cols = (b_shape[1], b_shape[0]) if trans_b else b_shape
    beta = float(product.attrs.get("beta", 1.0))
    c_name = product.inputs[2] if len(product.inputs) > 2 and product.inputs[2] else None
    rows = a_shape[0]
    if (
        len(a_shape) != 2
        or int(product.attrs.get("transA", 0))
        or depth != a_shape[1]
        or not (c_name is None or beta == 0.0 or builder.is_host(c_name) or beta == 1.0)
        or lower_linear._reads_rows_in_place(builder, read, b_name, rows, depth, cols)
    ):
        return False
    alpha = float(product.attrs.get("alpha", 1.0)) * builder.operand_scales.get(b_name, 1.0)
    panels = lower_linear._panels(
        builder, product, b_name, cols, depth, (1, cols) if not trans_b else (depth, 1)
    )
    for node in (*between, product):
        builder.absorb(node)
    lower_gemm_strided(
        builder, product, panels, rows, cols, depth, alpha, beta, 0, a_view=view, norm=norm
    )
    return True


def _lower_product(
    builder: PlanBuilder,
    node: Node,
    a_name: str,
    norm: Prologue | None = None,
    a_view: View | None = None,
) -> bool:
    """``node`` (a MatMul) with ``a_name`` as its left operand (the input of the norm
    ``norm`` computes first, if given; read as ``a_view`` if given) through
    ``matmul_tiles``; False, with nothing launched or absorbed, for what the packed path
    handles instead."""
    from meshgpu.inference.opencl import lower_linear

    b_name = node.inputs[1]
    a_shape = a_view.shape if a_view is not None else builder.shape(a_name)
    b_shape = builder.shape(b_name)
    if not a_shape or not b_shape:
        return False
    a_full = (1, *a_shape) if len(a_shape) == 1 else a_shape
    b_full = (*b_shape, 1) if len(b_shape) == 1 else b_shape
    rows, depth = a_full[-2:]
    depth_b, cols = b_full[-2:]
    try:
        batch_shape = tuple(np.broadcast_shapes(a_full[:-2], b_full[:-2]))
    except ValueError:
        batch_shape = None
    if (
        depth != depth_b
        or batch_shape is None
        or rows * cols * depth == 0
        or builder.dtype(a_name) != dtypes.FLOAT32
        or builder.dtype(b_name) != dtypes.FLOAT32
        or (builder.is_host(a_name) and builder.is_host(b_name))
    ):
        return False  # the packed path: its errors and corner cases
    nb = len(batch_shape)
    full_out = (*batch_shape, rows, cols)
    squeeze: list[int] = []
    out_shape = list(full_out)
    if len(b_shape) == 1:
        squeeze.append(len(full_out) - 1)
    if len(a_shape) == 1:
        squeeze.append(len(full_out) - 2)
    for axis in sorted(squeeze, reverse=True):
        out_shape.pop(axis)
    squeeze.sort()

    def aligned(shape: tuple[int, ...], strides: list[int]) -> list[int]:
        shift = len(full_out) - len(shape)
        return [0] * shift + strides

    # B: constant 2-D weights become panels; anything else is read in place.
    b_packed = builder.is_host(b_name) and len(b_full) == 2
    a_op = _operand(builder, node, a_name, a_full, 0 if len(a_shape) == 1 else None, a_view)
    a_op.batch = aligned(a_full, a_op.batch)
    if b_packed:
        panels = lower_linear._panels(builder, node, b_name, cols, depth, (1, cols))
        b_op = Operand(panels, 0, [0] * nb, 8, 1, 8 * depth)
    else:
        b_op = _operand(
            builder, node, b_name, b_full, len(b_full) - 1 if len(b_shape) == 1 else None
        )
        b_op.batch = aligned(b_full, b_op.batch)
        if (
            b_op.second != 1
            and b_op.first == 1
            and int(np.prod(batch_shape, dtype=np.int64)) * rows * cols * depth >= PACK_MACS
        ):
            b_op = _packed_operand(builder, node, b_op, b_full, full_out, depth, cols)
    base_sets = [a_op.batch, b_op.batch, list(contiguous_strides(full_out))[:nb]]
    if not _mergeable(batch_shape, base_sets):
        return False
    if norm is not None:
        for absorbed in (*norm.between, node):
            builder.absorb(absorbed)
    chosen: list[list[int]] = []

    def fits(strides: list[int]) -> bool:
        padded = list(strides)
        for axis in squeeze:
            padded.insert(axis, 0)
        if not _mergeable(batch_shape, [*base_sets, *chosen, padded[:nb]]):
            return False
        chosen.append(padded[:nb])
        return True

    tail = collect_tail(
        builder, node, node.outputs[0], tuple(out_shape), fits, allow_transpose=not squeeze
    )
    # Operands left unscaled by a Mul before them (elementwise._scale_through_gemm).
    tail.alpha *= builder.operand_scales.get(a_name, 1.0) * builder.operand_scales.get(b_name, 1.0)
    matmul_launch(
        builder,
        node,
        a_op,
        b_op,
        tail,
        batch_shape=batch_shape,
        rows=rows,
        cols=cols,
        depth=depth,
        full_out=full_out,
        squeeze=tuple(squeeze),
        norm=norm,
    )
    return True


def lower_gemm_strided(
    builder: PlanBuilder,
    node: Node,
    weight_panels: KernelArg,
    rows: int,
    cols: int,
    depth: int,
    alpha: float,
    beta: float,
    trans_a: int,
    *,
    a_view: View | None = None,
    norm: Prologue | None = None,
) -> None:
    """Gemm of a device activation A' (read in place, transposed through strides; as
    ``a_view`` if given, normalised first by ``norm``) with constant weights
    (``weight_panels``); C (times beta) is the first addend."""
    view = a_view or builder.strided(node, node.inputs[0])
    a_si, a_sk = view.strides if not trans_a else (view.strides[1], view.strides[0])
    a_op = Operand(view.storage, view.offset, [], a_si, a_sk)
    b_op = Operand(weight_panels, 0, [], 8, 1, 8 * depth)
    out_shape = (rows, cols)
    addends: list[Addend] = []
    c_name = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    if c_name is not None and beta != 0.0:
        c_shape = builder.shape(c_name)
        if builder.is_host(c_name):
            values = np.asarray(builder.host(c_name), dtype=np.float64) * beta
            key: tuple[object, ...] = ("gemm-c", c_name, beta)
            if c_name not in builder.static:
                key = (*key, id(builder))
            data = builder.weight(key, lambda: values.astype(np.float32))
            c_view = View(data, tuple(c_shape), contiguous_strides(c_shape))
        else:
            c_view = builder.strided(node, c_name)
        strides = _broadcast_view(c_view, out_shape)
        if strides is None or c_view.offset:
            tensor = builder.tensor(node, c_name)
            c_view = View(tensor.storage, tuple(c_shape), contiguous_strides(c_shape))
            strides = _broadcast_view(c_view, out_shape)
        assert strides is not None
        addends.append(Addend(c_view.storage, strides))
    tail = collect_tail(
        builder, node, node.outputs[0], out_shape, lambda strides: True, addends=addends
    )
    tail.alpha *= alpha
    matmul_launch(
        builder,
        node,
        a_op,
        b_op,
        tail,
        batch_shape=(),
        rows=rows,
        cols=cols,
        depth=depth,
        full_out=out_shape,
        squeeze=(),
        norm=norm,
    )
