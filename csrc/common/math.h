// Vectorizable float math for the CPU kernels, shared by CPU and CUDA code (on the GPU each
// function is the CUDA library's accurate version). libm's expf/logf/tanhf/expm1f calls, and
// std::floor (a call to floorf), keep GCC from vectorizing the loops they appear in; these are
// branch-free polynomials of about 1 ulp that vectorize under GK_CPU_CLONES with
// -fno-trapping-math (CMakeLists.txt). NaN/Inf behave as in libm unless a comment says otherwise.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/macros.h"

namespace gk {

GK_HOST_DEVICE inline std::int32_t f32_to_bits(float f) { std::int32_t b; std::memcpy(&b, &f, 4); return b; }

// log(x) for positive normal x (Box-Muller passes x in [1e-7, 1)); no NaN/Inf/denormal handling.
GK_HOST_DEVICE inline float log_pos_f32(float x) {
#if defined(__CUDA_ARCH__)
  return logf(x);
#else
  // x = 2^k * (1 + m) with 1 + m in [sqrt(1/2), sqrt(2)), by integer ops (musl's reduction): GCC
  // will not if-convert float arithmetic (it could trap), and a branch would stop vectorization.
  std::int32_t ix = f32_to_bits(x) + (0x3f800000 - 0x3f3504f3);
  const float e = static_cast<float>((ix >> 23) - 0x7f);
  ix = (ix & 0x007fffff) + 0x3f3504f3;
  const float m = bits_to_f32(ix) - 1.0f;
  const float z = m * m;
  float p = 7.0376836292E-2f;
  p = p * m - 1.1514610310E-1f;
  p = p * m + 1.1676998740E-1f;
  p = p * m - 1.2420140846E-1f;
  p = p * m + 1.4249322787E-1f;
  p = p * m - 1.6668057665E-1f;
  p = p * m + 2.0000714765E-1f;
  p = p * m - 2.4999993993E-1f;
  p = p * m + 3.3333331174E-1f;
  float y = p * m * z;
  y += -2.12194440e-4f * e;  // log(2) split as 0.693359375 - 2.12194440e-4: the first part is exact
  y += -0.5f * z;
  return (m + y) + 0.693359375f * e;
#endif
}

// exp(x) with a vectorizable body on the CPU, the hardware path on the GPU. libm's expf (and
// std::floor, which GCC emits as a call to floorf) would keep GCC from vectorizing the loops it
// appears in. Cephes' expf polynomial (~1 ulp) with round-to-nearest by the 1.5 * 2^23 trick, and
// 2^n applied in two steps so n = 128 (x up to log(FLT_MAX)) does not overflow the exponent
// field. Overflow, underflow and NaN as expf. Needs -fno-trapping-math to if-convert the selects.
GK_HOST_DEVICE inline float exp_f32(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  const float hi = 88.72283905206835f, lo = -87.3365447504019f;
  float xc = x > hi ? hi : (x < lo ? lo : x);
  xc = x == x ? xc : 0.f;  // NaN: compute anything finite, fixed up below
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // nearest integer
  const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;            // |r| <= ln(2) / 2
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  const float y = p * r * r + r + 1.0f;
  const std::int32_t ni = static_cast<std::int32_t>(n);
  const float v = y * bits_to_f32((ni / 2 + 127) << 23) * bits_to_f32((ni - ni / 2 + 127) << 23);
  return x != x ? x : (x > hi ? INFINITY : (x < lo ? 0.f : v));
#endif
}

// expm1 without the cancellation of exp(x) - 1 near 0: Taylor series through x^7 for |x| < 1/4
// (truncation < 2e-9 relative), exp_f32(x) - 1 beyond. Vectorizable, like exp_f32.
GK_HOST_DEVICE inline float expm1_f32(float x) {
#if defined(__CUDA_ARCH__)
  return expm1f(x);
#else
  const float small =
      x + x * x * (0.5f + x * (1.f / 6.f + x * (1.f / 24.f + x * (1.f / 120.f + x * (1.f / 720.f + x * (1.f / 5040.f))))));
  return (x < 0.25f && x > -0.25f) ? small : exp_f32(x) - 1.f;
#endif
}

// tanh(x) = -expm1(-2|x|) / (2 + expm1(-2|x|)) with x's sign: relative accuracy near 0 from expm1,
// saturates to +-1, NaN passes. Vectorizable.
GK_HOST_DEVICE inline float tanh_f32(float x) {
#if defined(__CUDA_ARCH__)
  return tanhf(x);
#else
  const float em = expm1_f32(-2.f * std::fabs(x));
  return std::copysign(-em / (2.f + em), x);
#endif
}

// log1p(u) for u >= 0 (e.g. u = exp(-|z|) in softplus): log(w) * u / (w - 1) with w = 1 + u cancels
// the rounding of w (Goldberg), so it keeps full relative accuracy for small u.
GK_HOST_DEVICE inline float log1p_pos_f32(float u) {
#if defined(__CUDA_ARCH__)
  return log1pf(u);
#else
  const float w = 1.f + u;
  return w == 1.f ? u : log_pos_f32(w) * u / (w - 1.f);
#endif
}

// erf by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7; the approximation PyTorch's own
// vectorized CPU erf uses), so gelu(z) = 0.5 z (1 + erf(z / sqrt 2)) is as accurate as torch's.
GK_HOST_DEVICE inline float erf_f32(float x) {
#if defined(__CUDA_ARCH__)
  return erff(x);
#else
  const float a = std::fabs(x);
  const float t = 1.f / (1.f + 0.3275911f * a);
  const float p = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f) * t;
  return std::copysign(1.f - p * exp_f32(-a * a), x);
#endif
}

}  // namespace gk
