"""meshgpu: pool a lab's GPU machines for ONNX inference, with no fixed coordinator."""

from meshgpu.errors import MeshError

__version__ = "0.1.0"

__all__ = ["MeshError", "__version__"]
