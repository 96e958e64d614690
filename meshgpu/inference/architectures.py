"""The nine real architectures the ``onnx`` package ships, made runnable with seeded weights.

``onnx/backend/test/data/light`` holds ResNet-50, VGG-19, DenseNet-121, Inception v1/v2,
ShuffleNet, SqueezeNet, AlexNet and ZFNet-512 with every weight replaced by a
``ConstantOfShape`` node (zeros of the right shape) to keep the package small. Zeros test
nothing, so :func:`seeded_architecture` swaps each one for a seeded random initializer of the
same shape, scaled by the role its consumer gives it so that activations neither vanish nor
explode through 50+ layers:

- convolution and fully-connected weights: He init, variance 2 / fan_in (He et al. 2015,
  "Delving Deep into Rectifiers"), drawn uniformly;
- biases, BatchNormalization shifts and means: uniform in [-0.1, 0.1];
- BatchNormalization scales and variances, and the per-channel scales of the models that
  spell BatchNormalization as Unsqueeze/Mul/Add: uniform in [0.8, 1.2].

The conformance tests and ``bench/inference.py`` share this module so that both measure the
same models. Batch sizes above 1 also rewrite the constant shapes of Reshape nodes, whose
leading 1 is the batch dimension in these exports.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ARCHITECTURES = (
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
)

# Ops that only move a weight along to its real consumer.
_PASS_THROUGH = {"Unsqueeze", "Reshape", "Identity", "Squeeze", "Flatten"}


def light_model_path(name: str) -> Path:
    """The path of ``light_<name>.onnx`` inside the installed onnx package."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {ARCHITECTURES}")
    return Path(onnx.__file__).resolve().parent / "backend/test/data/light" / f"light_{name}.onnx"


def _consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    found: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for node in graph.node:
        for index, name in enumerate(node.input):
            found[name].append((node, index))
    return found


def _role(
    name: str, consumers: dict[str, list[tuple[onnx.NodeProto, int]]]
) -> tuple[str, onnx.NodeProto | None]:
    """What the tensor is for: (op_type:input_index of its first real consumer, that node)."""
    seen = 0
    while seen < 8:  # weights pass through at most a couple of reshaping ops
        users = consumers.get(name, [])
        if not users:
            return ("unused", None)
        node, index = users[0]
        if node.op_type not in _PASS_THROUGH or index != 0:
            return (f"{node.op_type}:{index}", node)
        name = node.output[0]
        seen += 1
    return ("unknown", None)


def _he_uniform(shape: tuple[int, ...], fan_in: int, rng: np.random.Generator) -> np.ndarray:
    """He init with a uniform draw: U(-a, a), a = sqrt(6 / fan_in), variance 2 / fan_in.

    Uniform rather than normal because drawing VGG-19's 143 M weights is several times
    faster, with the same variance (PyTorch's ``kaiming_uniform_`` makes the same choice).
    """
    bound = np.float32(np.sqrt(6.0 / max(fan_in, 1)))
    weight = rng.random(shape, dtype=np.float32)
    weight *= 2 * bound
    weight -= bound
    return weight


def _random_weight(
    shape: tuple[int, ...], role: str, node: onnx.NodeProto | None, rng: np.random.Generator
) -> np.ndarray:
    if role == "Conv:1":
        return _he_uniform(shape, int(np.prod(shape[1:])), rng)
    if role == "Gemm:1" and node is not None:
        trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
        # B is [K, N], or [N, K] with transB; some exports store it 4-D and Reshape it
        return _he_uniform(shape, shape[-1] if trans_b else shape[-2], rng)
    if role == "MatMul:1":
        return _he_uniform(shape, shape[-2], rng)
    if role in ("BatchNormalization:1", "BatchNormalization:4", "Mul:1", "Mul:0"):
        return rng.uniform(0.8, 1.2, shape).astype(np.float32)
    return rng.uniform(-0.1, 0.1, shape).astype(np.float32)


def _residual_branch_scales(graph: onnx.GraphProto) -> set[str]:
    """Weights to scale down so that activations keep their size through the network.

    Two places grow activations under plain He init. (1) A convolution fed by a stride-1
    max pool (Inception's pool-projection branches): the max of 9 post-ReLU values has about
    twice their RMS, and nine modules compound it. (2) Residual sums, below.

    (2) A residual block adds its branch to its input; if the branch keeps the input's variance
    (as He init makes it), the sum doubles the variance at every block and 16 blocks of
    ResNet-50 grow activations ~2^8-fold. Scaling the last BN of each branch down (the
    zero-init-gamma trick of Goyal et al. 2017, "Accurate, Large Minibatch SGD", softened to
    0.2) keeps the growth small. A Sum whose two inputs both come from BN is a projection
    block: it doubles the variance once per stage, so it is left alone.
    """
    producers = {output: node for node in graph.node for output in node.output}
    damped: set[str] = set()
    for node in graph.node:
        source = producers.get(node.input[0]) if node.input else None
        if node.op_type == "Conv" and source is not None and source.op_type == "MaxPool":
            strides = [list(a.ints) for a in source.attribute if a.name == "strides"]
            if strides and all(stride == 1 for stride in strides[0]):
                damped.add(node.input[1])
    for node in graph.node:
        if node.op_type not in ("Sum", "Add") or len(node.input) != 2:
            continue
        sources = [producers.get(name) for name in node.input]
        from_bn = [s for s in sources if s is not None and s.op_type == "BatchNormalization"]
        if len(from_bn) == 1 and all(s is not None for s in sources):
            damped.add(from_bn[0].input[1])
    return damped


_FLOAT_WEIGHT_ROLES = {
    "Conv:1",
    "Conv:2",
    "Gemm:1",
    "Gemm:2",
    "MatMul:1",
    "BatchNormalization:1",
    "BatchNormalization:2",
    "BatchNormalization:3",
    "BatchNormalization:4",
    "Mul:0",
    "Mul:1",
    "Add:0",
    "Add:1",
}

RESIDUAL_DAMPING = 0.2


def seeded_architecture(
    name: str, seed: int = 0, batch: int = 1, expose_logits: bool = True
) -> onnx.ModelProto:
    """``light_<name>`` with seeded random weights, for ``batch`` images at once.

    Every weight is replaced: the ConstantOfShape placeholders and also the few small float
    initializers the files keep with trained values (BatchNormalization statistics of some
    layers, e.g. ShuffleNet's variances of 6e-14, which only make sense with the trained
    weights and blow random activations up a millionfold).

    With ``expose_logits`` the tensor entering the final Softmax is added as a second graph
    output, so a comparison checks the logits too: a softmax over 1000 classes squashes
    every probability near 1e-3 and would hide errors an order of magnitude larger.
    """
    model = onnx.load(str(light_model_path(name)))
    graph = model.graph
    logits_info = None
    softmax = [node for node in graph.node if node.op_type == "Softmax"]
    if expose_logits and softmax and softmax[-1].output[0] in {o.name for o in graph.output}:
        logits_info = _logits_value_info(model, softmax[-1].input[0], batch)
    rng = np.random.default_rng(seed)
    consumers = _consumers(graph)
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    damped = _residual_branch_scales(graph)

    kept_nodes: list[onnx.NodeProto] = []
    weights: dict[str, np.ndarray] = {}
    shape_tensors: set[str] = set()
    for node in graph.node:
        source = node.input[0] if node.input else ""
        if node.op_type != "ConstantOfShape" or source not in initializers:
            kept_nodes.append(node)
            continue
        shape = tuple(int(d) for d in numpy_helper.to_array(initializers[source]))
        weights[node.output[0]] = _seeded_weight(node.output[0], shape, consumers, damped, rng)
        shape_tensors.add(source)
    for tensor in graph.initializer:
        role, _ = _role(tensor.name, consumers)
        if tensor.data_type == onnx.TensorProto.FLOAT and role in _FLOAT_WEIGHT_ROLES:
            shape = tuple(int(d) for d in tensor.dims)
            weights[tensor.name] = _seeded_weight(tensor.name, shape, consumers, damped, rng)

    still_used = {name for node in kept_nodes for name in node.input}
    dropped = {name for name in shape_tensors if name not in still_used}
    remaining = [t for t in graph.initializer if t.name not in dropped and t.name not in weights]
    if batch != 1:
        constants = set(weights) | {t.name for t in remaining}
        remaining = [_rebatched_reshape_shape(t, kept_nodes, constants, batch) for t in remaining]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.initializer[:]
    graph.initializer.extend(remaining)
    for weight_name, weight in weights.items():
        # Filled in place: building TensorProtos first and extending would copy every
        # weight twice more (seconds for VGG-19).
        tensor = graph.initializer.add()
        tensor.name = weight_name
        tensor.data_type = onnx.TensorProto.FLOAT
        tensor.dims.extend(weight.shape)
        tensor.raw_data = weight.tobytes()
    # IR 3 lists every initializer among the inputs; IR 4 (still opset 9) lets weights be
    # plain constants, which is what they are here.
    model.ir_version = max(model.ir_version, 4)
    initialized = {t.name for t in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initialized | dropped]
    del graph.input[:]
    graph.input.extend(inputs)
    for value in [*graph.input, *graph.output]:
        if value.type.tensor_type.shape.dim:
            value.type.tensor_type.shape.dim[0].dim_value = batch
    del graph.value_info[:]

    if logits_info is not None:
        graph.output.append(logits_info)
    return model


def _seeded_weight(
    name: str,
    shape: tuple[int, ...],
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]],
    damped: set[str],
    rng: np.random.Generator,
) -> np.ndarray:
    role, consumer = _role(name, consumers)
    weight = _random_weight(shape, role, consumer, rng)
    if name in damped:
        weight *= RESIDUAL_DAMPING
    return weight


def _logits_value_info(model: onnx.ModelProto, logits: str, batch: int) -> onnx.ValueInfoProto:
    """The inferred type of ``logits``, inferred on the weightless original (which is fast)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    for value in inferred.graph.value_info:
        if value.name == logits:
            typed = onnx.ValueInfoProto()
            typed.CopyFrom(value)
            typed.type.tensor_type.shape.dim[0].dim_value = batch
            return typed
    raise ValueError(f"shape inference could not type the logits tensor {logits!r}")


def _rebatched_reshape_shape(
    tensor: onnx.TensorProto, nodes: list[onnx.NodeProto], constants: set[str], batch: int
) -> onnx.TensorProto:
    """The target shape of a Reshape of activations, its leading 1 (the batch) made ``batch``.

    Reshapes of weights (their data input is a constant) keep their shape.
    """
    if not any(
        node.op_type == "Reshape"
        and node.input[1] == tensor.name
        and node.input[0] not in constants
        for node in nodes
    ):
        return tensor
    shape = numpy_helper.to_array(tensor).copy()
    if shape.ndim == 1 and shape.size and shape[0] == 1:
        shape[0] = batch
    return numpy_helper.from_array(shape, tensor.name)


def architecture_feeds(model: onnx.ModelProto, seed: int = 1) -> dict[str, np.ndarray]:
    """Seeded standard-normal images for every non-initializer input of ``model``."""
    rng = np.random.default_rng(seed)
    initialized = {tensor.name for tensor in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initialized:
            continue
        shape = tuple(dim.dim_value for dim in value.type.tensor_type.shape.dim)
        feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds
