"""Model metadata for the protocol, read from the ONNX graph: each input and output with
its datatype and shape (``-1`` for a symbolic or unknown dimension), platform
``onnx_onnxv1``. Initializers listed among a graph's inputs (older exporters do that) are
weights, not inputs, and are left out. An output declared without a type or shape (which
onnxruntime runs) is described as ONNX shape inference finds it; one whose rank even
inference cannot find is ``[-1]``, the protocol having no notation for an unknown rank."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshgpu.http.v2 import ONNX_DATATYPES

PLATFORM = "onnx_onnxv1"


@dataclass(frozen=True)
class CatalogModel:
    """One model the node can serve by name."""

    name: str
    version: str
    digest: str
    """sha256 of the ONNX bytes: the model store's key."""


def _tensor(value: Any) -> dict[str, Any]:
    kind = value.type.tensor_type
    dims = [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in kind.shape.dim
    ]
    if not kind.HasField("shape"):
        dims = [-1]  # rank unknown: an empty shape would say "a scalar"
    return {
        "name": value.name,
        "datatype": ONNX_DATATYPES.get(kind.elem_type, f"ONNX_{kind.elem_type}"),
        "shape": dims,
    }


@dataclass(frozen=True)
class ModelInfo:
    """What the protocol says of one model file, and how its feeds are checked."""

    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    spec: Any
    """``meshgpu.inference.model.InputSpec``: checks feeds with the client's messages."""
    defaulted: frozenset[str] = frozenset()
    """Graph inputs with a default value (``meshgpu.inference.model.defaulted_inputs``)."""

    def check_feeds(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """The feeds, checked as the client library checks them (an InputError says why)."""
        from meshgpu.inference.model import validate_feeds

        return validate_feeds(self.spec, feeds, self.defaulted)


def _typed_outputs(proto: Any) -> list[Any]:
    """The graph's outputs, those declared without a type or shape completed by shape
    inference (on the model's skeleton: its large weights are not copied)."""
    import onnx

    from meshgpu.inference.model import skeleton, untyped_output

    outputs = list(proto.graph.output)
    if not any(untyped_output(value) for value in outputs):
        return outputs
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(proto))
    except (onnx.shape_inference.InferenceError, RuntimeError):
        return outputs  # the model was checked when added; described as declared
    known = {value.name: value for value in [*inferred.graph.value_info, *inferred.graph.output]}
    completed = []
    for value in outputs:
        found = known.get(value.name)
        if untyped_output(value) and found is not None and found.type.WhichOneof("value"):
            value = found
        completed.append(value)
    return completed


def read_model_info(path: Path) -> ModelInfo:
    import onnx

    from meshgpu.inference.model import defaulted_inputs, graph_inputs

    proto = onnx.load(str(path), load_external_data=False)
    weights = {init.name for init in proto.graph.initializer}
    return ModelInfo(
        inputs=[_tensor(v) for v in proto.graph.input if v.name not in weights],
        outputs=[_tensor(v) for v in _typed_outputs(proto)],
        spec=graph_inputs(proto),
        defaulted=defaulted_inputs(proto),
    )
