"""Subgraphs exporters emit for one operation, rewritten to that operation before planning.

torch's exporter writes SiLU as ``x * sigmoid(x)``, GELU as ``x * 0.5 * (1 + erf(x / sqrt
2))`` before opset 20 (GPT-2's tanh approximation as its cubic polynomial), and LayerNorm
as ``ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div`` (then ``Mul`` and ``Add`` by the
affine weights) before opset 17. Run as written they are two to nine launches with a
tensor written and reread between each; rewritten, one ``Swish``, ``Gelu`` or
``LayerNormalization`` node, which the lowerings run as one kernel. A pattern matches only
when every intermediate tensor is read inside the pattern alone (not a graph output, no
other reader) and its constants are the values the formula needs (within float32
rounding), so a lookalike with other constants is left as written.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from meshgpu.inference.opencl.graph import Graph, Node


class _Index:
    """Producers and readers of every tensor of a graph."""

    def __init__(self, graph: Graph, constants: dict[str, np.ndarray]) -> None:
        self.constants = constants
        self.outputs = set(graph.outputs)
        self.producer: dict[str, Node] = {}
        self.readers: dict[str, list[Node]] = {}
        for node in graph.nodes:
            for name in node.outputs:
                if name:
                    self.producer[name] = node
            for name in node.inputs:
                if name:
                    self.readers.setdefault(name, []).append(node)

    def scalar(self, name: str) -> float | None:
        value = self.constants.get(name)
        if value is None or np.asarray(value).size != 1 or np.asarray(value).dtype.kind != "f":
            return None
        return float(np.asarray(value).reshape(-1)[0])

    def only_reader(self, name: str, op: str) -> Node | None:
        """The sole reader of ``name`` if it is an ``op`` and ``name`` is internal."""
        readers = self.readers.get(name, [])
        if name in self.outputs or len(readers) != 1 or readers[0].op != op:
            return None
        return readers[0]

    def internal(self, name: str, count: int = 1) -> bool:
        return name not in self.outputs and len(self.readers.get(name, [])) == count

    def other(self, node: Node, name: str) -> str | None:
        """The input of a binary ``node`` that is not ``name``."""
        if len(node.inputs) != 2 or name not in node.inputs:
            return None
        first, second = node.inputs
        return second if first == name else first

    def by_constant(self, node: Node, name: str, value: float, tolerance: float = 1e-4) -> bool:
        """``node`` combines ``name`` with a scalar constant equal to ``value``."""
        other = self.other(node, name)
        constant = self.scalar(other) if other else None
        return constant is not None and math.isclose(constant, value, rel_tol=tolerance)


def _gelu_erf(index: _Index, erf: Node) -> tuple[list[Node], str, str] | None:
    """(matched nodes, x, y) for ``0.5 * x * (1 + erf(x / sqrt 2))`` around ``erf``."""
    scaled = erf.inputs[0]
    head = index.producer.get(scaled)
    if head is None or not index.internal(scaled):
        return None
    if head.op == "Div" and head.inputs[1:] and index.scalar(head.inputs[1]) is not None:
        if not math.isclose(index.scalar(head.inputs[1]) or 0, math.sqrt(2), rel_tol=1e-4):
            return None
        x = head.inputs[0]
    elif head.op == "Mul":
        x = next((n for n in head.inputs if index.scalar(n) is None), "")
        if not x or not index.by_constant(head, x, 1 / math.sqrt(2)):
            return None
    else:
        return None
    tail = _gelu_tail(index, erf, x)
    return ([head, *tail[0]], x, tail[1]) if tail else None


def _gelu_tail(index: _Index, inner: Node, x: str) -> tuple[list[Node], str] | None:
    """(matched nodes from ``inner`` on, y) for ``0.5 * x * (1 + inner)`` in either
    multiplication order; ``inner`` is the Erf or Tanh node."""
    plus = index.only_reader(inner.outputs[0], "Add")
    if plus is None or not index.by_constant(plus, inner.outputs[0], 1.0):
        return None
    times = index.only_reader(plus.outputs[0], "Mul")
    if times is None:
        return None
    partner = index.other(times, plus.outputs[0])
    if partner == x:  # x * (1 + erf) then * 0.5
        half = index.only_reader(times.outputs[0], "Mul")
        if half is None or not index.by_constant(half, times.outputs[0], 0.5):
            return None
        return [inner, plus, times, half], half.outputs[0]
    halving = index.producer.get(partner or "")
    if (
        partner
        and halving is not None
        and halving.op == "Mul"
        and x in halving.inputs
        and index.by_constant(halving, x, 0.5)
        and index.internal(partner)
    ):  # (x * 0.5) * (1 + erf)
        return [halving, inner, plus, times], times.outputs[0]
    return None


def _gelu_tanh(index: _Index, tanh: Node) -> tuple[list[Node], str, str] | None:
    """(matched nodes, x, y) for GPT-2's ``0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715
    * x^3)))`` around ``tanh``."""
    scaled = index.producer.get(tanh.inputs[0])
    if scaled is None or scaled.op != "Mul" or not index.internal(tanh.inputs[0]):
        return None
    total = next((n for n in scaled.inputs if index.scalar(n) is None), "")
    if not total or not index.by_constant(scaled, total, math.sqrt(2 / math.pi)):
        return None
    plus = index.producer.get(total)
    if plus is None or plus.op != "Add" or not index.internal(total):
        return None
    for x in plus.inputs:
        cubic_term = index.other(plus, x)
        weighted = index.producer.get(cubic_term or "")
        if weighted is None or weighted.op != "Mul" or not index.internal(cubic_term or ""):
            continue
        cube = next((n for n in weighted.inputs if index.scalar(n) is None), "")
        if not cube or not index.by_constant(weighted, cube, 0.044715):
            continue
        power = index.producer.get(cube)
        if (
            power is None
            or power.op != "Pow"
            or power.inputs[0] != x
            or not index.by_constant(power, x, 3.0)
            or not index.internal(cube)
        ):
            continue
        tail = _gelu_tail(index, tanh, x)
        if tail:
            return [power, weighted, plus, scaled, *tail[0]], x, tail[1]
    return None


def _silu(index: _Index, sigmoid: Node) -> tuple[list[Node], str, str] | None:
    """(matched nodes, x, y) for ``x * sigmoid(x)`` (SiLU, EfficientNet's and YOLO's
    activation) around ``sigmoid``."""
    x = sigmoid.inputs[0]
    times = index.only_reader(sigmoid.outputs[0], "Mul")
    if times is None or index.other(times, sigmoid.outputs[0]) != x:
        return None
    return [sigmoid, times], x, times.outputs[0]


def _reduce_axes(index: _Index, node: Node) -> list[int] | None:
    if node.opset >= 18:
        if len(node.inputs) < 2 or node.inputs[1] not in index.constants:
            return None
        return [int(a) for a in np.asarray(index.constants[node.inputs[1]]).reshape(-1)]
    axes = node.attrs.get("axes")
    return [int(a) for a in axes] if axes is not None else None


def _layer_norm(index: _Index, mean: Node) -> tuple[list[Node], dict[str, object]] | None:
    """The decomposed LayerNorm starting at the first ReduceMean."""
    axes = _reduce_axes(index, mean)
    if not axes or any(a >= 0 for a in axes) or int(mean.attrs.get("keepdims", 1)) != 1:
        return None
    if sorted(axes) != list(range(-len(axes), 0)):
        return None
    x = mean.inputs[0]
    centre = index.only_reader(mean.outputs[0], "Sub")
    if centre is None or centre.inputs != (x, mean.outputs[0]):
        return None
    centred = centre.outputs[0]
    readers = index.readers.get(centred, [])
    if centred in index.outputs or len(readers) != 2:
        return None
    square = next((n for n in readers if n.op in ("Pow", "Mul")), None)
    divide = next((n for n in readers if n.op == "Div"), None)
    if square is None or divide is None or divide.inputs[0] != centred:
        return None
    if square.op == "Pow" and not index.by_constant(square, centred, 2.0):
        return None
    if square.op == "Mul" and square.inputs != (centred, centred):
        return None
    variance = index.only_reader(square.outputs[0], "ReduceMean")
    if variance is None or _reduce_axes(index, variance) != axes:
        return None
    if int(variance.attrs.get("keepdims", 1)) != 1:
        return None
    shift = index.only_reader(variance.outputs[0], "Add")
    epsilon = index.scalar(index.other(shift, variance.outputs[0]) or "") if shift else None
    if shift is None or epsilon is None:
        return None
    root = index.only_reader(shift.outputs[0], "Sqrt")
    if root is None or index.only_reader(root.outputs[0], "Div") is not divide:
        return None
    nodes = [mean, centre, square, variance, shift, root, divide]
    output, scale, bias = divide.outputs[0], "", ""
    times = index.only_reader(output, "Mul")
    if times is not None and index.other(times, output) in index.constants:
        scale, output = index.other(times, output) or "", times.outputs[0]
        nodes.append(times)
        plus = index.only_reader(output, "Add")
        if plus is not None and index.other(plus, output) in index.constants:
            bias, output = index.other(plus, output) or "", plus.outputs[0]
            nodes.append(plus)
    return nodes, {
        "x": x,
        "scale": scale,
        "bias": bias,
        "output": output,
        "axis": min(axes),
        "epsilon": epsilon,
    }


def fuse_patterns(graph: Graph, constants: dict[str, np.ndarray]) -> Graph:
    """``graph`` with the GELU and LayerNorm subgraphs rewritten to single nodes; new
    constants (a LayerNorm without affine weights gets a scale of one) go to
    ``constants``."""
    index = _Index(graph, constants)
    replaced: dict[int, Node] = {}
    removed: set[int] = set()  # ids of the nodes a fused node stands for
    positions = {id(node): position for position, node in enumerate(graph.nodes)}

    def claim(nodes: list[Node], fused: Node) -> None:
        ids = [id(n) for n in nodes]
        if any(i in removed for i in ids):
            return
        last = max(positions[i] for i in ids)
        for i in ids:
            removed.add(i)
        replaced[last] = fused

    def gelu(node: Node) -> None:
        found = _gelu_erf(index, node)
        if found:
            nodes, x, y = found
            fused = Node(
                "Gelu", (x,), (y,), {"approximate": "none"}, f"{node.name} (GELU)", node.opset
            )
            claim(nodes, fused)

    def layer_norm(node: Node) -> None:
        found = _layer_norm(index, node)
        if not found:
            return
        nodes, parts = found
        scale = str(parts["scale"])
        if not scale:
            scale = f"{node.name}/unit_scale"
            constants[scale] = np.ones((), np.float32)
        inputs = (str(parts["x"]), scale, str(parts["bias"]))
        attrs = {"axis": parts["axis"], "epsilon": parts["epsilon"]}
        fused = Node(
            "LayerNormalization",
            inputs,
            (str(parts["output"]),),
            attrs,
            f"{node.name} (LayerNorm)",
            node.opset,
        )
        claim(nodes, fused)

    def gelu_tanh(node: Node) -> None:
        found = _gelu_tanh(index, node)
        if found:
            nodes, x, y = found
            attrs = {"approximate": "tanh"}
            fused = Node("Gelu", (x,), (y,), attrs, f"{node.name} (GELU)", node.opset)
            claim(nodes, fused)

    def silu(node: Node) -> None:
        found = _silu(index, node)
        if found:
            nodes, x, y = found
            fused = Node("Swish", (x,), (y,), {"alpha": 1.0}, f"{node.name} (SiLU)", node.opset)
            claim(nodes, fused)

    matchers: list[tuple[str, Callable[[Node], None]]] = [
        ("Sigmoid", silu),
        ("Erf", gelu),
        ("Tanh", gelu_tanh),
        ("ReduceMean", layer_norm),
    ]
    for node in graph.nodes:
        for op, matcher in matchers:
            if node.op == op:
                matcher(node)
    if not replaced:
        return graph
    nodes = []
    for position, node in enumerate(graph.nodes):
        if position in replaced:
            nodes.append(replaced[position])
        elif id(node) not in removed:
            nodes.append(node)
    return Graph(
        nodes=nodes,
        inputs=graph.inputs,
        outputs=graph.outputs,
        constants=graph.constants,
        opset=graph.opset,
        host_inputs=graph.host_inputs,
    )
