"""Depthwise convolution on zero-padded planes (MobileNet, EfficientNet, LR-ASPP, ConvNeXt).

The input is first copied into planes padded on every side (local memory in
``depthwise_plane``, a ``pad_planes`` copy for ``conv_depthwise``), wide enough that the
last 8-column block of every output row reads inside its padded row; then each tap of each
block is one unaligned vector load (stride 1: 8 consecutive floats; stride 2: in
``conv_depthwise`` 16 of which the even ones, in ``depthwise_plane`` 8 consecutive floats of
the row's even or odd half), whatever the padding, the dilation or the row width, with no
bounds check. The filter size, horizontal stride and dilation are compile-time constants
(``DW_KH``, ``DW_KW``, ``DW_SW``, ``DW_DW``), so the tap loops unroll with the filter held
in registers; a model has a handful of such shapes, each one program.
"""

from __future__ import annotations

from meshgpu.inference.opencl.kernels.elementwise import FAST_EXP_SOURCE

DEPTHWISE_SOURCE = (
    FAST_EXP_SOURCE
    + r"""
#ifndef ACT
#define ACT(v) (v)
#endif
#ifndef DW_TAIL
#define DW_TAIL(x) (x)
#endif
inline float depthwise_act(float v) { return ACT(v); }
#define DEPTHWISE_ACT8(v)                                                                  \
  ((float8)(depthwise_act((v).s0), depthwise_act((v).s1), depthwise_act((v).s2),          \
            depthwise_act((v).s3), depthwise_act((v).s4), depthwise_act((v).s5),          \
            depthwise_act((v).s6), depthwise_act((v).s7)))

/* y[n][c][oy][ox] = DW_TAIL(ACT(bias[c] + sum over taps of xp[n][c][oy * SH + ky * DH]
   [ox * DW_SW + kx * DW_DW] * w[c][ky][kx] (+ residual))), xp the padded planes
   (Hp rows of Wp floats). One work-item per output row (n, c, oy), 8 columns at a time;
   the last block of a row keeps only the lanes inside the row. */
__kernel void conv_depthwise(__global const float* restrict xp, __global const float* restrict w,
                             __global const float* restrict bias,
                             __global const float* restrict residual, __global float* restrict y,
                             int C, int Hp, int Wp, int OH, int OW, int SH, int DH, int rows,
                             float alpha, float beta) {
  int row = get_global_id(0);
  if (row >= rows) return;
  int oy = row % OH;
  int plane = row / OH;
  int c = plane % C;
  const __global float* xr = xp + (size_t)plane * Hp * Wp + (size_t)oy * SH * Wp;
  float taps[DW_KH * DW_KW];
  for (int k = 0; k < DW_KH * DW_KW; k++) taps[k] = w[c * DW_KH * DW_KW + k];
  float b = bias[c];
  __global float* yr = y + (size_t)row * OW;
  for (int ox = 0; ox < OW; ox += 8) {
    float8 acc = (float8)(b);
    const __global float* xb = xr + ox * DW_SW;
#pragma unroll
    for (int ky = 0; ky < DW_KH; ky++) {
#pragma unroll
      for (int kx = 0; kx < DW_KW; kx++) {
        const __global float* p = xb + ky * DH * Wp + kx * DW_DW;
#if DW_SW == 1
        float8 v = load8(p);
#else
        float8 v = load16(p).even;
#endif
        acc += v * (float8)(taps[ky * DW_KW + kx]);
      }
    }
    if (ox + 8 <= OW) {
#ifdef HAS_RESIDUAL
      acc += load8(residual + (size_t)row * OW + ox);
#endif
      float8 activated = DEPTHWISE_ACT8(acc);
      store8(yr + ox, DW_TAIL(activated));
    } else {
      float out[8] = {acc.s0, acc.s1, acc.s2, acc.s3, acc.s4, acc.s5, acc.s6, acc.s7};
      for (int l = 0; l < OW - ox; l++) {
        float v = out[l];
#ifdef HAS_RESIDUAL
        v += residual[(size_t)row * OW + ox + l];
#endif
        yr[ox + l] = DW_TAIL(depthwise_act(v));
      }
    }
  }
}
"""
)

#: Work-items that share one plane in ``depthwise_plane`` (rows are dealt out among them) on
#: a device other than a CPU. On a CPU a work-group's items run one after another on one
#: core, so they buy no parallelism and cost the barriers: there a group is one work-item.
PLANE_GROUP = 8

DEPTHWISE_PLANE_SOURCE = (
    FAST_EXP_SOURCE
    + r"""
#ifndef ACT
#define ACT(v) (v)
#endif
#ifndef DW_TAIL
#define DW_TAIL(x) (x)
#endif
#ifndef DW_IN
#define DW_IN(x) (x)
#endif
inline float depthwise_act(float v) { return ACT(v); }
inline float depthwise_in(float x, float alpha, float beta) { return DW_IN(x); }
inline float8 depthwise_in8(float8 x, float alpha, float beta) { return DW_IN(x); }
#define DEPTHWISE_ACT8(v)                                                                  \
  ((float8)(depthwise_act((v).s0), depthwise_act((v).s1), depthwise_act((v).s2),          \
            depthwise_act((v).s3), depthwise_act((v).s4), depthwise_act((v).s5),          \
            depthwise_act((v).s6), depthwise_act((v).s7)))
typedef float8 __attribute__((aligned(4))) local_float8_u;
typedef float4 __attribute__((aligned(4))) local_float4_u;
#define lload8(p) (*(const __local local_float8_u*)(p))
#define lstore8(p, v) (*(__local local_float8_u*)(p) = (v))
#define lstore4(p, v) (*(__local local_float4_u*)(p) = (v))
/* Where padded column j of a row sits in local memory: in order for a horizontal stride
   of 1; for stride 2 the even columns first, then the odd ones (DW_HW = DW_PW / 2 each),
   so that the eight inputs of a tap, every other column, are eight consecutive floats. */
#if DW_SW == 1
#define DW_COL(j) (j)
#else
#define DW_HW (DW_PW / 2)
#define DW_COL(j) ((((j) & 1) * DW_HW) + ((j) >> 1))
#endif

/* Residual, activations, store and pool sum of the 8-output block at (oy, ox) of this
   work-group's plane; a row's partial last block is computed whole (vector exp) and stored
   lane by lane. */
#ifdef HAS_RESIDUAL
#define DEPTHWISE_RESIDUAL(acc, out_row, ox)                                              \
  if (ox + 8 <= DW_OW) {                                                                  \
    acc += load8(residual + out_row + ox);                                                \
  } else {                                                                                \
    float extra[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};                    \
    for (int l = 0; l < DW_OW - ox; l++) extra[l] = residual[out_row + ox + l];           \
    acc += (float8)(extra[0], extra[1], extra[2], extra[3], extra[4], extra[5], extra[6], \
                    extra[7]);                                                            \
  }
#else
#define DEPTHWISE_RESIDUAL(acc, out_row, ox)
#endif
#ifdef HAS_POOL
#define POOL_ADD8(v) sums += (v)
#define POOL_ADD(v) sum += (v)
#else
#define POOL_ADD8(v)
#define POOL_ADD(v)
#endif
#define DEPTHWISE_FINISH(acc, oy, ox)                                                     \
  {                                                                                       \
    size_t out_row = ((size_t)plane * DW_OH + (oy)) * DW_OW;                              \
    DEPTHWISE_RESIDUAL(acc, out_row, ox)                                                  \
    float8 activated = DEPTHWISE_ACT8(acc);                                               \
    float8 result = DW_TAIL(activated);                                                   \
    if (ox + 8 <= DW_OW) {                                                                \
      store8(y + out_row + ox, result);                                                   \
      POOL_ADD8(result);                                                                  \
    } else {                                                                              \
      float out[8] = {result.s0, result.s1, result.s2, result.s3,                         \
                      result.s4, result.s5, result.s6, result.s7};                        \
      for (int l = 0; l < DW_OW - ox; l++) {                                              \
        y[out_row + ox + l] = out[l];                                                     \
        POOL_ADD(out[l]);                                                                 \
      }                                                                                   \
    }                                                                                     \
  }

/* One work-group per DW_PLANES consecutive planes (n, c), one after the other: the plane
   is copied into local memory with its zero border (DW_PH x DW_PW floats, wide enough that
   every 8-column block reads inside its row), the producer's activation DW_IN applied on
   the way in; then the DW_GROUP work-items share out the output rows, each computed as in
   conv_depthwise. With HAS_POOL the group also writes the plane's mean (of the final
   values) to pooled[plane]: a following global average pool costs no launch and no second
   pass. Sizes are compile-time constants. */
__kernel void depthwise_plane(__global const float* restrict x, __global const float* restrict w,
                              __global const float* restrict bias,
                              __global const float* restrict residual,
                              __global float* restrict y, __global float* restrict pooled,
                              int C, int planes, float alpha_in, float beta_in, float alpha,
                              float beta) {
  __local float xp[DW_PH * DW_PW];
  __local float partial[DW_GROUP];
  int lid = get_local_id(0);
  int first_plane = get_group_id(0) * DW_PLANES;
  int last_plane = imin(first_plane + DW_PLANES, planes);
  /* the zero border, once: each plane's copy writes only the inside */
  for (int r = lid; r < DW_PH; r += DW_GROUP) {
    __local float* row = xp + r * DW_PW;
    if (r < DW_PT || r >= DW_PT + DW_H) {
      for (int i = 0; i < DW_PW; i++) row[i] = 0.0f;
    } else {
      for (int i = 0; i < DW_PL; i++) row[DW_COL(i)] = 0.0f;
      for (int i = DW_PL + DW_W; i < DW_PW; i++) row[DW_COL(i)] = 0.0f;
    }
  }
  for (int plane = first_plane; plane < last_plane; plane++) {
#if DW_GROUP > 1
    if (plane > first_plane) barrier(CLK_LOCAL_MEM_FENCE);  /* the last plane is read */
#endif
    const __global float* xs = x + (size_t)plane * (DW_H * DW_W);
#if DW_W >= 8
    /* the input rows, 8 floats at a time (a row's last block ends at the row's end,
       overlapping the one before it), so that DW_IN runs on vectors: PoCL's scalar exp is a
       libm call per element */
    for (int r = lid; r < DW_H; r += DW_GROUP) {
      const __global float* src = xs + r * DW_W;
      __local float* row = xp + (r + DW_PT) * DW_PW;
      for (int i0 = 0; i0 < DW_W; i0 += 8) {
        int i = i0 + 8 <= DW_W ? i0 : DW_W - 8;
        float8 v = depthwise_in8(load8(src + i), alpha_in, beta_in);
#if DW_SW == 1
        lstore8(row + DW_PL + i, v);
#else
        lstore4(row + DW_COL(DW_PL + i), v.even);
        lstore4(row + DW_COL(DW_PL + i + 1), v.odd);
#endif
      }
    }
#elif defined(DW_READ_PAST)
    /* rows narrower than a vector: 8 floats loaded (the input's storage has room for the
       last row's surplus), the row's lanes stored one by one */
    for (int r = lid; r < DW_H; r += DW_GROUP) {
      float8 v = depthwise_in8(load8(xs + r * DW_W), alpha_in, beta_in);
      float lanes[8] = {v.s0, v.s1, v.s2, v.s3, v.s4, v.s5, v.s6, v.s7};
      __local float* row = xp + (r + DW_PT) * DW_PW;
      for (int l = 0; l < DW_W; l++) row[DW_COL(DW_PL + l)] = lanes[l];
    }
#else
    for (int i = lid; i < DW_H * DW_W; i += DW_GROUP) {
      int r = i / DW_W;
      xp[(r + DW_PT) * DW_PW + DW_COL(DW_PL + i - r * DW_W)] =
          depthwise_in(xs[i], alpha_in, beta_in);
    }
#endif
#if DW_GROUP > 1
    barrier(CLK_LOCAL_MEM_FENCE);
#endif
    int c = plane % C;
    float taps[DW_KH * DW_KW];
    for (int k = 0; k < DW_KH * DW_KW; k++) taps[k] = w[c * DW_KH * DW_KW + k];
    float b = bias[c];
    float8 sums = (float8)(0.0f);
    float sum = 0.0f;
    /* two output rows at a time: two independent chains of FMAs (one chain waits on each
       FMA's latency); the plane has a spare zero row for an odd row count's last pair */
    for (int pair = lid; pair < (DW_OH + 1) / 2; pair += DW_GROUP) {
      int oy = pair * 2;
      const __local float* xr = xp + oy * DW_SH * DW_PW;
      for (int ox = 0; ox < DW_OW; ox += 8) {
        float8 acc0 = (float8)(b), acc1 = (float8)(b);
#pragma unroll
        for (int ky = 0; ky < DW_KH; ky++) {
#pragma unroll
          for (int kx = 0; kx < DW_KW; kx++) {
            const __local float* p = xr + ky * DW_DH * DW_PW + DW_COL(ox * DW_SW + kx * DW_DW);
            float8 v0 = lload8(p);
            float8 v1 = lload8(p + DW_SH * DW_PW);
            float8 tap = (float8)(taps[ky * DW_KW + kx]);
            acc0 += v0 * tap;
            acc1 += v1 * tap;
          }
        }
        DEPTHWISE_FINISH(acc0, oy, ox);
        if (oy + 1 < DW_OH) DEPTHWISE_FINISH(acc1, oy + 1, ox);
      }
    }
#ifdef HAS_POOL
    partial[lid] = sum + (((sums.s0 + sums.s1) + (sums.s2 + sums.s3)) +
                          ((sums.s4 + sums.s5) + (sums.s6 + sums.s7)));
#if DW_GROUP > 1
    barrier(CLK_LOCAL_MEM_FENCE);
#endif
    if (lid == 0) {
      float total = 0.0f;
      for (int i = 0; i < DW_GROUP; i++) total += partial[i];
      pooled[plane] = total / (float)(DW_OH * DW_OW);
    }
#endif
  }
}
"""
)
