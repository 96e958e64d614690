"""Kernels that move elements by computed indices: gathers and scatters with run-time
indices, Where, gathers through a plan-time index map, cumulative sums, arg-reductions and
TopK.

Element types are macros (``T`` data, ``TI`` indices, ``TC`` a condition), defined by the
lowering, so one source serves every type. Negative indices count from the end of their
axis (ONNX); an index still out of range after that reads element 0 of the axis rather than
memory outside the tensor (ONNX leaves the result undefined; onnxruntime raises).
"""

from __future__ import annotations

INDEXING_SOURCE = r"""
#ifndef T
#define T float
#endif
#ifndef TI
#define TI long
#endif
#ifndef NDIM
#define NDIM 1
#endif
#ifndef COMBINE
#define COMBINE(a, b) (b)
#endif
#ifndef BETTER
#define BETTER(v, best) ((v) > (best))
#endif

long wrap_index(long index, long size) {
  if (index < 0) index += size;
  return (index < 0 || index >= size) ? 0 : index;
}

/* dst[i] = map[i] < 0 ? fill : src[map[i]]: Tile, DepthToSpace, SpaceToDepth, Trilu,
   Pad's edge/reflect/wrap modes and gathers with many constant indices, each an index map
   computed once on the host. */
__kernel void map_gather(__global const T* restrict src, __global T* restrict dst,
                         __global const int* restrict map, T fill, int total) {
  int start = get_global_id(0) * 64;
  int stop = min(start + 64, total);
  for (int i = start; i < stop; i++) {
    int j = map[i];
    dst[i] = j < 0 ? fill : src[j];
  }
}

/* Gather along an axis: out[o][j][r] = data[o][indices[j]][r]. */
__kernel void gather(__global const T* restrict data, __global const TI* restrict indices,
                     __global T* restrict out, int count, int axis_size, int inner,
                     int total) {
  int i = get_global_id(0);
  if (i >= total) return;
  int r = i % inner;
  int j = (i / inner) % count;
  int o = i / (inner * count);
  long index = wrap_index((long)indices[j], axis_size);
  out[i] = data[((long)o * axis_size + index) * inner + r];
}

/* The same gather a row at a time where rows are long (embeddings: one work-item per
   token copies its vector; per element, the index arithmetic above costs more than the
   copy). */
__kernel void gather_rows(__global const T* restrict data, __global const TI* restrict indices,
                          __global T* restrict out, int count, int axis_size, int inner,
                          int rows) {
  int row = get_global_id(0);
  if (row >= rows) return;
  int j = row % count;
  int o = row / count;
  long index = wrap_index((long)indices[j], axis_size);
  __global const T* from = data + ((long)o * axis_size + index) * inner;
  __global T* to = out + (long)row * inner;
  for (int r = 0; r < inner; r++) to[r] = from[r];
}

/* GatherElements: out[c] = data[c with c[axis] = indices[c]]; meta: index dims[NDIM], data
   strides[NDIM]. */
__kernel void gather_elements(__global const T* restrict data,
                              __global const TI* restrict indices, __global T* restrict out,
                              __global const int* restrict meta, int axis, int axis_size,
                              int total) {
  int i = get_global_id(0);
  if (i >= total) return;
  int rest = i;
  long offset = 0;
  for (int d = NDIM - 1; d >= 0; d--) {
    int c = rest % meta[d];
    rest /= meta[d];
    if (d == axis) c = (int)wrap_index((long)indices[i], axis_size);
    offset += (long)c * meta[NDIM + d];
  }
  out[i] = data[offset];
}

/* ScatterElements (reduction none/add/mul/max/min as COMBINE): after out = data, one
   work-item applies every update in order, so repeated indices combine deterministically. */
__kernel void scatter_elements(__global const T* restrict updates,
                               __global const TI* restrict indices, __global T* restrict out,
                               __global const int* restrict meta, int axis, int axis_size,
                               int total) {
  if (get_global_id(0) != 0) return;
  for (int i = 0; i < total; i++) {
    int rest = i;
    long offset = 0;
    for (int d = NDIM - 1; d >= 0; d--) {
      int c = rest % meta[d];
      rest /= meta[d];
      if (d == axis) c = (int)wrap_index((long)indices[i], axis_size);
      offset += (long)c * meta[NDIM + d];
    }
    T a = out[offset];
    T b = updates[i];
    out[offset] = COMBINE(a, b);
  }
}

/* GatherND: output row o (of `inner` elements) copies the data slice the k indices of row o
   name, within its batch. meta: data dims[k] and strides[k] of the indexed axes. */
__kernel void gather_nd(__global const T* restrict data, __global const TI* restrict indices,
                        __global T* restrict out, __global const int* restrict meta, int k,
                        int inner, int rows_per_batch, int batch_stride, int total) {
  int i = get_global_id(0);
  if (i >= total) return;
  int r = i % inner;
  int row = i / inner;
  long offset = (long)(row / rows_per_batch) * batch_stride + r;
  for (int j = 0; j < k; j++)
    offset += wrap_index((long)indices[(long)row * k + j], meta[j]) * meta[k + j];
  out[i] = data[offset];
}

/* ScatterND: after out = data, work-item r applies element r of every update row in order
   (duplicates combine deterministically). */
__kernel void scatter_nd(__global const T* restrict updates,
                         __global const TI* restrict indices, __global T* restrict out,
                         __global const int* restrict meta, int k, int inner, int rows) {
  int r = get_global_id(0);
  if (r >= inner) return;
  for (int row = 0; row < rows; row++) {
    long offset = r;
    for (int j = 0; j < k; j++)
      offset += wrap_index((long)indices[(long)row * k + j], meta[j]) * meta[k + j];
    T a = out[offset];
    T b = updates[(long)row * inner + r];
    out[offset] = COMBINE(a, b);
  }
}

/* Where: out = cond ? x : y with three broadcast operands; meta: dims[NDIM] then the
   strides of cond, x and y (NDIM each). */
__kernel void where_select(__global const uchar* restrict cond, __global const T* restrict x,
                           __global const T* restrict y, __global T* restrict out,
                           __global const int* restrict meta, int total) {
  int i = get_global_id(0);
  if (i >= total) return;
  int rest = i;
  long c = 0, a = 0, b = 0;
  for (int d = NDIM - 1; d >= 0; d--) {
    int coord = rest % meta[d];
    rest /= meta[d];
    c += (long)coord * meta[NDIM + d];
    a += (long)coord * meta[2 * NDIM + d];
    b += (long)coord * meta[3 * NDIM + d];
  }
  out[i] = cond[c] ? x[a] : y[b];
}

/* CumSum along an axis: one work-item per (outer, inner) line. */
__kernel void cumulative_sum(__global const T* restrict x, __global T* restrict y, int length,
                             int inner, int exclusive, int reverse, int total) {
  int i = get_global_id(0);
  if (i >= total) return;
  long base = (long)(i / inner) * length * inner + i % inner;
  T acc = 0;
  for (int s = 0; s < length; s++) {
    int position = reverse ? length - 1 - s : s;
    long at = base + (long)position * inner;
    T v = x[at];
    if (exclusive) {
      y[at] = acc;
      acc += v;
    } else {
      acc += v;
      y[at] = acc;
    }
  }
}

/* ArgMax/ArgMin: BETTER(v, best) decides; `last` keeps the last of equal extremes. */
__kernel void arg_reduce(__global const T* restrict x, __global long* restrict y, int length,
                         int inner, int last, int total) {
  int i = get_global_id(0);
  if (i >= total) return;
  long base = (long)(i / inner) * length * inner + i % inner;
  T best = x[base];
  long found = 0;
  for (int s = 1; s < length; s++) {
    T v = x[base + (long)s * inner];
    if (BETTER(v, best) || (last && v == best)) {
      best = v;
      found = s;
    }
  }
  y[i] = found;
}

/* TopK of one line: k passes, each taking the best element that comes after the previous
   pick in the order (value by BETTER, then lower index first), as the ONNX spec orders
   ties. O(k * length); k is small where models use TopK. */
__kernel void top_k(__global const T* restrict x, __global T* restrict values,
                    __global long* restrict indices, int length, int inner, int k, int total) {
  int i = get_global_id(0);
  if (i >= total) return;
  long base = (long)(i / inner) * length * inner + i % inner;
  long out_base = (long)(i / inner) * k * inner + i % inner;
  T previous = 0;
  int previous_index = -1;
  for (int pick = 0; pick < k; pick++) {
    int chosen = -1;
    T best = 0;
    for (int s = 0; s < length; s++) {
      T v = x[base + (long)s * inner];
      if (previous_index >= 0 &&
          !(BETTER(previous, v) || (v == previous && s > previous_index)))
        continue;
      if (chosen < 0 || BETTER(v, best)) {
        best = v;
        chosen = s;
      }
    }
    values[out_base + (long)pick * inner] = best;
    indices[out_base + (long)pick * inner] = chosen;
    previous = best;
    previous_index = chosen;
  }
}
"""
