"""Epilogue fusion: which following nodes a producing kernel can compute for free.

After a Conv, Gemm, MatMul or a per-channel affine, the chain of sole consumers is followed:
BatchNormalization (inference) and Mul/Add/Sub/Div by per-channel constants fold into a
per-channel ``scale``/``shift`` (for Conv they are then folded into the weights and bias, as
every inference engine does); an Add/Sum with a same-shaped device tensor becomes a residual
read in the epilogue (ResNet's shortcut); Relu, LeakyRelu, Clip, Sigmoid or Tanh becomes the
epilogue's activation and ends the chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from meshgpu.inference.opencl.graph import Node, legacy_broadcast_shape
from meshgpu.inference.opencl.kernels.activations import clamp, leaky_relu, relu
from meshgpu.inference.opencl.plan import PlanBuilder
from meshgpu.inference.opencl.registry import float_literal
from meshgpu.inference.opencl.tensors import DeviceTensor


@dataclass
class Epilogue:
    """Result of fusion: y = ACT(x * scale + shift [+ residual]) written to ``output``."""

    output: str
    scale: np.ndarray
    shift: np.ndarray
    activation: str = ""
    #: The activation as (code, a, b) for kernels that take it at run time (see ACTIVATIONS).
    activation_code: tuple[int, float, float] = (0, 0.0, 0.0)
    residual: DeviceTensor | None = None
    absorbed: list[Node] = field(default_factory=list)

    @property
    def is_identity_affine(self) -> bool:
        return bool(np.all(self.scale == 1.0) and np.all(self.shift == 0.0))

    def act_define(self) -> str:
        """``#define ACT(v)`` line for the kernel source (identity when no activation)."""
        return f"#define ACT(v) ({self.activation or 'v'})\n"


#: Run-time activation codes understood by ``apply_activation`` in the GEMM source.
ACTIVATIONS = {"": 0, "Relu": 1, "LeakyRelu": 2, "Clip": 3, "Sigmoid": 4, "Tanh": 5}


def activation_code(builder: PlanBuilder, node: Node) -> tuple[int, float, float]:
    """(code, a, b) for an activation node that activation_expression accepted."""
    if node.op == "LeakyRelu":
        return ACTIVATIONS["LeakyRelu"], float(node.attrs.get("alpha", 0.01)), 0.0
    if node.op == "Clip":
        low, high = clip_bounds(builder, node) or (-np.inf, np.inf)
        return ACTIVATIONS["Clip"], low, high
    return ACTIVATIONS[node.op], 0.0, 0.0


def activation_expression(builder: PlanBuilder, node: Node) -> str | None:
    """The OpenCL expression in ``v`` for an activation node, or None if not fusable."""
    if node.op == "Relu":
        return relu("v")
    if node.op == "LeakyRelu":
        alpha = float_literal(float(node.attrs.get("alpha", 0.01)))
        return leaky_relu("v", alpha)
    if node.op == "Sigmoid":
        return "1.0f / (1.0f + exp(-(v)))"
    if node.op == "Tanh":
        return "tanh(v)"
    # Swish (SiLU), Gelu, HardSigmoid and HardSwish stay separate launches: in a GEMM
    # epilogue they ran one element at a time, and the vectorised unary kernel after the
    # GEMM was faster (EfficientNet-B0 kernels 219 ms against 472 ms with SiLU fused,
    # MobileNetV3 12-15 ms against 27-28 ms with HardSwish fused; interleaved runs)
    if node.op == "Clip":
        bounds = clip_bounds(builder, node)
        if bounds is None:
            return None
        low, high = (float_literal(bound) for bound in bounds)
        return clamp("v", low, high)
    return None


def clip_bounds(builder: PlanBuilder, node: Node) -> tuple[float, float] | None:
    """Clip's (min, max): attributes before opset 11, optional inputs from 11."""
    if node.opset < 11:
        return float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf))
    bounds = [-np.inf, np.inf]
    for position in (1, 2):
        if len(node.inputs) > position and node.inputs[position]:
            name = node.inputs[position]
            if not builder.is_host(name):
                return None
            bounds[position - 1] = float(np.asarray(builder.host(name)).reshape(-1)[0])
    return bounds[0], bounds[1]


def per_channel(value: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """``value`` as a vector over ``shape[axis]`` if it broadcasts along that axis only."""
    value = np.asarray(value)
    if value.ndim > len(shape):
        return None
    padded = (1,) * (len(shape) - value.ndim) + value.shape
    for dim, (size, full) in enumerate(zip(padded, shape, strict=True)):
        if dim == axis:
            if size not in (1, full):
                return None
        elif size != 1:
            return None
    return np.broadcast_to(value.reshape(-1), (shape[axis],)).astype(np.float64)


def _batchnorm_affine(builder: PlanBuilder, node: Node) -> tuple[np.ndarray, np.ndarray] | None:
    if len([o for o in node.outputs if o]) != 1:
        return None
    if node.opset < 9 and int(node.attrs.get("spatial", 1)) == 0:
        return None  # per-activation statistics (spatial=0) are not a per-channel affine
    params = node.inputs[1:5]
    if len(params) != 4 or not all(builder.is_host(name) for name in params):
        return None
    gamma, beta, mean, var = (np.asarray(builder.host(n), dtype=np.float64) for n in params)
    epsilon = float(node.attrs.get("epsilon", 1e-5))
    scale = gamma / np.sqrt(var + epsilon)
    return scale.reshape(-1), (beta - mean * scale).reshape(-1)


def collect(
    builder: PlanBuilder,
    output: str,
    shape: tuple[int, ...],
    axis: int,
    *,
    allow_affine: bool = True,
    allow_scale: bool = True,
    allow_residual: bool = True,
) -> Epilogue:
    """Follow sole consumers of ``output`` and fuse what the epilogue can compute."""
    if not shape:  # a scalar: fused as a one-element vector
        shape, axis = (1,), 0
    channels = shape[axis]
    epilogue = Epilogue(output, np.ones(channels), np.zeros(channels))
    while True:
        consumer = builder.sole_consumer(epilogue.output)
        if consumer is None or not consumer.outputs or not consumer.outputs[0]:
            break
        current = epilogue.output
        others = [n for n in consumer.inputs if n and n != current]
        fused = False
        if (
            consumer.op == "BatchNormalization"
            and allow_affine
            and allow_scale
            and not epilogue.activation
        ):
            if epilogue.residual is None and consumer.inputs[0] == current:
                affine = _batchnorm_affine(builder, consumer)
                if affine is not None and affine[0].size == channels:
                    _apply(epilogue, *affine)
                    fused = True
        elif (
            consumer.op in (("Mul", "Add", "Sub", "Div") if allow_scale else ("Add", "Sub"))
            and allow_affine
            and not epilogue.activation
            and epilogue.residual is None
            and len(consumer.inputs) == 2
            and consumer.inputs.count(current) == 1
            and len(others) == 1
            and builder.is_host(others[0])
        ):
            first = consumer.inputs[0] == current
            constant = np.asarray(builder.host(others[0]))
            legacy = consumer.opset < 7 and int(consumer.attrs.get("broadcast", 0))
            if legacy and first:
                constant = constant.reshape(
                    legacy_broadcast_shape(consumer, len(shape), constant.shape)
                )
            vector = None if legacy and not first else per_channel(constant, shape, axis)
            if vector is not None:
                fused = True
                if consumer.op == "Mul":
                    _apply(epilogue, vector, np.zeros(channels))
                elif consumer.op == "Add":
                    _apply(epilogue, np.ones(channels), vector)
                elif consumer.op == "Sub" and first:
                    _apply(epilogue, np.ones(channels), -vector)
                elif consumer.op == "Sub" and allow_scale:
                    _apply(epilogue, -np.ones(channels), vector)
                elif consumer.op == "Div" and first:
                    _apply(epilogue, 1.0 / vector, np.zeros(channels))
                else:
                    fused = False
        elif (
            consumer.op in ("Add", "Sum")
            and allow_residual
            and not epilogue.activation
            and epilogue.residual is None
            and len(consumer.inputs) == 2
            and len(others) == 1
            and others[0] in builder.tensors
            and not builder.is_host(others[0])
            and builder.tensors[others[0]].shape == shape
        ):
            epilogue.residual = builder.tensors[others[0]]
            fused = True
        elif not epilogue.activation and consumer.inputs[0] == current:
            expression = activation_expression(builder, consumer)
            if expression is not None:
                epilogue.activation = expression
                epilogue.activation_code = activation_code(builder, consumer)
                fused = True
        if not fused:
            break
        epilogue.absorbed.append(consumer)
        builder.absorb(consumer)
        epilogue.output = consumer.outputs[0]
    return epilogue


def _apply(epilogue: Epilogue, scale: np.ndarray, shift: np.ndarray) -> None:
    epilogue.scale = epilogue.scale * scale
    epilogue.shift = epilogue.shift * scale + shift
