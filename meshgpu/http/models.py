"""Model metadata for the protocol, read from the ONNX graph: each input and output with
its datatype and shape (``-1`` for a symbolic or unknown dimension), platform
``onnx_onnxv1``. Initializers listed among a graph's inputs (older exporters do that) are
weights, not inputs, and are left out."""

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


def read_model_info(path: Path) -> ModelInfo:
    import onnx

    from meshgpu.inference.model import defaulted_inputs, graph_inputs

    proto = onnx.load(str(path), load_external_data=False)
    weights = {init.name for init in proto.graph.initializer}
    return ModelInfo(
        inputs=[_tensor(v) for v in proto.graph.input if v.name not in weights],
        outputs=[_tensor(v) for v in proto.graph.output],
        spec=graph_inputs(proto),
        defaulted=defaulted_inputs(proto),
    )
