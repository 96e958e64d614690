"""Pointwise convolution (1x1, stride 1, no padding) with output channels along the vector.

``conv_gemm6`` puts pixels along its vectors, 16 to a tile per image: a 7x7 map (49 pixels)
fills four tiles, 64 columns for 49, and every map that is not a multiple of 16 pixels
drops part of its last tile. Here a tile is 16 output channels (two ``float8``, two loads
of packed weights per k) by 6 pixels (each one scalar broadcast per k), 12 accumulators as
in ``conv_gemm6`` (7 pixels would need 17 vector registers of AVX2's 16 and spill); the
pixels run over the images of the batch together, so a 7x7 map loses 5 of 54 columns at
batch 1 and 4 of 396 at batch 8, where ``conv_gemm6`` loses 15 of 64 per image. The price
is the store: a pixel's 16 channels lie a plane apart, so the epilogue writes scalars,
which is cheap only against a long k loop (many input channels).
"""

from __future__ import annotations

#: Pixels per tile of ``conv_pointwise``.
POINTWISE_PIXELS = 6

#: Output channels per tile of ``conv_pointwise`` (two 8-row weight panels).
POINTWISE_CHANNELS = 16

POINTWISE_SOURCE = r"""
/* Epilogue of one pixel of a conv_pointwise tile: channels m0..m0+rows-1 at out + m * P. */
#define POINTWISE_STORE(j, lo, hi)                                                        \
  if (out[j] >= 0) {                                                                      \
    float v16[16] = {lo.s0, lo.s1, lo.s2, lo.s3, lo.s4, lo.s5, lo.s6, lo.s7,              \
                     hi.s0, hi.s1, hi.s2, hi.s3, hi.s4, hi.s5, hi.s6, hi.s7};             \
    for (int i = 0; i < rows; i++) {                                                      \
      float v = v16[i];                                                                   \
      if (has_bias) v += bias[m0 + i];                                                    \
      int o = out[j] + (m0 + i) * P;                                                      \
      if (has_residual) v += residual[o];                                                 \
      C[o] = apply_activation(v, act, act_a, act_b);                                      \
    }                                                                                     \
  }
#define POINTWISE_FMA(j, c, d)                                                            \
  s = (float8)(xk[px[j]]);                                                                \
  c = a0 * s + c;                                                                         \
  d = a1 * s + d;

/* C[img][m][p] = ACT(sum_k A[m][k] X[img][k][p] + bias[m] (+ residual)) for a 1x1 stride-1
   unpadded convolution. A is packed in 8-row panels [ceil(M/8)][K][8]; channel block mb
   uses panels 2mb and 2mb+1. Pixel n of the batch (n < N = images * P) is pixel n % P of
   image n / P. Grid: (ceil(tiles / tiles_per_item), ceil(M / 16)); a work-item computes
   tiles_per_item consecutive 6-pixel tiles of one 16-channel block. */
__kernel void conv_pointwise(__global const float* restrict A, __global const float* restrict X,
                             __global float* restrict C, __global const float* restrict bias,
                             __global const float* restrict residual,
                             int M, int K, int P, int N, int x_image_stride, int out_offset,
                             int s_image, int has_bias, int has_residual, int act, float act_a,
                             float act_b, int tiles_per_item) {
  int mb = get_global_id(1);
  int m0 = mb * 16;
  int rows = imin(16, M - m0);
  const __global float* a_lo = A + (size_t)(2 * mb) * K * 8;
  /* a block of 8 channels or fewer has no second panel: read the first twice */
  const __global float* a_hi = rows > 8 ? a_lo + (size_t)K * 8 : a_lo;
  int tiles = (N + 5) / 6;
  int first = get_global_id(0) * tiles_per_item;
  int last = imin(first + tiles_per_item, tiles);
  for (int t = first; t < last; t++) {
    int px[6];
    int out[6];
    int n = t * 6;
    int img = n / P;
    int p = n - img * P;
    for (int j = 0; j < 6; j++) {
      if (n + j < N) {
        px[j] = img * x_image_stride + p;
        out[j] = out_offset + img * s_image + p;
        if (++p == P) {
          p = 0;
          img++;
        }
      } else {  /* past the last pixel: recompute the first, store nothing */
        px[j] = px[0];
        out[j] = -1;
      }
    }
    float8 c0 = 0.0f, c1 = 0.0f, c2 = 0.0f, c3 = 0.0f, c4 = 0.0f, c5 = 0.0f;
    float8 d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f, d4 = 0.0f, d5 = 0.0f;
    const __global float* xk = X;
    for (int k = 0; k < K; k++) {
      float8 a0 = load8(a_lo + k * 8);
      float8 a1 = load8(a_hi + k * 8);
      float8 s;
      POINTWISE_FMA(0, c0, d0) POINTWISE_FMA(1, c1, d1) POINTWISE_FMA(2, c2, d2)
      POINTWISE_FMA(3, c3, d3) POINTWISE_FMA(4, c4, d4) POINTWISE_FMA(5, c5, d5)
      xk += P;
    }
    POINTWISE_STORE(0, c0, d0) POINTWISE_STORE(1, c1, d1) POINTWISE_STORE(2, c2, d2)
    POINTWISE_STORE(3, c3, d3) POINTWISE_STORE(4, c4, d4) POINTWISE_STORE(5, c5, d5)
  }
}
#undef POINTWISE_FMA
#undef POINTWISE_STORE
"""
