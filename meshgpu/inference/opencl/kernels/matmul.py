"""Strided matrix product: MatMul and Gemm without packing or copying their device operands.

``matmul_tiles`` computes ``C[b, i, j] = epilogue(alpha * sum_k A[b, i, k] * B[b, k, j])``
reading both operands where they are, through strides: a Transpose, Split or Slice in front
of a MatMul (attention's Q, K and V heads) is a view, not a copy (plan.View), and the
activation of a Gemm is read row by row instead of packed first. Each work-item keeps an
8x8 tile of C in eight ``float8`` registers like ``gemm_8x8``; per k step it loads 8
consecutive columns of B (one unaligned vector load when they are contiguous: a row-major
matrix or weight panels) and broadcasts 8 scalars of A (a broadcast load from memory costs
what the lane shuffle of a packed panel costs). On a CPU the packing launches it replaces
cost as much as the product at transformer sizes (GPT-2 batch 1: 17 of 63 launches).

Addressing (``b = b0 * NB1 + b1``):

* A element (i, k): ``a_off + b0*a_s0 + b1*a_s1 + i*a_si + k*a_sk``;
* B element (k, j): ``b_off + b0*b_s0 + b1*b_s1 + (j/8)*b_sp + k*b_sk + (j%8)*b_sj``: with
  ``b_sp = 8*b_sj`` a plain strided matrix, with ``b_sp = 8*K, b_sk = 8, b_sj = 1`` the
  packed weight panels of :func:`.lower_linear.pack_host`;
* C element (i, j): ``c_off + b0*c_s0 + b1*c_s1 + i*c_si + j*c_sj`` (a Transpose after the
  product is absorbed as output strides);
* two optional addends read with their own (b0, b1, i, j) strides, 0 where broadcast: an
  attention mask or bias vector, and a residual; then an activation (codes of
  ``fusion.ACTIVATIONS``, plus Gelu), and optionally Softmax over j (``softmax`` set: one
  work-item takes all column blocks of its 8 rows, then normalises them in place).

With ``fold`` > 0 the second batch dimension is folded into the rows: row ``g`` of the
launch is row ``g % fold`` of batch index ``b1 = g / fold`` (``NB1`` is then 1). A product
whose output is written transposed (ConvNeXt's pointwise layers back to NCHW) cannot step
from one image's rows to the next by one stride, yet shares B across images; folded, its
2x2-pixel images fill 8-row tiles instead of wasting half of each.

Products of at most 4 rows are compiled with 4-row tiles (``MATMUL_TILE_ROWS``).

Grid: (ceil(rows / tile rows), column groups, batch), work-group (1, 1, 1).
"""

from __future__ import annotations

from meshgpu.inference.opencl.kernels.activations import clamp, leaky_relu, relu

#: 8-column blocks per work-item (unless Softmax is fused, when one work-item takes all).
MATMUL_COLUMN_BLOCKS = 4

#: Widest row a fused Softmax normalises in the product's launch.
MATMUL_SOFTMAX_COLUMNS = 1024

#: Source of the kernel with 4-row tiles, for products of at most 4 rows (ConvNeXt's last
#: stage at batch 1: 2x2 pixels), where an 8-row tile computes as many rows for nothing.
MATMUL_ROWS4_DEFINE = "#define MATMUL_TILE_ROWS 4\n"

#: Source of the kernel with 6-row tiles that take 16 columns at a time (see MATMUL_FMA2).
MATMUL_ROWS6_DEFINE = "#define MATMUL_TILE_ROWS 6\n"

#: Source of the kernel for a B whose columns are contiguous along k and not across
#: columns (K^T in attention): its own program, so that the transposing loop's registers do
#: not cost the other loops theirs.
MATMUL_ALONG_K_DEFINE = "#define MATMUL_B_ALONG_K 1\n"

MATMUL_SOURCE = r"""
#ifndef MATMUL_TILE_ROWS
#define MATMUL_TILE_ROWS 8
#endif
#ifndef MATMUL_B_ALONG_K
#define MATMUL_B_ALONG_K 0
#endif
/* erf as a rational function of x on [-4, 4] (the constants of Eigen's fast float erf;
   within 4.2e-7 of erf everywhere, and the Gelu built on it within 7.6e-7 of the exact
   one): PoCL's vector erf cost 2 ns an element, more than the product it followed. */
__attribute__((always_inline)) inline float8 matmul_erf(float8 x) {
  x = x < (float8)(-4.0f) ? (float8)(-4.0f) : (x > (float8)(4.0f) ? (float8)(4.0f) : x);
  float8 x2 = x * x;
  float8 p = x2 * (float8)(-2.72614225801306e-10f) + (float8)(2.77068142495902e-08f);
  p = x2 * p + (float8)(-2.10102402082508e-06f);
  p = x2 * p + (float8)(-5.69250639462346e-05f);
  p = x2 * p + (float8)(-7.34990630326855e-04f);
  p = x2 * p + (float8)(-2.95459980854025e-03f);
  p = x2 * p + (float8)(-1.60960333262415e-02f);
  p = x * p;
  float8 q = x2 * (float8)(-1.45660718464996e-05f) + (float8)(-2.13374055278905e-04f);
  q = x2 * q + (float8)(-1.68282697438203e-03f);
  q = x2 * q + (float8)(-7.37332916720468e-03f);
  q = x2 * q + (float8)(-1.42647390514189e-02f);
  return p / q;
}

/* fast_exp (kernels/elementwise.py FAST_EXP_SOURCE, included before this source) keeps
   the exp of the epilogues inline. */

/* tanh of 8 lanes inline, as Cephes' tanhf: an odd polynomial under |x| = 0.625, else
   1 - 2 / (exp(2|x|) + 1) with the sign of x. */
__attribute__((always_inline)) inline float8 matmul_tanh(float8 x) {
  float8 a = x < (float8)(0.0f) ? -x : x;
  float8 z = x * x;
  float8 p = (float8)(-5.70498872745e-3f);
  p = p * z + (float8)(2.06390887954e-2f);
  p = p * z + (float8)(-5.37397155531e-2f);
  p = p * z + (float8)(1.33314422036e-1f);
  p = p * z + (float8)(-3.33332819422e-1f);
  float8 small = p * z * x + x;
  float8 large = (float8)(1.0f)
                 - (float8)(2.0f) / (fast_exp((float8)(2.0f) * a) + (float8)(1.0f));
  large = x < (float8)(0.0f) ? -large : large;
  return a < (float8)(0.625f) ? small : large;
}

/* The epilogue works on a row of 8 results at a time: PoCL's vector exp/erf/tanh run on all
   lanes at once, its scalar ones cost ~7 ns an element (a fused Gelu ran 5x slower). */
__attribute__((always_inline)) inline float8 matmul_activation(float8 v, int code, float a,
                                                               float b) {
  switch (code) {
    case 1: return RELU_V;
    case 2: return LEAKY_RELU_V;
    case 3: return CLAMP_V;
    case 4: return (float8)(1.0f) / ((float8)(1.0f) + fast_exp(-v));
    case 5: return matmul_tanh(v);
    case 6:
      return (float8)(0.5f) * v * ((float8)(1.0f) + matmul_erf(v * (float8)(0.7071067811865475f)));
    /* 0.5 * (1 + tanh(u)) is sigmoid(2u): one vector exp instead of a tanh */
    case 7: return v / ((float8)(1.0f) + fast_exp((float8)(-1.5957691216057308f)
                                             * (v + (float8)(0.044715f) * v * v * v)));
    default: return v;
  }
}

/* n (<= 8) elements at stride s from p as a vector (lanes past n are 0). */
inline float8 matmul_load(const __global float* p, int s, int n) {
  if (n == 8 && s == 1) return load8(p);
  if (s == 0) return (float8)(p[0]);
  float v[8];
  for (int t = 0; t < 8; t++) v[t] = t < n ? p[t * s] : 0.0f;
  return (float8)(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
}

/* 8 consecutive elements at p (s = 1) or one broadcast (s = 0). */
inline float8 matmul_vector(const __global float* p, int s) {
  return s ? load8(p) : (float8)(p[0]);
}

inline void matmul_store(__global float* p, int s, int n, float8 x) {
  if (n == 8 && s == 1) {
    store8(p, x);
    return;
  }
  float v[8];
  v[0] = x.s0; v[1] = x.s1; v[2] = x.s2; v[3] = x.s3;
  v[4] = x.s4; v[5] = x.s5; v[6] = x.s6; v[7] = x.s7;
  for (int t = 0; t < n; t++) p[t * s] = v[t];
}

/* A row of A normalised as LayerNormalization does (mean and variance in two passes,
   float32) into ``out``, contiguous: the product's prologue. */
inline void matmul_normalize(const __global float* x, int step, int K,
                             __global float* out, const __global float* scale,
                             const __global float* bias, int has_bias, float epsilon) {
  if (step == 1 && K % 8 == 0) {  /* a contiguous row (GPT-2's): eight lanes at a time */
    float8 sum8 = 0.0f;
    for (int k = 0; k < K; k += 8) sum8 += load8(x + k);
    float mean = (((sum8.s0 + sum8.s1) + (sum8.s2 + sum8.s3))
                  + ((sum8.s4 + sum8.s5) + (sum8.s6 + sum8.s7))) / (float)K;
    float8 squares8 = 0.0f;
    for (int k = 0; k < K; k += 8) {
      float8 d = load8(x + k) - (float8)(mean);
      squares8 += d * d;
    }
    float squares = ((squares8.s0 + squares8.s1) + (squares8.s2 + squares8.s3))
                    + ((squares8.s4 + squares8.s5) + (squares8.s6 + squares8.s7));
    float8 inverse = (float8)(1.0f / sqrt(squares / (float)K + epsilon));
    for (int k = 0; k < K; k += 8) {
      float8 v = (load8(x + k) - (float8)(mean)) * inverse * load8(scale + k);
      if (has_bias) v += load8(bias + k);
      store8(out + k, v);
    }
    return;
  }
  float sum = 0.0f;
  for (int k = 0; k < K; k++) sum += x[k * step];
  float mean = sum / (float)K;
  float squares = 0.0f;
  for (int k = 0; k < K; k++) {
    float d = x[k * step] - mean;
    squares += d * d;
  }
  float inverse = 1.0f / sqrt(squares / (float)K + epsilon);
  for (int k = 0; k < K; k++) {
    float v = (x[k * step] - mean) * inverse * scale[k];
    out[k] = has_bias ? v + bias[k] : v;
  }
}

/* Eight consecutive rows of A (rows one element apart, channels ``step`` apart: a
   channels-first map read channels-last) normalised eight lanes at a time, as
   ``normalize_rows_t8`` does, into ``out`` laid out [K][8]. */
inline void matmul_normalize8(const __global float* x, int step, int K, __global float* out,
                              const __global float* scale, const __global float* bias,
                              int has_bias, float epsilon) {
  float8 sum = 0.0f;
  for (int k = 0; k < K; k++) sum += load8(x + k * step);
  float8 mean = sum / (float8)((float)K);
  float8 squares = 0.0f;
  for (int k = 0; k < K; k++) {
    float8 d = load8(x + k * step) - mean;
    squares += d * d;
  }
  float8 inverse = (float8)(1.0f) / sqrt(squares / (float8)((float)K) + (float8)(epsilon));
  for (int k = 0; k < K; k++) {
    float8 v = (load8(x + k * step) - mean) * inverse * (float8)(scale[k]);
    if (has_bias) v += (float8)(bias[k]);
    store8(out + k * 8, v);
  }
}

/* One step of the tile's multiply-adds: each row's A value at ``ka`` times the columns in
   ``bv``, into that row's accumulator. */
#define MATMUL_FMA_ROW(r, ka) c##r = (float8)(a##r[ka]) * bv + c##r;
/* The same over two blocks of columns (``bv`` and ``bw``): each broadcast of A feeds two
   multiply-adds. */
#define MATMUL_FMA2_ROW(r, ka)                                                          \
  { float8 s = (float8)(a##r[ka]); c##r = s * bv + c##r; e##r = s * bw + e##r; }
#if MATMUL_TILE_ROWS == 8
#define MATMUL_FMA(ka)                                                                  \
  MATMUL_FMA_ROW(0, ka) MATMUL_FMA_ROW(1, ka) MATMUL_FMA_ROW(2, ka) MATMUL_FMA_ROW(3, ka) \
  MATMUL_FMA_ROW(4, ka) MATMUL_FMA_ROW(5, ka) MATMUL_FMA_ROW(6, ka) MATMUL_FMA_ROW(7, ka)
/* 8x16 needs 16 accumulators, all of AVX2's registers: no paired blocks. */
#define MATMUL_PAIRS 0
#define MATMUL_FMA2(ka)
#elif MATMUL_TILE_ROWS == 6
#define MATMUL_FMA(ka)                                                                  \
  MATMUL_FMA_ROW(0, ka) MATMUL_FMA_ROW(1, ka) MATMUL_FMA_ROW(2, ka) MATMUL_FMA_ROW(3, ka) \
  MATMUL_FMA_ROW(4, ka) MATMUL_FMA_ROW(5, ka)
/* 6x16: twelve accumulators, two B vectors and a broadcast in 16 registers (the shape of
   BLIS's AVX2 kernel): 8 loads per 12 multiply-adds where 8x8 takes 9 per 8, and twelve
   independent chains where eight only just cover the FMA latency. */
#define MATMUL_PAIRS 1
#define MATMUL_FMA2(ka)                                                                 \
  MATMUL_FMA2_ROW(0, ka) MATMUL_FMA2_ROW(1, ka) MATMUL_FMA2_ROW(2, ka)                  \
  MATMUL_FMA2_ROW(3, ka) MATMUL_FMA2_ROW(4, ka) MATMUL_FMA2_ROW(5, ka)
#else
#define MATMUL_FMA(ka)                                                                  \
  MATMUL_FMA_ROW(0, ka) MATMUL_FMA_ROW(1, ka) MATMUL_FMA_ROW(2, ka) MATMUL_FMA_ROW(3, ka)
/* 4x16: eight independent accumulators where 4x8 has four. */
#define MATMUL_PAIRS 1
#define MATMUL_FMA2(ka)                                                                 \
  MATMUL_FMA2_ROW(0, ka) MATMUL_FMA2_ROW(1, ka) MATMUL_FMA2_ROW(2, ka) MATMUL_FMA2_ROW(3, ka)
#endif

/* Offset of launch row g: row g % fold of batch index g / fold when folding. */
inline int matmul_row(int g, int fold, int s1, int si) {
  if (!fold) return g * si;
  int q = g / fold;
  return q * s1 + (g - q * fold) * si;
}

__kernel void matmul_tiles(__global const float* restrict A, __global const float* restrict B,
                           __global float* restrict C,
                           __global const float* restrict addend,
                           __global const float* restrict residual,
                           int rows, int cols, int K, int NB1,
                           int a_off, int a_s0, int a_s1, int a_si, int a_sk,
                           int b_off, int b_s0, int b_s1, int b_sp, int b_sk, int b_sj,
                           int c_off, int c_s0, int c_s1, int c_si, int c_sj,
                           int d_s0, int d_s1, int d_si, int d_sj,
                           int r_s0, int r_s1, int r_si, int r_sj,
                           float alpha, int has_addend, int has_residual,
                           int act, float act_a, float act_b, int softmax,
                           int group_blocks, __global const float* restrict multiplier,
                           int m_s0, int m_s1, int m_si, int m_sj, int has_multiplier,
                           int multiplier_first, int fold,
                           __global float* restrict scratch,
                           __global const float* restrict norm_scale,
                           __global const float* restrict norm_bias, int norm,
                           int norm_has_bias, float norm_epsilon) {
  int i0 = get_global_id(0) * MATMUL_TILE_ROWS;
  int b = get_global_id(2);
  int b0 = b / NB1;
  int b1 = b - b0 * NB1;
  int blocks = (cols + 7) / 8;
  int first = softmax ? 0 : get_global_id(1) * group_blocks;
  int last = softmax ? blocks : imin(first + group_blocks, blocks);
  int nrows = imin(MATMUL_TILE_ROWS, rows - i0);
  /* Rows past the end read the last row again (their results are not written); eight
     scalar row pointers, not an array, so they stay in registers. */
  const __global float* ab = A + a_off + b0 * a_s0 + b1 * a_s1;
#define MATMUL_A_ROW(r) (ab + matmul_row(imin(i0 + r, rows - 1), fold, a_s1, a_si))
  const __global float* a0 = MATMUL_A_ROW(0);
  const __global float* a1 = MATMUL_A_ROW(1);
  const __global float* a2 = MATMUL_A_ROW(2);
  const __global float* a3 = MATMUL_A_ROW(3);
  const __global float* a4 = MATMUL_A_ROW(4);
  const __global float* a5 = MATMUL_A_ROW(5);
  const __global float* a6 = MATMUL_A_ROW(6);
  const __global float* a7 = MATMUL_A_ROW(7);
#undef MATMUL_A_ROW
  int a_step = a_sk;
  if (norm) {
    /* LayerNormalization of this work-item's rows of A (the product's sole reader) into
       its own part of ``scratch``; the product then reads them from there. */
    int item = (get_global_id(2) * get_global_size(1) + get_global_id(1)) * get_global_size(0)
               + get_global_id(0);
    __global float* s = scratch + (long)item * MATMUL_TILE_ROWS * K;
#if MATMUL_TILE_ROWS == 8
    if (a_si == 1 && !fold && nrows == 8) {
      matmul_normalize8(a0, a_sk, K, s, norm_scale, norm_bias, norm_has_bias, norm_epsilon);
      a0 = s; a1 = s + 1; a2 = s + 2; a3 = s + 3; a4 = s + 4; a5 = s + 5; a6 = s + 6;
      a7 = s + 7;
      a_step = 8;
    } else
#endif
    {
#define MATMUL_NORM_ROW(r, p)                                                           \
    matmul_normalize(p, a_sk, K, s + r * K, norm_scale, norm_bias, norm_has_bias,         \
                     norm_epsilon);                                                     \
    p = s + r * K;
    MATMUL_NORM_ROW(0, a0) MATMUL_NORM_ROW(1, a1) MATMUL_NORM_ROW(2, a2) MATMUL_NORM_ROW(3, a3)
#if MATMUL_TILE_ROWS >= 6
    MATMUL_NORM_ROW(4, a4) MATMUL_NORM_ROW(5, a5)
#endif
#if MATMUL_TILE_ROWS == 8
    MATMUL_NORM_ROW(6, a6) MATMUL_NORM_ROW(7, a7)
#endif
#undef MATMUL_NORM_ROW
    a_step = 1;
    }
  }
  const __global float* bb = B + b_off + b0 * b_s0 + b1 * b_s1;
  int c_base = c_off + b0 * c_s0 + b1 * c_s1;
  int d_base = b0 * d_s0 + b1 * d_s1;
  int r_base = b0 * r_s0 + b1 * r_s1;
  int m_base = b0 * m_s0 + b1 * m_s1;
  /* nothing after the sum but alpha, rows stored as they are: one store per row */
  int plain = !has_addend && !has_residual && !has_multiplier && !act && !fold && c_sj == 1;
  /* rows stored contiguously, each operand of the tail contiguous or broadcast along j */
  int rowwise = !fold && c_sj == 1 && (!has_addend || d_sj <= 1)
                && (!has_residual || r_sj <= 1) && (!has_multiplier || m_sj <= 1);
  int scale_first = has_multiplier && multiplier_first;
  int scale_after = has_multiplier && !multiplier_first;
  /* Output written transposed with its rows contiguous (ConvNeXt's products back to NCHW:
     a tile's 8 rows are 8 consecutive pixels of each channel): the tile is transposed in
     registers and stored, residual read, a column of 8 at a time instead of 64 scalars. */
  int columns_out = c_si == 1 && c_sj != 1 && !fold && (!has_residual || r_si == 1);
  for (int jb = first; jb < last;) {
    int j0 = jb * 8;
    int ncols = imin(8, cols - j0);
    const __global float* bp = bb + jb * b_sp;
    float8 c0 = 0.0f, c1 = 0.0f, c2 = 0.0f, c3 = 0.0f, c4 = 0.0f, c5 = 0.0f, c6 = 0.0f,
           c7 = 0.0f;
    float8 e0 = 0.0f, e1 = 0.0f, e2 = 0.0f, e3 = 0.0f, e4 = 0.0f, e5 = 0.0f, e6 = 0.0f,
           e7 = 0.0f;
    /* Two full blocks of contiguous columns: a 16-column tile. */
    int halves = MATMUL_PAIRS && jb + 1 < last && cols - j0 >= 16 && b_sj == 1
                 && (a_step == 1 || a_step == 8) ? 2 : 1;
    jb += halves;
#if !MATMUL_B_ALONG_K
    if (halves == 2) {
      const __global float* bq = bp + b_sp;
      for (int k = 0; k < K; k++) {
        float8 bv = load8(bp + k * b_sk);
        float8 bw = load8(bq + k * b_sk);
        int ka = k * a_step;
        MATMUL_FMA2(ka)
      }
    } else if (ncols == 8 && b_sj == 1 && a_step == 1) {
      for (int k = 0; k < K; k++) {
        float8 bv = load8(bp + k * b_sk);
        MATMUL_FMA(k)
      }
    } else if (ncols == 8 && b_sj == 1 && a_step == 8) {  /* normalised rows, [K][8] */
      for (int k = 0; k < K; k++) {
        float8 bv = load8(bp + k * b_sk);
        int ka = k * 8;
        MATMUL_FMA(ka)
      }
    } else
#endif
    {
      int k = 0;
#if MATMUL_B_ALONG_K
      if (b_sk == 1) {
        /* Columns of B contiguous along k (K^T in attention: rows of K): eight of them
           read as vectors of 8 k values and transposed in registers, in place of 64
           scalar loads. Columns past the last repeat it (their results are not stored). */
        const __global float* q0 = bp;
        const __global float* q1 = bp + imin(1, ncols - 1) * b_sj;
        const __global float* q2 = bp + imin(2, ncols - 1) * b_sj;
        const __global float* q3 = bp + imin(3, ncols - 1) * b_sj;
        const __global float* q4 = bp + imin(4, ncols - 1) * b_sj;
        const __global float* q5 = bp + imin(5, ncols - 1) * b_sj;
        const __global float* q6 = bp + imin(6, ncols - 1) * b_sj;
        const __global float* q7 = bp + imin(7, ncols - 1) * b_sj;
        for (; k + 8 <= K; k += 8) {
          float8 r0 = load8(q0 + k), r1 = load8(q1 + k), r2 = load8(q2 + k),
                 r3 = load8(q3 + k), r4 = load8(q4 + k), r5 = load8(q5 + k),
                 r6 = load8(q6 + k), r7 = load8(q7 + k);
#define MATMUL_LANE(l)                                                                  \
          {                                                                             \
            float8 bv = (float8)(r0.s##l, r1.s##l, r2.s##l, r3.s##l, r4.s##l, r5.s##l,  \
                                 r6.s##l, r7.s##l);                                     \
            int ka = (k + l) * a_step;                                                  \
            MATMUL_FMA(ka)                                                              \
          }
          MATMUL_LANE(0) MATMUL_LANE(1) MATMUL_LANE(2) MATMUL_LANE(3)
          MATMUL_LANE(4) MATMUL_LANE(5) MATMUL_LANE(6) MATMUL_LANE(7)
#undef MATMUL_LANE
        }
      }
#endif
      for (; k < K; k++) {
        const __global float* bk = bp + k * b_sk;
        float v[8];
        for (int t = 0; t < 8; t++) v[t] = t < ncols ? bk[t * b_sj] : 0.0f;
        float8 bv = (float8)(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
        int ka = k * a_step;
        MATMUL_FMA(ka)
      }
    }
    for (int h = 0; h < halves; h++) {  /* the epilogue, per block of 8 columns */
    if (h) {
      j0 += 8;
      ncols = imin(8, cols - j0);
      c0 = e0; c1 = e1; c2 = e2; c3 = e3; c4 = e4; c5 = e5; c6 = e6; c7 = e7;
    }
#define MATMUL_ROW(r, acc)                                                                \
    if (plain && ncols == 8 && r < nrows) {                                               \
      store8(C + c_base + (i0 + r) * c_si + j0, acc * alpha);                             \
    } else if (rowwise && ncols == 8 && r < nrows) {                                      \
      int i = i0 + r;                                                                     \
      float8 v = acc * alpha;                                                             \
      int m_at = m_base + i * m_si + j0 * m_sj;                                           \
      if (scale_first) v *= matmul_vector(multiplier + m_at, m_sj);                       \
      if (has_addend) v += matmul_vector(addend + d_base + i * d_si + j0 * d_sj, d_sj);   \
      if (scale_after) v *= matmul_vector(multiplier + m_at, m_sj);                       \
      if (has_residual)                                                                   \
        v += matmul_vector(residual + r_base + i * r_si + j0 * r_sj, r_sj);               \
      if (act) v = matmul_activation(v, act, act_a, act_b);                               \
      store8(C + c_base + i * c_si + j0, v);                                              \
    } else if (r < nrows) {                                                               \
      int g = i0 + r;                                                                     \
      int q = fold ? g / fold : 0;                                                        \
      int i = g - q * fold;                                                               \
      float8 v = acc * alpha;                                                             \
      int m_at = m_base + q * m_s1 + i * m_si + j0 * m_sj;                                \
      if (scale_first) v *= matmul_load(multiplier + m_at, m_sj, ncols);                  \
      if (has_addend)                                                                     \
        v += matmul_load(addend + d_base + q * d_s1 + i * d_si + j0 * d_sj, d_sj, ncols); \
      if (scale_after) v *= matmul_load(multiplier + m_at, m_sj, ncols);                  \
      if (has_residual)                                                                   \
        v += matmul_load(residual + r_base + q * r_s1 + i * r_si + j0 * r_sj, r_sj, ncols); \
      if (act) v = matmul_activation(v, act, act_a, act_b);                               \
      matmul_store(C + c_base + q * c_s1 + i * c_si + j0 * c_sj, c_sj, ncols, v);         \
    }
#if MATMUL_TILE_ROWS == 8
    if (columns_out && nrows == 8 && ncols == 8) {
#define MATMUL_ROW_VALUE(r, acc)                                                          \
      acc *= alpha;                                                                       \
      {                                                                                   \
        int m_at = m_base + (i0 + r) * m_si + j0 * m_sj;                                  \
        if (scale_first) acc *= matmul_load(multiplier + m_at, m_sj, 8);                  \
        if (has_addend)                                                                   \
          acc += matmul_load(addend + d_base + (i0 + r) * d_si + j0 * d_sj, d_sj, 8);     \
        if (scale_after) acc *= matmul_load(multiplier + m_at, m_sj, 8);                  \
      }
      MATMUL_ROW_VALUE(0, c0) MATMUL_ROW_VALUE(1, c1) MATMUL_ROW_VALUE(2, c2)
      MATMUL_ROW_VALUE(3, c3) MATMUL_ROW_VALUE(4, c4) MATMUL_ROW_VALUE(5, c5)
      MATMUL_ROW_VALUE(6, c6) MATMUL_ROW_VALUE(7, c7)
#undef MATMUL_ROW_VALUE
#define MATMUL_COLUMN(j)                                                                  \
      {                                                                                   \
        float8 w = (float8)(c0.s##j, c1.s##j, c2.s##j, c3.s##j, c4.s##j, c5.s##j, c6.s##j, \
                            c7.s##j);                                                     \
        if (has_residual) w += load8(residual + r_base + i0 + (j0 + j) * r_sj);           \
        if (act) w = matmul_activation(w, act, act_a, act_b);                             \
        store8(C + c_base + i0 + (j0 + j) * c_sj, w);                                     \
      }
      MATMUL_COLUMN(0) MATMUL_COLUMN(1) MATMUL_COLUMN(2) MATMUL_COLUMN(3)
      MATMUL_COLUMN(4) MATMUL_COLUMN(5) MATMUL_COLUMN(6) MATMUL_COLUMN(7)
#undef MATMUL_COLUMN
      continue;
    }
#endif
    MATMUL_ROW(0, c0) MATMUL_ROW(1, c1) MATMUL_ROW(2, c2) MATMUL_ROW(3, c3)
#if MATMUL_TILE_ROWS >= 6
    MATMUL_ROW(4, c4) MATMUL_ROW(5, c5)
#endif
#if MATMUL_TILE_ROWS == 8
    MATMUL_ROW(6, c6) MATMUL_ROW(7, c7)
#endif
#undef MATMUL_ROW
    }
  }
  if (softmax) {
    for (int r = 0; r < nrows; r++) {
      __global float* y = C + c_base + matmul_row(i0 + r, fold, c_s1, c_si);
      int j8 = c_sj == 1 ? cols / 8 * 8 : 0;
      float8 peak8 = (float8)(-INFINITY);
      for (int j = 0; j < j8; j += 8) {
        float8 x = load8(y + j);
        peak8 = x > peak8 ? x : peak8;
      }
      float peak = -INFINITY;
      peak = peak8.s0 > peak ? peak8.s0 : peak; peak = peak8.s1 > peak ? peak8.s1 : peak;
      peak = peak8.s2 > peak ? peak8.s2 : peak; peak = peak8.s3 > peak ? peak8.s3 : peak;
      peak = peak8.s4 > peak ? peak8.s4 : peak; peak = peak8.s5 > peak ? peak8.s5 : peak;
      peak = peak8.s6 > peak ? peak8.s6 : peak; peak = peak8.s7 > peak ? peak8.s7 : peak;
      for (int j = j8; j < cols; j++) peak = y[j * c_sj] > peak ? y[j * c_sj] : peak;
      float8 sum8 = (float8)(0.0f);
      for (int j = 0; j < j8; j += 8) {
        float8 e = fast_exp(load8(y + j) - (float8)(peak));
        store8(y + j, e);
        sum8 += e;
      }
      float sum = ((sum8.s0 + sum8.s1) + (sum8.s2 + sum8.s3))
                  + ((sum8.s4 + sum8.s5) + (sum8.s6 + sum8.s7));
      for (int j = j8; j < cols; j++) {
        float e = exp(y[j * c_sj] - peak);
        y[j * c_sj] = e;
        sum += e;
      }
      float scale = 1.0f / sum;
      for (int j = 0; j < j8; j += 8) store8(y + j, load8(y + j) * (float8)(scale));
      for (int j = j8; j < cols; j++) y[j * c_sj] *= scale;
    }
  }
}
"""

# The clamp-like activations as every other kernel writes them (NaN kept; kernels.activations)
MATMUL_SOURCE = (
    MATMUL_SOURCE.replace("LEAKY_RELU_V", leaky_relu("v", "a"))
    .replace("RELU_V", relu("v"))
    .replace("CLAMP_V", clamp("v", "a", "b"))
)
