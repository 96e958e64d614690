"""Implicit-GEMM convolution: the 8x8 register-blocked GEMM reading its B operand straight
from the (zero-padded) input instead of from im2col panels.

Why (numbers in docs/opencl-engine.md): on SqueezeNet, im2col was a fifth of the kernel time
although it only moves data; the GEMM can load the same 8 floats itself. The input is viewed
as planes of ``Hp x Wp`` that already contain the padding (the input itself when the pads are
0, else a zero-padded copy made by ``pad_planes``), so no tap needs a bounds check. Output
columns are laid out so that a column block's 8 inputs are contiguous (stride 1) or every
other float (stride 2) for *every* tap:

* *wide* rows (stride 1): column ``n = oy * Wp + ox``, ``ox`` running over the whole padded
  row; columns with ``ox >= OW`` are computed and dropped. Input address ``n + koff[k]``.
* *padded* rows: column ``n = oy * Wq + ox`` with ``Wq`` a multiple of 8, so a block never
  crosses an output row; the block's first input is ``oy * SH * Wp + ox * SW``.

``koff[k]`` is the input offset of tap ``k = (ci, ky, kx)``: ``ci * Hp * Wp + ky * DH * Wp +
kx * DW``. The dropped columns read valid memory (the planner gives the input slack past its
end) and only ever reach dropped accumulators.
"""

from __future__ import annotations

#: 8x8 column blocks per work-item, as in ``gemm_8x8``.
CONV_COLUMN_BLOCKS = 4

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

IMPLICIT_CONV_SOURCE = (
    f"#define CONV_COLUMN_BLOCKS {CONV_COLUMN_BLOCKS}\n"
    + _BODY.replace("NAME", "conv_gemm_s1").replace("LOAD_B(", "load8(")
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
