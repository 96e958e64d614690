"""Row normalisation: LayerNormalization, RMSNormalization, InstanceNormalization and
GroupNormalization (see :mod:`..lower_normalization` for the scale index map)."""

from __future__ import annotations

NORMALIZATION_SOURCE = r"""
#ifndef NORM_ACT
#define NORM_ACT(v) (v)
#define NORM_ACT8(v) (v)
#else
/* The fused activation, lane by lane (its expression is written for a scalar v). */
inline float norm_act(float v) { return NORM_ACT(v); }
#define NORM_ACT8(v) ((float8)(norm_act((v).s0), norm_act((v).s1), norm_act((v).s2), \
                               norm_act((v).s3), norm_act((v).s4), norm_act((v).s5), \
                               norm_act((v).s6), norm_act((v).s7)))
#endif
/* One work-item per row of `length` contiguous elements: mean (skipped for RMS), variance
   about it, then y = (x - mean) * inv * scale[s] + bias[s] with
   s = ((row % srows) * slen + j) / sdiv. Mean and 1/sqrt(var + eps) are written per row
   when their buffers are given (LayerNormalization's optional outputs). A fused
   activation (NORM_ACT, defined by the lowering) is applied to the result. */
__kernel void normalize_rows(__global const float* restrict x, __global float* restrict y,
                             __global const float* restrict scale,
                             __global const float* restrict bias,
                             __global float* restrict mean_out,
                             __global float* restrict inverse_out, int length, int srows,
                             int slen, int sdiv, float epsilon, int rms, int has_scale,
                             int has_bias, int rows) {
  int row = get_global_id(0);
  if (row >= rows) return;
  const __global float* xr = x + (long)row * length;
  __global float* yr = y + (long)row * length;
  long sbase = (long)(row % srows) * slen;
  if (length % 8 == 0 && (sdiv == 1 || sdiv % 8 == 0)) {
    /* Eight lanes at a time, no index division per element (that division cost more than
       the rest): contiguous scale and bias (LayerNormalization), or one scale per run of
       a multiple of 8 elements (InstanceNormalization, GroupNormalization), which every
       8-aligned block of a row lies inside. */
    float8 sum8 = 0.0f;
    for (int j = 0; j < length; j += 8) sum8 += load8(xr + j);
    float mean = 0.0f;
    if (!rms)
      mean = (((sum8.s0 + sum8.s1) + (sum8.s2 + sum8.s3))
              + ((sum8.s4 + sum8.s5) + (sum8.s6 + sum8.s7))) / (float)length;
    float8 squares8 = 0.0f;
    for (int j = 0; j < length; j += 8) {
      float8 d = load8(xr + j) - (float8)(mean);
      squares8 += d * d;
    }
    float squares = ((squares8.s0 + squares8.s1) + (squares8.s2 + squares8.s3))
                    + ((squares8.s4 + squares8.s5) + (squares8.s6 + squares8.s7));
    float inverse = 1.0f / sqrt(squares / (float)length + epsilon);
    for (int j = 0; j < length; j += 8) {
      float8 v = (load8(xr + j) - (float8)(mean)) * (float8)(inverse);
      if (sdiv == 1) {
        if (has_scale) v *= load8(scale + sbase + j);
        if (has_bias) v += load8(bias + sbase + j);
      } else {
        long s = (sbase + j) / sdiv;
        if (has_scale) v *= (float8)(scale[s]);
        if (has_bias) v += (float8)(bias[s]);
      }
      store8(yr + j, NORM_ACT8(v));
    }
    if (mean_out) mean_out[row] = mean;
    if (inverse_out) inverse_out[row] = inverse;
    return;
  }
  float mean = 0.0f;
  if (!rms) {
    float sum = 0.0f;
    for (int j = 0; j < length; j++) sum += xr[j];
    mean = sum / (float)length;
  }
  float squares = 0.0f;
  for (int j = 0; j < length; j++) {
    float d = xr[j] - mean;
    squares += d * d;
  }
  float inverse = 1.0f / sqrt(squares / (float)length + epsilon);
  for (int j = 0; j < length; j++) {
    long s = (sbase + j) / sdiv;
    float v = (xr[j] - mean) * inverse;
    if (has_scale) v *= scale[s];
    if (has_bias) v += bias[s];
    yr[j] = NORM_ACT(v);
  }
  if (mean_out) mean_out[row] = mean;
  if (inverse_out) inverse_out[row] = inverse;
}

/* LayerNormalization of a channels-first tensor read as channels-last (ConvNeXt's permute
   before each LayerNorm, left as a view): eight rows per work-item, one per vector lane.
   Row r starts at offset + (r / inner) * outer + r % inner (inner a multiple of 8, so the
   eight rows of a work-item are consecutive in memory); its element j is `stride` further.
   The output is written contiguous, row after row, or (same_layout, when the permute
   back to channels-first is fused) at the input's positions less its offset. */
__kernel void normalize_rows_t8(__global const float* restrict x, __global float* restrict y,
                                __global const float* restrict scale,
                                __global const float* restrict bias, int length, int inner,
                                int outer, int stride, int offset, float epsilon,
                                int has_scale, int has_bias, int same_layout, int groups) {
  int g = get_global_id(0);
  if (g >= groups) return;
  int r0 = g * 8;
  int position = (r0 / inner) * outer + r0 % inner;
  const __global float* xr = x + offset + position;
  float8 sum = 0.0f;
  for (int j = 0; j < length; j++) sum += load8(xr + j * stride);
  float8 mean = sum / (float8)((float)length);
  float8 squares = 0.0f;
  for (int j = 0; j < length; j++) {
    float8 d = load8(xr + j * stride) - mean;
    squares += d * d;
  }
  float8 inverse = (float8)(1.0f) / sqrt(squares / (float8)((float)length) + (float8)(epsilon));
  if (same_layout) {
    __global float* yp = y + position;
    for (int j = 0; j < length; j++) {
      float8 v = (load8(xr + j * stride) - mean) * inverse;
      if (has_scale) v *= (float8)(scale[j]);
      if (has_bias) v += (float8)(bias[j]);
      store8(yp + j * stride, v);
    }
    return;
  }
  __global float* yr = y + (size_t)r0 * length;
  for (int j = 0; j < length; j++) {
    float8 v = (load8(xr + j * stride) - mean) * inverse;
    if (has_scale) v *= (float8)(scale[j]);
    if (has_bias) v += (float8)(bias[j]);
    yr[j] = v.s0; yr[length + j] = v.s1; yr[2 * length + j] = v.s2;
    yr[3 * length + j] = v.s3; yr[4 * length + j] = v.s4; yr[5 * length + j] = v.s5;
    yr[6 * length + j] = v.s6; yr[7 * length + j] = v.s7;
  }
}

/* The same for any `inner` (ConvNeXt's last stage on 2x2 maps, its head on 1x1): one row
   per work-item. */
__kernel void normalize_rows_strided(__global const float* restrict x,
                                     __global float* restrict y,
                                     __global const float* restrict scale,
                                     __global const float* restrict bias, int length,
                                     int inner, int outer, int stride, int offset,
                                     float epsilon, int has_scale, int has_bias,
                                     int same_layout, int rows) {
  int r = get_global_id(0);
  if (r >= rows) return;
  int position = (r / inner) * outer + r % inner;
  const __global float* xr = x + offset + position;
  float sum = 0.0f;
  for (int j = 0; j < length; j++) sum += xr[j * stride];
  float mean = sum / (float)length;
  float squares = 0.0f;
  for (int j = 0; j < length; j++) {
    float d = xr[j * stride] - mean;
    squares += d * d;
  }
  float inverse = 1.0f / sqrt(squares / (float)length + epsilon);
  __global float* yr = same_layout ? y + position : y + (size_t)r * length;
  int step = same_layout ? stride : 1;
  for (int j = 0; j < length; j++) {
    float v = (xr[j * stride] - mean) * inverse;
    if (has_scale) v *= scale[j];
    if (has_bias) v += bias[j];
    yr[j * step] = v;
  }
}
"""
