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

namespace gk::filtered_lrelu {

struct Params {
  std::int64_t N, C, H, W, TH, TW, OH, OW;
  int upx, upy, pax, pay, kax, kay;        // stage A
  int downx, downy, pbx, pby, kbx, kby;    // stage B
  int mode;                                // 0: activation (writes mask), 1: masked
  float gain, slope, clamp;                // clamp < 0: none. mode 1: factors slope*gain, gain
};

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

// gA/gB: 2-D correlation kernels [ky][kx] (gains folded in); gA1/gB1: separable x-then-y rows or
// nullptr (CPU only). b: per-channel bias (mode 0) or nullptr.
void run_cpu(const float* x, const float* b, std::uint8_t* mask, const float* gA, const float* gA1, const float* gB,
             const float* gB1, float* y, const Params& p);
void run_cuda(const void* x, const float* b, std::uint8_t* mask, const float* gA, const float* gB, void* y,
              const Params& p, int dtype, std::uintptr_t stream);

}  // namespace gk::filtered_lrelu
