"""Depthwise convolution on zero-padded planes (MobileNet, EfficientNet, LR-ASPP, ConvNeXt).

The input is first copied into planes padded on every side (``pad_planes``), wide enough
that the last 8-column block of every output row reads inside its padded row; then each
tap of each block is one unaligned vector load (stride 1: 8 consecutive floats; stride 2:
16 of which the even ones), whatever the padding, the dilation or the row width, with no
bounds check. The filter size, horizontal stride and dilation are compile-time constants
(``DW_KH``, ``DW_KW``, ``DW_SW``, ``DW_DW``), so the tap loops unroll with the filter held
in registers; a model has a handful of such shapes, each one program.
"""

from __future__ import annotations

DEPTHWISE_SOURCE = r"""
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
