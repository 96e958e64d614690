"""Lowering of Gemm and MatMul, and the GEMM launch every matrix product shares.

Gemm, MatMul and Conv (:mod:`.lower_conv`) all end in the 8x8 register-blocked GEMM of
:mod:`.kernels.gemm`. Constant operands (weights) are packed into panels once per session;
device operands are packed by a kernel (for Conv that packing *is* im2col).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from meshgpu.errors import ModelError
from meshgpu.inference.opencl import fusion
from meshgpu.inference.opencl.graph import Node
from meshgpu.inference.opencl.kernels import CORE_SOURCE
from meshgpu.inference.opencl.kernels.gemm import (
    GEMM_COLUMN_BLOCKS,
    PANEL,
    SMALL_N_ROWS,
)
from meshgpu.inference.opencl.plan import PlanBuilder
from meshgpu.inference.opencl.registry import f32, i32, int_array, lowers
from meshgpu.inference.opencl.tensors import DeviceTensor, KernelArg, Storage


def pack_host(matrix: np.ndarray) -> np.ndarray:
    """[batch, rows, K] -> panels [batch, ceil(rows/8), K, 8], zero-padded."""
    batch, rows, depth = matrix.shape
    blocks = -(-rows // PANEL)
    padded = np.zeros((batch, blocks * PANEL, depth), dtype=np.float32)
    padded[:, :rows] = matrix
    return np.ascontiguousarray(padded.reshape(batch, blocks, PANEL, depth).transpose(0, 1, 3, 2))


def pack_device(
    builder: PlanBuilder,
    node: Node,
    source: DeviceTensor,
    offsets: list[int],
    rows: int,
    depth: int,
    row_stride: int,
    depth_stride: int,
) -> Storage:
    """Kernel-pack a strided device matrix (one per offset) into panels; returns workspace."""
    blocks = -(-rows // PANEL)
    total = len(offsets) * blocks * depth
    packed = builder.workspace(total * PANEL * 4, f"{node.name} packed operand")
    offsets_buffer = builder.weight(("offsets", tuple(offsets)), lambda: int_array(offsets))
    builder.launch(
        node,
        CORE_SOURCE,
        "pack_panels",
        [
            source.storage,
            packed,
            offsets_buffer,
            i32(rows),
            i32(depth),
            i32(row_stride),
            i32(depth_stride),
            i32(blocks),
            i32(total),
            i32(PANEL),
        ],
        total=total,
    )
    return packed


def gemm_launch(
    builder: PlanBuilder,
    node: Node,
    epilogue: fusion.Epilogue,
    a_panels: KernelArg,
    b_panels: KernelArg,
    output: Storage,
    bias: KernelArg,
    *,
    batch: int,
    m: int,
    n: int,
    k: int,
    a_batch_stride: int,
    b_batch_stride: int,
    pixels: int,
    s_batch: int,
    s_image: int,
    s_m: int,
    s_p: int,
    bias_strides: tuple[int, int, int] = (0, 0, 0),
    alpha: float = 1.0,
    beta: float = 1.0,
    out_offset: int = 0,
) -> None:
    """Queue the GEMM with its fused epilogue (bias, residual, activation)."""
    column_blocks = -(-n // PANEL)
    residual = epilogue.residual.storage if epilogue.residual is not None else None
    code, act_a, act_b = epilogue.activation_code
    builder.launch(
        node,
        CORE_SOURCE,
        "gemm_8x8",
        [
            a_panels,
            b_panels,
            output,
            bias,
            residual,
            i32(m),
            i32(n),
            i32(k),
            i32(a_batch_stride),
            i32(b_batch_stride),
            i32(pixels),
            i32(out_offset),
            i32(s_batch),
            i32(s_image),
            i32(s_m),
            i32(s_p),
            i32(bias_strides[0]),
            i32(bias_strides[1]),
            i32(bias_strides[2]),
            f32(alpha),
            f32(beta),
            i32(bias is not None),
            i32(residual is not None),
            i32(code),
            f32(act_a),
            f32(act_b),
        ],
        grid=(-(-column_blocks // GEMM_COLUMN_BLOCKS), -(-m // PANEL), batch),
        local=(1, 1, 1),
    )


#: Widest product whose rows ``gemm_rows`` normalises itself for a following Softmax: the
#: fused launch is one work-item, so wide layers (1000 classes) keep the parallel product.
SOFTMAX_COLUMNS = 64


def gemm_rows_launch(
    builder: PlanBuilder,
    node: Node,
    epilogue: fusion.Epilogue,
    weight_panels: KernelArg,
    activation: DeviceTensor,
    activation_strides: tuple[int, int],
    bias: KernelArg,
    *,
    m: int,
    n: int,
    k: int,
    bias_strides: tuple[int, int],
    alpha: float = 1.0,
    beta: float = 1.0,
) -> Storage:
    """Queue ``gemm_rows``: a product with at most SMALL_N_ROWS activation rows that reads
    the activation in place (element (row, k) at ``row*strides[0] + k*strides[1]``) instead of
    packing it first. At batch 1 the packing launch cost as much as the product (digits:
    three Gemms, three packing launches). Creates the (n, m) output tensor (the epilogue's,
    or a fused Softmax's) and returns its storage."""
    residual = epilogue.residual.storage if epilogue.residual is not None else None
    code, act_a, act_b = epilogue.activation_code
    softmax = _fusible_softmax(builder, epilogue.output) if m <= SOFTMAX_COLUMNS else None
    if softmax is not None:
        builder.absorb(softmax)
    output = builder.new_tensor(
        softmax.outputs[0] if softmax is not None else epilogue.output, (n, m)
    ).storage
    builder.launch(
        node,
        CORE_SOURCE,
        "gemm_rows",
        [
            weight_panels,
            activation.storage,
            output,
            bias,
            residual,
            i32(m),
            i32(n),
            i32(k),
            i32(activation_strides[0]),
            i32(activation_strides[1]),
            i32(0),
            i32(1),
            i32(m),
            i32(bias_strides[0]),
            i32(bias_strides[1]),
            f32(alpha),
            f32(beta),
            i32(bias is not None),
            i32(residual is not None),
            i32(code),
            f32(act_a),
            f32(act_b),
            i32(softmax is not None),
        ],
        grid=(1,) if softmax is not None else (-(-m // PANEL),),
        local=(1,),
    )
    return output


def _fusible_softmax(builder: PlanBuilder, name: str) -> Node | None:
    """The Softmax that alone reads the 2-D product ``name`` along its rows, if any: the
    product's launch normalises the rows itself (digits: its last launch)."""
    consumer = builder.sole_consumer(name)
    if consumer is None or consumer.op != "Softmax" or len(consumer.outputs) != 1:
        return None
    if builder.placements.get(consumer.outputs[0]) is not None:
        return None
    axis = int(consumer.attrs.get("axis", 1 if consumer.opset < 13 else -1))
    return consumer if axis in (1, -1) else None


#: Most multiply-adds a ``gemm_rows`` product of 2..8 rows may do. It rereads the weight
#: panels once per row: one row beats pack + ``gemm_8x8`` at every size measured (9216x4096:
#: 11.9 vs 16.9 ms CPU), 8 rows win while the weights stay in cache (256x256: 0.55 vs
#: 0.80 ms) and lose beyond (512x512: 0.66 vs 0.20 ms; 4096x4096: 13.3 vs 7.7 ms).
SMALL_PRODUCT_MACS = 1 << 19


def _reads_rows_in_place(
    builder: PlanBuilder, activation: str, weights: str, rows: int, depth: int, cols: int
) -> bool:
    """Whether a product takes ``gemm_rows``: constant weights and one activation row, or
    up to SMALL_N_ROWS rows of a small product (where the packing launch costs most)."""
    if builder.is_host(activation) or not builder.is_host(weights) or depth <= 0:
        return False
    return rows == 1 or (0 < rows <= SMALL_N_ROWS and rows * depth * cols <= SMALL_PRODUCT_MACS)


def _operand_strides(shape: tuple[int, ...]) -> list[int]:
    strides = [0] * len(shape)
    running = 1
    for axis in range(len(shape) - 1, -1, -1):
        strides[axis] = running if shape[axis] != 1 else 0
        running *= shape[axis]
    return strides


@lowers("Gemm")
def lower_gemm(builder: PlanBuilder, node: Node) -> None:
    """Y = alpha * A' B' + beta * C. Weights (B, usually constant) become the M side."""
    a_name, b_name = node.inputs[0], node.inputs[1]
    trans_a = int(node.attrs.get("transA", 0))
    trans_b = int(node.attrs.get("transB", 0))
    alpha = float(node.attrs.get("alpha", 1.0))
    # An operand left unscaled by a Mul before it (elementwise._scale_through_gemm).
    alpha *= builder.operand_scales.get(a_name, 1.0) * builder.operand_scales.get(b_name, 1.0)
    beta = float(node.attrs.get("beta", 1.0))
    a_shape, b_shape = builder.shape(a_name), builder.shape(b_name)
    if len(a_shape) != 2 or len(b_shape) != 2:
        raise ModelError(f"{node.describe()}: Gemm needs 2-D inputs, got {a_shape}, {b_shape}")
    rows, depth = (a_shape[1], a_shape[0]) if trans_a else a_shape
    depth_b, cols = (b_shape[1], b_shape[0]) if trans_b else b_shape
    if depth != depth_b:
        raise ModelError(f"{node.describe()}: inner dimensions differ ({a_shape} x {b_shape})")
    out_shape = (rows, cols)
    c_name = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    bias: KernelArg = None
    bias_strides = (0, 0, 0)
    if c_name is not None and beta != 0.0:
        c_shape = builder.shape(c_name)
        if len(c_shape) > 2 or np.broadcast_shapes(c_shape, out_shape) != out_shape:
            raise ModelError(f"{node.describe()}: C of shape {c_shape} does not broadcast")
        strides = _operand_strides((1,) * (2 - len(c_shape)) + tuple(c_shape))
        bias = builder.tensor(node, c_name).storage
        bias_strides = (0, strides[1], strides[0])
    # M side: columns of Y, from B'; N side: rows of Y, from A'.
    m_panels = _panels(builder, node, b_name, cols, depth, (1, cols) if not trans_b else (depth, 1))
    in_place = _reads_rows_in_place(builder, a_name, b_name, rows, depth, cols)
    if (
        not in_place
        and not builder.is_host(a_name)
        and builder.is_host(b_name)
        and (c_name is None or beta == 0.0 or builder.is_host(c_name) or beta == 1.0)
    ):
        from meshgpu.inference.opencl import lower_matmul

        lower_matmul.lower_gemm_strided(
            builder, node, m_panels, rows, cols, depth, alpha, beta, trans_a
        )
        return
    epilogue = fusion.collect(builder, node.outputs[0], out_shape, 1, allow_affine=False)
    if in_place:
        activation = builder.tensor(node, a_name)
        gemm_rows_launch(
            builder,
            node,
            epilogue,
            m_panels,
            activation,
            (depth, 1) if not trans_a else (1, rows),
            bias,
            m=cols,
            n=rows,
            k=depth,
            bias_strides=(bias_strides[1], bias_strides[2]),
            alpha=alpha,
            beta=beta,
        )
        return
    n_panels = _panels(builder, node, a_name, rows, depth, (depth, 1) if not trans_a else (1, rows))
    output = builder.new_tensor(epilogue.output, out_shape)
    gemm_launch(
        builder,
        node,
        epilogue,
        m_panels,
        n_panels,
        output.storage,
        bias,
        batch=1,
        m=cols,
        n=rows,
        k=depth,
        a_batch_stride=0,
        b_batch_stride=0,
        pixels=max(rows, 1),
        s_batch=0,
        s_image=0,
        s_m=1,
        s_p=cols,
        bias_strides=bias_strides,
        alpha=alpha,
        beta=beta,
    )


def _panels(
    builder: PlanBuilder,
    node: Node,
    name: str,
    rows: int,
    depth: int,
    strides: tuple[int, int],
    offsets: list[int] | None = None,
) -> KernelArg:
    """Panels of a 2-D operand (element (r, k) at r*strides[0] + k*strides[1])."""
    offsets = offsets or [0]
    if builder.is_host(name):
        source = np.asarray(builder.host(name), dtype=np.float32).reshape(-1)

        def make() -> np.ndarray:
            matrices = [
                np.lib.stride_tricks.as_strided(
                    source[offset:],
                    shape=(rows, depth),
                    strides=(strides[0] * 4, strides[1] * 4),
                )
                for offset in offsets
            ]
            return pack_host(np.stack(matrices))

        key: tuple[Any, ...] = ("panels", name, rows, depth, strides, tuple(offsets))
        if name not in builder.static:
            key = (*key, id(builder))  # a per-plan constant: never shared between plans
        panels: KernelArg = builder.weight(key, make)
        return panels
    tensor = builder.tensor(node, name)
    return pack_device(builder, node, tensor, offsets, rows, depth, strides[0], strides[1])


def lower_matmul_packed(builder: PlanBuilder, node: Node) -> None:
    """MatMul through packed panels and ``gemm_8x8`` (numpy.matmul semantics: 1-D promotion
    and broadcast batch dimensions): the products :mod:`.lower_matmul` does not take."""
    a_name, b_name = node.inputs
    a_shape, b_shape = builder.shape(a_name), builder.shape(b_name)
    if not a_shape or not b_shape:
        raise ModelError(f"{node.describe()}: MatMul of a scalar")
    a_full = (1, *a_shape) if len(a_shape) == 1 else a_shape
    b_full = (*b_shape, 1) if len(b_shape) == 1 else b_shape
    rows, depth = a_full[-2:]
    depth_b, cols = b_full[-2:]
    if depth != depth_b:
        raise ModelError(f"{node.describe()}: inner dimensions differ ({a_shape} x {b_shape})")
    try:
        batch_shape = tuple(np.broadcast_shapes(a_full[:-2], b_full[:-2]))
    except ValueError as error:
        raise ModelError(f"{node.describe()}: batch dimensions do not broadcast") from error
    out_full = (*batch_shape, rows, cols)
    out_shape = list(out_full)
    if len(b_shape) == 1:
        out_shape.pop(-1)
    if len(a_shape) == 1:
        out_shape.pop(-2 if len(b_shape) != 1 else -1)
    batch = int(np.prod(batch_shape)) if batch_shape else 1
    epilogue = fusion.collect(
        builder,
        node.outputs[0],
        tuple(out_shape) or (1,),  # a vector dot product: fuse as on one element
        max(len(out_shape) - 1, 0),
        allow_affine=len(b_shape) != 1,
        allow_scale=False,
    )
    bias: KernelArg = None
    if not epilogue.is_identity_affine:
        key = ("matmul-bias", node.name, tuple(n.name for n in epilogue.absorbed))
        bias = builder.weight(key, lambda: epilogue.shift.astype(np.float32))

    def offsets(shape: tuple[int, ...]) -> tuple[list[int], int]:
        own = shape[:-2]
        matrix = shape[-2] * shape[-1]
        if int(np.prod(own or (1,))) == 1:
            return [0], 0
        padded = (1,) * (len(batch_shape) - len(own)) + own
        strides = _operand_strides(padded)
        result = []
        for index in np.ndindex(*batch_shape):
            result.append(sum(i * s for i, s in zip(index, strides, strict=True)) * matrix)
        return result, 1

    a_offsets, a_batched = offsets(a_full)
    b_offsets, b_batched = offsets(b_full)
    m_panels = _panels(builder, node, b_name, cols, depth, (1, cols), b_offsets)
    n_panels = _panels(builder, node, a_name, rows, depth, (depth, 1), a_offsets)
    m_blocks, n_blocks = -(-cols // PANEL), -(-rows // PANEL)
    output = builder.new_tensor(epilogue.output, out_shape)
    gemm_launch(
        builder,
        node,
        epilogue,
        m_panels,
        n_panels,
        output.storage,
        bias,
        batch=batch,
        m=cols,
        n=rows,
        k=depth,
        a_batch_stride=b_batched * m_blocks * PANEL * depth,
        b_batch_stride=a_batched * n_blocks * PANEL * depth,
        pixels=max(rows, 1),
        s_batch=rows * cols,
        s_image=0,
        s_m=1,
        s_p=cols,
        bias_strides=(0, 1, 0),
        # operands left unscaled by a Mul before them (elementwise._scale_through_gemm)
        alpha=builder.operand_scales.get(a_name, 1.0) * builder.operand_scales.get(b_name, 1.0),
    )
