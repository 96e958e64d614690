"""Matrix-multiply kernels: packing (im2col included) and an 8x8 register-blocked GEMM.

Why this shape (numbers in docs/opencl-engine.md): on PoCL's CPU device a work-group of one
work-item that keeps an 8x8 tile of C in eight ``float8`` registers and streams *packed*
panels of A and B (each k step reads 8 contiguous floats of A and 8 of B) compiles to
broadcast + FMA over ymm registers and runs close to numpy's BLAS. Tiling through ``__local``
memory buys nothing on a CPU (local memory is ordinary cache) and costs barriers, which PoCL
turns into work-item loop splits.

Layouts (``PANEL`` = 8):

* packed A: ``[batch][ceil(M/8)][K][8]``: row block, then k, then the 8 rows of the block;
* packed B: ``[batch][ceil(N/8)][K][8]``: column block, then k, then the 8 columns;
* C is written element by element through an index map (image, channel, pixel strides) so
  one kernel serves convolution (NCHW output, possibly a slice of a concatenation), Gemm
  (transposed output) and batched MatMul.

``mad()`` is deliberately not used: PoCL 3.0 emits it as an out-of-line call; ``a*b+c`` with
``-cl-mad-enable`` becomes a fused multiply-add.
"""

from __future__ import annotations

from meshgpu.inference.opencl.kernels.activations import clamp, leaky_relu, relu

PANEL = 8

#: k values one im2col work-item fills (K_CHUNK in the kernel source).
IM2COL_K_CHUNK = 32

#: 8x8 column blocks per GEMM work-item (COLUMN_BLOCKS in the kernel source).
GEMM_COLUMN_BLOCKS = 4

#: Most activation rows a Gemm reads unpacked through ``gemm_rows`` (batch sizes up to 8).
SMALL_N_ROWS = 8

IM2COL_SOURCE = r"""
/* im2col straight into packed-B panels: [group][ceil(N/8)][K][8] with K = Cg*KH*KW and
   N = batch*OH*OW. Column n is output pixel (image n / (OH*OW), pixel n % (OH*OW)).
   One work-item fills K_CHUNK consecutive k of one 8-column block: the pixel coordinates
   are decoded once, (ci, ky, kx) advance incrementally, and writes are contiguous. */
#define K_CHUNK 32
__kernel void im2col_panels(__global const float* restrict x, __global float* restrict col,
                            int Cg, int H, int W, int OH, int OW, int KH, int KW,
                            int SH, int SW, int PH, int PW, int DH, int DW,
                            int K, int N, int blocks, int x_image_stride, int k_chunks,
                            int total) {
  int f = get_global_id(0);
  if (f >= total) return;
  int kc = f % k_chunks;
  int t = f / k_chunks;
  int nb = t % blocks;
  int g = t / blocks;
  int P = OH * OW;
  int base[8];
  int iy0[8];
  int ix0[8];
  /* Decode the first column's (image, oy, ox) with divisions, then step. */
  int img = nb * 8 / P;
  int p = nb * 8 - img * P;
  int oy = p / OW;
  int ox = p - oy * OW;
  for (int j = 0; j < 8; j++) {
    if (nb * 8 + j < N) {
      iy0[j] = oy * SH - PH;
      ix0[j] = ox * SW - PW;
      base[j] = img * x_image_stride + g * Cg * H * W;
    } else {
      iy0[j] = -(1 << 28);
      ix0[j] = 0;
      base[j] = 0;
    }
    if (++ox == OW) {
      ox = 0;
      if (++oy == OH) {
        oy = 0;
        img++;
      }
    }
  }
  int k0 = kc * K_CHUNK;
  int k1 = imin(k0 + K_CHUNK, K);
  /* Pointwise convolution: a column block inside one image is 8 consecutive pixels. */
  int n0 = nb * 8;
  if (KH == 1 && KW == 1 && SH == 1 && SW == 1 && PH == 0 && PW == 0 && n0 + 8 <= N
      && n0 / P == (n0 + 7) / P) {
    int img = n0 / P;
    const __global float* xs = x + img * x_image_stride + (g * Cg + k0) * P + (n0 - img * P);
    __global float* o = col + ((size_t)(g * blocks + nb) * K + k0) * 8;
    for (int k = k0; k < k1; k++) {
      store8(o, load8(xs));
      xs += P;
      o += 8;
    }
    return;
  }
  int ci = k0 / (KH * KW);
  int r = k0 - ci * (KH * KW);
  int ky = r / KW;
  int kx = r - ky * KW;
  __global float* out = col + ((size_t)(g * blocks + nb) * K + k0) * 8;
  /* Unit horizontal stride: a block on one output row reads 8 consecutive input pixels. */
  int one_row = SW == 1 && DW == 1 && nb * 8 + 7 < N && iy0[0] == iy0[7] && base[0] == base[7];
  for (int k = k0; k < k1; k++) {
    float v[8];
    int plane = ci * H * W;
    if (one_row) {
      int iy = iy0[0] + ky * DH;
      int ix = ix0[0] + kx;
      if (iy < 0 || iy >= H) {
        store8(out, (float8)(0.0f));
      } else if (ix >= 0 && ix + 7 < W) {
        store8(out, load8(x + base[0] + plane + iy * W + ix));
      } else {
        const __global float* row = x + base[0] + plane + iy * W;
        for (int j = 0; j < 8; j++)
          v[j] = (ix + j >= 0 && ix + j < W) ? row[ix + j] : 0.0f;
        store8(out, (float8)(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]));
      }
      out += 8;
      kx++;
      if (kx == KW) {
        kx = 0;
        ky++;
        if (ky == KH) {
          ky = 0;
          ci++;
        }
      }
      continue;
    }
    for (int j = 0; j < 8; j++) {
      int iy = iy0[j] + ky * DH;
      int ix = ix0[j] + kx * DW;
      v[j] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[base[j] + plane + iy * W + ix] : 0.0f;
    }
    store8(out, (float8)(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]));
    out += 8;
    kx++;
    if (kx == KW) {
      kx = 0;
      ky++;
      if (ky == KH) {
        ky = 0;
        ci++;
      }
    }
  }
}

"""

GEMM_SOURCE = (
    IM2COL_SOURCE
    + f"""
/* Activation chosen at run time (codes: fusion.ACTIVATIONS), so one program serves every
   Conv/Gemm/MatMul of every model: fewer programs means a faster session start. */
inline float apply_activation(float v, int code, float a, float b) {{
  switch (code) {{
    case 1: return {relu("v")};
    case 2: return {leaky_relu("v", "a")};
    case 3: return {clamp("v", "a", "b")};
    case 4: return 1.0f / (1.0f + exp(-v));
    case 5: return tanh(v);
    default: return v;
  }}
}}
"""
    + r"""
/* Pack rows of a strided matrix into [batch][ceil(rows/panel)][cols][panel] panels (panel
   is 8 for gemm_8x8 and conv_gemm_s2, 6 for conv_gemm6). Element (r, c) of batch b is
   src[offsets[b] + r*s_row + c*s_col]; rows past `rows` are 0. */
__kernel void pack_panels(__global const float* restrict src, __global float* restrict dst,
                          __global const int* restrict offsets,
                          int rows, int cols, int s_row, int s_col, int blocks, int total,
                          int panel) {
  int f = get_global_id(0);
  if (f >= total) return;
  int c = f % cols;
  int t = f / cols;
  int rb = t % blocks;
  int b = t / blocks;
  const __global float* s = src + offsets[b] + c * s_col;
  float v[8];
  for (int j = 0; j < 8; j++) {
    int r = rb * panel + j;
    v[j] = j < panel && r < rows ? s[r * s_row] : 0.0f;
  }
  if (panel == 8) {
    store8(dst + (size_t)f * 8, (float8)(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]));
  } else {
    for (int j = 0; j < panel; j++) dst[(size_t)f * panel + j] = v[j];
  }
}

/* C = ACT(alpha * A.B + beta * bias [+ residual]).  Grid: (ceil(N/8), ceil(M/8), batch),
   work-group (1,1,1).  Column n maps to (image n / P, pixel n % P); output element (m, n) of
   batch b lives at out_offset + b*s_batch + image*s_image + m*s_m + pixel*s_p. */
inline void gemm_block(__global const float* restrict A, __global const float* restrict B,
                       __global float* restrict C,
                       __global const float* restrict bias,
                       __global const float* restrict residual,
                       int M, int N, int K, int a_batch_stride, int b_batch_stride,
                       int P, int out_offset, int s_batch, int s_image, int s_m, int s_p,
                       int bias_batch_stride, int bias_s_m, int bias_s_n,
                       float alpha, float beta, int has_bias, int has_residual,
                       int act, float act_a, float act_b, int nb, int mb, int b) {
  const __global float8* a = (const __global float8*)(A + (size_t)b * a_batch_stride
                                                       + (size_t)mb * K * 8);
  const __global float8* bp = (const __global float8*)(B + (size_t)b * b_batch_stride
                                                        + (size_t)nb * K * 8);
  float8 c0 = 0.0f, c1 = 0.0f, c2 = 0.0f, c3 = 0.0f, c4 = 0.0f, c5 = 0.0f, c6 = 0.0f,
         c7 = 0.0f;
  for (int k = 0; k < K; k++) {
    float8 bv = bp[k];
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
  int base = out_offset + b * s_batch;
  int col_index[8];
  int columns = imin(8, N - nb * 8);
  /* One division per block, then step (an integer division costs more than a k step). */
  int img = nb * 8 / P;
  int pix = nb * 8 - img * P;
  for (int j = 0; j < columns; j++) {
    col_index[j] = base + img * s_image + pix * s_p;
    if (++pix == P) {
      pix = 0;
      img++;
    }
  }
  int rows = imin(8, M - mb * 8);
  /* Fast path: 8 output columns contiguous in memory (NCHW pixels of one image) and a bias
     constant along n: whole rows as float8 straight from the accumulators. Matters for
     layers with small K, where the epilogue costs as much as the k loop. */
  if (columns == 8 && s_p == 1 && col_index[7] - col_index[0] == 7 && bias_s_n == 0
      && (act == 0 || act == 1)) {
#define GEMM_ROW(i, acc)                                                                  \
    if (i < rows) {                                                                       \
      int m = mb * 8 + i;                                                                 \
      float8 v = acc * alpha;                                                             \
      if (has_bias) v += (float8)(beta * bias[b * bias_batch_stride + m * bias_s_m]);     \
      int index = col_index[0] + m * s_m;                                                 \
      if (has_residual) v += load8(residual + index);                                     \
      if (act == 1) v = v > (float8)(0.0f) ? v : (float8)(0.0f);                          \
      store8(C + index, v);                                                               \
    }
    GEMM_ROW(0, c0) GEMM_ROW(1, c1) GEMM_ROW(2, c2) GEMM_ROW(3, c3)
    GEMM_ROW(4, c4) GEMM_ROW(5, c5) GEMM_ROW(6, c6) GEMM_ROW(7, c7)
#undef GEMM_ROW
    return;
  }
  float acc[64];
#define GEMM_SPILL(i, c)                                                                  \
  acc[i * 8 + 0] = c.s0; acc[i * 8 + 1] = c.s1; acc[i * 8 + 2] = c.s2;                    \
  acc[i * 8 + 3] = c.s3; acc[i * 8 + 4] = c.s4; acc[i * 8 + 5] = c.s5;                    \
  acc[i * 8 + 6] = c.s6; acc[i * 8 + 7] = c.s7;
  GEMM_SPILL(0, c0) GEMM_SPILL(1, c1) GEMM_SPILL(2, c2) GEMM_SPILL(3, c3)
  GEMM_SPILL(4, c4) GEMM_SPILL(5, c5) GEMM_SPILL(6, c6) GEMM_SPILL(7, c7)
#undef GEMM_SPILL
  for (int i = 0; i < rows; i++) {
    int m = mb * 8 + i;
    for (int j = 0; j < columns; j++) {
      float v = alpha * acc[i * 8 + j];
      if (has_bias)
        v += beta * bias[b * bias_batch_stride + m * bias_s_m + (nb * 8 + j) * bias_s_n];
      int index = col_index[j] + m * s_m;
      if (has_residual) v += residual[index];
      C[index] = apply_activation(v, act, act_a, act_b);
    }
  }
}

/* Each work-item computes COLUMN_BLOCKS consecutive 8x8 blocks of one row block: fewer,
   larger work-groups amortise PoCL's per-work-group cost, and the A panel stays in L1. */
#define COLUMN_BLOCKS 4
__kernel void gemm_8x8(__global const float* restrict A, __global const float* restrict B,
                       __global float* restrict C,
                       __global const float* restrict bias,
                       __global const float* restrict residual,
                       int M, int N, int K, int a_batch_stride, int b_batch_stride,
                       int P, int out_offset, int s_batch, int s_image, int s_m, int s_p,
                       int bias_batch_stride, int bias_s_m, int bias_s_n,
                       float alpha, float beta, int has_bias, int has_residual,
                       int act, float act_a, float act_b) {
  int mb = get_global_id(1);
  int b = get_global_id(2);
  int first = get_global_id(0) * COLUMN_BLOCKS;
  int last = imin(first + COLUMN_BLOCKS, (N + 7) / 8);
  for (int nb = first; nb < last; nb++)
    gemm_block(A, B, C, bias, residual, M, N, K, a_batch_stride, b_batch_stride, P,
               out_offset, s_batch, s_image, s_m, s_p, bias_batch_stride, bias_s_m, bias_s_n,
               alpha, beta, has_bias, has_residual, act, act_a, act_b, nb, mb, b);
}
/* Small-batch GEMM straight from a row-major activation (no packing launch): for a Gemm
   with at most SMALL_N_ROWS activation rows and constant weights, where packing the
   activation cost a launch as expensive as the product itself. Grid: (ceil(M/8)), work-group (1).
   A: packed weight panels [ceil(M/8)][K][8]; activation element (n, k) at
   x[n*x_s_n + k*x_s_k]. Output element (m, n) at out_offset + m*s_m + n*s_p; the epilogue is
   gemm_block's (alpha, beta*bias, residual, activation). */
__kernel void gemm_rows(__global const float* restrict A, __global const float* restrict x,
                        __global float* restrict C,
                        __global const float* restrict bias,
                        __global const float* restrict residual,
                        int M, int N, int K, int x_s_n, int x_s_k,
                        int out_offset, int s_m, int s_p, int bias_s_m, int bias_s_n,
                        float alpha, float beta, int has_bias, int has_residual,
                        int act, float act_a, float act_b, int softmax) {
  /* With softmax set the grid is one work-item that takes every row block, then normalises
     each output row in place (same arithmetic as the softmax kernel). */
  int mb_first = softmax ? 0 : get_global_id(0);
  int mb_last = softmax ? (M + 7) / 8 : mb_first + 1;
  for (int n = 0; n < N; n++) {
   for (int mb = mb_first; mb < mb_last; mb++) {
    const __global float8* a = (const __global float8*)(A + (size_t)mb * K * 8);
    int rows = imin(8, M - mb * 8);
    const __global float* xn = x + (size_t)n * x_s_n;
    float8 acc = 0.0f;
    if (x_s_k == 1) {
      /* Four independent accumulators: one would wait out the FMA latency every k. */
      float8 acc1 = 0.0f, acc2 = 0.0f, acc3 = 0.0f;
      int k = 0;
      for (; k + 4 <= K; k += 4) {
        acc = a[k] * (float8)(xn[k]) + acc;
        acc1 = a[k + 1] * (float8)(xn[k + 1]) + acc1;
        acc2 = a[k + 2] * (float8)(xn[k + 2]) + acc2;
        acc3 = a[k + 3] * (float8)(xn[k + 3]) + acc3;
      }
      for (; k < K; k++) acc = a[k] * (float8)(xn[k]) + acc;
      acc = (acc + acc1) + (acc2 + acc3);
    } else {
      for (int k = 0; k < K; k++) acc = a[k] * (float8)(xn[k * x_s_k]) + acc;
    }
    float v[8];
    v[0] = acc.s0; v[1] = acc.s1; v[2] = acc.s2; v[3] = acc.s3;
    v[4] = acc.s4; v[5] = acc.s5; v[6] = acc.s6; v[7] = acc.s7;
    for (int i = 0; i < rows; i++) {
      int m = mb * 8 + i;
      float r = alpha * v[i];
      if (has_bias) r += beta * bias[m * bias_s_m + n * bias_s_n];
      int index = out_offset + m * s_m + n * s_p;
      if (has_residual) r += residual[index];
      C[index] = apply_activation(r, act, act_a, act_b);
    }
   }
    if (softmax) {
      __global float* y = C + out_offset + n * s_p;
      float peak = -INFINITY;
      for (int m = 0; m < M; m++) peak = y[m * s_m] > peak ? y[m * s_m] : peak;
      float sum = 0.0f;
      for (int m = 0; m < M; m++) sum += exp(y[m * s_m] - peak);
      float scale = 1.0f / sum;
      for (int m = 0; m < M; m++) y[m * s_m] = exp(y[m * s_m] - peak) * scale;
    }
  }
}
"""
)
