"""Element-wise kernels: unary maps, broadcasting binary maps, per-channel affine, strided copy.

Each kernel is compiled once per distinct expression: the expression is spliced into the
source as a ``#define`` (so the program cache keys on it), never passed at run time. All of
them take a flat work-item index over the output and a ``total`` guard, and are launched with
64-wide work-groups that PoCL vectorises across work-items.

Broadcasting follows numpy (ONNX "multidirectional broadcasting"): the host computes, per
output dimension, the stride of each operand (0 where the operand is broadcast) and merges
adjacent dimensions that stay contiguous, so the common cases (same shape, per-channel,
scalar) run with one to three dimensions.
"""

from __future__ import annotations

UNARY_EXPRESSIONS: dict[str, str] = {
    "Relu": "fmax(x, 0.0f)",
    "Sigmoid": "1.0f / (1.0f + exp(-x))",
    "Tanh": "tanh(x)",
    "Exp": "exp(x)",
    "Log": "log(x)",
    "Sqrt": "sqrt(x)",
    "Neg": "-x",
    "Abs": "fabs(x)",
    "Reciprocal": "1.0f / x",
    "Floor": "floor(x)",
    "Ceil": "ceil(x)",
}

BINARY_EXPRESSIONS: dict[str, str] = {
    "Add": "a + b",
    "Sub": "a - b",
    "Mul": "a * b",
    "Div": "a / b",
    "Pow": "pow(a, b)",
    "Max": "fmax(a, b)",
    "Min": "fmin(a, b)",
}

UNARY_SOURCE = r"""
__kernel void unary(__global const float* restrict input, __global float* restrict output,
                    float alpha, float beta, int total) {
  int i = get_global_id(0);
  if (i >= total) return;
  float x = input[i];
  output[i] = EXPRESSION;
}
"""

BINARY_SOURCE = r"""
/* meta: dims[NDIM], a_strides[NDIM], b_strides[NDIM] (row-major, last dim fastest). */
__kernel void binary(__global const float* restrict A, __global const float* restrict B,
                     __global float* restrict output, __global const int* restrict meta,
                     int total) {
  int i = get_global_id(0);
  if (i >= total) return;
  int rest = i;
  int ia = 0;
  int ib = 0;
  for (int d = NDIM - 1; d >= 0; d--) {
    int c = rest % meta[d];
    rest /= meta[d];
    ia += c * meta[NDIM + d];
    ib += c * meta[2 * NDIM + d];
  }
  float a = A[ia];
  float b = B[ib];
  float v = EXPRESSION;
  output[i] = ACT(v);
}
"""

AFFINE_SOURCE = r"""
/* Per-channel y = ACT(x * scale[c] + shift[c]) over an NC... tensor: BatchNormalization in
   inference mode, and Mul/Add by per-channel constants merged into it. */
__kernel void channel_affine(__global const float* restrict x, __global float* restrict y,
                             __global const float* restrict scale,
                             __global const float* restrict shift,
                             int channels, int inner, int total) {
  int i = get_global_id(0);
  if (i >= total) return;
  int c = (i / inner) % channels;
  float v = x[i] * scale[c] + shift[c];
  y[i] = ACT(v);
}
"""

COPY_SOURCE = r"""
/* dst[dst_offset + sum c_d*dst_stride_d] = src[src_offset + sum c_d*src_stride_d] over an
   iteration shape; meta: dims[NDIM], src_strides[NDIM], dst_strides[NDIM].
   Serves Transpose, Concat (one launch per input), Slice, Expand and Pad's interior. */
__kernel void strided_copy(__global const float* restrict src, __global float* restrict dst,
                           __global const int* restrict meta, int src_offset, int dst_offset,
                           int total) {
  int i = get_global_id(0);
  if (i >= total) return;
  int rest = i;
  int s = src_offset;
  int d_index = dst_offset;
  for (int d = NDIM - 1; d >= 0; d--) {
    int c = rest % meta[d];
    rest /= meta[d];
    s += c * meta[NDIM + d];
    d_index += c * meta[2 * NDIM + d];
  }
  dst[d_index] = src[s];
}

__kernel void fill(__global float* restrict dst, float value, int total) {
  int i = get_global_id(0);
  if (i >= total) return;
  dst[i] = value;
}
"""
