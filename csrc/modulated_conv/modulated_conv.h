// modulated_conv: the two passes around StyleGAN2's modulated convolution (the convolution itself
// is torch's; gankern/ops/modulated_conv.py).
//
// modulate: for a shared weight [O, I, K] (K = kh*kw) and styles [N, I],
//   d[n, o]          = rsqrt(sum_i styles[n, i]^2 * sum_k weight[o, i, k]^2 + 1e-8)
//   wmod[n, o, i, k] = weight[o, i, k] * styles[n, i] * (demodulate ? d[n, o] : 1)
// The sum of squares is factored (the squared weight row is summed once per o, then one dot
// product of I terms per (n, o)), so the coefficients alone cost O*I*K + N*O*I, never the
// N*O*I*K modulated tensor. Either output may be None. fp32 throughout.
//
// epilogue: out = clamp(act(y * scale[n, c] + noise + bias[c]) * gain, -clamp, clamp) over y
// [N, C, H, W], NCHW-contiguous or channels_last (out has y's strides). scale fp32 [N, C], bias
// fp32 [C], noise (y's dtype) planes of HW contiguous elements at n*snn + c*snc (0: broadcast);
// each may be None. clamp < 0: no clamp.
#pragma once
#include <cstdint>

#include "common/activations.h"
#include "common/view.h"

namespace gk::modulated_conv {

// kDemodEps: gk_tables.h (gankern/_tables.py: REALS)

#define GK_MODCONV_MODULATE_PARAMS(X)                                                  \
  X(gk::View, weight, "float32 [O, I, K], contiguous")                                \
  X(gk::View, styles, "float32 [N, I], contiguous")                                   \
  X(gk::View, wmod, "out: float32 [N, O, I, K] modulated weights, or None")           \
  X(gk::View, dcoefs, "out: float32 [N, O] demodulation coefficients, or None")       \
  X(std::int64_t, N, "batch")                                                          \
  X(std::int64_t, O, "output channels")                                                \
  X(std::int64_t, I, "input channels")                                                 \
  X(std::int64_t, K, "taps per kernel (kh * kw)")                                      \
  X(bool, demodulate, "scale wmod by the coefficients")
GK_STRUCT(ModulateParams, GK_MODCONV_MODULATE_PARAMS);

#define GK_MODCONV_EPILOGUE_PARAMS(X)                                                          \
  X(gk::View, y, "input [N, C, H, W], NCHW-contiguous or channels_last; float32, float16 or bfloat16") \
  X(gk::View, out, "output, y's dtype and strides")                                           \
  X(gk::View, scale, "float32 [N, C], or None")                                               \
  X(gk::View, noise, "y's dtype, planes of HW elements at n*snn + c*snc, or None")            \
  X(gk::View, bias, "float32 [C], or None")                                                   \
  X(std::int64_t, N, "batch")                                                                  \
  X(std::int64_t, C, "channels")                                                               \
  X(std::int64_t, HW, "pixels per plane")                                                      \
  X(std::int64_t, snn, "noise's sample stride (0: broadcast over the batch)")                  \
  X(std::int64_t, snc, "noise's channel stride (0: broadcast over channels)")                  \
  X(bool, channels_last, "y is channels_last (else NCHW-contiguous)")                          \
  X(int, act, "gk::Act code (gankern/_tables.py: ACTIVATIONS)")                                \
  X(float, alpha, "lrelu slope")                                                               \
  X(float, gain, "output scale")                                                               \
  X(float, clamp, "clip the output to [-clamp, clamp]; < 0: no clip")
GK_STRUCT(EpilogueParams, GK_MODCONV_EPILOGUE_PARAMS);

template <int A, bool kClamp>
GK_HOST_DEVICE inline float epilogue_value(float y, float scale, float noise, float b, float alpha, float gain,
                                           float clamp) {
  float v = act_forward<A>(y * scale + noise + b, alpha) * gain;
  if constexpr (kClamp) v = v < -clamp ? -clamp : (v > clamp ? clamp : v);  // NaN passes, as torch.clamp
  return v;
}

// The checks both backends make.
inline void check_modulate(const ModulateParams& p) {
  const char* op = "modconv_modulate";
  check(p.N >= 1 && p.O >= 1 && p.I >= 1 && p.K >= 1, op, "N, O, I and K must be >= 1");
  check(p.weight.numel == p.O * p.I * p.K && p.styles.numel == p.N * p.I, op, "weight [O, I, K], styles [N, I]");
  check(p.wmod.is_none() || p.wmod.numel == p.N * p.O * p.I * p.K, op, "wmod must be [N, O, I, K]");
  check(p.dcoefs.is_none() || p.dcoefs.numel == p.N * p.O, op, "dcoefs must be [N, O]");
  p.weight.as<const float>("weight");
  p.styles.as<const float>("styles");
  p.wmod.as<const float>("wmod");
  p.dcoefs.as<const float>("dcoefs");
}

inline void check_epilogue(const EpilogueParams& p) {
  const char* op = "modconv_epilogue";
  check(!p.y.is_none() && !p.out.is_none(), op, "y and out are required");
  check_same(op, p.y, {&p.out});
  check(p.y.numel == p.N * p.C * p.HW, op, "y must hold N * C * HW elements");
  check(p.scale.is_none() || p.scale.numel == p.N * p.C, op, "scale must be [N, C]");
  check(p.bias.is_none() || p.bias.numel == p.C, op, "bias must be [C]");
  check(p.snn >= 0 && p.snc >= 0, op, "noise strides must be >= 0");
  check(p.noise.is_none() || (p.noise.dtype == p.y.dtype &&
                              p.noise.numel > (p.N - 1) * p.snn + (p.C - 1) * p.snc + p.HW - 1),
        op, "noise must have y's dtype and cover its strides");
  p.scale.as<const float>("scale");
  p.bias.as<const float>("bias");
}

// Entry points, defined by cpu.cpp for gankern._C and by cuda.cu for gankern._cuda.
void modulate(const ModulateParams& p, Stream stream);
void epilogue(const EpilogueParams& p, Stream stream);

}  // namespace gk::modulated_conv
