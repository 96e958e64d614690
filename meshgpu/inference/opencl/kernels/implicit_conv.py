"""Implicit-GEMM convolution: a register-blocked GEMM reading its B operand straight from
the (zero-padded) input instead of from im2col panels.

Why (numbers in docs/opencl-engine.md): on SqueezeNet, im2col was a fifth of the kernel time
although it only moves data; the GEMM can load the same 8 floats itself. The input is viewed
as planes of ``Hp x Wp`` that already contain the padding (the input itself when the pads are
0, else a zero-padded copy made by ``pad_planes``), so no tap needs a bounds check. Output
columns are laid out so that a column block's 8 inputs are contiguous (stride 1) or every
other float (stride 2) for *every* tap:

* *wide* rows (stride 1): column ``n = oy * Wp + ox``, ``ox`` running over the whole padded
  row; columns with ``ox >= OW`` are computed and dropped. Input address ``n + koff[k]``, so
  any run of columns is contiguous: ``conv_gemm6`` takes 16 at a time with a 6x16 tile
  (12 accumulators, 8 loads per 12 FMAs; the 8x8 tile needs 10 loads per 8 FMAs and was
  15-20 % slower, numbers in docs/opencl-engine.md);
* *padded* rows (stride 2): column ``n = oy * Wq + ox`` with ``Wq`` a multiple of 8, so a
  block never crosses an output row; the block's first input is ``oy * SH * Wp + ox * 2``,
  and ``conv_gemm_s2`` (8x8 tile, 8-row weight panels) loads 16 floats and keeps the even.

``koff[k]`` is the input offset of tap ``k = (ci, ky, kx)``: ``ci * Hp * Wp + ky * DH * Wp +
kx * DW``. The dropped columns read valid memory (the planner gives the input slack past its
end) and only ever reach dropped accumulators.
"""

from __future__ import annotations

#: 8x8 column blocks per work-item of ``conv_gemm_s2``, as in ``gemm_8x8``.
CONV_COLUMN_BLOCKS = 4

#: 16-column tiles per work-item of ``conv_gemm6``, unless there are enough row tiles to
#: keep every core busy with one work-item per row tile: then a work-item takes every
#: column tile and reads its weight panel once (SqueezeNet's 512->1000 pointwise layer:
#: 2.5 ms instead of 3.6 ms, the weights being larger than L2).
CONV_COLUMN_TILES = 2

#: Row tiles (times groups and images) from which a work-item takes all column tiles.
CONV_ROW_PARALLELISM = 64

#: Work-items ``conv_gemm6`` aims for; beyond that a work-item takes several row tiles,
#: looping over them inside each column tile so the tile's inputs are reread from L1
#: (10-25 % faster on SqueezeNet's pointwise layers, 2.3 instead of 2.7 ms on its
#: 512->1000 layer, neutral on its 3x3 layers; interleaved runs, docs/opencl-engine.md).
CONV_WORK_ITEMS = 32

#: Weight rows per panel of ``conv_gemm6`` (``conv_gemm_s2`` uses 8-row panels).
CONV6_ROWS = 6

_BODY = r"""
__kernel void NAME(__global const float* restrict A, __global const float* restrict X,
                   __global float* restrict C, __global const float* restrict bias,
                   __global const float* restrict residual,
                   __global const int* restrict koff,
                   int M, int K, int columns, int Wq, int Wp, int SH, int SW, int OH, int OW,
                   int groups, int x_group_stride, int x_image_stride, int out_offset,
                   int s_image, int has_bias, int has_residual, int act, float act_a,
                   float act_b) {
  int mb = get_global_id(1);
  int z = get_global_id(2);
  int g = z % groups;
  int img = z / groups;
  int P = OH * OW;
  const __global float8* a = (const __global float8*)(A + ((size_t)g * ((M + 7) / 8) + mb)
                                                       * K * 8);
  const __global float* xg = X + (size_t)img * x_image_stride + (size_t)g * x_group_stride;
  int base = out_offset + img * s_image + g * M * P;
  int rows = imin(8, M - mb * 8);
  int first = get_global_id(0) * CONV_COLUMN_BLOCKS;
  int last = imin(first + CONV_COLUMN_BLOCKS, (columns + 7) / 8);
  for (int nb = first; nb < last; nb++) {
    int n0 = nb * 8;
    int oy = n0 / Wq;
    int ox = n0 - oy * Wq;
    const __global float* xb = xg + oy * SH * Wp + ox * SW;
    float8 c0 = 0.0f, c1 = 0.0f, c2 = 0.0f, c3 = 0.0f, c4 = 0.0f, c5 = 0.0f, c6 = 0.0f,
           c7 = 0.0f;
    for (int k = 0; k < K; k++) {
      float8 bv = LOAD_B(xb + koff[k]);
      float8 av = a[k];
      c0 = (float8)(av.s0) * bv + c0;
      c1 = (float8)(av.s1) * bv + c1;
      c2 = (float8)(av.s2) * bv + c2;
      c3 = (float8)(av.s3) * bv + c3;
      c4 = (float8)(av.s4) * bv + c4;
      c5 = (float8)(av.s5) * bv + c5;
      c6 = (float8)(av.s6) * bv + c6;
      c7 = (float8)(av.s7) * bv + c7;
    }
    /* Fast path: the 8 columns are valid pixels of one output row. */
    if (ox + 8 <= OW && oy < OH && (act == 0 || act == 1)) {
      int index0 = base + oy * OW + ox;
#define CONV_ROW(i, acc)                                                                  \
      if (i < rows) {                                                                     \
        int m = mb * 8 + i;                                                               \
        float8 v = acc;                                                                   \
        if (has_bias) v += (float8)(bias[g * M + m]);                                     \
        int index = index0 + m * P;                                                       \
        if (has_residual) v += load8(residual + index);                                   \
        if (act == 1) v = v > (float8)(0.0f) ? v : (float8)(0.0f);                        \
        store8(C + index, v);                                                             \
      }
      CONV_ROW(0, c0) CONV_ROW(1, c1) CONV_ROW(2, c2) CONV_ROW(3, c3)
      CONV_ROW(4, c4) CONV_ROW(5, c5) CONV_ROW(6, c6) CONV_ROW(7, c7)
#undef CONV_ROW
      continue;
    }
    float acc[64];
#define CONV_SPILL(i, c)                                                                  \
    acc[i * 8 + 0] = c.s0; acc[i * 8 + 1] = c.s1; acc[i * 8 + 2] = c.s2;                  \
    acc[i * 8 + 3] = c.s3; acc[i * 8 + 4] = c.s4; acc[i * 8 + 5] = c.s5;                  \
    acc[i * 8 + 6] = c.s6; acc[i * 8 + 7] = c.s7;
    CONV_SPILL(0, c0) CONV_SPILL(1, c1) CONV_SPILL(2, c2) CONV_SPILL(3, c3)
    CONV_SPILL(4, c4) CONV_SPILL(5, c5) CONV_SPILL(6, c6) CONV_SPILL(7, c7)
#undef CONV_SPILL
    int y = oy, x = ox;
    for (int j = 0; j < 8 && n0 + j < columns; j++) {
      if (x < OW && y < OH) {
        int pixel = base + y * OW + x;
        for (int i = 0; i < rows; i++) {
          int m = mb * 8 + i;
          float v = acc[i * 8 + j];
          if (has_bias) v += bias[g * M + m];
          int index = pixel + m * P;
          if (has_residual) v += residual[index];
          C[index] = apply_activation(v, act, act_a, act_b);
        }
      }
      if (++x == Wq) {
        x = 0;
        y++;
      }
    }
  }
}
"""

_GEMM6 = r"""
/* Epilogue of a 6-row x 8-column piece of a conv_gemm6 tile (columns n0..n0+7). */
__attribute__((always_inline))
inline void conv_store6(float8 v0, float8 v1, float8 v2, float8 v3, float8 v4, float8 v5,
                        int n0, int m0, int rows, int columns, int Wq, int OH, int OW,
                        int base, int bias_base, __global const float* restrict bias,
                        __global const float* restrict residual, __global float* restrict C,
                        int has_bias, int has_residual, int act, float act_a, float act_b) {
  if (n0 >= columns) return;
  int P = OH * OW;
  int oy = n0 / Wq;
  int ox = n0 - oy * Wq;
  if (ox + 8 <= OW && oy < OH && (act == 0 || act == 1)) {
    int index0 = base + oy * OW + ox;
#define CONV6_ROW(i, acc)                                                                 \
    if (i < rows) {                                                                       \
      float8 v = acc;                                                                     \
      if (has_bias) v += (float8)(bias[bias_base + m0 + i]);                              \
      int index = index0 + (m0 + i) * P;                                                  \
      if (has_residual) v += load8(residual + index);                                     \
      if (act == 1) v = v > (float8)(0.0f) ? v : (float8)(0.0f);                          \
      store8(C + index, v);                                                               \
    }
    CONV6_ROW(0, v0) CONV6_ROW(1, v1) CONV6_ROW(2, v2)
    CONV6_ROW(3, v3) CONV6_ROW(4, v4) CONV6_ROW(5, v5)
#undef CONV6_ROW
    return;
  }
  float acc[48];
#define CONV6_SPILL(i, c)                                                                 \
  acc[i * 8 + 0] = c.s0; acc[i * 8 + 1] = c.s1; acc[i * 8 + 2] = c.s2;                    \
  acc[i * 8 + 3] = c.s3; acc[i * 8 + 4] = c.s4; acc[i * 8 + 5] = c.s5;                    \
  acc[i * 8 + 6] = c.s6; acc[i * 8 + 7] = c.s7;
  CONV6_SPILL(0, v0) CONV6_SPILL(1, v1) CONV6_SPILL(2, v2)
  CONV6_SPILL(3, v3) CONV6_SPILL(4, v4) CONV6_SPILL(5, v5)
#undef CONV6_SPILL
  int y = oy, x = ox;
  for (int j = 0; j < 8 && n0 + j < columns; j++) {
    if (x < OW && y < OH) {
      int pixel = base + y * OW + x;
      for (int i = 0; i < rows; i++) {
        float v = acc[i * 8 + j];
        if (has_bias) v += bias[bias_base + m0 + i];
        int index = pixel + (m0 + i) * P;
        if (has_residual) v += residual[index];
        C[index] = apply_activation(v, act, act_a, act_b);
      }
    }
    if (++x == Wq) {
      x = 0;
      y++;
    }
  }
}

/* Stride-1 convolution over wide rows: a work-item computes tiles_per_item tiles of 6
   output channels x 16 columns. A is packed in 6-row panels [group][ceil(M/6)][K][6]. */
__kernel void conv_gemm6(__global const float* restrict A, __global const float* restrict X,
                         __global float* restrict C, __global const float* restrict bias,
                         __global const float* restrict residual,
                         __global const int* restrict koff,
                         int M, int K, int columns, int Wq, int OH, int OW, int groups,
                         int x_group_stride, int x_image_stride, int out_offset, int s_image,
                         int has_bias, int has_residual, int act, float act_a, float act_b,
                         int tiles_per_item, int row_tiles_per_item) {
  int z = get_global_id(2);
  int g = z % groups;
  int img = z / groups;
  const __global float* xg = X + (size_t)img * x_image_stride + (size_t)g * x_group_stride;
  int base = out_offset + img * s_image + g * M * OH * OW;
  int first = get_global_id(0) * tiles_per_item;
  int last = imin(first + tiles_per_item, (columns + 15) / 16);
  int tb0 = get_global_id(1) * row_tiles_per_item;
  int tb1 = imin(tb0 + row_tiles_per_item, (M + 5) / 6);
  /* Row tiles inside column tiles: a column tile's inputs, loaded from L2 by the first row
     tile, are reread from L1 by the others. */
  for (int nt = first; nt < last; nt++)
  for (int tb = tb0; tb < tb1; tb++) {
    const __global float* a = A + ((size_t)g * ((M + 5) / 6) + tb) * K * 6;
    int rows = imin(6, M - tb * 6);
    const __global float* xb = xg + nt * 16;
    float8 c0 = 0.0f, c1 = 0.0f, c2 = 0.0f, c3 = 0.0f, c4 = 0.0f, c5 = 0.0f;
    float8 d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f, d4 = 0.0f, d5 = 0.0f;
    for (int k = 0; k < K; k++) {
      const __global float* p = xb + koff[k];
      float8 b0 = load8(p);
      float8 b1 = load8(p + 8);
      const __global float* ak = a + k * 6;
      float8 s = (float8)(ak[0]);
      c0 = s * b0 + c0;
      d0 = s * b1 + d0;
      s = (float8)(ak[1]);
      c1 = s * b0 + c1;
      d1 = s * b1 + d1;
      s = (float8)(ak[2]);
      c2 = s * b0 + c2;
      d2 = s * b1 + d2;
      s = (float8)(ak[3]);
      c3 = s * b0 + c3;
      d3 = s * b1 + d3;
      s = (float8)(ak[4]);
      c4 = s * b0 + c4;
      d4 = s * b1 + d4;
      s = (float8)(ak[5]);
      c5 = s * b0 + c5;
      d5 = s * b1 + d5;
    }
    conv_store6(c0, c1, c2, c3, c4, c5, nt * 16, tb * 6, rows, columns, Wq, OH, OW, base,
                g * M, bias, residual, C, has_bias, has_residual, act, act_a, act_b);
    conv_store6(d0, d1, d2, d3, d4, d5, nt * 16 + 8, tb * 6, rows, columns, Wq, OH, OW, base,
                g * M, bias, residual, C, has_bias, has_residual, act, act_a, act_b);
  }
}
"""

IMPLICIT_CONV_SOURCE = (
    f"#define CONV_COLUMN_BLOCKS {CONV_COLUMN_BLOCKS}\n"
    + _GEMM6
    + "#define LOAD_EVEN16(p) (load16(p).even)\n"
    + _BODY.replace("NAME", "conv_gemm_s2").replace("LOAD_B(", "LOAD_EVEN16(")
    + r"""
/* Zero-padded copy of input planes for conv_gemm_*: plane rows of Wp floats, Hp rows per
   plane, input pixel (iy, ix) at (iy + PT, ix + PL); rows/columns past the input are 0.
   One work-item per padded row. */
__kernel void pad_planes(__global const float* restrict x, __global float* restrict y,
                         int H, int W, int Hp, int Wp, int PT, int PL, int rows) {
  int row = get_global_id(0);
  if (row >= rows) return;
  int plane = row / Hp;
  int py = row - plane * Hp;
  __global float* out = y + (size_t)row * Wp;
  int iy = py - PT;
  if (iy < 0 || iy >= H) {
    for (int px = 0; px < Wp; px++) out[px] = 0.0f;
    return;
  }
  const __global float* in = x + ((size_t)plane * H + iy) * W;
  int copy_end = imin(Wp, PL + W);
  int px = 0;
  for (; px < PL; px++) out[px] = 0.0f;
  for (; px + 8 <= copy_end; px += 8) store8(out + px, load8(in + px - PL));
  for (; px < copy_end; px++) out[px] = in[px - PL];
  for (; px < Wp; px++) out[px] = 0.0f;
}
"""
)
