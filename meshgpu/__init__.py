"""meshgpu: pool a lab's GPU machines for ONNX inference, with no fixed coordinator."""

from typing import Any

from meshgpu.errors import MeshError

__version__ = "0.1.0"

__all__ = ["Client", "MeshError", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): `meshgpu.Client` pulls in trio and numpy, which `meshgpu --help`
    # and the sans-IO core should not pay for.
    if name == "Client":
        from meshgpu.client import Client

        return Client
    raise AttributeError(f"module 'meshgpu' has no attribute {name!r}")
