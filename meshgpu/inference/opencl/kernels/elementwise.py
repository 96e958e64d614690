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
    "Relu": "x > 0.0f ? x : 0.0f",
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
    "Softplus": "log(1.0f + exp(x))",
    "Softsign": "x / (1.0f + fabs(x))",
    "Sign": "(float)((x > 0.0f) - (x < 0.0f))",
    "Erf": "erf(x)",
    "Sin": "sin(x)",
    "Cos": "cos(x)",
    # alpha/beta/gamma come from the node's attributes as kernel arguments (see lowering)
    "Elu": "x >= 0.0f ? x : alpha * (exp(x) - 1.0f)",
    "Selu": "beta * (x > 0.0f ? x : alpha * (exp(x) - 1.0f))",
    "HardSigmoid": "fmax(0.0f, fmin(1.0f, alpha * x + beta))",
}

#: Default (alpha, beta) of the unary operators that take attributes, per the ONNX spec.
UNARY_PARAMETERS: dict[str, tuple[tuple[str, float], tuple[str, float]]] = {
    "Elu": (("alpha", 1.0), ("", 0.0)),
    "Selu": (("alpha", 1.67326319217681884765625), ("gamma", 1.05070102214813232421875)),
    "HardSigmoid": (("alpha", 0.2), ("beta", 0.5)),
}

BINARY_EXPRESSIONS: dict[str, str] = {
    "Add": "a + b",
    "Sub": "a - b",
    "Mul": "a * b",
    "Div": "a / b",
    "Pow": "pow(a, b)",
    "Max": "a > b ? a : b",
    "Min": "a < b ? a : b",
    "PRelu": "a >= 0.0f ? a : a * b",
}

#: Elements each work-item handles. PoCL runs one work-item per loop iteration of a
#: work-group function, so a work-item per element costs ~1 ns of overhead; looping over a
#: contiguous chunk inside the work-item is 5-8x faster (numbers in docs/opencl-engine.md).
CHUNK = 256

UNARY_SOURCE = (
    f"#define CHUNK {CHUNK}\n"
    + r"""
__kernel void unary(__global const float* restrict input, __global float* restrict output,
                    float alpha, float beta, int total) {
  int start = get_global_id(0) * CHUNK;
  int stop = min(start + CHUNK, total);
  for (int i = start; i < stop; i++) {
    float x = input[i];
    output[i] = EXPRESSION;
  }
}
"""
)

ODOMETER = r"""
/* Walk `count` consecutive flat output indices from `start` over dims meta[0..NDIM), keeping
   two strided offsets (strides meta[NDIM..2NDIM) and meta[2NDIM..3NDIM)) in step. */
#define ODOMETER_BEGIN(start, first, second)                                      \
  int coord[NDIM];                                                                \
  {                                                                               \
    int rest = (start);                                                           \
    for (int d = NDIM - 1; d >= 0; d--) {                                         \
      coord[d] = rest % meta[d];                                                  \
      rest /= meta[d];                                                            \
      first += coord[d] * meta[NDIM + d];                                         \
      second += coord[d] * meta[2 * NDIM + d];                                    \
    }                                                                             \
  }
#define ODOMETER_STEP(first, second)                                              \
  {                                                                               \
    int d = NDIM - 1;                                                             \
    coord[d]++;                                                                   \
    first += meta[NDIM + d];                                                      \
    second += meta[2 * NDIM + d];                                                 \
    while (d > 0 && coord[d] == meta[d]) {                                        \
      first -= meta[d] * meta[NDIM + d];                                          \
      second -= meta[d] * meta[2 * NDIM + d];                                     \
      coord[d] = 0;                                                               \
      d--;                                                                        \
      coord[d]++;                                                                 \
      first += meta[NDIM + d];                                                    \
      second += meta[2 * NDIM + d];                                               \
    }                                                                             \
  }
"""

BINARY_SOURCE = (
    f"#define CHUNK {CHUNK}\n"
    + ODOMETER
    + r"""
/* meta: dims[NDIM], a_strides[NDIM], b_strides[NDIM] (row-major, last dim fastest). */
__kernel void binary(__global const float* restrict A, __global const float* restrict B,
                     __global float* restrict output, __global const int* restrict meta,
                     int total) {
  int start = get_global_id(0) * CHUNK;
  if (start >= total) return;
  int stop = min(start + CHUNK, total);
  int ia = 0;
  int ib = 0;
  ODOMETER_BEGIN(start, ia, ib)
  for (int i = start; i < stop; i++) {
    float a = A[ia];
    float b = B[ib];
    float v = EXPRESSION;
    output[i] = ACT(v);
    ODOMETER_STEP(ia, ib)
  }
}
"""
)

AFFINE_SOURCE = (
    f"#define CHUNK {CHUNK}\n"
    + r"""
/* Per-channel y = ACT(x * scale[c] + shift[c]) over an NC... tensor: BatchNormalization in
   inference mode, and Mul/Add by per-channel constants merged into it. */
__kernel void channel_affine(__global const float* restrict x, __global float* restrict y,
                             __global const float* restrict scale,
                             __global const float* restrict shift,
                             int channels, int inner, int total) {
  int start = get_global_id(0) * CHUNK;
  int stop = min(start + CHUNK, total);
  for (int i = start; i < stop; i++) {
    int c = (i / inner) % channels;
    float v = x[i] * scale[c] + shift[c];
    y[i] = ACT(v);
  }
}
"""
)

COPY_SOURCE = (
    f"#define CHUNK {CHUNK}\n"
    + ODOMETER
    + r"""
/* dst[dst_offset + sum c_d*dst_stride_d] = src[src_offset + sum c_d*src_stride_d] over an
   iteration shape; meta: dims[NDIM], src_strides[NDIM], dst_strides[NDIM].
   Serves Transpose, Concat (one launch per input), Gather, Expand and Pad's interior. */
__kernel void strided_copy(__global const float* restrict src, __global float* restrict dst,
                           __global const int* restrict meta, int src_offset, int dst_offset,
                           int total) {
  int start = get_global_id(0) * CHUNK;
  if (start >= total) return;
  int stop = min(start + CHUNK, total);
  int s = src_offset;
  int t = dst_offset;
  ODOMETER_BEGIN(start, s, t)
  for (int i = start; i < stop; i++) {
    dst[t] = src[s];
    ODOMETER_STEP(s, t)
  }
}

__kernel void fill(__global float* restrict dst, float value, int total) {
  int start = get_global_id(0) * CHUNK;
  int stop = min(start + CHUNK, total);
  for (int i = start; i < stop; i++) dst[i] = value;
}
"""
)
