"""Device tensors as the planner sees them: storages, strided views, and buffer sharing.

Every tensor a kernel writes gets a :class:`Storage`; view-like operators (Reshape, Flatten,
Squeeze, Unsqueeze, Identity, Dropout) alias their input's storage with a new shape, and
re-indexing operators in front of a matrix product (Transpose, Split, Slice, Gather of one
index) leave a :class:`View` that the product reads through strides. When all launches are
known, storages are packed into device buffers by liveness (:func:`assign_slots`: interval
greedy, best fit), so two tensors share a buffer when their lifetimes do not overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyopencl as cl

from meshgpu.inference.opencl import dtypes

FLOAT_BYTES = 4


@dataclass(eq=False)
class Storage:
    """A run of device memory for one tensor (and the views aliasing it)."""

    nbytes: int
    label: str
    first: int = 1 << 30
    last: int = -1
    slot: int = -1


@dataclass(frozen=True)
class DeviceTensor:
    """A tensor that lives on the device: its storage and its (row-major) shape."""

    storage: Storage
    shape: tuple[int, ...]
    dtype: np.dtype[Any] = dtypes.FLOAT32


@dataclass(frozen=True)
class View:
    """A strided window on a device tensor's storage: what a Transpose, Split, Slice or
    Reshape in front of a matrix product leaves instead of a copy. The product reads it
    through its strides (:mod:`.lower_matmul`); any other reader gets a copy, made when it
    first asks for the tensor (:meth:`PlanBuilder.tensor`)."""

    storage: Storage
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int = 0
    dtype: np.dtype[Any] = dtypes.FLOAT32


#: Operators that only re-index their input: a view passes through them to a product.
VIEW_OPERATORS = (
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "Split",
    "Slice",
    "Gather",
)


KernelArg = Storage | cl.Buffer | np.generic | None


def assign_slots(storages: list[Storage]) -> list[int]:
    """Interval-greedy buffer sharing: a storage takes the best-fitting free slot."""
    slot_sizes: list[int] = []
    active: list[Storage] = []
    free: list[int] = []
    for storage in storages:
        still_active = []
        for other in active:
            if other.last < storage.first:
                free.append(other.slot)
            else:
                still_active.append(other)
        active = still_active
        fitting = [s for s in free if slot_sizes[s] >= storage.nbytes]
        if fitting:
            slot = min(fitting, key=lambda s: slot_sizes[s])
        elif free:
            slot = max(free, key=lambda s: slot_sizes[s])
            slot_sizes[slot] = storage.nbytes
        else:
            slot = len(slot_sizes)
            slot_sizes.append(storage.nbytes)
        if slot in free:
            free.remove(slot)
        storage.slot = slot
        active.append(storage)
    return slot_sizes


def element_count(shape: Sequence[int]) -> int:
    total = 1
    for dim in shape:
        total *= int(dim)
    return total


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides = [0] * len(shape)
    running = 1
    for axis in range(len(shape) - 1, -1, -1):
        strides[axis] = running
        running *= int(shape[axis])
    return tuple(strides)


def reshape_strides(
    shape: Sequence[int], strides: Sequence[int], new_shape: Sequence[int]
) -> tuple[int, ...] | None:
    """Strides that read a strided tensor as ``new_shape`` without a copy, or None when the
    reshape mixes dimensions that are not contiguous with each other (numpy's rule)."""
    old = [(int(d), int(s)) for d, s in zip(shape, strides, strict=True) if d != 1]
    new = [int(d) for d in new_shape]
    if element_count(shape) != element_count(new) or element_count(new) == 0:
        return None
    result = [0] * len(new)
    positions = [axis for axis, size in enumerate(new) if size != 1]
    sizes = [new[axis] for axis in positions]
    oi = ni = 0
    while ni < len(sizes) and oi < len(old):
        nj, oj = ni + 1, oi + 1
        new_product, old_product = sizes[ni], old[oi][0]
        while new_product != old_product:
            if new_product < old_product:
                new_product *= sizes[nj]
                nj += 1
            else:
                old_product *= old[oj][0]
                oj += 1
        for k in range(oi, oj - 1):
            if old[k][1] != old[k + 1][0] * old[k + 1][1]:
                return None
        stride = old[oj - 1][1]
        for k in range(nj - 1, ni - 1, -1):
            result[positions[k]] = stride
            stride *= sizes[k]
        ni, oi = nj, oj
    return tuple(result)
