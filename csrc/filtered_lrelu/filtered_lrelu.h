// filtered_lrelu: StyleGAN3's upsample -> leaky ReLU -> downsample, fused; and the masked form
// its gradients of every order use.
//
// Two upfirdn passes around a pointwise step, per (n, c) plane:
//   stage A: t = upfirdn(z, gA, up = upA, down = 1, leading pad pA)    [H, W]  -> [TH, TW]
//   point:   mode 0 (forward):  z = x + b; v = clamp(lrelu(t, slope) * gain); mask = code of t
//            mode 1 (masked):   z = x;     v = t * factor[mask]
//   stage B: y = upfirdn(v, gB, up = 1, down = downB, leading pad pB)  [TH, TW] -> [OH, OW]
// Forward: A = (fu, up, padding), B = (fd, down, no pad). dL/dx is the masked form with the two
// passes transposed (A = fd^T, B = fu^T; csrc/upfirdn2d/upfirdn2d.h), and so is every higher
// derivative: lrelu and clamp are piecewise linear, so the mask is all the backward needs of x.
// Mask codes: 0 = t <= 0 (slope * gain), 1 = t > 0 (gain), 2 = clamped or NaN (0); 1 byte per
// intermediate sample. v is never written to memory.
//
// Layout: x [N, C, H, W], mask [N, C, TH, TW], y [N, C, OH, OW], all NCHW contiguous.
#pragma once
#include <cstdint>

#include "common/macros.h"
#include "common/view.h"

namespace gk::filtered_lrelu {

// One fused pass (mode 0: the forward, writes the mask; mode 1: the masked form, reads it).
#define GK_FILTERED_LRELU_PARAMS(X)                                                                \
  X(gk::View, x, "input [N, C, H, W] NCHW contiguous; float32, float16 or bfloat16")     \
  X(gk::View, b, "per-channel bias float32 [C] (mode 0), or None")                                \
  X(gk::View, mask, "uint8 [N, C, TH, TW]: written by mode 0, read by mode 1")                    \
  X(gk::View, gA, "stage A correlation kernel float32 [kay, kax], gain folded in")                \
  X(gk::View, gA1, "stage A separable factors float32 [2, kax] (x, y), or None (CPU only)")       \
  X(gk::View, gB, "stage B correlation kernel float32 [kby, kbx], gain folded in")                \
  X(gk::View, gB1, "stage B separable factors float32 [2, kbx] (x, y), or None (CPU only)")       \
  X(gk::View, y, "output [N, C, OH, OW] NCHW contiguous, x's dtype")                              \
  X(std::int64_t, N, "batch") X(std::int64_t, C, "channels")                                     \
  X(std::int64_t, H, "input height") X(std::int64_t, W, "input width")                           \
  X(std::int64_t, TH, "intermediate height") X(std::int64_t, TW, "intermediate width")           \
  X(std::int64_t, OH, "output height") X(std::int64_t, OW, "output width")                       \
  X(int, upx, "stage A upsampling along x") X(int, upy, "stage A upsampling along y")            \
  X(int, pax, "stage A leading pad along x") X(int, pay, "stage A leading pad along y")          \
  X(int, kax, "stage A taps along x") X(int, kay, "stage A taps along y")                        \
  X(int, downx, "stage B downsampling along x") X(int, downy, "stage B downsampling along y")    \
  X(int, pbx, "stage B leading pad along x") X(int, pby, "stage B leading pad along y")          \
  X(int, kbx, "stage B taps along x") X(int, kby, "stage B taps along y")                        \
  X(int, mode, "0: activation (writes mask), 1: masked (reads mask)")                            \
  X(float, gain, "output scale of the activation; mode 1: factors slope*gain, gain")              \
  X(float, slope, "leaky ReLU slope")                                                             \
  X(float, clamp, "clip the activation to [-clamp, clamp]; < 0: no clip")
GK_STRUCT(Params, GK_FILTERED_LRELU_PARAMS);

GK_HOST_DEVICE inline float activate(float t, const Params& p, std::uint8_t& code) {
  float v = (t > 0.f ? t : t * p.slope) * p.gain;
  code = t > 0.f ? 1 : 0;
  if (p.clamp >= 0.f) {
    if (!(v >= -p.clamp && v <= p.clamp)) code = 2;      // torch.clamp passes the gradient inclusively
    v = v < -p.clamp ? -p.clamp : (v > p.clamp ? p.clamp : v);  // NaN stays NaN
  } else if (v != v) {
    code = 2;
  }
  return v;
}

GK_HOST_DEVICE inline float mask_factor(std::uint8_t code, const Params& p) {
  return code == 1 ? p.gain : (code == 0 ? p.gain * p.slope : 0.f);
}

// The checks both backends make: the operands present, of the sizes of the geometry, x and y of
// one dtype, fp32 filters and bias, a uint8 mask.
inline void check_args(const char* op, const Params& p) {
  check(!p.x.is_none() && !p.mask.is_none() && !p.gA.is_none() && !p.gB.is_none() && !p.y.is_none(), op,
        "x, mask, gA, gB and y are required");
  check(p.x.dtype == p.y.dtype, op, "x and y must share one dtype");
  check(p.mode == 0 || p.mode == 1, op, "mode must be 0 (activation) or 1 (masked)");
  check(p.x.numel == p.N * p.C * p.H * p.W && p.y.numel == p.N * p.C * p.OH * p.OW &&
            p.mask.numel == p.N * p.C * p.TH * p.TW,
        op, "x, mask and y must have N*C*H*W, N*C*TH*TW and N*C*OH*OW elements");
  check(p.upx >= 1 && p.upy >= 1 && p.downx >= 1 && p.downy >= 1 && p.kax >= 1 && p.kay >= 1 && p.kbx >= 1 &&
            p.kby >= 1,
        op, "up, down and the filter sizes must be >= 1");
  check(p.gA.numel == static_cast<std::int64_t>(p.kax) * p.kay && p.gB.numel == static_cast<std::int64_t>(p.kbx) * p.kby,
        op, "gA and gB must have kay*kax and kby*kbx elements");
  check(p.gA1.is_none() || (p.kax == p.kay && p.gA1.numel == 2 * static_cast<std::int64_t>(p.kax)), op,
        "gA1 must be None or [2, kax] with kax == kay");
  check(p.gB1.is_none() || (p.kbx == p.kby && p.gB1.numel == 2 * static_cast<std::int64_t>(p.kbx)), op,
        "gB1 must be None or [2, kbx] with kbx == kby");
  check(p.b.is_none() || p.b.numel == p.C, op, "b must be None or have C elements");
  p.b.as<const float>("b");
  p.gA.as<const float>("gA");
  p.gA1.as<const float>("gA1");
  p.gB.as<const float>("gB");
  p.gB1.as<const float>("gB1");
  p.mask.as<std::uint8_t>("mask");
}

// Entry point, defined by cpu.cpp for gankern._C and by cuda.cu for gankern._cuda (which ignores
// gA1 and gB1).
void run(const Params& p, Stream stream);

}  // namespace gk::filtered_lrelu
