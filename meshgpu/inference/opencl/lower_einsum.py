"""Lowering of Einsum (one or two operands, numpy's equation syntax with ``...``).

One kernel: a work-item per output element walks every combination of the contracted
letters and sums the product of the operands, each operand addressed by one stride per
letter (the sum of its strides where a letter repeats inside it: a diagonal; 0 where an
ellipsis dimension of size 1 broadcasts). The equation is parsed on the host; the kernel
only sees sizes and strides.
"""

from __future__ import annotations

import string

import numpy as np

from meshgpu.errors import ModelError, UnsupportedOperatorError
from meshgpu.inference.opencl import dtypes
from meshgpu.inference.opencl.graph import Node
from meshgpu.inference.opencl.lower_tensor import _count, contiguous_strides, typed_source
from meshgpu.inference.opencl.plan import PlanBuilder
from meshgpu.inference.opencl.registry import i32, int_array, lowers

EINSUM_SOURCE = r"""
/* meta: output sizes[NOUT], contracted sizes[NCON], then per operand its strides for the
   output letters [NOUT] and the contracted letters [NCON]. */
__kernel void einsum(__global const T* restrict a, __global const T* restrict b,
                     __global T* restrict y, __global const int* restrict meta,
                     int contracted, int total) {
  int i = get_global_id(0);
  if (i >= total) return;
  const __global int* a_out = meta + NOUT + NCON;
  const __global int* a_con = a_out + NOUT;
  const __global int* b_out = a_con + NCON;
  const __global int* b_con = b_out + NOUT;
  long base_a = 0, base_b = 0;
  int rest = i;
  for (int d = NOUT - 1; d >= 0; d--) {
    int c = rest % meta[d];
    rest /= meta[d];
    base_a += (long)c * a_out[d];
    base_b += (long)c * b_out[d];
  }
  T acc = 0;
  for (int k = 0; k < contracted; k++) {
    long offset_a = base_a, offset_b = base_b;
    int left = k;
    for (int d = NCON - 1; d >= 0; d--) {
      int c = left % meta[NOUT + d];
      left /= meta[NOUT + d];
      offset_a += (long)c * a_con[d];
      offset_b += (long)c * b_con[d];
    }
    acc += a[offset_a] * (OPERANDS == 2 ? b[offset_b] : (T)1);
  }
  y[i] = acc;
}
"""


def parse_equation(equation: str, shapes: list[tuple[int, ...]]) -> tuple[list[str], str]:
    """(letters of each operand, output letters) with ``...`` spelled out as letters."""
    equation = equation.replace(" ", "")
    inputs_text, arrow, output_text = equation.partition("->")
    operands = inputs_text.split(",")
    if len(operands) != len(shapes):
        raise ModelError(f"equation {equation!r} names {len(operands)} operands, got {len(shapes)}")
    used = set(equation) - set(".,->")
    spare = [c for c in string.ascii_letters if c not in used]
    ellipsis_rank = max(
        (
            len(shape) - len(op.replace("...", ""))
            for op, shape in zip(operands, shapes, strict=True)
            if "..." in op
        ),
        default=0,
    )
    ellipsis = "".join(spare[:ellipsis_rank])
    letters = []
    for op, shape in zip(operands, shapes, strict=True):
        if "..." in op:
            own = len(shape) - len(op.replace("...", ""))
            op = op.replace("...", ellipsis[ellipsis_rank - own :])
        if len(op) != len(shape):
            raise ModelError(f"equation term {op!r} for a tensor of shape {shape}")
        letters.append(op)
    if arrow:
        output = output_text.replace("...", ellipsis)
    else:
        counts = {c: sum(term.count(c) for term in letters) for c in set("".join(letters))}
        output = ellipsis + "".join(
            sorted(c for c, n in counts.items() if n == 1 and c not in ellipsis)
        )
    return letters, output


@lowers("Einsum", typed=True)
def lower_einsum(builder: PlanBuilder, node: Node) -> None:
    names = [n for n in node.inputs if n]
    if len(names) not in (1, 2):
        raise UnsupportedOperatorError(f"{node.describe()}: {len(names)} operands (1 or 2 run)")
    dtype = next((builder.dtype(n) for n in names if not builder.is_host(n)), None)
    dtype = dtype or builder.dtype(names[0])
    if dtype == dtypes.BOOL:
        raise UnsupportedOperatorError(f"{node.describe()} on bool")
    tensors = [builder.tensor(node, n, dtype) for n in names]
    letters, output = parse_equation(str(node.attrs["equation"]), [t.shape for t in tensors])
    sizes: dict[str, int] = {}
    for term, tensor in zip(letters, tensors, strict=True):
        for letter, size in zip(term, tensor.shape, strict=True):
            if size != 1 or letter not in sizes:
                if sizes.get(letter, 1) not in (1, size):
                    raise ModelError(f"{node.describe()}: {letter!r} is {sizes[letter]} and {size}")
                sizes[letter] = size
    contracted = sorted(set("".join(letters)) - set(output))
    out_shape = [sizes[c] for c in output]
    meta_values = [*(out_shape or [1]), *([sizes[c] for c in contracted] or [1])]
    for index in range(2):
        term = letters[index] if index < len(letters) else ""
        operand = tensors[index] if index < len(tensors) else None
        strides = contiguous_strides(operand.shape) if operand is not None else []

        shape = operand.shape if operand is not None else ()

        def stride(
            letter: str,
            term: str = term,
            strides: list[int] = strides,
            shape: tuple[int, ...] = shape,
        ) -> int:
            total = 0
            for position, c in enumerate(term):
                if c == letter and shape[position] != 1:
                    total += strides[position]
            return total

        meta_values += [stride(c) for c in output] or [0]
        meta_values += [stride(c) for c in contracted] or [0]
    meta = builder.weight(("meta", "einsum", tuple(meta_values)), lambda: int_array(meta_values))
    output_tensor = builder.new_tensor(node.outputs[0], out_shape, dtype)
    total = _count(out_shape)
    source = typed_source(
        f"#define NOUT {max(len(output), 1)}\n#define NCON {max(len(contracted), 1)}\n"
        f"#define OPERANDS {len(names)}\n" + EINSUM_SOURCE,
        T=dtype,
    )
    builder.launch(
        node,
        source,
        "einsum",
        [
            tensors[0].storage,
            tensors[-1].storage,
            output_tensor.storage,
            meta,
            i32(int(np.prod([sizes[c] for c in contracted])) if contracted else 1),
            i32(total),
        ],
        total=total,
    )
