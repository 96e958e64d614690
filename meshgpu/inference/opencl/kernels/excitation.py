"""Squeeze-and-excitation (MobileNetV3, EfficientNet, LR-ASPP's backbone): the gate computed
from the pooled channels in one launch, and the per-channel scaling of the feature map.

The gate is two 1x1 convolutions on a ``[N, C, 1, 1]`` vector with an activation after
each: as convolutions they were four launches (two GEMMs on one column, two unary maps),
each costing more to start than its arithmetic. ``excitation_gate`` runs one work-group per
image: the hidden layer into local memory, then the gates, both as 8-wide dot products.
``channel_scale`` multiplies each plane by its gate, 8 floats at a time, where the generic
broadcasting ``binary`` kernel decodes every element's coordinates.
"""

from __future__ import annotations

#: Work-items per image in ``excitation_gate``.
GATE_GROUP = 16

EXCITATION_SOURCE = r"""
#ifndef ACT
#define ACT(v) (v)
#endif
inline float gate_hidden(float x, float alpha, float beta) { return SE_ACT1(x); }
inline float gate_out(float x, float alpha, float beta) { return SE_ACT2(x); }

/* dot(a[0..n), b[0..n)) with 8-wide partial sums, in a fixed order */
inline float dot8(const __global float* a, const __global float* b, int n) {
  float8 acc = (float8)(0.0f);
  int i = 0;
  for (; i + 8 <= n; i += 8) acc += load8(a + i) * load8(b + i);
  float rest = 0.0f;
  for (; i < n; i++) rest += a[i] * b[i];
  return rest + (((acc.s0 + acc.s1) + (acc.s2 + acc.s3)) + ((acc.s4 + acc.s5) + (acc.s6 + acc.s7)));
}

typedef float8 __attribute__((aligned(4))) gate_float8_u;

/* the same with b in local memory */
inline float dot8_local(const __global float* a, const __local float* b, int n) {
  float8 acc = (float8)(0.0f);
  int i = 0;
  for (; i + 8 <= n; i += 8) acc += load8(a + i) * *(const __local gate_float8_u*)(b + i);
  float rest = 0.0f;
  for (; i < n; i++) rest += a[i] * b[i];
  return rest + (((acc.s0 + acc.s1) + (acc.s2 + acc.s3)) + ((acc.s4 + acc.s5) + (acc.s6 + acc.s7)));
}

/* gate[n][c] = ACT2(b2[c] + sum_h w2[c][h] * ACT1(b1[h] + sum_k w1[h][k] * pooled[n][k]));
   one work-group per image n, the hidden layer (SE_R values) in local memory. */
__kernel void excitation_gate(__global const float* restrict pooled,
                              __global const float* restrict w1,
                              __global const float* restrict b1,
                              __global const float* restrict w2,
                              __global const float* restrict b2, __global float* restrict gate,
                              float alpha1, float beta1, float alpha2, float beta2) {
  __local float hidden[SE_R];
  int n = get_group_id(0);
  int lid = get_local_id(0);
  const __global float* p = pooled + (size_t)n * SE_C;
  for (int h = lid; h < SE_R; h += SE_GROUP)
    hidden[h] = gate_hidden(b1[h] + dot8(w1 + (size_t)h * SE_C, p, SE_C), alpha1, beta1);
  barrier(CLK_LOCAL_MEM_FENCE);
  for (int c = lid; c < SE_C; c += SE_GROUP) {
    float acc = b2[c] + dot8_local(w2 + (size_t)c * SE_R, hidden, SE_R);
    gate[(size_t)n * SE_C + c] = gate_out(acc, alpha2, beta2);
  }
}

/* y = ACT(x * scale[plane]) over planes of `plane` floats; one work-item per 8-float block
   of a plane (the plane's last block keeps only its lanes). */
__kernel void channel_scale(__global const float* restrict x, __global const float* restrict scale,
                            __global float* restrict y, int plane, int blocks, int total) {
  int i = get_global_id(0);
  if (i >= total) return;
  int p = i / blocks;
  int start = (i - p * blocks) * 8;
  size_t base = (size_t)p * plane + start;
  float s = scale[p];
  if (start + 8 <= plane) {
    float8 v = load8(x + base) * (float8)(s);
    store8(y + base, (float8)(ACT(v.s0), ACT(v.s1), ACT(v.s2), ACT(v.s3), ACT(v.s4), ACT(v.s5),
                              ACT(v.s6), ACT(v.s7)));
  } else {
    for (int l = 0; l < plane - start; l++) {
      float v = x[base + l] * s;
      y[base + l] = ACT(v);
    }
  }
}
"""
