"""The registry of lowering functions (operator -> kernel launches) and the helpers that
turn Python values into kernel arguments and source literals."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from meshgpu.inference.opencl.graph import Node

if TYPE_CHECKING:
    from meshgpu.inference.opencl.plan import PlanBuilder

Lowering = Callable[["PlanBuilder", Node], None]


LOWERINGS: dict[str, Lowering] = {}


#: Operators whose lowering handles device tensors of any device type itself; every other
#: lowering reads float32 device tensors only (the walk refuses other types, naming them).
TYPED_OPERATORS: set[str] = set()


def lowers(*ops: str, typed: bool = False) -> Callable[[Lowering], Lowering]:
    """Register a lowering function for ``ops`` (``typed``: it takes any element type)."""

    def register(function: Lowering) -> Lowering:
        for op in ops:
            LOWERINGS[op] = function
            if typed:
                TYPED_OPERATORS.add(op)
        return function

    return register


def float_literal(value: float) -> str:
    """``value`` as an OpenCL float literal (spliced into kernel sources)."""
    if math.isinf(value):
        return "INFINITY" if value > 0 else "(-INFINITY)"
    return f"{float(np.float32(value))!r}f"


def int_array(values: Sequence[int]) -> np.ndarray:
    """Host int32 array for kernel meta buffers."""
    return np.asarray(list(values), dtype=np.int32)


def i32(value: int) -> np.int32:
    return np.int32(value)


def f32(value: float) -> np.float32:
    return np.float32(value)
