"""OpenCL C sources of the engine's kernels, as Python strings (no package data to ship).

``CORE_SOURCE`` is the one program every CNN needs (packing, im2col, GEMM, pooling,
softmax, LRN), built once per device; element-wise kernels are specialised per expression.
"""

from meshgpu.inference.opencl.kernels.gemm import GEMM_SOURCE
from meshgpu.inference.opencl.kernels.implicit_conv import IMPLICIT_CONV_SOURCE
from meshgpu.inference.opencl.kernels.pointwise import POINTWISE_SOURCE
from meshgpu.inference.opencl.kernels.spatial import SPATIAL_SOURCE
from meshgpu.inference.opencl.kernels.vectors import VECTOR_SOURCE
from meshgpu.inference.opencl.kernels.winograd import WINOGRAD_SOURCE

CORE_SOURCE = (
    VECTOR_SOURCE
    + GEMM_SOURCE
    + IMPLICIT_CONV_SOURCE
    + WINOGRAD_SOURCE
    + POINTWISE_SOURCE
    + "\n"
    + SPATIAL_SOURCE
)

__all__ = ["CORE_SOURCE"]
