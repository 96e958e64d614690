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

from collections.abc import Mapping
from typing import Any

from meshgpu.inference.opencl.kernels.activations import clamp, relu

UNARY_EXPRESSIONS: dict[str, str] = {
    "Relu": relu("x"),
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
    # NaN stays NaN, as onnxruntime gives it (the comparisons alone made it 0)
    "Sign": "isnan(x) ? x : (float)((x > 0.0f) - (x < 0.0f))",
    "Erf": "erf(x)",
    "Sin": "sin(x)",
    "Cos": "cos(x)",
    # alpha/beta/gamma come from the node's attributes as kernel arguments (see lowering)
    "Elu": "x >= 0.0f ? x : alpha * (exp(x) - 1.0f)",
    "Selu": "beta * (x > 0.0f ? x : alpha * (exp(x) - 1.0f))",
    "HardSigmoid": clamp("(alpha * x + beta)", "0.0f", "1.0f"),
    "HardSwish": "x * " + clamp("(x * (1.0f / 6.0f) + 0.5f)", "0.0f", "1.0f"),
    "Mish": "x * tanh(x > 20.0f ? x : log1p(exp(x)))",
    "ThresholdedRelu": "x > alpha ? x : 0.0f",
    # max(0, x) + min(0, alpha * (exp(x / alpha) - 1)) with one branch, so NaN stays NaN
    "Celu": "x > 0.0f ? x : alpha * (exp(x / alpha) - 1.0f)",
    "Shrink": "x < -alpha ? x + beta : (x > alpha ? x - beta : 0.0f)",
    "Swish": "x / (1.0f + exp(-alpha * x))",
    "Tan": "tan(x)",
    "Asin": "asin(x)",
    "Acos": "acos(x)",
    "Atan": "atan(x)",
    "Sinh": "sinh(x)",
    "Cosh": "cosh(x)",
    "Asinh": "asinh(x)",
    "Acosh": "acosh(x)",
    "Atanh": "atanh(x)",
    "Round": "rint(x)",
}

#: ``fast_exp`` for float and float8, inline: Cephes' expf (x = n ln2 + f with |f| <= ln2/2,
#: e^f by a degree-6 polynomial, 2^n written into the exponent bits; within 2 ulp of exp where
#: exp is a normal float, 0 below -87.33 and -inf, infinity above 88.72, NaN kept). PoCL's own
#: vector exp is about as exact but an out-of-line call, around which every live vector
#: register is spilled: in EfficientNet-B0's depthwise launches, which apply SiLU on the way
#: in and out, and in a product's fused tanh-Gelu epilogue, that call cost more than the
#: polynomial (docs/benchmarks.md). One definition for every kernel that takes an exp.
FAST_EXP_SOURCE = r"""
#ifndef FAST_EXP
#define FAST_EXP 1
#define FAST_EXP_BODY(T, IT, AS_I, AS_F)                                                \
  T y = x < (T)(-87.33f) ? (T)(-87.33f) : x;                                          \
  y = y > (T)(88.72f) ? (T)(88.72f) : y;                                              \
  /* n = round(y / ln2) by the 1.5 * 2^23 trick: its bits are 0x4B400000 + n */       \
  T t = y * 1.44269504088896341f + 12582912.0f;                                       \
  IT n = AS_I(t) - 0x4B400000;                                                        \
  T f = t - 12582912.0f;                                                              \
  T r = y - f * 0.693359375f;                                                         \
  r = r + f * 2.12194440e-4f;                                                         \
  T p = (T)(1.9875691500e-4f);                                                        \
  p = p * r + 1.3981999507e-3f;                                                       \
  p = p * r + 8.3334519073e-3f;                                                       \
  p = p * r + 4.1665795894e-2f;                                                       \
  p = p * r + 1.6666665459e-1f;                                                       \
  p = p * r + 5.0000001201e-1f;                                                       \
  p = p * (r * r) + r + 1.0f;                                                         \
  /* 2^(n-1) * 2: n reaches 128 at the top of the range (flushed to 0 at n = -126) */ \
  T e = p * AS_F((n + 126) << 23) * 2.0f;                                             \
  e = x < (T)(-87.33f) ? (T)(0.0f) : e;                                               \
  return x > (T)(88.72f) ? (T)(INFINITY) : e;
__attribute__((always_inline)) inline float __attribute__((overloadable)) fast_exp(float x) {
  FAST_EXP_BODY(float, int, as_int, as_float)
}
__attribute__((always_inline)) inline float8 __attribute__((overloadable)) fast_exp(float8 x) {
  FAST_EXP_BODY(float8, int8, as_int8, as_float8)
}
#endif
"""

#: UNARY_EXPRESSIONS as float32 kernels that include FAST_EXP_SOURCE compute them.
FLOAT32_EXPRESSIONS: dict[str, str] = {
    **UNARY_EXPRESSIONS,
    "Swish": "x / (1.0f + fast_exp(-alpha * x))",
}

#: Gelu (opset 20) by its ``approximate`` attribute; the same expressions serve the fused
#: Erf and Tanh subgraphs exporters emit before opset 20.
GELU_EXPRESSIONS: dict[str, str] = {
    "none": "0.5f * x * (1.0f + erf(x * 0.70710678118654752f))",
    "tanh": "0.5f * x * (1.0f + tanh(0.79788456080286536f * (x + 0.044715f * x * x * x)))",
}

#: Unary operators on integer tensors (and ``Not`` on bool), computed in the element type.
INTEGER_UNARY_EXPRESSIONS: dict[str, str] = {
    "Neg": "-x",
    "Abs": "x < 0 ? -x : x",
    "Sign": "(x > 0) - (x < 0)",
    "Relu": "x > 0 ? x : 0",
    "Identity": "x",
    "BitwiseNot": "~x",
}

#: Float tests with a bool result; IsInf's detect_negative/detect_positive arrive as
#: alpha/beta.
PREDICATE_EXPRESSIONS: dict[str, str] = {
    "IsNaN": "isnan(x)",
    "IsInf": "isinf(x) && ((x < 0 && alpha != 0.0f) || (x > 0 && beta != 0.0f))",
}

#: Default (alpha, beta) of the unary operators that take attributes, per the ONNX spec.
UNARY_PARAMETERS: dict[str, tuple[tuple[str, float], tuple[str, float]]] = {
    "Elu": (("alpha", 1.0), ("", 0.0)),
    "Selu": (("alpha", 1.67326319217681884765625), ("gamma", 1.05070102214813232421875)),
    "HardSigmoid": (("alpha", 0.2), ("beta", 0.5)),
    "ThresholdedRelu": (("alpha", 1.0), ("", 0.0)),
    "Celu": (("alpha", 1.0), ("", 0.0)),
    "Shrink": (("lambd", 0.5), ("bias", 0.0)),
    "Swish": (("alpha", 1.0), ("", 0.0)),
    "IsInf": (("detect_negative", 1.0), ("detect_positive", 1.0)),
}


def unary_parameters(op: str, attrs: Mapping[str, Any]) -> tuple[float, float]:
    """The (alpha, beta) a unary operator's expression reads: its attributes, or the ONNX
    defaults (0.0 for an operator that takes none)."""
    (alpha_name, alpha_default), (beta_name, beta_default) = UNARY_PARAMETERS.get(
        op, (("", 0.0), ("", 0.0))
    )
    return float(attrs.get(alpha_name, alpha_default)), float(attrs.get(beta_name, beta_default))


BINARY_EXPRESSIONS: dict[str, str] = {
    "Add": "a + b",
    "Sub": "a - b",
    "Mul": "a * b",
    "Div": "a / b",
    "Pow": "pow(a, b)",
    "Max": "(a > b || a != a) ? a : b",  # NaN from either operand, as onnxruntime
    "Min": "(a < b || a != a) ? a : b",
    "PRelu": "a >= 0.0f ? a : a * b",
}

#: Binary operators with a bool result, on operands of any one type.
COMPARISON_EXPRESSIONS: dict[str, str] = {
    "Equal": "a == b",
    "Less": "a < b",
    "LessOrEqual": "a <= b",
    "Greater": "a > b",
    "GreaterOrEqual": "a >= b",
    "And": "a && b",
    "Or": "a || b",
    "Xor": "(a != 0) != (b != 0)",
}

#: Binary operators on integers, computed in the operands' type. Division by zero gives 0
#: instead of trapping the device (ONNX leaves it undefined).
INTEGER_BINARY_EXPRESSIONS: dict[str, str] = {
    "Add": "a + b",
    "Sub": "a - b",
    "Mul": "a * b",
    "Div": "b == 0 ? 0 : a / b",
    "Max": "a > b ? a : b",
    "Min": "a < b ? a : b",
    "Pow": "integer_power(a, b)",
    "BitwiseAnd": "a & b",
    "BitwiseOr": "a | b",
    "BitwiseXor": "a ^ b",
    "ModTrunc": "b == 0 ? 0 : a % b",
    "ModFloor": "b == 0 ? 0 : ((a % b != 0 && ((a % b < 0) != (b < 0))) ? a % b + b : a % b)",
    # a shift outside [0, width) gives 0 (right: the sign fill), as numpy does
    "BitShiftLEFT": "(b < 0 || b >= 8 * (int)sizeof(TA)) ? 0 : a << b",
    "BitShiftRIGHT": "(b < 0 || b >= 8 * (int)sizeof(TA)) ? (a < 0 ? -1 : 0) : a >> b",
}

INTEGER_POWER_SOURCE = r"""
/* a^b by squaring in 64-bit integers (ONNX Pow on integers); a negative exponent gives 0. */
long integer_power(long a, long b) {
  long result = 1;
  if (b < 0) return 0;
  while (b > 0) {
    if (b & 1) result *= a;
    a *= a;
    b >>= 1;
  }
  return result;
}
"""

#: Elements each work-item handles. PoCL runs one work-item per loop iteration of a
#: work-group function, so a work-item per element costs ~1 ns of overhead; looping over a
#: contiguous chunk inside the work-item is 5-8x faster (numbers in docs/opencl-engine.md).
CHUNK = 256

#: Element types of the element-wise and copy kernels: float unless the lowering defines
#: them (``TA``/``TB`` operands, ``TO`` output, ``T`` copied elements; see :mod:`..dtypes`).
TYPE_DEFAULTS = r"""
#ifndef TA
#define TA float
#endif
#ifndef TB
#define TB TA
#endif
#ifndef TO
#define TO float
#endif
#ifndef T
#define T float
#endif
"""

UNARY_SOURCE = (
    f"#define CHUNK {CHUNK}\n"
    + TYPE_DEFAULTS
    + r"""
__kernel void unary(__global const TA* restrict input, __global TO* restrict output,
                    float alpha, float beta, int total) {
  int start = get_global_id(0) * CHUNK;
  int stop = min(start + CHUNK, total);
  for (int i = start; i < stop; i++) {
    TA x = input[i];
    output[i] = (TO)(EXPRESSION);
  }
}
"""
)

#: Float maps whose expression is also valid on ``float8`` (functions overloaded for
#: vectors, ternaries with a vector condition): the unary kernel runs them eight lanes at a
#: time. PoCL calls its scalar libm for ``exp``/``erf``/``tanh`` one element at a time
#: (about 7 ns each), its vector versions on all eight lanes at once.
VECTOR_SAFE_UNARY = frozenset(
    {
        "Relu",
        "Sigmoid",
        "Tanh",
        "Exp",
        "Log",
        "Sqrt",
        "Neg",
        "Abs",
        "Reciprocal",
        "Floor",
        "Ceil",
        "Softplus",
        "Softsign",
        "Erf",
        "Sin",
        "Cos",
        "Elu",
        "Selu",
        "HardSigmoid",
        "HardSwish",
        "Mish",
        "Celu",
        "Swish",
        "Gelu",
        "LeakyRelu",
        "Clip",
        "Silu",
    }
)

VECTOR_UNARY_SOURCE = (
    f"#define CHUNK {CHUNK}\n"
    + r"""
/* The float unary map eight lanes at a time (the tail of a chunk one lane at a time);
   EXPRESSION is valid on float and float8 alike (VECTOR_SAFE_UNARY). */
__kernel void unary8(__global const float* restrict input, __global float* restrict output,
                     float alpha, float beta, int total) {
  int start = get_global_id(0) * CHUNK;
  int stop = min(start + CHUNK, total);
  int i = start;
  for (; i + 8 <= stop; i += 8) {
    float8 x = load8(input + i);
    store8(output + i, EXPRESSION);
  }
  for (; i < stop; i++) {
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
    + TYPE_DEFAULTS
    + ODOMETER
    + r"""
/* meta: dims[NDIM], a_strides[NDIM], b_strides[NDIM] (row-major, last dim fastest). */
__kernel void binary(__global const TA* restrict A, __global const TB* restrict B,
                     __global TO* restrict output, __global const int* restrict meta,
                     int total) {
  int start = get_global_id(0) * CHUNK;
  if (start >= total) return;
  int stop = min(start + CHUNK, total);
  int ia = 0;
  int ib = 0;
  ODOMETER_BEGIN(start, ia, ib)
  for (int i = start; i < stop; i++) {
    TA a = A[ia];
    TB b = B[ib];
    TO v = (TO)(EXPRESSION);
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
    + TYPE_DEFAULTS
    + ODOMETER
    + r"""
/* dst[dst_offset + sum c_d*dst_stride_d] = src[src_offset + sum c_d*src_stride_d] over an
   iteration shape; meta: dims[NDIM], src_strides[NDIM], dst_strides[NDIM].
   Serves Transpose, Concat (one launch per input), Gather, Expand and Pad's interior. */
__kernel void strided_copy(__global const T* restrict src, __global T* restrict dst,
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

#ifdef VECTOR_LOADS
/* strided_copy in units of eight contiguous floats (strides and dims given in those). */
__kernel void strided_copy8(__global const float* restrict src, __global float* restrict dst,
                            __global const int* restrict meta, int src_offset, int dst_offset,
                            int total) {
  int start = get_global_id(0) * CHUNK;
  if (start >= total) return;
  int stop = min(start + CHUNK, total);
  int s = src_offset;
  int t = dst_offset;
  ODOMETER_BEGIN(start, s, t)
  for (int i = start; i < stop; i++) {
    store8(dst + t, load8(src + s));
    ODOMETER_STEP(s, t)
  }
}
#endif

__kernel void fill(__global T* restrict dst, T value, int total) {
  int start = get_global_id(0) * CHUNK;
  int stop = min(start + CHUNK, total);
  for (int i = start; i < stop; i++) dst[i] = value;
}
"""
)
