"""Kernels with a spatial or reduction window: pooling, softmax, LRN, direct convolution.

All take NCHW float32 tensors and one work-item per output element (or per reduced row),
in 64-wide work-groups.
"""

from __future__ import annotations

POOL_SOURCE = r"""
/* 2-D MaxPool / AveragePool (ONNX operator spec).  Windows start at o*S - P_begin and step by
   the dilation; positions outside the input are skipped.  For averages, count_include_pad
   divides by the positions inside the padded extent [-P_begin, size + P_end), otherwise by
   the positions inside the input. */
__kernel void pool2d(__global const float* restrict x, __global float* restrict y,
                     int H, int W, int OH, int OW, int KH, int KW, int SH, int SW,
                     int PH, int PW, int PH_END, int PW_END, int DH, int DW, int rows) {
  int row = get_global_id(0);   /* one work-item per output row (n, c, oy) */
  if (row >= rows) return;
  int oy = row % OH;
  int nc = row / OH;
  const __global float* xc = x + (size_t)nc * H * W;
  __global float* yr = y + (size_t)row * OW;
  int y0 = oy * SH - PH;
  int ox = 0;
#ifdef POOL_MAX
  /* Window rows inside the input, found once per output row. */
  int ky0 = 0, ky1 = KH;
  while (ky0 < KH && y0 + ky0 * DH < 0) ky0++;
  while (ky1 > ky0 && y0 + (ky1 - 1) * DH >= H) ky1--;
  /* Left border columns (window starts before the row): per-element x checks. */
  int first = imin(OW, imax(0, (PW + SW - 1) / SW));
  for (; ox < first; ox++) {
    int x0 = ox * SW - PW;
    float acc = -INFINITY;
    for (int ky = ky0; ky < ky1; ky++) {
      int iy = y0 + ky * DH;
      for (int kx = 0; kx < KW; kx++) {
        int ix = x0 + kx * DW;
        if (ix < 0 || ix >= W) continue;
        float v = xc[iy * W + ix];
        acc = v > acc ? v : acc;
      }
    }
    yr[ox] = acc;
  }
  /* Eight outputs at a time while the vector loads stay inside the row: stride 1 reads 8
     consecutive inputs per tap, stride 2 reads 16 and keeps the even ones. */
  if (DW == 1 && (SW == 1 || SW == 2)) {
    int span = SW * 8;
    for (; ox + 8 <= OW && ox * SW - PW + KW - 1 + span <= W; ox += 8) {
      const __global float* xw = xc + ox * SW - PW;
      float8 acc = (float8)(-INFINITY);
      for (int ky = ky0; ky < ky1; ky++) {
        const __global float* xr = xw + (y0 + ky * DH) * W;
        for (int kx = 0; kx < KW; kx++) {
          float8 v = SW == 1 ? load8(xr + kx) : load16(xr + kx).even;
          acc = v > acc ? v : acc;
        }
      }
      store8(yr + ox, acc);
    }
  }
  /* Interior columns left over: no per-element x checks. */
  for (; ox < OW && ox * SW - PW + (KW - 1) * DW < W; ox++) {
    const __global float* xw = xc + ox * SW - PW;
    float acc = -INFINITY;
    for (int ky = ky0; ky < ky1; ky++) {
      const __global float* xr = xw + (y0 + ky * DH) * W;
      for (int kx = 0; kx < KW; kx++) {
        float v = xr[kx * DW];
        acc = v > acc ? v : acc;
      }
    }
    yr[ox] = acc;
  }
#endif
  for (; ox < OW; ox++) {
    int x0 = ox * SW - PW;
#ifdef POOL_MAX
    float acc = -INFINITY;
#else
    float acc = 0.0f;
    int counted = 0;
#endif
    for (int ky = 0; ky < KH; ky++) {
      int iy = y0 + ky * DH;
#if defined(POOL_AVG) && defined(COUNT_PAD)
      if (iy >= -PH && iy < H + PH_END) {
        for (int kx = 0; kx < KW; kx++) {
          int ix = x0 + kx * DW;
          if (ix >= -PW && ix < W + PW_END) counted++;
        }
      }
#endif
      if (iy < 0 || iy >= H) continue;
      for (int kx = 0; kx < KW; kx++) {
        int ix = x0 + kx * DW;
        if (ix < 0 || ix >= W) continue;
        float v = xc[iy * W + ix];
#ifdef POOL_MAX
        acc = v > acc ? v : acc;
#else
        acc += v;
#ifndef COUNT_PAD
        counted++;
#endif
#endif
      }
    }
#ifdef POOL_MAX
    yr[ox] = acc;
#else
    yr[ox] = counted > 0 ? acc / (float)counted : 0.0f;
#endif
  }
}

"""

GLOBAL_POOL_SOURCE = r"""
/* GlobalAveragePool / GlobalMaxPool: one work-item per (n, c) plane. */
__kernel void global_pool(__global const float* restrict x, __global float* restrict y,
                          int plane, int total) {
  int i = get_global_id(0);
  if (i >= total) return;
  const __global float* xc = x + (size_t)i * plane;
#ifdef POOL_MAX
  float acc = -INFINITY;
  for (int p = 0; p < plane; p++) acc = xc[p] > acc ? xc[p] : acc;
  y[i] = acc;
#else
  float acc = 0.0f;
  for (int p = 0; p < plane; p++) acc += xc[p];
  y[i] = acc / (float)plane;
#endif
}
"""

SOFTMAX_SOURCE = r"""
/* Softmax over `length` elements spaced `inner` apart; one work-item per (outer, inner) row.
   Opset < 13 coerces to 2-D (inner = 1, length = product of dims from axis); opset >= 13
   reduces along one axis. LOG_SOFTMAX gives LogSoftmax. */
__kernel void softmax(__global const float* restrict x, __global float* restrict y,
                      int length, int inner, int total) {
  int i = get_global_id(0);
  if (i >= total) return;
  int o = i / inner;
  int in = i - o * inner;
  size_t base = (size_t)o * length * inner + in;
  float peak = -INFINITY;
  for (int k = 0; k < length; k++) {
    float v = x[base + (size_t)k * inner];
    peak = v > peak ? v : peak;
  }
  float sum = 0.0f;
  for (int k = 0; k < length; k++) sum += exp(x[base + (size_t)k * inner] - peak);
#ifdef LOG_SOFTMAX
  float log_sum = log(sum);
  for (int k = 0; k < length; k++)
    y[base + (size_t)k * inner] = x[base + (size_t)k * inner] - peak - log_sum;
#else
  float scale = 1.0f / sum;
  for (int k = 0; k < length; k++)
    y[base + (size_t)k * inner] = exp(x[base + (size_t)k * inner] - peak) * scale;
#endif
}
"""

LRN_SOURCE = r"""
/* LRN (ONNX spec): square_sum over channels [c - floor((size-1)/2), c + ceil((size-1)/2)],
   y = x / (bias + alpha / size * square_sum) ^ beta. */
__kernel void lrn(__global const float* restrict x, __global float* restrict y,
                  int C, int plane, int size, float alpha, float beta, float bias, int total) {
  int start = get_global_id(0) * 64;
  int stop = imin(start + 64, total);
  for (int i = start; i < stop; i++) {
    int p = i % plane;
    int t = i / plane;
    int c = t % C;
    int n = t / C;
    int lo = imax(0, c - (size - 1) / 2);
    int hi = imin(C - 1, c + size / 2);
    const __global float* xn = x + (size_t)n * C * plane + p;
    float sum = 0.0f;
    for (int k = lo; k <= hi; k++) {
      float v = xn[(size_t)k * plane];
      sum += v * v;
    }
    y[i] = x[i] / pow(bias + alpha / (float)size * sum, beta);
  }
}
"""

DIRECT_CONV_SOURCE = r"""
#ifndef ACT
#define ACT(v) (v)
#endif
/* Direct 2-D convolution, one work-item per output element.  Used where the GEMM path wastes
   its 8-row register tile: groups with fewer than 8 output channels (depthwise). */
__kernel void conv2d_direct(__global const float* restrict x, __global const float* restrict w,
                            __global const float* restrict bias,
                            __global const float* restrict residual, __global float* restrict y,
                            int C, int H, int W, int M, int OH, int OW, int KH, int KW,
                            int SH, int SW, int PH, int PW, int DH, int DW,
                            int Cg, int Mg, int rows) {
  int row = get_global_id(0);   /* one work-item per output row (n, m, oy) */
  if (row >= rows) return;
  int oy = row % OH;
  int t = row / OH;
  int m = t % M;
  int n = t / M;
  int g = m / Mg;
  const __global float* wm = w + (size_t)m * Cg * KH * KW;
  for (int ox = 0; ox < OW; ox++) {
    /* Eight outputs at a time (stride 1: load8 per tap; stride 2: load16(...).even), as max
       pooling does; a tap whose eight inputs cross the row's edge (padding) assembles them
       lane by lane, so ConvNeXt's 7x7 on a 16-pixel row still takes this path for most
       taps. The epilogue then runs per element on what was stored. */
    int x0 = ox * SW - PW;
    if (DW == 1 && (SW == 1 || SW == 2) && ox + 8 <= OW) {
      float8 acc8 = (float8)(0.0f);
      for (int ci = 0; ci < Cg; ci++) {
        const __global float* xc = x + ((size_t)n * C + g * Cg + ci) * H * W;
        for (int ky = 0; ky < KH; ky++) {
          int iy = oy * SH - PH + ky * DH;
          if (iy < 0 || iy >= H) continue;
          const __global float* xr = xc + iy * W + x0;
          const __global float* wr = wm + (ci * KH + ky) * KW;
          for (int kx = 0; kx < KW; kx++) {
            int ix = x0 + kx;
            float8 v;
            if (ix >= 0 && ix + (SW == 1 ? 7 : 15) < W) {
              v = SW == 1 ? load8(xr + kx) : load16(xr + kx).even;
            } else {
              float lane[8];
              for (int l = 0; l < 8; l++) {
                int p = ix + l * SW;
                lane[l] = p >= 0 && p < W ? xr[kx + l * SW] : 0.0f;
              }
              v = (float8)(lane[0], lane[1], lane[2], lane[3], lane[4], lane[5], lane[6],
                           lane[7]);
            }
            acc8 += v * wr[kx];
          }
        }
      }
      int first = row * OW + ox;
      store8(y + first, acc8);
      for (int i = first; i < first + 8; i++) {
        float v = y[i];
#ifdef HAS_BIAS
        v += bias[m];
#endif
#ifdef HAS_RESIDUAL
        v += residual[i];
#endif
        y[i] = ACT(v);
      }
      ox += 7;
      continue;
    }
    float acc = 0.0f;
    for (int ci = 0; ci < Cg; ci++) {
      const __global float* xc = x + ((size_t)n * C + g * Cg + ci) * H * W;
      for (int ky = 0; ky < KH; ky++) {
        int iy = oy * SH - PH + ky * DH;
        if (iy < 0 || iy >= H) continue;
        for (int kx = 0; kx < KW; kx++) {
          int ix = ox * SW - PW + kx * DW;
          if (ix < 0 || ix >= W) continue;
          acc += xc[iy * W + ix] * wm[(ci * KH + ky) * KW + kx];
        }
      }
    }
    int i = row * OW + ox;
#ifdef HAS_BIAS
    acc += bias[m];
#endif
#ifdef HAS_RESIDUAL
    acc += residual[i];
#endif
    y[i] = ACT(acc);
  }
}
"""


def _variant(source: str, kernel: str, name: str, defines: tuple[str, ...]) -> str:
    """``source`` with ``kernel`` renamed to ``name`` and compiled under ``defines``."""
    on = "".join(f"#define {d} 1\n" for d in defines)
    off = "".join(f"#undef {d}\n" for d in defines)
    return on + source.replace(f"void {kernel}(", f"void {name}(") + off


#: Every pooling, softmax and LRN variant in one program: building a program costs ~0.1 s
#: even from the binary cache, so fewer programs means a faster session start.
SPATIAL_SOURCE = "\n".join(
    [
        _variant(POOL_SOURCE, "pool2d", "pool2d_max", ("POOL_MAX",)),
        _variant(POOL_SOURCE, "pool2d", "pool2d_avg", ("POOL_AVG",)),
        _variant(POOL_SOURCE, "pool2d", "pool2d_avg_pad", ("POOL_AVG", "COUNT_PAD")),
        _variant(GLOBAL_POOL_SOURCE, "global_pool", "global_pool_max", ("POOL_MAX",)),
        _variant(GLOBAL_POOL_SOURCE, "global_pool", "global_pool_avg", ()),
        _variant(SOFTMAX_SOURCE, "softmax", "softmax", ()),
        _variant(SOFTMAX_SOURCE, "softmax", "log_softmax", ("LOG_SOFTMAX",)),
        LRN_SOURCE,
    ]
)


REDUCE_SOURCE = r"""
#ifndef T
#define T float
#endif
/* Reduce* operators: one work-item per output element. meta: out dims[NOUT], their input
   strides[NOUT], reduced dims[NRED], their input strides[NRED]. COMBINE(acc, v), INIT and
   FINAL(acc, count) are spliced in per operator. */
__kernel void reduce(__global const T* restrict x, __global T* restrict y,
                     __global const int* restrict meta, int count, int total) {
  int i = get_global_id(0);
  if (i >= total) return;
  int rest = i;
  int base = 0;
  for (int d = NOUT - 1; d >= 0; d--) {
    int c = rest % meta[d];
    rest /= meta[d];
    base += c * meta[NOUT + d];
  }
  T acc = INIT;
  for (int r = 0; r < count; r++) {
    int left = r;
    int offset = base;
    for (int d = NRED - 1; d >= 0; d--) {
      int c = left % meta[2 * NOUT + d];
      left /= meta[2 * NOUT + d];
      offset += c * meta[2 * NOUT + NRED + d];
    }
    T v = x[offset];
    acc = COMBINE(acc, v);
  }
  y[i] = FINAL(acc, count);
}
"""

#: (INIT, COMBINE(acc, v), FINAL(acc, count)) per ONNX Reduce operator.
REDUCTIONS: dict[str, tuple[str, str, str]] = {
    "ReduceSum": ("0.0f", "acc + v", "acc"),
    "ReduceMean": ("0.0f", "acc + v", "acc / (float)count"),
    "ReduceMax": ("-INFINITY", "(v > acc ? v : acc)", "acc"),
    "ReduceMin": ("INFINITY", "(v < acc ? v : acc)", "acc"),
    "ReduceProd": ("1.0f", "acc * v", "acc"),
    "ReduceSumSquare": ("0.0f", "acc + v * v", "acc"),
    "ReduceL1": ("0.0f", "acc + fabs(v)", "acc"),
    "ReduceL2": ("0.0f", "acc + v * v", "sqrt(acc)"),
    "ReduceLogSumExp": ("0.0f", "acc + exp(v)", "log(acc)"),
    "ReduceLogSum": ("0.0f", "acc + v", "log(acc)"),
}

#: The reductions on integer and bool tensors (in the element type; LOW/HIGH are its
#: limits, bool's being 0 and 1).
INTEGER_REDUCTIONS: dict[str, tuple[str, str, str]] = {
    "ReduceSum": ("0", "acc + v", "acc"),
    "ReduceMean": ("0", "acc + v", "acc / count"),
    "ReduceMax": ("LOW", "(v > acc ? v : acc)", "acc"),
    "ReduceMin": ("HIGH", "(v < acc ? v : acc)", "acc"),
    "ReduceProd": ("1", "acc * v", "acc"),
    "ReduceSumSquare": ("0", "acc + v * v", "acc"),
    "ReduceL1": ("0", "acc + (v < 0 ? -v : v)", "acc"),
}
