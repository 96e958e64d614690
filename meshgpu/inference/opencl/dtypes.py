"""Element types of device tensors and their OpenCL C names.

Device tensors carry the ONNX element type of the value they hold: float32 for what the
compute kernels (Conv, Gemm, pooling, normalisation) read and write, and int64, int32, bool
and the other fixed-size types for index tensors, masks and integer arithmetic, which the
type-generic kernels (copies, element-wise maps, comparisons, gathers, reductions) run on in
their own type. ``bool`` is stored as one byte holding 0 or 1, numpy's layout, so buffers
download straight into ``np.bool_`` arrays. float64 needs ``cl_khr_fp64`` on the device.
float16, bfloat16, the float8/int4 types, strings and complex numbers are not device types:
a model that carries them at run time is refused with the type named.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FLOAT32 = np.dtype(np.float32)
BOOL = np.dtype(np.bool_)
INT64 = np.dtype(np.int64)

#: numpy dtype -> OpenCL C type of its elements.
C_TYPES: dict[np.dtype[Any], str] = {
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
    np.dtype(np.int64): "long",
    np.dtype(np.int32): "int",
    np.dtype(np.int16): "short",
    np.dtype(np.int8): "char",
    np.dtype(np.uint64): "ulong",
    np.dtype(np.uint32): "uint",
    np.dtype(np.uint16): "ushort",
    np.dtype(np.uint8): "uchar",
    np.dtype(np.bool_): "uchar",
}

#: Lowest and highest value of each type as OpenCL C literals (reductions start there).
LIMITS: dict[str, tuple[str, str]] = {
    "float": ("(-INFINITY)", "INFINITY"),
    "double": ("(-(double)INFINITY)", "((double)INFINITY)"),
    "long": ("LONG_MIN", "LONG_MAX"),
    "int": ("INT_MIN", "INT_MAX"),
    "short": ("SHRT_MIN", "SHRT_MAX"),
    "char": ("CHAR_MIN", "CHAR_MAX"),
    "ulong": ("0", "ULONG_MAX"),
    "uint": ("0", "UINT_MAX"),
    "ushort": ("0", "USHRT_MAX"),
    "uchar": ("0", "UCHAR_MAX"),
}


def is_device_type(dtype: Any) -> bool:
    """Whether tensors of ``dtype`` can live on a device (float64 still needs fp64)."""
    try:
        return np.dtype(dtype) in C_TYPES
    except TypeError:
        return False


def c_type(dtype: Any) -> str:
    """The OpenCL C element type of ``dtype`` (KeyError for a non-device type)."""
    return C_TYPES[np.dtype(dtype)]


def is_float(dtype: Any) -> bool:
    return bool(np.dtype(dtype).kind == "f")


def is_integer(dtype: Any) -> bool:
    return np.dtype(dtype).kind in "iu"


def source_prefix(*dtypes: Any) -> str:
    """Pragmas a program over ``dtypes`` needs (fp64 for float64)."""
    if any(np.dtype(d) == np.float64 for d in dtypes):
        return "#pragma OPENCL EXTENSION cl_khr_fp64 : enable\n"
    return ""


def type_name(dtype: Any) -> str:
    """The element type's name as errors give it (``bool``, ``int64``, ...)."""
    return str(np.dtype(dtype).name)
