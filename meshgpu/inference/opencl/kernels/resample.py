"""Resampling along one axis with a tap table (Resize and Upsample, one pass per axis)."""

from __future__ import annotations

RESAMPLE_SOURCE = r"""
/* y[o][j][r] = sum_t weight[j][t] * x[o][index[j][t]][r], or `extrapolation` where
   outside[j] (tf_crop_and_resize outside the crop box). One work-item per output element. */
__kernel void resample_axis(__global const float* restrict x, __global float* restrict y,
                            __global const int* restrict index,
                            __global const float* restrict weight,
                            __global const float* restrict outside, float extrapolation,
                            int in_length, int out_length, int inner, int taps, int total) {
  int i = get_global_id(0);
  if (i >= total) return;
  int r = i % inner;
  int j = (i / inner) % out_length;
  int o = i / (inner * out_length);
  const __global float* xo = x + (long)o * in_length * inner + r;
  float acc = 0.0f;
  for (int t = 0; t < taps; t++) {
    acc += weight[j * taps + t] * xo[(long)index[j * taps + t] * inner];
  }
  y[i] = outside[j] != 0.0f ? extrapolation : acc;
}

/* The same for eight consecutive inner elements (inner a multiple of 8): the taps of one
   output row are shared by the eight lanes. */
__kernel void resample_axis8(__global const float* restrict x, __global float* restrict y,
                             __global const int* restrict index,
                             __global const float* restrict weight,
                             __global const float* restrict outside, float extrapolation,
                             int in_length, int out_length, int inner, int taps, int total) {
  int i = get_global_id(0) * 8;
  if (i >= total) return;
  int r = i % inner;
  int j = (i / inner) % out_length;
  int o = i / (inner * out_length);
  const __global float* xo = x + (long)o * in_length * inner + r;
  float8 acc = (float8)(0.0f);
  for (int t = 0; t < taps; t++) {
    acc += weight[j * taps + t] * load8(xo + (long)index[j * taps + t] * inner);
  }
  store8(y + i, outside[j] != 0.0f ? (float8)(extrapolation) : acc);
}
"""
