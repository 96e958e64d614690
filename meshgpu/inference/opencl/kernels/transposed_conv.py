"""ConvTranspose as a gather: each output element sums the inputs that scatter into it."""

from __future__ import annotations

TRANSPOSED_CONV_SOURCE = r"""
/* y[n][co][oy][ox] = bias[co] + sum over the input channels ci of co's group and taps
   (ky, kx) with iy = (oy + PH - ky*DH) / SH an integer inside the input (likewise ix) of
   x[n][ci][iy][ix] * w[ci][co % COG][ky][kx]  (ONNX ConvTranspose; w is [C_in][C_out/group]
   [KH][KW]). One work-item per output element. */
__kernel void conv_transpose2d(__global const float* restrict x, __global const float* restrict w,
                               __global const float* restrict bias, __global float* restrict y,
                               int CI, int H, int W, int CO, int OH, int OW, int KH, int KW,
                               int SH, int SW, int PH, int PW, int DH, int DW, int groups,
                               int total) {
  int i = get_global_id(0);
  if (i >= total) return;
  int ox = i % OW;
  int oy = (i / OW) % OH;
  int co = (i / (OW * OH)) % CO;
  int n = i / (OW * OH * CO);
  int cog = CO / groups;
  int cig = CI / groups;
  int g = co / cog;
  int col = co % cog;
  float acc = bias ? bias[co] : 0.0f;
  for (int ky = 0; ky < KH; ky++) {
    int ty = oy + PH - ky * DH;
    if (ty < 0 || ty % SH) continue;
    int iy = ty / SH;
    if (iy >= H) continue;
    for (int kx = 0; kx < KW; kx++) {
      int tx = ox + PW - kx * DW;
      if (tx < 0 || tx % SW) continue;
      int ix = tx / SW;
      if (ix >= W) continue;
      const __global float* xp = x + (((long)n * CI + g * cig) * H + iy) * W + ix;
      const __global float* wp = w + (((long)(g * cig) * cog + col) * KH + ky) * KW + kx;
      for (int c = 0; c < cig; c++) {
        acc += xp[(long)c * H * W] * wp[(long)c * cog * KH * KW];
      }
    }
  }
  y[i] = acc;
}
"""
