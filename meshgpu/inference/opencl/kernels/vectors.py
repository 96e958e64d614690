"""Inline vector loads and stores for kernels: the prelude of every core program.

Why not ``vload8``/``vstore8``/``min``/``max``: PoCL 3.0 (the PyPI build) emits those
builtins as out-of-line calls, with the 8-float vector passed through memory. Inside
im2col's k loop, the GEMM epilogue and max pooling that call overhead cost more than the
work itself (numbers in docs/opencl-engine.md). A ``float8`` typedef with 4-byte alignment
makes a pointer dereference compile to one unaligned ``vmovups``, and ternaries replace the
integer ``min``/``max``.
"""

from __future__ import annotations

VECTOR_SOURCE = r"""
#define VECTOR_LOADS 1
/* Unaligned 8- and 16-float vectors: a dereference is one vmovups, no builtin call. */
typedef float8 __attribute__((aligned(4))) float8_u;
typedef float16 __attribute__((aligned(4))) float16_u;
inline float8 load8(const __global float* p) { return *(const __global float8_u*)p; }
/* A macro, not a function: a float16 return value changes the ABI without AVX-512. */
#define load16(p) (*(const __global float16_u*)(p))
inline void store8(__global float* p, float8 v) { *(__global float8_u*)p = v; }
inline int imin(int a, int b) { return a < b ? a : b; }
inline int imax(int a, int b) { return a > b ? a : b; }
"""
