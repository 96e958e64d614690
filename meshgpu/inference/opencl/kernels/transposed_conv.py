"""ConvTranspose kernels (1-D, 2-D and 3-D, all as 3-D with unit leading dimensions).

With constant weights the lowering runs a transposed convolution as a GEMM and a gather:
the GEMM (the 1x1-convolution kernel) multiplies every input pixel by every
``(output channel, tap)`` row of the weights into a column tensor, and ``col2im_gather``
sums, for each output element, the column entries of the taps that land on it (adding the
bias, the fused per-channel affine, residual and activation). Weights computed at run time
take ``conv_transpose_direct``, which sums the same products one output element at a time.
"""

from __future__ import annotations

TRANSPOSED_CONV_SOURCE = r"""
#ifndef ACT
#define ACT(v) (v)
#endif
/* The input position a tap reads for output coordinate o, or -1: t = o + pad - k * dil
   must be a multiple of the stride and t / stride inside the input. */
inline int transposed_source(int o, int pad, int k, int dil, int stride, int size) {
  int t = o + pad - k * dil;
  if (t < 0 || t % stride) return -1;
  t /= stride;
  return t < size ? t : -1;
}

/* The output row (n, co, od, oy) of row index ``row`` (rows in n, co, od, oy order). */
inline void output_row(int row, int CO, int OD, int OH, int* n, int* co, int* od, int* oy) {
  *oy = row % OH;
  int rest = row / OH;
  *od = rest % OD;
  rest /= OD;
  *co = rest % CO;
  *n = rest / CO;
}

/* cols[n][co * KK + tap][id][iy][ix] (KK = KD * KH * KW taps, planes of D * H * W) ->
   y[n][channel_offset + co][od][oy][ox]; y's images are image_stride floats apart (a
   channel slice of a concatenation when placed there). One work-item per output row
   (n, co, od, oy): the row starts at zero, each tap whose source row is inside the input
   adds its run of input columns (ox = ix * SW + kx * DW - PW, no division per element),
   then bias, residual and activation are applied in one pass over the row. */
__kernel void col2im_gather(__global const float* restrict cols,
                            __global const float* restrict bias,
                            __global const float* restrict residual, __global float* restrict y,
                            int CO, int D, int H, int W, int OD, int OH, int OW,
                            int KD, int KH, int KW, int SD, int SH, int SW, int PD, int PH, int PW,
                            int DD, int DH, int DW, int channel_offset, int image_stride,
                            int rows) {
  int row = get_global_id(0);
  if (row >= rows) return;
  int n, co, od, oy;
  output_row(row, CO, OD, OH, &n, &co, &od, &oy);
  int plane = D * H * W;
  int taps = KD * KH * KW;
  int pixels = OD * OH * OW;
  int within = (od * OH + oy) * OW;
  __global float* yr =
      y + (size_t)n * image_stride + (size_t)(channel_offset + co) * pixels + within;
  const __global float* cn = cols + ((size_t)n * CO + co) * taps * plane;
  for (int ox = 0; ox < OW; ox++) yr[ox] = 0.0f;
  for (int kd = 0; kd < KD; kd++) {
    int id = transposed_source(od, PD, kd, DD, SD, D);
    if (id < 0) continue;
    for (int ky = 0; ky < KH; ky++) {
      int iy = transposed_source(oy, PH, ky, DH, SH, H);
      if (iy < 0) continue;
      for (int kx = 0; kx < KW; kx++) {
        int off = kx * DW - PW;
        int last = OW - 1 - off;
        if (last < 0) continue;
        int lo = off >= 0 ? 0 : (-off + SW - 1) / SW;
        int hi = min(W, last / SW + 1);
        const __global float* src =
            cn + (size_t)((kd * KH + ky) * KW + kx) * plane + (id * H + iy) * W;
        for (int ix = lo; ix < hi; ix++) yr[ix * SW + off] += src[ix];
      }
    }
  }
#if defined(HAS_BIAS) || defined(HAS_RESIDUAL) || defined(HAS_ACT)
  const __global float* rr = residual + ((size_t)n * CO + co) * pixels + within;
  for (int ox = 0; ox < OW; ox++) {
    float v = yr[ox];
#ifdef HAS_BIAS
    v += bias[co];
#endif
#ifdef HAS_RESIDUAL
    v += rr[ox];
#endif
    yr[ox] = ACT(v);
  }
#endif
}

/* y[n][co][od][oy][ox] = bias[co] + sum over the input channels ci of co's group and taps
   (kd, ky, kx) whose source position is inside the input of
   x[n][ci][id][iy][ix] * w[ci][co % COG][kd][ky][kx]  (ONNX ConvTranspose; w is
   [C_in][C_out/group][KD][KH][KW]). One work-item per output element. */
__kernel void conv_transpose_direct(__global const float* restrict x,
                                    __global const float* restrict w,
                                    __global const float* restrict bias,
                                    __global float* restrict y,
                                    int CI, int D, int H, int W, int CO, int OD, int OH, int OW,
                                    int KD, int KH, int KW, int SD, int SH, int SW,
                                    int PD, int PH, int PW, int DD, int DH, int DW, int groups,
                                    int total) {
  int i = get_global_id(0);
  if (i >= total) return;
  int ox = i % OW;
  int n, co, od, oy;
  output_row(i / OW, CO, OD, OH, &n, &co, &od, &oy);
  int cog = CO / groups;
  int cig = CI / groups;
  int g = co / cog;
  int col = co % cog;
  size_t plane = (size_t)D * H * W;
  size_t taps = (size_t)KD * KH * KW;
  float acc = bias ? bias[co] : 0.0f;
  for (int kd = 0; kd < KD; kd++) {
    int id = transposed_source(od, PD, kd, DD, SD, D);
    if (id < 0) continue;
    for (int ky = 0; ky < KH; ky++) {
      int iy = transposed_source(oy, PH, ky, DH, SH, H);
      if (iy < 0) continue;
      for (int kx = 0; kx < KW; kx++) {
        int ix = transposed_source(ox, PW, kx, DW, SW, W);
        if (ix < 0) continue;
        const __global float* xp =
            x + ((size_t)n * CI + g * cig) * plane + ((size_t)id * H + iy) * W + ix;
        const __global float* wp =
            w + ((size_t)(g * cig) * cog + col) * taps + (kd * KH + ky) * KW + kx;
        for (int c = 0; c < cig; c++) {
          acc += xp[(size_t)c * plane] * wp[(size_t)c * cog * taps];
        }
      }
    }
  }
  y[i] = acc;
}
"""
