"""Winograd F(2x2, 3x3) transforms for stride-1 3x3 convolutions (Lavin and Gray, "Fast
Algorithms for Convolutional Neural Networks", 2016, section 4.1).

Each 2x2 block of outputs (a *tile*) of output channel ``o`` is ``A^T [sum_c U[o,c] * V[c]]
A`` where ``V[c] = B^T d B`` is the transformed 4x4 input patch of channel ``c`` and ``U[o,c] =
G g G^T`` the transformed 3x3 filter (computed once on the host). Per tile and channel pair
that is 16 multiplies instead of 36. The sum over channels is, for each of the 16 positions
``p`` of the 4x4 transform, a GEMM ``M[p] = U[p] (out x in) . V[p] (in x tiles)``; the
engine runs the 16 as the groups of one ``conv_gemm6`` launch (a 1x1 convolution over
"planes" of ``pitch`` tile columns), so the product keeps its 6x16 tile and per-device tuning.

Layouts: ``V[p][c][n]`` and ``M[p][o][n]``, ``n = (image * tiles_h + ty) * tiles_w + tx``
flattened over the batch, rows of ``pitch`` floats (``n`` rounded up to the GEMM's 16-column
tile). The input is read from zero-padded planes (``pad_planes``) wide enough that the two
16-float loads of every group of 8 tiles stay inside its row, so no tap needs a bounds check.
"""

from __future__ import annotations

#: Tiles a work-item of the transforms takes along a tile row (one float8 lane each).
WINOGRAD_TILES = 8

WINOGRAD_SOURCE = r"""
/* B^T d B along one axis: d0..d3 -> four transformed values (B^T's rows). */
#define WINO_IN(d0, d1, d2, d3, t0, t1, t2, t3) \
  t0 = d0 - d2; t1 = d1 + d2; t2 = d2 - d1; t3 = d1 - d3;

/* Input transform. One work-item per (image, channel, tile row, group of 8 tiles); its
   lanes are 8 consecutive tiles of the row. x: zero-padded planes of Hp x Wp with the
   padded input pixel (iy, ix) of tile (ty, tx) tap (i, j) at (2 ty + i, 2 tx + j). */
__kernel void winograd_input(__global const float* restrict x, __global float* restrict V,
                             int channels, int Hp, int Wp, int tiles_h, int tiles_w,
                             int pitch, int groups_per_row, int total, int per_item) {
  int first = get_global_id(0) * per_item;
  int end = imin(first + per_item, total);
  for (int id = first; id < end; id++) {
  int row = id / groups_per_row;
  int tx0 = (id - row * groups_per_row) * 8;
  int plane = row / tiles_h;            /* image * channels + c */
  int ty = row - plane * tiles_h;
  int img = plane / channels;
  int c = plane - img * channels;
  const __global float* p = x + ((size_t)plane * Hp + 2 * ty) * Wp + 2 * tx0;
  float8 t[4][4];
  for (int i = 0; i < 4; i++) {
    float16 a = load16(p + i * Wp);
    float16 b = load16(p + i * Wp + 2);
    WINO_IN(a.even, a.odd, b.even, b.odd, t[i][0], t[i][1], t[i][2], t[i][3])
  }
  int n = (img * tiles_h + ty) * tiles_w + tx0;
  int count = imin(8, tiles_w - tx0);
  size_t position_stride = (size_t)channels * pitch;
  __global float* out = V + (size_t)c * pitch + n;
  for (int j = 0; j < 4; j++) {
    float8 v[4];
    WINO_IN(t[0][j], t[1][j], t[2][j], t[3][j], v[0], v[1], v[2], v[3])
    for (int i = 0; i < 4; i++) {
      __global float* o = out + (i * 4 + j) * position_stride;
      if (count == 8) {
        store8(o, v[i]);
      } else {
        float lanes[8] __attribute__((aligned(32)));
        *(float8*)lanes = v[i];
        for (int l = 0; l < count; l++) o[l] = lanes[l];
      }
    }
  }
  }
}

/* Output transform with the convolution's epilogue (bias, residual, activation). One
   work-item per (image, output channel, tile row, group of 8 tiles). M[p][o][n] as above;
   output (image, o, oy, ox) at out_offset + image * s_image + o * OH * OW + oy * OW + ox. */
__kernel void winograd_output(__global const float* restrict Mt, __global float* restrict C,
                              __global const float* restrict bias,
                              __global const float* restrict residual,
                              int out_channels, int OH, int OW, int tiles_h, int tiles_w,
                              int pitch, int groups_per_row, int total, int out_offset,
                              int s_image, int has_bias, int has_residual, int act,
                              float act_a, float act_b, int per_item) {
  int first = get_global_id(0) * per_item;
  int end = imin(first + per_item, total);
  for (int id = first; id < end; id++) {
  int row = id / groups_per_row;
  int tx0 = (id - row * groups_per_row) * 8;
  int plane = row / tiles_h;            /* image * out_channels + o */
  int ty = row - plane * tiles_h;
  int img = plane / out_channels;
  int o = plane - img * out_channels;
  int n = (img * tiles_h + ty) * tiles_w + tx0;
  size_t position_stride = (size_t)out_channels * pitch;
  const __global float* m = Mt + (size_t)o * pitch + n;
  /* A^T M A with A^T = [1 1 1 0; 0 1 -1 -1], rows first. */
  float8 r0[4], r1[4];
  for (int j = 0; j < 4; j++) {
    float8 m0 = load8(m + j * position_stride);
    float8 m1 = load8(m + (4 + j) * position_stride);
    float8 m2 = load8(m + (8 + j) * position_stride);
    float8 m3 = load8(m + (12 + j) * position_stride);
    r0[j] = m0 + m1 + m2;
    r1[j] = m1 - m2 - m3;
  }
  float b = has_bias ? bias[o] : 0.0f;
  float8 y[2][2];
  y[0][0] = r0[0] + r0[1] + r0[2] + b;
  y[0][1] = r0[1] - r0[2] - r0[3] + b;
  y[1][0] = r1[0] + r1[1] + r1[2] + b;
  y[1][1] = r1[1] - r1[2] - r1[3] + b;
  int base = out_offset + img * s_image + o * OH * OW;
  int count = imin(8, tiles_w - tx0);
  for (int i = 0; i < 2; i++) {
    int oy = 2 * ty + i;
    if (oy >= OH) break;
    int index = base + oy * OW + 2 * tx0;
    if (count == 8 && 2 * tx0 + 16 <= OW && (act == 0 || act == 1)) {
      float8 e = y[i][0], f = y[i][1];
      float8 lo = (float8)(e.s0, f.s0, e.s1, f.s1, e.s2, f.s2, e.s3, f.s3);
      float8 hi = (float8)(e.s4, f.s4, e.s5, f.s5, e.s6, f.s6, e.s7, f.s7);
      if (has_residual) {
        lo += load8(residual + index);
        hi += load8(residual + index + 8);
      }
      if (act == 1) {
        lo = lo > (float8)(0.0f) ? lo : (float8)(0.0f);
        hi = hi > (float8)(0.0f) ? hi : (float8)(0.0f);
      }
      store8(C + index, lo);
      store8(C + index + 8, hi);
      continue;
    }
    float lanes[16] __attribute__((aligned(32)));
    *(float8*)lanes = y[i][0];
    *(float8*)(lanes + 8) = y[i][1];
    for (int l = 0; l < count; l++) {
      for (int j = 0; j < 2; j++) {
        int ox = 2 * (tx0 + l) + j;
        if (ox >= OW) continue;
        float v = lanes[j * 8 + l];
        if (has_residual) v += residual[index + 2 * l + j];
        C[index + 2 * l + j] = apply_activation(v, act, act_a, act_b);
      }
    }
  }
  }
}
"""
