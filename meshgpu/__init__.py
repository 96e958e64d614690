"""meshgpu: pool a lab's GPU machines for ONNX inference, with no fixed coordinator."""

import importlib
from typing import Any

from meshgpu.errors import MeshError

__version__ = "0.1.0"

__all__ = ["Client", "MeshError", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): `meshgpu.Client` pulls in trio and numpy, which `meshgpu --help`
    # and the sans-IO core should not pay for. Imported by name so that a type check of
    # the core (which imports this package) does not follow it into the client.
    if name == "Client":
        return importlib.import_module("meshgpu.client").Client
    raise AttributeError(f"module 'meshgpu' has no attribute {name!r}")
