"""Squeeze-and-excitation blocks: the gate (1x1 Conv, activation, 1x1 Conv, HardSigmoid or
Sigmoid on a pooled ``[N, C, 1, 1]`` vector) as one ``excitation_gate`` launch, and the
Mul that scales the feature map by it as ``channel_scale`` (kernels in
:mod:`.kernels.excitation`). The pool in front is usually computed by the depthwise launch
(:mod:`.lower_depthwise`), so a block of MobileNetV3 or EfficientNet runs as three launches
where its graph has eight nodes or more.
"""

from __future__ import annotations

import numpy as np

from meshgpu.inference.opencl import fusion
from meshgpu.inference.opencl.graph import Node
from meshgpu.inference.opencl.kernels.elementwise import UNARY_EXPRESSIONS, unary_parameters
from meshgpu.inference.opencl.kernels.excitation import EXCITATION_SOURCE, GATE_GROUP
from meshgpu.inference.opencl.kernels.vectors import VECTOR_SOURCE
from meshgpu.inference.opencl.plan import PlanBuilder
from meshgpu.inference.opencl.registry import f32, i32

#: Activations of the gate's hidden layer (torchvision: ReLU in MobileNetV3, SiLU in
#: EfficientNet) and of its output.
HIDDEN_ACTIVATIONS = ("Relu", "Swish", "HardSwish")
GATE_ACTIVATIONS = ("HardSigmoid", "Sigmoid")


def _pointwise_weight(builder: PlanBuilder, conv: Node, channels: int) -> np.ndarray | None:
    """The ``[M, channels]`` matrix of a 1x1 Conv without padding on a 1x1 map, else None."""
    if conv.op != "Conv" or len(conv.inputs) < 2 or not builder.is_host(conv.inputs[1]):
        return None
    if int(conv.attrs.get("group", 1)) != 1 or any(int(p) for p in conv.attrs.get("pads", [])):
        return None
    if (conv.attrs.get("auto_pad", "NOTSET") or "NOTSET") not in ("NOTSET", "VALID"):
        return None
    if len(conv.inputs) > 2 and conv.inputs[2] and not builder.is_host(conv.inputs[2]):
        return None
    weight = np.asarray(builder.host(conv.inputs[1]), dtype=np.float32)
    if weight.ndim != 4 or weight.shape[1:] != (channels, 1, 1):
        return None
    return weight.reshape(weight.shape[0], channels)


def _bias(builder: PlanBuilder, conv: Node, size: int) -> np.ndarray:
    if len(conv.inputs) > 2 and conv.inputs[2]:
        return np.asarray(builder.host(conv.inputs[2]), dtype=np.float32).reshape(size)
    return np.zeros(size, np.float32)


def _activation(node: Node) -> tuple[str, float, float]:
    return (UNARY_EXPRESSIONS[node.op], *unary_parameters(node.op, node.attrs))


def lower_gate(builder: PlanBuilder, node: Node) -> bool:
    """For the first Conv of a squeeze-excitation gate: queue ``excitation_gate`` for the
    whole gate and absorb its other three nodes; False (nothing queued) for any other
    Conv."""
    name = node.inputs[0]
    if name not in builder.tensors:
        return False
    x = builder.tensors[name]
    if len(x.shape) != 4 or x.shape[2:] != (1, 1) or x.dtype != np.float32:
        return False
    batch, channels = x.shape[:2]
    first = _pointwise_weight(builder, node, channels)
    if first is None or not node.outputs[0]:
        return False
    hidden = first.shape[0]
    act1 = builder.sole_reader(node.outputs[0], HIDDEN_ACTIVATIONS)
    second_conv = builder.sole_reader(act1.outputs[0], ("Conv",)) if act1 else None
    second = _pointwise_weight(builder, second_conv, hidden) if second_conv else None
    if act1 is None or second_conv is None or second is None or second.shape[0] != channels:
        return False
    act2 = builder.sole_reader(second_conv.outputs[0], GATE_ACTIVATIONS)
    if act2 is None:
        return False
    for absorbed in (act1, second_conv, act2):
        builder.absorb(absorbed)
    (expression1, alpha1, beta1), (expression2, alpha2, beta2) = map(_activation, (act1, act2))
    key = ("excitation", node.name)
    w1 = builder.weight((*key, "w1"), lambda: first)
    b1 = builder.weight((*key, "b1"), lambda: _bias(builder, node, hidden))
    w2 = builder.weight((*key, "w2"), lambda: second)
    b2 = builder.weight((*key, "b2"), lambda: _bias(builder, second_conv, channels))
    gate = builder.new_tensor(act2.outputs[0], (batch, channels, 1, 1))
    defines = (
        f"#define SE_ACT1(x) ({expression1})\n#define SE_ACT2(x) ({expression2})\n"
        f"#define SE_C {channels}\n#define SE_R {hidden}\n#define SE_GROUP {GATE_GROUP}\n"
    )
    builder.launch(
        node,
        VECTOR_SOURCE + defines + EXCITATION_SOURCE,
        "excitation_gate",
        [x.storage, w1, b1, w2, b2, gate.storage, *map(f32, (alpha1, beta1, alpha2, beta2))],
        grid=(batch * GATE_GROUP,),
        local=(GATE_GROUP,),
    )
    return True


def lower_channel_scale(builder: PlanBuilder, node: Node) -> bool:
    """A float Mul of a ``[N, C, H, W]`` device tensor by a ``[N, C, 1, 1]`` one (either
    order, opset 7 broadcasting): ``channel_scale``; False (nothing queued) otherwise."""
    if node.op != "Mul" or len(node.inputs) != 2 or not node.outputs[0]:
        return False
    if node.opset < 7 or any(name not in builder.tensors for name in node.inputs):
        return False
    a, b = (builder.tensors[name] for name in node.inputs)
    if len(b.shape) == 4 and b.shape[2:] == (1, 1) and a.shape != b.shape:
        x, scale = a, b
    else:
        x, scale = b, a
    if (
        len(x.shape) != 4
        or scale.shape != (x.shape[0], x.shape[1], 1, 1)
        or x.dtype != np.float32
        or scale.dtype != np.float32
    ):
        return False
    epilogue = fusion.collect(
        builder, node.outputs[0], x.shape, 0, allow_affine=False, allow_residual=False
    )
    output = builder.new_tensor(epilogue.output, x.shape)
    plane = x.shape[2] * x.shape[3]
    blocks = -(-plane // 8)
    total = x.shape[0] * x.shape[1] * blocks
    builder.launch(
        node,
        VECTOR_SOURCE + epilogue.act_define() + _SCALE_PREFIX + EXCITATION_SOURCE,
        "channel_scale",
        [x.storage, scale.storage, output.storage, i32(plane), i32(blocks), i32(total)],
        total=total,
    )
    return True


#: ``channel_scale`` shares its program's source with ``excitation_gate``, whose
#: activations it does not use.
_SCALE_PREFIX = "#define SE_ACT1(x) (x)\n#define SE_ACT2(x) (x)\n#define SE_C 8\n#define SE_R 8\n"
_SCALE_PREFIX += f"#define SE_GROUP {GATE_GROUP}\n"
